//! The vocabulary that training, evaluation and inference share: the inputs of one
//! forward pass ([`Batch`]) and what a trainable model offers ([`Trainable`]).

use crate::error::Result;
use crate::model::{CafeConfig, CafeLosses, Linear, NamedVar};
use candle_core::Tensor;
use std::collections::HashMap;

/// The inputs of one forward pass: whatever the model reads (pixels, frozen features,
/// cached mask-generator inputs) and the labels [B] (u32; zeros at inference).
pub struct Batch {
    pub images: Option<Tensor>,
    pub features: Option<Tensor>,
    pub mask_input: Option<Tensor>,
    pub labels: Tensor,
}

/// A model the training loop can train and evaluation can score.
pub trait Trainable {
    fn train_losses(&self, batch: &Batch, drop: &Tensor) -> Result<CafeLosses>;
    fn logits(&self, batch: &Batch) -> Result<Tensor>;
    fn trainable_vars(&self) -> Vec<NamedVar>;
    /// Kept but not trained (BatchNorm running statistics, a frozen ResNet).
    fn buffers(&self) -> Vec<NamedVar>;
    /// Width of the frozen feature (the drop vector's length).
    fn feature_dim(&self) -> usize;
    fn classes(&self) -> usize;
    fn drop_per_group(&self) -> usize;
    /// The model as plain layers, when its training step can be written out by hand on
    /// host buffers (fast mode's MLP models): see `train::fused`.
    fn host_layers(&self) -> Option<HostLayers> {
        None
    }
}

/// A model made of linear layers only: an MLP mask generator on a cached input (empty:
/// no generator) and either CAFE's head or a plain FC on the frozen feature.
pub struct HostLayers {
    /// The mask generator's linear layers, input side first, ReLU between them.
    pub generator: Vec<Linear>,
    /// A ReLU after the generator's last layer too (the authors' restricted mask).
    pub final_relu: bool,
    pub fc: Linear,
    /// CAFE's head and losses; `None` for a plain classifier on the frozen feature.
    pub cafe: Option<CafeConfig>,
}

/// Every tensor of the model by name: the trained ones and the kept ones.
pub fn model_tensors(model: &dyn Trainable) -> Result<HashMap<String, Tensor>> {
    Ok(model
        .trainable_vars()
        .into_iter()
        .chain(model.buffers())
        .map(|(name, var)| (name, var.as_detached_tensor()))
        .collect())
}

/// Index of the largest value (the first of equal ones, as PyTorch's `argmax`).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}
