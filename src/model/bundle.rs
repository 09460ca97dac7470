//! The model bundle: ONE `.safetensors` file holding a trained model's tensors and, in its
//! metadata, everything needed to use it: the encoder it expects (id and weights
//! fingerprint), the preprocessing, the class names, the model options and the training
//! configuration, and how the training faces were cut when gfer cut them. `eval`,
//! `predict` and `serve` all read this file.

use crate::backbone::Encoder;
use crate::data::FaceCropping;
use crate::error::{Error, Result};
use crate::formats::tensorfile;
use crate::image::Preprocess;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Version of the bundle layout; bumped when a reader of the old layout would misread it.
pub const FORMAT_VERSION: u32 = 1;
/// The metadata key that marks a file as a gfer bundle and holds [`BundleMeta`] as JSON.
const META_KEY: &str = "gfer_bundle";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BundleMeta {
    pub format_version: u32,
    pub gfer_version: String,
    /// Encoder id, e.g. `clip-vit-b32` or `dinov2-small`.
    pub backbone: String,
    /// Fingerprint of the frozen encoder weights the model was trained on.
    pub backbone_fingerprint: String,
    pub feature_dim: usize,
    pub preprocess: Preprocess,
    /// Class names in output order.
    pub classes: Vec<String>,
    /// The model's architecture and options (mask generator, head flags), as written by
    /// the model that saved it.
    pub model: serde_json::Value,
    /// The training configuration that produced these weights.
    pub training: serde_json::Value,
    /// How the training faces were cut from their photos, when gfer cut them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<FaceCropping>,
}

pub struct Bundle {
    /// Where it was loaded from (for error messages); empty for a bundle built in memory.
    pub origin: String,
    pub meta: BundleMeta,
    pub tensors: HashMap<String, Tensor>,
}

impl Bundle {
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| Error::config(format!("bundle metadata: {e}")))?;
        tensorfile::save(
            path,
            &self.tensors,
            &BTreeMap::from([(META_KEY.to_string(), json)]),
        )
    }

    pub fn load(path: &Path, device: &Device) -> Result<Bundle> {
        let display = path.display().to_string();
        let file = tensorfile::load(path, device).map_err(|e| Error::Bundle {
            path: display.clone(),
            message: e.to_string(),
        })?;
        let json = file.metadata.get(META_KEY).ok_or_else(|| Error::Bundle {
            path: display.clone(),
            message: "a safetensors file, but not a gfer model bundle (no gfer_bundle \
                      metadata); bundles are written by `gfer train`"
                .to_string(),
        })?;
        let meta: BundleMeta = serde_json::from_str(json).map_err(|e| Error::Bundle {
            path: display.clone(),
            message: format!("unreadable bundle metadata: {e}"),
        })?;
        if meta.format_version > FORMAT_VERSION {
            return Err(Error::Bundle {
                path: display,
                message: format!(
                    "bundle format {} is newer than this gfer understands ({FORMAT_VERSION}); \
                     upgrade gfer",
                    meta.format_version
                ),
            });
        }
        Ok(Bundle {
            origin: display,
            meta,
            tensors: file.tensors,
        })
    }

    /// Refuses an encoder other than the one the model was trained on.
    pub fn check_encoder(&self, encoder: &dyn Encoder) -> Result<()> {
        let meta = &self.meta;
        let mismatch = if encoder.id() != meta.backbone {
            Some(format!(
                "was trained on backbone {} but the encoder given is {}",
                meta.backbone,
                encoder.id()
            ))
        } else if encoder.fingerprint() != meta.backbone_fingerprint {
            Some(format!(
                "was trained on {} weights with fingerprint {}, but the weights given have \
                 fingerprint {}: pass the same encoder weights used for training",
                meta.backbone,
                meta.backbone_fingerprint,
                encoder.fingerprint()
            ))
        } else {
            None
        };
        match mismatch {
            Some(message) => Err(Error::Bundle {
                path: self.origin.clone(),
                message,
            }),
            None => Ok(()),
        }
    }

    /// A named tensor, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::Bundle {
            path: self.origin.clone(),
            message: format!("tensor {name} is missing from the bundle"),
        })
    }
}
