//! SFEW 2.0: `Train_Aligned_Faces/<Class>/*.png` and `Val_Aligned_Faces/<Class>/*.png`,
//! class folders `Angry Disgust Fear Happy Neutral Sad Surprise` matched by name. Test
//! labels were never released, so a `Test_Aligned_Faces/` folder is not read.

use super::{folder, Builder, Spec, Split};
use crate::Result;

const FOLDERS: [(&str, Split); 2] = [
    ("Train_Aligned_Faces", Split::Train),
    ("Val_Aligned_Faces", Split::Val),
];

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let root = &spec.path;
    let present: Vec<_> = FOLDERS
        .iter()
        .filter(|(name, _)| root.join(name).is_dir())
        .collect();
    if present.is_empty() {
        return Err(spec.layout_error(format!(
            "neither Train_Aligned_Faces/ nor Val_Aligned_Faces/ is in {}",
            root.display()
        )));
    }
    if root.join("Test_Aligned_Faces").is_dir() {
        builder.note("Test_Aligned_Faces/ has no released labels and is not read");
    }
    for (name, split) in present {
        folder::add_class_folders(builder, &root.join(name), *split)?;
    }
    Ok(())
}
