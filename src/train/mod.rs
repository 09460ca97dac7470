//! Training: a whole run from a configuration ([`run`]: open the data, build the model,
//! write the run folder, train, report), the loop over epochs with checkpoints and exact
//! resume ([`fit`]), one optimisation step ([`step`], by hand in [`fused`]), the optimiser
//! ([`optim`]), the data paths (the full recipe on [`pixels`]; fast mode on the feature
//! [`cache`] through [`cached_source`]), the run folder ([`run_folder`]) and the seeded
//! random streams ([`rng`]).
//!
//! In the layers: above the model and evaluation, below the experiments and the CLI.

pub mod cache;
pub mod cached_source;
pub mod fit;
pub mod fused;
pub mod optim;
pub mod pixels;
pub mod rng;
pub mod run;
pub mod run_folder;
pub mod step;
