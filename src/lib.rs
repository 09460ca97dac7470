//! gfer: generalizable facial expression recognition (CAFE, ECCV 2024) in Rust.
//!
//! The data flow: data set -> [`image`] preprocessing -> frozen [`backbone::Encoder`]
//! feature -> CAFE model -> model bundle -> evaluation, protocol, prediction, serving.

pub mod backbone;
pub mod bench;
pub mod bundle;
pub mod data;
pub mod demo;
pub mod detect;
pub mod domains;
pub mod draw;
pub mod error;
pub mod eval;
pub mod features;
pub mod image;
pub mod inference;
pub mod labels;
mod matmul;
pub mod model;
pub mod onnx;
pub mod predict;
pub mod serve;
pub mod tensorfile;
pub mod train;

pub use error::{Error, Result};
pub use labels::Expression;
