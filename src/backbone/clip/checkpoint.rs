//! The published layouts of CLIP checkpoints, and reading them into the tower's
//! canonical names. Checkpoints load by their published tensor names, whichever of the two
//! layouts they use (detected from the names):
//! - Hugging Face `CLIPModel` / `CLIPVisionModelWithProjection`: `vision_model.*` with
//!   separate q/k/v projections, and `visual_projection.weight` `[D, W]`;
//! - OpenAI / open_clip state dicts and OpenAI's TorchScript archives: `visual.*` with a
//!   fused `attn.in_proj_weight` `[3W, W]`, and `visual.proj` `[W, D]`.
//!
//! Both are converted to OpenAI's names (the canonical form, fingerprinted), so the same
//! weights give the same fingerprint whatever file they came from.

use super::{ClipConfig, ClipVisionEncoder};
use crate::backbone::{check_precision_device, fingerprint_tensors, Precision};
use crate::error::{Error, Result};
use crate::formats::pytorch;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// All published CLIP vision towers use 64-wide attention heads, which is how the head
/// count is recovered from a checkpoint (it has no tensor of its own).
const HEAD_WIDTH: usize = 64;

/// The two published naming schemes of CLIP checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    HuggingFace,
    OpenAi,
}

impl Layout {
    fn detect(names: &BTreeSet<&str>) -> Option<Self> {
        if names.iter().any(|n| n.starts_with("vision_model.")) {
            Some(Layout::HuggingFace)
        } else if names.iter().any(|n| n.starts_with("visual.")) {
            Some(Layout::OpenAi)
        } else {
            None
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Layout::HuggingFace => "Hugging Face layout",
            Layout::OpenAi => "OpenAI layout",
        }
    }

    /// Where the shape-defining tensors live: (patch embedding [W,3,P,P], position
    /// embedding [T,W], output projection, prefix of block N, first MLP matrix in a block).
    fn key_names(self) -> KeyNames {
        match self {
            Layout::HuggingFace => KeyNames {
                patch: "vision_model.embeddings.patch_embedding.weight",
                position: "vision_model.embeddings.position_embedding.weight",
                projection: "visual_projection.weight",
                projection_is_d_by_w: true,
                block_prefix: "vision_model.encoder.layers.",
                mlp_in: "mlp.fc1.weight",
            },
            Layout::OpenAi => KeyNames {
                patch: "visual.conv1.weight",
                position: "visual.positional_embedding",
                projection: "visual.proj",
                projection_is_d_by_w: false,
                block_prefix: "visual.transformer.resblocks.",
                mlp_in: "mlp.c_fc.weight",
            },
        }
    }

    /// Every tensor the tower needs, by its name in this layout, with its shape.
    fn expected(self, c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
        let (w, m, p, t, d) = (c.width, c.mlp_width, c.patch_size, c.tokens(), c.embed_dim);
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |name: String, shape: &[usize]| out.push((name, shape.to_vec()));
        match self {
            Layout::HuggingFace => {
                let v = "vision_model.";
                add(format!("{v}embeddings.class_embedding"), &[w]);
                add(
                    format!("{v}embeddings.patch_embedding.weight"),
                    &[w, 3, p, p],
                );
                add(format!("{v}embeddings.position_embedding.weight"), &[t, w]);
                for part in ["pre_layrnorm", "post_layernorm"] {
                    add(format!("{v}{part}.weight"), &[w]);
                    add(format!("{v}{part}.bias"), &[w]);
                }
                for i in 0..c.layers {
                    let b = format!("{v}encoder.layers.{i}.");
                    for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                        add(format!("{b}self_attn.{proj}.weight"), &[w, w]);
                        add(format!("{b}self_attn.{proj}.bias"), &[w]);
                    }
                    for norm in ["layer_norm1", "layer_norm2"] {
                        add(format!("{b}{norm}.weight"), &[w]);
                        add(format!("{b}{norm}.bias"), &[w]);
                    }
                    add(format!("{b}mlp.fc1.weight"), &[m, w]);
                    add(format!("{b}mlp.fc1.bias"), &[m]);
                    add(format!("{b}mlp.fc2.weight"), &[w, m]);
                    add(format!("{b}mlp.fc2.bias"), &[w]);
                }
                add("visual_projection.weight".into(), &[d, w]);
            }
            Layout::OpenAi => {
                for (name, shape) in canonical_shapes(c) {
                    add(format!("visual.{name}"), &shape);
                }
            }
        }
        out
    }
}

struct KeyNames {
    patch: &'static str,
    position: &'static str,
    projection: &'static str,
    projection_is_d_by_w: bool,
    block_prefix: &'static str,
    mlp_in: &'static str,
}

/// The canonical tensors (OpenAI's names without `visual.`) and their shapes.
fn canonical_shapes(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let (w, m, p, t, d) = (c.width, c.mlp_width, c.patch_size, c.tokens(), c.embed_dim);
    let mut out = vec![
        ("conv1.weight".to_string(), vec![w, 3, p, p]),
        ("class_embedding".into(), vec![w]),
        ("positional_embedding".into(), vec![t, w]),
        ("ln_pre.weight".into(), vec![w]),
        ("ln_pre.bias".into(), vec![w]),
        ("ln_post.weight".into(), vec![w]),
        ("ln_post.bias".into(), vec![w]),
        ("proj".into(), vec![w, d]),
    ];
    for i in 0..c.layers {
        let b = format!("transformer.resblocks.{i}.");
        let block = [
            ("ln_1.weight", vec![w]),
            ("ln_1.bias", vec![w]),
            ("attn.in_proj_weight", vec![3 * w, w]),
            ("attn.in_proj_bias", vec![3 * w]),
            ("attn.out_proj.weight", vec![w, w]),
            ("attn.out_proj.bias", vec![w]),
            ("ln_2.weight", vec![w]),
            ("ln_2.bias", vec![w]),
            ("mlp.c_fc.weight", vec![m, w]),
            ("mlp.c_fc.bias", vec![m]),
            ("mlp.c_proj.weight", vec![w, m]),
            ("mlp.c_proj.bias", vec![w]),
        ];
        out.extend(block.into_iter().map(|(n, s)| (format!("{b}{n}"), s)));
    }
    out
}

/// Infers the tower's shape from the shapes of a few tensors of a checkpoint.
fn infer_config(
    layout: Layout,
    shapes: &HashMap<&str, &[usize]>,
) -> std::result::Result<ClipConfig, String> {
    let keys = layout.key_names();
    let get = |name: &str, rank: usize| -> std::result::Result<&[usize], String> {
        match shapes.get(name) {
            Some(shape) if shape.len() == rank => Ok(shape),
            Some(shape) => Err(format!(
                "tensor {name} has shape {shape:?}, expected rank {rank}"
            )),
            None => Err(format!("tensor {name} is missing")),
        }
    };
    let patch = get(keys.patch, 4)?;
    let (width, patch_size) = (patch[0], patch[2]);
    if patch[1] != 3 || patch[3] != patch_size {
        return Err(format!(
            "tensor {} has shape {patch:?}, expected [W, 3, P, P]",
            keys.patch
        ));
    }
    let tokens = get(keys.position, 2)?[0];
    let grid = (1..=tokens).find(|g| g * g + 1 >= tokens).unwrap_or(0);
    if grid * grid + 1 != tokens {
        return Err(format!(
            "tensor {} holds {tokens} positions, not 1 + a square number of patches",
            keys.position
        ));
    }
    let projection = get(keys.projection, 2)?;
    let embed_dim = if keys.projection_is_d_by_w {
        projection[0]
    } else {
        projection[1]
    };
    let blocks: BTreeSet<usize> = shapes
        .keys()
        .filter_map(|n| {
            n.strip_prefix(keys.block_prefix)?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let layers = blocks.last().map_or(0, |last| last + 1);
    if layers == 0 {
        return Err(format!("no transformer blocks ({}N.*)", keys.block_prefix));
    }
    let mlp_width = shapes
        .get(format!("{}0.{}", keys.block_prefix, keys.mlp_in).as_str())
        .map_or(4 * width, |s| s[0]);
    if width % HEAD_WIDTH != 0 {
        return Err(format!(
            "width {width} is not a multiple of the {HEAD_WIDTH}-wide CLIP heads"
        ));
    }
    Ok(ClipConfig {
        image_size: grid * patch_size,
        patch_size,
        width,
        layers,
        heads: width / HEAD_WIDTH,
        mlp_width,
        embed_dim,
    })
}

/// Checks every tensor the tower needs; one message lists all that are missing or wrong.
fn check_shapes(
    layout: Layout,
    config: &ClipConfig,
    shapes: &HashMap<&str, &[usize]>,
) -> std::result::Result<(), String> {
    let problems: Vec<String> = layout
        .expected(config)
        .into_iter()
        .filter_map(|(name, expected)| match shapes.get(name.as_str()) {
            None => Some(format!("  {name}: expected {expected:?}, missing")),
            Some(found) if *found != expected.as_slice() => {
                Some(format!("  {name}: expected {expected:?}, found {found:?}"))
            }
            Some(_) => None,
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} tensor(s) missing or of the wrong shape:\n{}",
            problems.len(),
            problems.join("\n")
        ))
    }
}

/// Converts a checked checkpoint to the canonical (OpenAI, unprefixed) names in f32.
fn to_canonical(
    layout: Layout,
    config: &ClipConfig,
    mut tensors: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut take = |name: &str| -> Result<Tensor> {
        let tensor = tensors.remove(name).ok_or_else(|| {
            Error::config(format!(
                "tensor {name} vanished after its shape was checked"
            ))
        })?;
        Ok(tensor.to_dtype(DType::F32)?)
    };
    let mut out = HashMap::new();
    match layout {
        Layout::OpenAi => {
            for (name, _) in canonical_shapes(config) {
                let tensor = take(&format!("visual.{name}"))?;
                out.insert(name, tensor);
            }
        }
        Layout::HuggingFace => {
            let v = "vision_model.";
            let mut put = |name: &str, tensor: Tensor| out.insert(name.to_string(), tensor);
            put(
                "conv1.weight",
                take(&format!("{v}embeddings.patch_embedding.weight"))?,
            );
            put(
                "class_embedding",
                take(&format!("{v}embeddings.class_embedding"))?,
            );
            put(
                "positional_embedding",
                take(&format!("{v}embeddings.position_embedding.weight"))?,
            );
            for (ours, theirs) in [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")] {
                put(
                    &format!("{ours}.weight"),
                    take(&format!("{v}{theirs}.weight"))?,
                );
                put(&format!("{ours}.bias"), take(&format!("{v}{theirs}.bias"))?);
            }
            put("proj", take("visual_projection.weight")?.t()?.contiguous()?);
            for i in 0..config.layers {
                let (ours, theirs) = (
                    format!("transformer.resblocks.{i}."),
                    format!("{v}encoder.layers.{i}."),
                );
                for kind in ["weight", "bias"] {
                    let qkv = ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .map(|p| take(&format!("{theirs}self_attn.{p}.{kind}")))
                        .collect::<Result<Vec<_>>>()?;
                    let fused_name = if kind == "weight" {
                        "attn.in_proj_weight"
                    } else {
                        "attn.in_proj_bias"
                    };
                    put(&format!("{ours}{fused_name}"), Tensor::cat(&qkv, 0)?);
                    for (o, t) in [
                        ("attn.out_proj", "self_attn.out_proj"),
                        ("ln_1", "layer_norm1"),
                        ("ln_2", "layer_norm2"),
                        ("mlp.c_fc", "mlp.fc1"),
                        ("mlp.c_proj", "mlp.fc2"),
                    ] {
                        put(
                            &format!("{ours}{o}.{kind}"),
                            take(&format!("{theirs}{t}.{kind}"))?,
                        );
                    }
                }
            }
        }
    }
    Ok(out)
}

impl ClipVisionEncoder {
    /// Loads a checkpoint in any supported format and layout, inferring its shape; f32.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, None, device, Precision::F32)
    }

    /// Loads a checkpoint, its linear layers in `precision`; with `expected`, every
    /// tensor is checked against that shape.
    pub fn load_with(
        path: &Path,
        expected: Option<&ClipConfig>,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let tensors = pytorch::read_tensors(path, None, device)?;
        Self::from_tensors_with(tensors, expected, &path.display().to_string(), precision)
    }

    /// Builds the tower from named tensors (any layout) in f32; `origin` names them in
    /// errors.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &str) -> Result<Self> {
        Self::from_tensors_with(tensors, None, origin, Precision::F32)
    }

    /// As [`Self::from_tensors`], checked against `expected` when given, the blocks' linear
    /// layers in `precision`.
    pub fn from_tensors_with(
        tensors: HashMap<String, Tensor>,
        expected: Option<&ClipConfig>,
        origin: &str,
        precision: Precision,
    ) -> Result<Self> {
        // open_clip checkpoints saved from DistributedDataParallel prefix every name.
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(name, t)| {
                (
                    name.strip_prefix("module.")
                        .map(str::to_owned)
                        .unwrap_or(name),
                    t,
                )
            })
            .collect();
        let names: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
        let layout = Layout::detect(&names).ok_or_else(|| {
            Error::weights(
                origin,
                "not a CLIP checkpoint: no `vision_model.*` (Hugging Face) or `visual.*` (OpenAI, \
                 open_clip) tensors",
            )
        })?;
        let device = tensors
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        check_precision_device(precision, device.is_cpu())?;
        let shapes: HashMap<&str, &[usize]> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.dims()))
            .collect();
        let config = match expected {
            Some(config) => config.clone(),
            None => infer_config(layout, &shapes).map_err(|e| {
                Error::weights(
                    origin,
                    format!(
                        "cannot infer the CLIP tower's shape ({}): {e}",
                        layout.describe()
                    ),
                )
            })?,
        };
        let what = match config.backbone() {
            Some(b) => b.id().to_string(),
            None => config.to_string(),
        };
        check_shapes(layout, &config, &shapes).map_err(|e| {
            Error::weights(
                origin,
                format!("does not match CLIP {what} ({}): {e}", layout.describe()),
            )
        })?;
        drop(shapes);
        let canonical = to_canonical(layout, &config, tensors)?;
        let fingerprint = fingerprint_tensors(canonical.iter().map(|(n, t)| (n.as_str(), t)))?;
        Self::new(config, fingerprint, device, canonical, precision)
    }

    /// A tower of this shape with random weights (seeded), for benchmarks: uniform
    /// matrices of PyTorch's default scale, layer norms near identity; the blocks' linear
    /// layers in `precision`.
    pub fn random(
        config: &ClipConfig,
        seed: u64,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in Layout::OpenAi.expected(config) {
            let count: usize = shape.iter().product();
            let (centre, spread) = if name.contains(".ln_") && name.ends_with("weight") {
                (1.0, 0.1)
            } else {
                (
                    0.0,
                    1.0 / (shape.last().copied().unwrap_or(1) as f32).sqrt(),
                )
            };
            let values: Vec<f32> = (0..count)
                .map(|_| centre + spread * rng.gen_range(-1.0f32..1.0))
                .collect();
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Self::from_tensors_with(tensors, Some(config), "random weights", precision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::Backbone;

    fn shapes_of(list: &[(String, Vec<usize>)]) -> HashMap<&str, &[usize]> {
        list.iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect()
    }

    #[test]
    fn every_preset_is_inferred_from_its_shapes_in_both_layouts() {
        for backbone in [
            Backbone::ClipVitB32,
            Backbone::ClipVitB16,
            Backbone::ClipVitL14,
            Backbone::ClipVitL14_336,
        ] {
            let config = ClipConfig::of_backbone(backbone).unwrap();
            assert_eq!(config.image_size, backbone.input_size());
            for layout in [Layout::HuggingFace, Layout::OpenAi] {
                let list = layout.expected(&config);
                let inferred = infer_config(layout, &shapes_of(&list)).unwrap();
                assert_eq!(inferred.backbone(), Some(backbone), "{layout:?}");
            }
        }
    }

    #[test]
    fn a_wrong_and_a_missing_tensor_are_both_named_with_their_shapes() {
        let config = ClipConfig::vit_b32();
        let mut list = Layout::OpenAi.expected(&config);
        list.retain(|(n, _)| n != "visual.ln_post.bias");
        for (name, shape) in &mut list {
            if name == "visual.transformer.resblocks.3.mlp.c_fc.weight" {
                *shape = vec![3000, 768];
            }
        }
        let err = check_shapes(Layout::OpenAi, &config, &shapes_of(&list)).unwrap_err();
        assert!(
            err.contains("visual.ln_post.bias: expected [768], missing"),
            "{err}"
        );
        assert!(
            err.contains("visual.transformer.resblocks.3.mlp.c_fc.weight: expected [3072, 768], found [3000, 768]"),
            "{err}"
        );
        assert!(err.starts_with("2 tensor(s)"), "{err}");
    }

    #[test]
    fn a_position_table_that_is_not_a_square_grid_is_refused() {
        let mut list = Layout::OpenAi.expected(&ClipConfig::vit_b32());
        for (name, shape) in &mut list {
            if name == "visual.positional_embedding" {
                *shape = vec![48, 768];
            }
        }
        let err = infer_config(Layout::OpenAi, &shapes_of(&list)).unwrap_err();
        assert!(err.contains("48 positions"), "{err}");
    }
}
