//! Evaluation: metrics, reports, and the cross-domain protocol.

pub mod metrics;
pub mod report;
pub mod table;
