//! gfer: generalizable facial expression recognition (CAFE, ECCV 2024) in Rust.
//!
//! The data flow: data set -> [`image`] preprocessing -> frozen [`backbone::Encoder`]
//! feature -> CAFE model -> model bundle -> evaluation, protocol, prediction, serving.

pub mod assets;
pub mod backbone;
pub mod data;
pub mod detect;
pub mod device;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod formats;
pub mod image;
pub mod kernels;
pub mod labels;
pub mod model;
pub mod predict;
pub mod serve;
pub mod train;

pub use error::{Error, ErrorKind, Result};
pub use labels::Expression;
