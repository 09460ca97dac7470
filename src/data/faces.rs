//! How a data set's face images were cut from their photos, when gfer cut them. Whatever
//! builds such a data set writes a [`FaceCropping`] beside its manifest as
//! [`FACES_FILE`]; the manifest reader picks it up, training copies it into the model
//! bundle, and `gfer predict` warns when it is asked to cut faces differently from the
//! faces the model learned from (another detector, no alignment, another margin).

use crate::formats::write_file_atomically;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's file name, in the folder of the manifest it describes.
pub const FACES_FILE: &str = "gfer-faces.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceCropping {
    /// The detector that found the faces (`mtcnn`, `seetaface`), or `none` for crops at
    /// fixed places.
    pub detector: String,
    /// `landmarks` (upright by the five landmarks) or `none` (as found).
    pub align: String,
    /// Space around the face on every side, as a fraction of the side (`None` for fixed
    /// crops, whose margin is whatever the fixed place gives).
    pub margin: Option<f32>,
}

impl FaceCropping {
    /// Writes the record beside `manifest` (atomically).
    pub fn write_beside(&self, manifest: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::internal(format!("face cropping record: {e}")))?;
        write_file_atomically(&record_path(manifest), json.as_bytes())
    }

    /// The record beside `manifest`, `None` when there is none.
    pub fn read_beside(manifest: &Path) -> Result<Option<Self>> {
        let path = record_path(manifest);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Data {
                file: path,
                line: Some(e.line()),
                message: format!(
                    "not a face cropping record ({{\"detector\", \"align\", \"margin\"}}): {e}"
                ),
            })
    }

    /// What `other` does differently, one phrase per difference (empty when the two cut
    /// faces alike).
    pub fn differences(&self, other: &FaceCropping) -> Vec<String> {
        let mut differences = Vec::new();
        if self.detector != other.detector {
            differences.push(format!(
                "detector {} instead of {}",
                other.detector, self.detector
            ));
        }
        if self.align != other.align {
            differences.push(format!(
                "alignment {} instead of {}",
                other.align, self.align
            ));
        }
        if let (Some(ours), Some(theirs)) = (self.margin, other.margin) {
            if (ours - theirs).abs() > 1e-4 {
                differences.push(format!("margin {theirs} instead of {ours}"));
            }
        }
        differences
    }
}

impl std::fmt::Display for FaceCropping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "detector {}, alignment {}", self.detector, self.align)?;
        match self.margin {
            Some(margin) => write!(f, ", margin {margin}"),
            None => write!(f, ", fixed crops"),
        }
    }
}

fn record_path(manifest: &Path) -> PathBuf {
    manifest.parent().unwrap_or(Path::new(".")).join(FACES_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtcnn_aligned() -> FaceCropping {
        FaceCropping {
            detector: "mtcnn".into(),
            align: "landmarks".into(),
            margin: Some(0.2),
        }
    }

    #[test]
    fn written_record_reads_back_beside_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("manifest.csv");
        assert_eq!(FaceCropping::read_beside(&manifest).unwrap(), None);
        mtcnn_aligned().write_beside(&manifest).unwrap();
        assert_eq!(
            FaceCropping::read_beside(&manifest).unwrap(),
            Some(mtcnn_aligned())
        );
    }

    #[test]
    fn a_broken_record_is_an_error_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("manifest.csv");
        std::fs::write(dir.path().join(FACES_FILE), "{\"detector\": 3}").unwrap();
        let message = FaceCropping::read_beside(&manifest)
            .unwrap_err()
            .to_string();
        assert!(message.contains(FACES_FILE), "{message}");
    }

    #[test]
    fn differences_name_each_changed_choice() {
        let trained = mtcnn_aligned();
        assert!(trained.differences(&mtcnn_aligned()).is_empty());
        let other = FaceCropping {
            detector: "seetaface".into(),
            align: "none".into(),
            margin: Some(0.3),
        };
        assert_eq!(
            trained.differences(&other),
            [
                "detector seetaface instead of mtcnn",
                "alignment none instead of landmarks",
                "margin 0.3 instead of 0.2"
            ]
        );
    }
}
