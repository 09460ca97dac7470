//! One optimisation step, two ways behind one trait. [`AutogradStep`]: the model's losses
//! through candle's autograd and one Adam update (any model, any device).
//! `train::fused::FusedStep`: the same step written out by hand on host buffers, for fast
//! mode's all-linear models on the CPU. The loop picks one (`train::fit`).
//!
//! A [`Step`] owns the optimiser and borrows the model; whatever reads either (evaluation,
//! checkpoints, bundles) goes through [`Step::synced`], so a step that keeps the
//! parameters in buffers of its own writes them back first and the loop cannot forget to.

use crate::error::Result;
use crate::model::{Batch, CafeLosses, Trainable};
use crate::train::optim::Adam;
use candle_core::{DType, Device, Tensor};

/// The scalar outcome of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    pub loss: f32,
    pub loss_cls: f32,
    pub loss_sep: f32,
    pub loss_div: f32,
    /// Training-mode predictions that match the labels.
    pub correct: usize,
}

/// The model and its optimiser with every update applied.
pub struct Synced<'a> {
    pub model: &'a dyn Trainable,
    pub adam: &'a mut Adam,
}

/// One optimisation step of a model: forward in training mode (BatchNorm running
/// statistics move), the losses, backward, one Adam update.
pub trait Step {
    /// `drop` is this step's channel-drop vector [D] ([`crate::model::drop_vector`]).
    fn step(&mut self, batch: &Batch, drop: &[f32]) -> Result<StepOutcome>;
    /// The model and the optimiser, up to date.
    fn synced(&mut self) -> Result<Synced<'_>>;
}

/// The step through candle's autograd.
pub struct AutogradStep<'m> {
    pub model: &'m dyn Trainable,
    pub adam: Adam,
    pub device: Device,
}

impl Step for AutogradStep<'_> {
    fn step(&mut self, batch: &Batch, drop: &[f32]) -> Result<StepOutcome> {
        let drop = Tensor::new(drop, &self.device)?;
        let losses = self.model.train_losses(batch, &drop)?;
        backward_and_update(losses, &batch.labels, &mut self.adam)
    }

    fn synced(&mut self) -> Result<Synced<'_>> {
        Ok(Synced {
            model: self.model,
            adam: &mut self.adam,
        })
    }
}

/// The backward pass of a step's losses, one Adam update, and the step's figures.
fn backward_and_update(
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
