//! A minimal reader for ONNX model files: the graph (nodes, their attributes, inputs and
//! outputs) and its float initialisers. Only what weight conversion needs; running a
//! graph is not supported.
//!
//! The messages are hand-written `prost` declarations of the parts of `onnx.proto` we
//! read, with the field numbers of onnx.proto (github.com/onnx/onnx, onnx/onnx.proto).
//! Fields not declared here are skipped by the decoder.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Empty for the default `ai.onnx` domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// The exporter's scope path, e.g. `/backbone/encoder/layer.0/mlp/fc1/MatMul`.
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// A tensor: an initialiser or a constant. Data is in `raw_data` (little-endian) or in
/// the typed field of its `data_type` (`float_data` for FLOAT).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// 1 = EXTERNAL: the data lives in a separate file (not supported here).
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One dimension: a fixed size (`dim_value`) or a symbolic one (`dim_param`, e.g. `batch`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// `TensorProto.DataType.FLOAT`.
pub const DATA_TYPE_FLOAT: i32 = 1;

/// A decoded model file: its graph and the facts about it worth recording.
pub struct Model {
    /// The opset version of the default (`ai.onnx`) domain, when declared.
    pub opset: Option<i64>,
    /// Producer name and version, e.g. `pytorch 2.1.0`.
    pub producer: String,
    pub graph: GraphProto,
}

/// Reads and decodes an ONNX model file.
pub fn read_model(path: &Path) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_model(&bytes).map_err(|message| Error::weights(path.display().to_string(), message))
}

/// Decodes an ONNX model from its bytes; the error says why it is not one.
pub fn decode_model(bytes: &[u8]) -> std::result::Result<Model, String> {
    let model = <ModelProto as prost::Message>::decode(bytes)
        .map_err(|e| format!("not an ONNX model file (protobuf decoding failed: {e})"))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    let producer = format!("{} {}", model.producer_name, model.producer_version)
        .trim()
        .to_string();
    let graph = model
        .graph
        .ok_or_else(|| "an ONNX model without a graph".to_string())?;
    Ok(Model {
        opset,
        producer,
        graph,
    })
}

impl NodeProto {
    pub fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }

    /// A string attribute, or `default` when the node does not set it.
    pub fn string_attribute(&self, name: &str, default: &str) -> String {
        self.attribute(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }
}

impl TensorProto {
    /// The shape, checked to be non-negative.
    pub fn shape(&self) -> std::result::Result<Vec<usize>, String> {
        self.dims
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| format!("tensor {} has dimension {d}", self.name))
            })
            .collect()
    }

    /// The values of a FLOAT tensor, from `raw_data` (little-endian) or `float_data`.
    pub fn f32_values(&self) -> std::result::Result<Vec<f32>, String> {
        if self.data_location == 1 {
            return Err(format!(
                "tensor {} keeps its data in an external file, which is not supported; \
                 re-save the model with the data inside (onnx.save(..., save_as_external_data=False))",
                self.name
            ));
        }
        if self.data_type != DATA_TYPE_FLOAT {
            return Err(format!(
                "tensor {} has ONNX data type {}, only FLOAT (1) is supported",
                self.name, self.data_type
            ));
        }
        let count: usize = self.shape()?.iter().product();
        let values: Vec<f32> = if self.raw_data.is_empty() {
            self.float_data.clone()
        } else {
            self.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        if values.len() != count || (!self.raw_data.is_empty() && self.raw_data.len() != 4 * count)
        {
            return Err(format!(
                "tensor {} has shape {:?} ({count} values) but holds {} bytes of raw data and {} floats",
                self.name,
                self.dims,
                self.raw_data.len(),
                self.float_data.len()
            ));
        }
        Ok(values)
    }

    /// The tensor as an f32 candle tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> std::result::Result<Tensor, String> {
        let shape = self.shape()?;
        let values = self.f32_values()?;
        Tensor::from_vec(values, shape, device).map_err(|e| format!("tensor {}: {e}", self.name))
    }
}

impl ValueInfoProto {
    /// The tensor shape with symbolic dimensions as `None`; `None` when no shape is given.
    pub fn shape(&self) -> Option<Vec<Option<i64>>> {
        let shape = self.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?;
        Some(shape.dim.iter().map(|d| d.dim_value).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn tensor(name: &str, dims: Vec<i64>, values: &[f32], raw: bool) -> TensorProto {
        TensorProto {
            dims,
            data_type: DATA_TYPE_FLOAT,
            float_data: if raw { vec![] } else { values.to_vec() },
            name: name.to_string(),
            raw_data: if raw {
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            } else {
                vec![]
            },
            data_location: 0,
        }
    }

    #[test]
    fn round_trips_a_graph_with_raw_and_float_data_initialisers() {
        let model = ModelProto {
            ir_version: 7,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 14,
            }],
            producer_name: "test".into(),
            producer_version: "1".into(),
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    input: vec!["x".into(), "w".into()],
                    output: vec!["y".into()],
                    name: "/layer/MatMul".into(),
                    op_type: "MatMul".into(),
                    attribute: vec![AttributeProto {
                        name: "mode".into(),
                        s: b"cubic".to_vec(),
                        ..Default::default()
                    }],
                }],
                name: "g".into(),
                initializer: vec![
                    tensor("w", vec![2, 3], &[1., 2., 3., 4., 5., 6.], true),
                    tensor("b", vec![3], &[-1., 0.5, 7.], false),
                ],
                input: vec![],
                output: vec![],
            }),
        };
        let decoded = decode_model(&model.encode_to_vec()).unwrap();
        assert_eq!(decoded.opset, Some(14));
        assert_eq!(decoded.producer, "test 1");
        let graph = &decoded.graph;
        assert_eq!(graph.node[0].string_attribute("mode", "nearest"), "cubic");
        assert_eq!(graph.node[0].string_attribute("other", "x"), "x");
        let w = graph.initializer[0].to_tensor(&Device::Cpu).unwrap();
        assert_eq!(w.dims(), &[2, 3]);
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            vec![vec![1., 2., 3.], vec![4., 5., 6.]]
        );
        assert_eq!(
            graph.initializer[1].f32_values().unwrap(),
            vec![-1., 0.5, 7.]
        );
    }

    #[test]
    fn refuses_wrong_sizes_types_and_non_onnx_bytes() {
        let mut short = tensor("w", vec![2, 2], &[1., 2., 3.], true);
        assert!(short.f32_values().unwrap_err().contains("holds 12 bytes"));
        short.data_type = 7;
        assert!(short.f32_values().unwrap_err().contains("data type 7"));
        assert!(decode_model(b"\xff\xff\xff not protobuf").is_err());
        let no_graph = decode_model(&ModelProto::default().encode_to_vec());
        assert!(no_graph.is_err_and(|e| e.contains("without a graph")));
    }
}
