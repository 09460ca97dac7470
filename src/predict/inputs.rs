//! What `gfer predict` reads: files, folders (recursively), glob patterns and `-` for
//! image bytes on stdin, in one sorted list that `--shard K/N` can split.

use std::fmt;
use std::path::{Path, PathBuf};

/// One image to read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Input {
    File(PathBuf),
    /// Image bytes on standard input (`-`).
    Stdin,
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::File(path) => write!(f, "{}", path.display()),
            Input::Stdin => f.write_str("-"),
        }
    }
}

/// The inputs that exist, and the arguments that named nothing (with the reason).
#[derive(Debug, Default)]
pub struct Collected {
    pub inputs: Vec<Input>,
    pub missing: Vec<(String, String)>,
}

/// Expands command-line arguments into a sorted, de-duplicated list of images.
pub fn collect(arguments: &[String]) -> Collected {
    let mut collected = Collected::default();
    for argument in arguments {
        if argument == "-" {
            collected.inputs.push(Input::Stdin);
            continue;
        }
        let path = Path::new(argument);
        if path.is_dir() {
            let found = images_under(path, &mut collected.missing);
            if found.is_empty() {
                collected
                    .missing
                    .push((argument.clone(), "folder holds no images".into()));
            }
            collected.inputs.extend(found.into_iter().map(Input::File));
        } else if path.exists() {
            collected.inputs.push(Input::File(path.to_path_buf()));
        } else if is_glob(argument) {
            expand_glob(argument, &mut collected);
        } else {
            collected
                .missing
                .push((argument.clone(), "no such file or folder".into()));
        }
    }
    collected.inputs.sort();
    collected.inputs.dedup();
    collected
}

fn is_glob(argument: &str) -> bool {
    argument.contains(['*', '?', '['])
}

fn expand_glob(pattern: &str, collected: &mut Collected) {
    let paths = match glob::glob(pattern) {
        Ok(paths) => paths,
        Err(err) => {
            collected
                .missing
                .push((pattern.to_string(), format!("bad glob pattern: {err}")));
            return;
        }
    };
    let before = collected.inputs.len();
    for entry in paths {
        match entry {
            Ok(path) if path.is_dir() => {
                let found = images_under(&path, &mut collected.missing);
                collected.inputs.extend(found.into_iter().map(Input::File));
            }
            Ok(path) if crate::image::has_image_extension(&path) => {
                collected.inputs.push(Input::File(path))
            }
            Ok(_) => {}
            Err(err) => collected
                .missing
                .push((err.path().display().to_string(), err.error().to_string())),
        }
    }
    if collected.inputs.len() == before {
        collected
            .missing
            .push((pattern.to_string(), "pattern matches no images".into()));
    }
}

/// Image files anywhere under `folder`, sorted; unreadable entries are recorded.
fn images_under(folder: &Path, problems: &mut Vec<(String, String)>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(folder).follow_links(true) {
        match entry {
            Ok(entry)
                if entry.file_type().is_file()
                    && crate::image::has_image_extension(entry.path()) =>
            {
                found.push(entry.into_path())
            }
            Ok(_) => {}
            Err(err) => problems.push((
                err.path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| folder.display().to_string()),
                err.to_string(),
            )),
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_globs_and_files_expand_sorted_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        for name in ["a/2.jpg", "a/b/1.PNG", "a/notes.txt", "z.webp", "named.dat"] {
            std::fs::write(root.join(name), b"x").unwrap();
        }
        let arg = |p: &str| root.join(p).display().to_string();
        let collected = collect(&[
            arg("a"),
            arg("*.webp"),
            arg("a/2.jpg"),
            arg("named.dat"),
            "-".into(),
            arg("nothing-here.jpg"),
            arg("*.gif"),
        ]);
        let expected = vec![
            Input::File(root.join("a/2.jpg")),
            Input::File(root.join("a/b/1.PNG")),
            Input::File(root.join("named.dat")),
            Input::File(root.join("z.webp")),
            Input::Stdin,
        ];
        assert_eq!(collected.inputs, expected);
        let missing: Vec<&str> = collected.missing.iter().map(|m| m.1.as_str()).collect();
        assert_eq!(
            missing,
            ["no such file or folder", "pattern matches no images"]
        );
    }
}
