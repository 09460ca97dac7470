//! CLIP's image tower (OpenAI's VisionTransformer), frozen, giving `encode_image`:
//! `ln_post(CLS) @ proj`, not normalised. This file is the architecture, under OpenAI's
//! tensor names; [`checkpoint`] reads the published checkpoint layouts into those names.
//!
//! Every layer uses QuickGELU (`x * sigmoid(1.702 x)`), as OpenAI's CLIP models (and
//! open_clip's `-quickgelu` ones) do.

mod checkpoint;

use super::{Backbone, Encoder};
use crate::error::{Error, Result};
use crate::kernels::{attention, FrozenLinear, LayerNorm, Precision};
use candle_core::{DType, Device, IndexOp, Tensor};
use std::collections::HashMap;

/// The shape of a CLIP vision tower.
///
/// Upstream: the arguments of `VisionTransformer`, <https://github.com/openai/CLIP/blob/main/clip/model.py>.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClipConfig {
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch (the stride of the patch-embedding convolution).
    pub patch_size: usize,
    /// Width W of the residual stream.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Attention heads per block (W / heads is the head width).
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp_width: usize,
    /// Width D of the projected output, `encode_image`.
    pub embed_dim: usize,
}

/// Every CLIP layer norm uses PyTorch's default epsilon.
const LAYER_NORM_EPS: f32 = 1e-5;

impl ClipConfig {
    pub fn vit_b32() -> Self {
        Self::base(224, 32)
    }

    pub fn vit_b16() -> Self {
        Self::base(224, 16)
    }

    pub fn vit_l14() -> Self {
        Self::large(224)
    }

    pub fn vit_l14_336() -> Self {
        Self::large(336)
    }

    fn base(image_size: usize, patch_size: usize) -> Self {
        Self {
            image_size,
            patch_size,
            width: 768,
            layers: 12,
            heads: 12,
            mlp_width: 3072,
            embed_dim: 512,
        }
    }

    fn large(image_size: usize) -> Self {
        Self {
            image_size,
            patch_size: 14,
            width: 1024,
            layers: 24,
            heads: 16,
            mlp_width: 4096,
            embed_dim: 768,
        }
    }

    /// The configuration of a named CLIP backbone; an error for a non-CLIP one.
    pub fn of_backbone(backbone: Backbone) -> Result<Self> {
        match backbone {
            Backbone::ClipVitB32 => Ok(Self::vit_b32()),
            Backbone::ClipVitB16 => Ok(Self::vit_b16()),
            Backbone::ClipVitL14 => Ok(Self::vit_l14()),
            Backbone::ClipVitL14_336 => Ok(Self::vit_l14_336()),
            #[allow(unreachable_patterns)]
            other => Err(Error::config(format!(
                "{} is not a CLIP backbone",
                other.id()
            ))),
        }
    }

    /// The named backbone with exactly this shape, if any.
    pub fn backbone(&self) -> Option<Backbone> {
        [
            Backbone::ClipVitB32,
            Backbone::ClipVitB16,
            Backbone::ClipVitL14,
            Backbone::ClipVitL14_336,
        ]
        .into_iter()
        .find(|b| Self::of_backbone(*b).ok().as_ref() == Some(self))
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Sequence length: one class token and grid x grid patches.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

impl std::fmt::Display for ClipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ViT (image {}, patch {}, width {}, {} layers, {} heads, MLP {}, output {})",
            self.image_size,
            self.patch_size,
            self.width,
            self.layers,
            self.heads,
            self.mlp_width,
            self.embed_dim
        )
    }
}

/// One residual attention block.
///
/// Upstream: `ResidualAttentionBlock`, <https://github.com/openai/CLIP/blob/main/clip/model.py>.
struct Block {
    ln_1: LayerNorm,
    qkv: FrozenLinear,
    out: FrozenLinear,
    ln_2: LayerNorm,
    fc: FrozenLinear,
    proj: FrozenLinear,
}

impl Block {
    /// Block `i`, taken from the canonical tensors, its linear layers in `precision`.
    fn new(t: &mut CanonicalTensors, i: usize, precision: Precision) -> Result<Self> {
        let b = format!("transformer.resblocks.{i}.");
        Ok(Block {
            ln_1: t.norm(&format!("{b}ln_1"))?,
            qkv: t.dense(
                &format!("{b}attn.in_proj_weight"),
                &format!("{b}attn.in_proj_bias"),
                precision,
            )?,
            out: t.dense(
                &format!("{b}attn.out_proj.weight"),
                &format!("{b}attn.out_proj.bias"),
                precision,
            )?,
            ln_2: t.norm(&format!("{b}ln_2"))?,
            fc: t.dense(
                &format!("{b}mlp.c_fc.weight"),
                &format!("{b}mlp.c_fc.bias"),
                precision,
            )?,
            proj: t.dense(
                &format!("{b}mlp.c_proj.weight"),
                &format!("{b}mlp.c_proj.bias"),
                precision,
            )?,
        })
    }

    /// `x` is `[B*T, W]`. With `cls_only`, only the class token's row of each image is
    /// computed (all tokens still serve as keys and values): `[B, W]` out. The last block
    /// needs no more, since `encode_image` reads the class token only.
    fn forward(&self, x: &Tensor, batch: usize, heads: usize, cls_only: bool) -> Result<Tensor> {
        let tokens = x.dim(0)? / batch;
        let qkv = self.qkv.forward(&self.ln_1.forward(x)?)?;
        let queries = if cls_only { 1 } else { tokens };
        let attended = attention(&qkv, batch, heads, queries)?;
        let x = if cls_only {
            class_rows(x, batch)?
        } else {
            x.clone()
        };
        let x = self.out.forward_residual(&attended, &x)?;
        let hidden = self.fc.forward_quick_gelu(&self.ln_2.forward(&x)?)?;
        self.proj.forward_residual(&hidden, &x)
    }
}

/// The class-token row of each image of a `[B*T, W]` sequence batch: `[B, W]`.
fn class_rows(x: &Tensor, batch: usize) -> Result<Tensor> {
    let (rows, width) = x.dims2()?;
    Ok(x.reshape((batch, rows / batch, width))?
        .i((.., 0))?
        .contiguous()?)
}

/// CLIP's image tower with frozen weights.
///
/// Upstream: `VisionTransformer`, <https://github.com/openai/CLIP/blob/main/clip/model.py>.
pub struct ClipVisionEncoder {
    config: ClipConfig,
    id: String,
    fingerprint: String,
    device: Device,
    precision: Precision,
    /// The patch-embedding convolution as a linear map of flattened patches `[3*P*P] -> [W]`.
    patch_embedding: FrozenLinear,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    /// `[W, D]`.
    proj: Tensor,
}

/// The tower's tensors under the canonical names (OpenAI's, without `visual.`), taken out
/// one by one as the tower is built.
struct CanonicalTensors(HashMap<String, Tensor>);

impl CanonicalTensors {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.0
            .remove(name)
            .ok_or_else(|| Error::config(format!("canonical CLIP tensor {name} missing")))
    }

    fn norm(&mut self, prefix: &str) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.take(&format!("{prefix}.weight"))?,
            self.take(&format!("{prefix}.bias"))?,
            LAYER_NORM_EPS,
        ))
    }

    fn dense(&mut self, weight: &str, bias: &str, precision: Precision) -> Result<FrozenLinear> {
        FrozenLinear::new(self.take(weight)?, self.take(bias)?, precision)
    }
}

impl ClipVisionEncoder {
    /// The tower from its tensors under the canonical names; `fingerprint` is theirs. The
    /// linear layers (the blocks' and the patch embedding) run in `precision`.
    fn new(
        config: ClipConfig,
        fingerprint: String,
        device: Device,
        tensors: HashMap<String, Tensor>,
        precision: Precision,
    ) -> Result<Self> {
        let mut t = CanonicalTensors(tensors);
        let blocks = (0..config.layers)
            .map(|i| Block::new(&mut t, i, precision))
            .collect::<Result<Vec<_>>>()?;
        let patch_dim = 3 * config.patch_size * config.patch_size;
        let patch_weight = t.take("conv1.weight")?;
        Ok(Self {
            id: config
                .backbone()
                .map_or("clip-vit-custom", |b| b.id())
                .to_string(),
            fingerprint,
            device,
            precision,
            patch_embedding: FrozenLinear::new(
                patch_weight.reshape((config.width, patch_dim))?,
                // CLIP's patch convolution has no bias.
                Tensor::zeros(config.width, patch_weight.dtype(), patch_weight.device())?,
                precision,
            )?,
            class_embedding: t.take("class_embedding")?,
            positional_embedding: t.take("positional_embedding")?,
            proj: t.take("proj")?,
            ln_pre: t.norm("ln_pre")?,
            ln_post: t.norm("ln_post")?,
            blocks,
            config,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// `[B,3,S,S]` pixels -> `[B*T, W]` patch and class-token embeddings.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (batch, channels, height, width) = pixels.dims4()?;
        if channels != 3 || height != c.image_size || width != c.image_size {
            return Err(Error::config(format!(
                "{}: expected pixels [B, 3, {s}, {s}], got {:?}",
                self.id,
                pixels.dims(),
                s = c.image_size
            )));
        }
        let (g, p, w) = (c.grid(), c.patch_size, c.width);
        // The stride-P convolution is one matrix product over non-overlapping patches.
        let patches = pixels
            .reshape((batch, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch * g * g, 3 * p * p))?;
        let patches = self
            .patch_embedding
            .forward(&patches)?
            .reshape((batch, g * g, w))?;
        let class = self
            .class_embedding
            .reshape((1, 1, w))?
            .broadcast_as((batch, 1, w))?;
        let tokens =
            Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.positional_embedding)?;
        Ok(tokens.reshape((batch * c.tokens(), w))?)
    }
}

impl Encoder for ClipVisionEncoder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.config.embed_dim
    }

    fn input_size(&self) -> usize {
        self.config.image_size
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.forward(pixels, None)?.0)
    }

    fn layers(&self) -> usize {
        self.config.layers
    }

    fn token_dim(&self) -> usize {
        self.config.width
    }

    fn encode_with_tokens(&self, pixels: &Tensor, layer: usize) -> Result<(Tensor, Tensor)> {
        super::check_layer(self, layer)?;
        let (feature, tokens) = self.forward(pixels, Some(layer))?;
        let tokens = tokens.ok_or_else(|| Error::config("no tokens were kept"))?;
        Ok((feature, tokens))
    }
}

impl ClipVisionEncoder {
    /// `encode_image`, and with `layer` the mean patch token after that block (from 1).
    fn forward(&self, pixels: &Tensor, layer: Option<usize>) -> Result<(Tensor, Option<Tensor>)> {
        let pixels = pixels.to_device(&self.device)?.to_dtype(DType::F32)?;
        let batch = pixels.dim(0)?;
        let mut x = self.ln_pre.forward(&self.embed(&pixels)?)?;
        let mut kept = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let last = i + 1 == self.blocks.len();
            // The last block computes the class token only, unless its tokens are kept.
            x = block.forward(&x, batch, self.config.heads, last && layer != Some(i + 1))?;
            if layer == Some(i + 1) {
                let width = x.dim(1)?;
                let tokens = x.reshape((batch, x.dim(0)? / batch, width))?;
                kept = Some(super::mean_patch_token(&tokens)?);
                if last {
                    x = class_rows(&x, batch)?;
                }
            }
        }
        Ok((self.ln_post.forward(&x)?.matmul(&self.proj)?, kept))
    }
}
