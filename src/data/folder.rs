//! Class-folder trees: the generic `folder:` kind, and the helper that SFEW, MMA and
//! FER2013's image-folder layout share.
//!
//! `folder:DIR` reads `DIR/{train,val,test}/<class>/*` when any split folder exists
//! (`training`, `valid`, `validation`, `testing` are accepted too); otherwise it reads
//! `DIR/<class>/*` into one split, `train` unless the spec says `unsplit=val|test`.
//! Class folders are matched by NAME (`Angry`, `happy`, `Surprise`, ...), never by their
//! position; the domain is the folder's name unless the spec gives `domain=`.

use super::{is_image_file, sorted_entries, Builder, DropReason, Label, Spec, Split};
use crate::{Expression, Result};
use std::path::Path;

pub(super) fn load(spec: &Spec, builder: &mut Builder) -> Result<()> {
    let root = &spec.path;
    if !root.is_dir() {
        return Err(spec.layout_error(format!("{} is not a folder", root.display())));
    }
    if spec.domain.is_none() {
        if let Some(name) = root.canonicalize().ok().and_then(|p| {
            p.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        }) {
            builder.domain = name;
        }
    }
    let mut split_folders = Vec::new();
    for entry in sorted_entries(root)? {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let (true, Ok(split)) = (entry.is_dir(), name.parse::<Split>()) {
            split_folders.push((entry, split));
        }
    }
    if split_folders.is_empty() {
        let split = unsplit(spec)?;
        builder.note(format!(
            "no train/val/test folders: every class folder is read into the {split} split"
        ));
        return add_class_folders(builder, root, split);
    }
    for (dir, split) in split_folders {
        add_class_folders(builder, &dir, split)?;
    }
    Ok(())
}

/// The split for data sets without one (`unsplit=train|val|test`, default train).
pub(super) fn unsplit(spec: &Spec) -> Result<Split> {
    match spec.option("unsplit") {
        None => Ok(Split::Train),
        Some(value) => value
            .parse()
            .map_err(|e: String| spec.error(format!("unsplit={value}: {e}"))),
    }
}

/// Adds every image in `dir/<class>/` to `split`, the class taken from the folder's name.
/// Images in contempt folders or folders that are not a class are dropped and counted.
pub(super) fn add_class_folders(builder: &mut Builder, dir: &Path, split: Split) -> Result<()> {
    if !builder.wants(split) {
        return Ok(());
    }
    for class_dir in sorted_entries(dir)? {
        if !class_dir.is_dir() {
            continue;
        }
        let name = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = match Expression::from_name(&name) {
            Some(expression) => Label::Class(expression),
            None if name.eq_ignore_ascii_case("contempt") => Label::Drop(DropReason::Contempt),
            None => Label::Drop(DropReason::NotAClassFolder(name)),
        };
        for path in sorted_entries(&class_dir)? {
            if is_image_file(&path) {
                builder.file(path, None, label.clone(), split);
            }
        }
    }
    Ok(())
}
