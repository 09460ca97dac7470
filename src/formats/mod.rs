//! File formats gfer reads and writes, independent of any model: safetensors files with
//! metadata written atomically ([`tensorfile`]), PyTorch checkpoints ([`pytorch`]), and
//! the ONNX graphs that weight conversion reads ([`onnx`]).

pub mod onnx;
pub mod pytorch;
pub mod tensorfile;
