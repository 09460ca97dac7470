//! MMA Facial Expression (MMAFEDB): `MMAFEDB/{train,valid,test}/<class>/*.jpg`, 48x48,
//! grey and RGB files mixed (all are read as RGB). `valid` is the val split. The spec
//! path may be the folder holding `MMAFEDB/` or `MMAFEDB/` itself.

use super::{folder, Builder, Spec, Split};
use crate::Result;

const FOLDERS: [(&str, Split); 3] = [
    ("train", Split::Train),
    ("valid", Split::Val),
    ("test", Split::Test),
];

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let nested = spec.path.join("MMAFEDB");
    let root = if nested.is_dir() {
        nested
    } else {
        spec.path.clone()
    };
    let present: Vec<_> = FOLDERS
        .iter()
        .filter(|(name, _)| root.join(name).is_dir())
        .collect();
    if present.is_empty() {
        return Err(spec.layout_error(format!(
            "none of train/, valid/, test/ is in {}",
            root.display()
        )));
    }
    for (name, split) in present {
        folder::add_class_folders(builder, &root.join(name), *split)?;
    }
    Ok(())
}
