//! Experiments: runs that train and evaluate many models. The cross-domain protocol
//! ([`protocol`]), the offline demonstration ([`demo`]) with the stand-in domains it
//! builds ([`domains`]), and the throughput benchmarks ([`bench`]).
//! The pinned third-party files they use come from [`crate::assets`].
//!
//! In the layers: above training, evaluation and prediction, below the command line.

pub mod bench;
pub mod demo;
pub mod domains;
pub mod protocol;
