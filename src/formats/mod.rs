//! File formats gfer reads and writes, independent of any model: every file written
//! atomically ([`write_atomically`]) and locked against other processes ([`FileLock`]),
//! safetensors files with metadata ([`tensorfile`]), PyTorch checkpoints ([`pytorch`]), and
//! the ONNX graphs that weight conversion reads ([`onnx`]). The bottom layer: nothing
//! here knows a model.

mod atomic;
mod lock;
pub mod onnx;
pub mod pytorch;
pub mod tensorfile;

pub use atomic::{write_atomically, write_file_atomically};
pub use lock::FileLock;
