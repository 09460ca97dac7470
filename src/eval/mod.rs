//! Evaluation: scoring a model on labelled data ([`evaluate`]), the metrics ([`metrics`]),
//! and the reports they are written as ([`table`], [`report`]). Beside training in the
//! layers: it uses the model layer and below; training uses it for its held-out accuracy.

pub mod evaluate;
pub mod metrics;
pub mod precision;
pub mod report;
pub mod table;

pub use evaluate::{evaluate, evaluate_images, EvalSource};
