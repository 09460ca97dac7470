//! The authors' optimiser and schedule: PyTorch `Adam(weight_decay=...)` (L2 decay added
//! to the gradient, not AdamW) and `ExponentialLR`, stepped once per epoch.
//!
//! The state (both moments of every parameter, its step count, the current learning rate)
//! is saved to and restored from a safetensors file, so that training resumes exactly.

use crate::error::{Error, Result};
use crate::formats::tensorfile::{self, TensorFile};
use crate::kernels::AdamConstants;
use crate::model::NamedVar;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Adam's hyper-parameters; the defaults are the authors' recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

struct Param {
    name: String,
    var: candle_core::Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates applied so far; PyTorch keeps one count per parameter and skips a
    /// parameter without a gradient.
    step: u64,
}

/// PyTorch's single-tensor Adam, step for step:
///
/// ```text
/// g  = grad + weight_decay * p
/// m  = m + (1 - beta1) (g - m)              (lerp)
/// v  = beta2 v + (1 - beta2) g^2
/// p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// ```
pub struct Adam {
    cfg: AdamConfig,
    params: Vec<Param>,
}

impl Adam {
    pub fn new(vars: Vec<NamedVar>, cfg: AdamConfig) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                Ok(Param {
                    exp_avg: var.zeros_like()?,
                    exp_avg_sq: var.zeros_like()?,
                    name,
                    var,
                    step: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, params })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        for param in &mut self.params {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                continue;
            };
            let p = param.var.as_detached_tensor();
            let grad = if weight_decay != 0.0 {
                (grad + (&p * weight_decay)?)?
            } else {
                grad.clone()
            };
            param.step += 1;
            let t = param.step as f64;
            param.exp_avg = (&param.exp_avg + ((&grad - &param.exp_avg)? * (1.0 - beta1))?)?;
            param.exp_avg_sq = ((&param.exp_avg_sq * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let step_size = lr / (1.0 - beta1.powf(t));
            let bias_correction2_sqrt = (1.0 - beta2.powf(t)).sqrt();
            let denom = ((param.exp_avg_sq.sqrt()? / bias_correction2_sqrt)? + eps)?;
            let update = ((&param.exp_avg / denom)? * step_size)?;
            param.var.set(&(p - update)?)?;
        }
        Ok(())
    }

    /// The moments and step count of parameter `name`.
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor, u64)> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| (&p.exp_avg, &p.exp_avg_sq, p.step))
    }

    /// Replaces the moments and step count of parameter `name` (after steps computed
    /// outside candle, see [`crate::train::fused`]).
    pub fn set_moments(
        &mut self,
        name: &str,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        step: u64,
    ) -> Result<()> {
        let param = self
            .params
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::config(format!("the optimiser does not hold {name}")))?;
        let (device, dtype) = (param.var.device().clone(), param.var.dtype());
        param.exp_avg = exp_avg.to_device(&device)?.to_dtype(dtype)?;
        param.exp_avg_sq = exp_avg_sq.to_device(&device)?.to_dtype(dtype)?;
        param.step = step;
        Ok(())
    }

    /// The optimiser state as tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`, `step.NAME` as a
    /// one-element i64) and metadata (the hyper-parameters, with the current `lr`).
    pub fn state(&self) -> Result<TensorFile> {
        let mut tensors = HashMap::with_capacity(3 * self.params.len());
        for p in &self.params {
            tensors.insert(format!("exp_avg.{}", p.name), p.exp_avg.clone());
            tensors.insert(format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone());
            let step = Tensor::new(&[p.step as i64], &Device::Cpu)?;
            tensors.insert(format!("step.{}", p.name), step);
        }
        let metadata = BTreeMap::from([
            ("optimizer".to_string(), "adam".to_string()),
            ("lr".to_string(), self.cfg.lr.to_string()),
            ("beta1".to_string(), self.cfg.beta1.to_string()),
            ("beta2".to_string(), self.cfg.beta2.to_string()),
            ("eps".to_string(), self.cfg.eps.to_string()),
            (
                "weight_decay".to_string(),
                self.cfg.weight_decay.to_string(),
            ),
        ]);
        Ok(TensorFile { tensors, metadata })
    }

    /// Restores a state written by [`Adam::state`] for the same parameters; `source`
    /// names the file in errors.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        metadata: &BTreeMap<String, String>,
        source: &str,
    ) -> Result<()> {
        let number = |key: &str| -> Result<f64> {
            let text = metadata
                .get(key)
                .ok_or_else(|| Error::weights(source, format!("optimiser state has no `{key}`")))?;
            text.parse().map_err(|_| {
                Error::weights(source, format!("optimiser `{key}` is not a number: {text}"))
            })
        };
        let cfg = AdamConfig {
            lr: number("lr")?,
            beta1: number("beta1")?,
            beta2: number("beta2")?,
            eps: number("eps")?,
            weight_decay: number("weight_decay")?,
        };
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let get = |kind: &str| -> Result<&Tensor> {
                let key = format!("{kind}.{}", p.name);
                tensors
                    .get(&key)
                    .ok_or_else(|| Error::weights(source, format!("optimiser state lacks {key}")))
            };
            let exp_avg = get("exp_avg")?;
            let exp_avg_sq = get("exp_avg_sq")?;
            for (kind, t) in [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
                if t.shape() != p.var.shape() {
                    return Err(Error::weights(
                        source,
                        format!(
                            "{kind}.{} has shape {:?}, the parameter {:?}",
                            p.name,
                            t.dims(),
                            p.var.dims()
                        ),
                    ));
                }
            }
            let step = get("step")?.flatten_all()?.to_vec1::<i64>()?;
            let step = match step.as_slice() {
                [s] if *s >= 0 => *s as u64,
                _ => {
                    return Err(Error::weights(
                        source,
                        format!("step.{} is not one count", p.name),
                    ))
                }
            };
            let device = p.var.device();
            let dtype = p.var.dtype();
            restored.push((
                exp_avg.to_device(device)?.to_dtype(dtype)?,
                exp_avg_sq.to_device(device)?.to_dtype(dtype)?,
                step,
            ));
        }
        for (p, (exp_avg, exp_avg_sq, step)) in self.params.iter_mut().zip(restored) {
            p.exp_avg = exp_avg;
            p.exp_avg_sq = exp_avg_sq;
            p.step = step;
        }
        self.cfg = cfg;
        Ok(())
    }

    /// Writes the state to a safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = self.state()?;
        tensorfile::save(path, &state.tensors, &state.metadata)
    }

    /// Reads a state written by [`Adam::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let TensorFile { tensors, metadata } = tensorfile::load(path, &Device::Cpu)?;
        self.load_state(&tensors, &metadata, &path.display().to_string())
    }
}

/// [`Adam::step`]'s update of one parameter held in plain memory (`step` already counts
/// this update), with the same f32 operations in the same order as the tensor version:
/// the step's constants computed here, applied by [`crate::kernels::AdamConstants`].
pub fn update_slice(
    cfg: &AdamConfig,
    step: u64,
    value: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    let t = step as f64;
    let constants = AdamConstants {
        weight_decay: cfg.weight_decay as f32,
        one_minus_beta1: (1.0 - cfg.beta1) as f32,
        beta2: cfg.beta2 as f32,
        one_minus_beta2: (1.0 - cfg.beta2) as f32,
        // candle divides a tensor by a scalar as a multiplication by its inverse.
        inverse_bias_correction2_sqrt: (1.0 / (1.0 - cfg.beta2.powf(t)).sqrt()) as f32,
        eps: cfg.eps as f32,
        step_size: (cfg.lr / (1.0 - cfg.beta1.powf(t))) as f32,
    };
    constants.update(value, grad, exp_avg, exp_avg_sq);
}

/// PyTorch's `ExponentialLR`: each [`ExponentialLr::step`] (once per epoch) multiplies
/// the learning rate by `gamma`, as torch does (recursively, not in closed form).
#[derive(Clone, Copy, Debug)]
pub struct ExponentialLr {
    pub gamma: f64,
}

impl ExponentialLr {
    pub fn step(&self, optimizer: &mut Adam) {
        optimizer.set_lr(optimizer.lr() * self.gamma);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// torch 2.15: p = tensor([1.0, -2.0, 0.5]); Adam([p], lr=0.1, weight_decay=0.01);
    /// loss = (p**2 * [1, 2, 3]).sum() minimised for 3 steps.
    #[test]
    fn matches_pytorch_adam_with_weight_decay() -> Result<()> {
        let device = Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0, 0.5], &device)?;
        let cfg = AdamConfig {
            lr: 0.1,
            weight_decay: 0.01,
            ..AdamConfig::default()
        };
        let mut adam = Adam::new(vec![("p".into(), var.clone())], cfg)?;
        let scale = Tensor::new(&[1.0f32, 2.0, 3.0], &device)?;
        for _ in 0..3 {
            let loss = (var.as_tensor().sqr()? * &scale)?.sum_all()?;
            adam.step(&loss.backward()?)?;
        }
        let got = var.as_tensor().to_vec1::<f32>()?;
        let torch = [0.701586246f32, -1.70062339, 0.204871237];
        for (g, t) in got.iter().zip(torch) {
            assert!((g - t).abs() < 1e-6, "{got:?} vs {torch:?}");
        }
        Ok(())
    }

    #[test]
    fn saved_state_resumes_exactly() -> Result<()> {
        let device = Device::Cpu;
        let run = |split: Option<&Path>| -> Result<Vec<f32>> {
            let var = Var::new(&[0.3f32, -0.7, 1.1, 2.0], &device)?;
            let mut adam = Adam::new(vec![("w".into(), var.clone())], AdamConfig::default())?;
            let schedule = ExponentialLr { gamma: 0.9 };
            for step in 0..6 {
                if let (Some(path), 3) = (split, step) {
                    adam.save(path)?;
                    adam = Adam::new(vec![("w".into(), var.clone())], AdamConfig::default())?;
                    adam.load(path)?;
                }
                let loss = var.as_tensor().powf(3.0)?.sum_all()?;
                adam.step(&loss.backward()?)?;
                if step % 2 == 1 {
                    schedule.step(&mut adam);
                }
            }
            Ok(var.as_tensor().to_vec1::<f32>()?)
        };
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let straight = run(None)?;
        let resumed = run(Some(&dir.path().join("adam.safetensors")))?;
        assert_eq!(straight, resumed);
        Ok(())
    }
}
