//! Training: one optimisation step of CAFE ([`train_step`]), the optimiser ([`optim`]),
//! the loop with checkpoints and resume ([`trainer`]), its data paths (full recipe on
//! [`pixels`], fast mode on the [`cache`] via [`fast`]), and a whole run ([`session`]).

pub mod cache;
pub mod cached_source;
pub mod fit;
pub mod fused;
pub mod optim;
pub mod pixels;
pub mod run;
pub mod run_folder;

use crate::error::Result;
use crate::model::{Cafe, CafeLosses};
use candle_core::{DType, Tensor};
use optim::Adam;

/// The scalar outcome of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    pub loss: f32,
    pub loss_cls: f32,
    pub loss_sep: f32,
    pub loss_div: f32,
    /// Training-mode FC predictions that match the labels.
    pub correct: usize,
}

/// One step of the authors' loop: forward in training mode (BatchNorm running statistics
/// move), the CAFE losses, backward, one Adam update. `drop` is this step's channel-drop
/// vector ([`crate::model::drop_vector`]).
pub fn train_step(
    model: &Cafe,
    optimizer: &mut Adam,
    images: &Tensor,
    features: &Tensor,
    labels: &Tensor,
    drop: &Tensor,
) -> Result<StepOutcome> {
    let losses = model.train_step_losses(images, features, labels, drop)?;
    backward_and_update(losses, labels, optimizer)
}

/// The backward pass of a step's losses, one Adam update, and the step's figures.
pub fn backward_and_update(
    losses: CafeLosses,
    labels: &Tensor,
    optimizer: &mut Adam,
) -> Result<StepOutcome> {
    let CafeLosses {
        logits,
        loss_cls,
        loss_sep,
        loss_div,
        loss,
    } = losses;
    optimizer.step(&loss.backward()?)?;
    let predicted = logits.argmax(1)?;
    let correct = predicted
        .eq(&labels.to_dtype(DType::U32)?)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize;
    let scalar = |t: &Tensor| -> Result<f32> { Ok(t.to_dtype(DType::F32)?.to_scalar()?) };
    Ok(StepOutcome {
        loss: scalar(&loss)?,
        loss_cls: scalar(&loss_cls)?,
        loss_sep: scalar(&loss_sep)?,
        loss_div: scalar(&loss_div)?,
        correct,
    })
}
