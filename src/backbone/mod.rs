//! Frozen image encoders ("fixed face models"): CLIP and DINOv2 behind one trait.

pub mod dinov2;
pub mod weights;

use crate::error::Result;
use candle_core::Tensor;

/// A frozen image encoder: preprocessed pixels in, one feature vector per image out.
pub trait Encoder: Send + Sync {
    /// Stable identifier of the architecture, e.g. `clip-vit-b32` or `dinov2-small`.
    fn id(&self) -> &str;
    /// Width D of the output feature.
    fn dim(&self) -> usize;
    /// Side of the square input the encoder expects (224, or 336 for ViT-L/14-336).
    fn input_size(&self) -> usize;
    /// Fingerprint of the frozen weights (see [`fingerprint_tensors`]); caches and model
    /// bundles record it so features of different weights are never mixed.
    fn fingerprint(&self) -> &str;
    /// `[B,3,S,S]` preprocessed pixels -> `[B,D]` f32 features.
    fn encode(&self, pixels: &Tensor) -> Result<Tensor>;
}

/// A content fingerprint of a set of weights that does not depend on the file format
/// they came from: blake3 over the names, shapes and f32 values in name order. The first
/// 16 hex digits are kept.
pub fn fingerprint_tensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<String> {
    let mut named: Vec<(&str, &Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = blake3::Hasher::new();
    for (name, tensor) in named {
        hasher.update(name.as_bytes());
        for d in tensor.dims() {
            hasher.update(&(*d as u64).to_le_bytes());
        }
        let values = tensor
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for v in values {
            hasher.update(&v.to_le_bytes());
        }
    }
    Ok(hasher.finalize().to_hex()[..16].to_string())
}
