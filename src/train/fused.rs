//! Fast mode's training step written out by hand. On cached features the model is an
//! MLP mask generator, the CAFE head and its losses: a few small matrix products per
//! step. Through candle's autograd each of the ~200 tensor operations of a step (forward,
//! backward, Adam) allocates and dispatches on its own, which costs several times the
//! arithmetic. Here the forward pass, the backward pass and Adam run on plain buffers:
//! the same operations in the same f32 order as the autograd path (which the parity tests
//! tie to PyTorch), checked against it step by step in the tests below.
//!
//! The parameters and Adam's moments are checked out of the model's variables into
//! buffers once, and written back whenever anything reads the model or the optimiser
//! ([`Step::synced`]): evaluation, checkpoints, bundles.

use crate::error::{Error, Result};
use crate::kernels::{strided_product, MatrixView, STRIDED_PRODUCT_MIN_PARALLEL_WORK};
use crate::model::{argmax, Batch, CafeConfig, HostLayers, Linear, NamedVar, Trainable};
use crate::train::optim::{self, Adam, AdamConfig};
use crate::train::step::{Step, StepOutcome, Synced};
use candle_core::{Device, Tensor};

/// One parameter in plain memory with its gradient and Adam state.
struct Param {
    name: String,
    var: candle_core::Var,
    dims: Vec<usize>,
    value: Vec<f32>,
    grad: Vec<f32>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    step: u64,
}

impl Param {
    fn check_out((name, var): &NamedVar, adam: &Adam) -> Result<Param> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let value = flat(var.as_tensor())?;
        let (exp_avg, exp_avg_sq, step) = adam.moments(name).ok_or_else(|| {
            Error::config(format!("the optimiser does not hold parameter {name}"))
        })?;
        Ok(Param {
            name: name.clone(),
            var: var.clone(),
            dims: var.dims().to_vec(),
            grad: vec![0.0; value.len()],
            value,
            exp_avg: flat(exp_avg)?,
            exp_avg_sq: flat(exp_avg_sq)?,
            step,
        })
    }

    fn write_back(&self, adam: &mut Adam) -> Result<()> {
        let tensor = |v: &[f32]| Tensor::from_slice(v, self.dims.as_slice(), &Device::Cpu);
        self.var.set(&tensor(&self.value)?)?;
        adam.set_moments(
            &self.name,
            tensor(&self.exp_avg)?,
            tensor(&self.exp_avg_sq)?,
            self.step,
        )
    }

    fn update(&mut self, cfg: &AdamConfig) {
        self.step += 1;
        optim::update_slice(
            cfg,
            self.step,
            &mut self.value,
            &self.grad,
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
        );
    }
}

/// A linear layer `y = x W^T + b` in plain memory, with its gradients and Adam state.
struct HostLinear {
    weight: Param,
    bias: Param,
    input: usize,
    output: usize,
}

impl HostLinear {
    fn check_out(layer: &Linear, adam: &Adam) -> Result<HostLinear> {
        let weight = Param::check_out(&layer.weight, adam)?;
        let bias = Param::check_out(&layer.bias, adam)?;
        let (output, input) = match weight.dims.as_slice() {
            [o, i] => (*o, *i),
            other => {
                return Err(Error::config(format!(
                    "{} has shape {other:?}, expected a matrix",
                    weight.name
                )))
            }
        };
        Ok(HostLinear {
            weight,
            bias,
            input,
            output,
        })
    }

    /// `x` [rows, input] to [rows, output].
    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; rows * self.output];
        strided_product(
            rows,
            self.output,
            self.input,
            &mut y,
            false,
            MatrixView::rows(x, self.input),
            MatrixView::transposed(&self.weight.value, self.input),
        )?;
        for row in y.chunks_exact_mut(self.output) {
            for (v, b) in row.iter_mut().zip(&self.bias.value) {
                *v += b;
            }
        }
        Ok(y)
    }

    /// Stores the gradients of W and b from the output gradient `dy` and the input `x`;
    /// returns the input gradient when asked for.
    fn backward(
        &mut self,
        x: &[f32],
        dy: &[f32],
        rows: usize,
        input_grad: bool,
    ) -> Result<Option<Vec<f32>>> {
        let (input, output) = (self.input, self.output);
        let weight_grad = &mut self.weight.grad;
        let weight = &self.weight.value;
        // The two products are independent: one on each core when they are large enough.
        let join = if rows * input * output >= STRIDED_PRODUCT_MIN_PARALLEL_WORK {
            rayon::join
        } else {
            sequentially
        };
        let (dw, dx) = join(
            || {
                strided_product(
                    output,
                    input,
                    rows,
                    weight_grad,
                    false,
                    MatrixView::transposed(dy, output),
                    MatrixView::rows(x, input),
                )
            },
            || -> Result<Option<Vec<f32>>> {
                if !input_grad {
                    return Ok(None);
                }
                let mut dx = vec![0.0f32; rows * input];
                strided_product(
                    rows,
                    input,
                    output,
                    &mut dx,
                    false,
                    MatrixView::rows(dy, output),
                    MatrixView::rows(weight, input),
                )?;
                Ok(Some(dx))
            },
        );
        dw?;
        self.bias.grad.fill(0.0);
        for row in dy.chunks_exact(output) {
            for (g, d) in self.bias.grad.iter_mut().zip(row) {
                *g += d;
            }
        }
        dx
    }

    fn params_mut(&mut self) -> [&mut Param; 2] {
        [&mut self.weight, &mut self.bias]
    }
}

fn sequentially<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    (a(), b())
}

/// Mean cross-entropy of `logits` [rows, classes] and the gradient of `scale` times it
/// with respect to the logits.
fn cross_entropy(logits: &[f32], labels: &[u32], classes: usize, scale: f32) -> (f32, Vec<f32>) {
    let rows = labels.len();
    let mut grad = vec![0.0f32; logits.len()];
    let mut total = 0.0f32;
    for ((row, g), &label) in logits
        .chunks_exact(classes)
        .zip(grad.chunks_exact_mut(classes))
        .zip(labels)
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let log_sum = sum.ln();
        total -= row[label as usize] - max - log_sum;
        for (gi, v) in g.iter_mut().zip(row) {
            *gi = (v - max - log_sum).exp() * scale / rows as f32;
        }
        g[label as usize] -= scale / rows as f32;
    }
    (total / rows as f32, grad)
}

/// The maximum of each class group (channels [jc, jc + c)) of every row of `x` [rows, D],
/// and the channel that holds it (the first of equal ones, as PyTorch's `max`).
fn group_max(x: &[f32], dim: usize, classes: usize, group: usize) -> (Vec<f32>, Vec<usize>) {
    let mut values = Vec::with_capacity(x.len() / dim * classes);
    let mut at = Vec::with_capacity(values.capacity());
    for row in x.chunks_exact(dim) {
        for j in 0..classes {
            let start = j * group;
            let (mut best, mut best_at) = (row[start], start);
            for (k, &v) in row.iter().enumerate().take(start + group).skip(start + 1) {
                if v > best {
                    (best, best_at) = (v, k);
                }
            }
            values.push(best);
            at.push(best_at);
        }
    }
    (values, at)
}

/// The training step of a [`HostLayers`] model on plain buffers.
pub struct FusedStep<'m> {
    model: &'m dyn Trainable,
    adam: Adam,
    generator: Vec<HostLinear>,
    final_relu: bool,
    fc: HostLinear,
    cafe: Option<CafeConfig>,
}

/// One forward pass of the host model: what the backward pass reads.
struct Forward {
    /// The generator's activations: its input, then each layer's output after its ReLU.
    activations: Vec<Vec<f32>>,
    /// `sigmoid(g)` (or `g` without the sigmoid); `None` without a generator.
    mask: Option<Vec<f32>>,
    /// `F * mask`, the classifier's input.
    selected: Vec<f32>,
    logits: Vec<f32>,
}

impl<'m> FusedStep<'m> {
    /// Copies `layers`' parameters (the layers of `model`) and `adam`'s state for them
    /// into buffers.
    pub fn check_out(model: &'m dyn Trainable, layers: HostLayers, adam: Adam) -> Result<Self> {
        Ok(FusedStep {
            model,
            generator: layers
                .generator
                .iter()
                .map(|l| HostLinear::check_out(l, &adam))
                .collect::<Result<_>>()?,
            final_relu: layers.final_relu,
            fc: HostLinear::check_out(&layers.fc, &adam)?,
            cafe: layers.cafe,
            adam,
        })
    }

    fn layers_mut(&mut self) -> impl Iterator<Item = &mut HostLinear> {
        self.generator
            .iter_mut()
            .chain(std::iter::once(&mut self.fc))
    }

    /// Whether generator layer `i` is followed by a ReLU.
    fn relu_after(&self, i: usize) -> bool {
        i + 1 < self.generator.len() || self.final_relu
    }

    fn forward(
        &self,
        features: &[f32],
        mask_input: Option<Vec<f32>>,
        rows: usize,
    ) -> Result<Forward> {
        let mut activations = Vec::with_capacity(self.generator.len() + 1);
        activations.extend(mask_input);
        for (i, layer) in self.generator.iter().enumerate() {
            let mut y = layer.forward(activations.last().expect("input pushed"), rows)?;
            if self.relu_after(i) {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            activations.push(y);
        }
        let mask = match (&self.cafe, activations.last()) {
            (Some(cfg), Some(g)) if cfg.sigmoid_mask => {
                Some(g.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect())
            }
            (_, Some(g)) => Some(g.clone()),
            (_, None) => None,
        };
        let selected: Vec<f32> = match &mask {
            Some(m) => features.iter().zip(m).map(|(f, m)| f * m).collect(),
            None => features.to_vec(),
        };
        let logits = self.fc.forward(&selected, rows)?;
        Ok(Forward {
            activations,
            mask,
            selected,
            logits,
        })
    }

    /// CAFE's separation and diverse losses on the selected feature: their values, and
    /// their gradients added into `d_selected` (at each group maximum for the diverse
    /// loss, at each dropped-group maximum through the drop vector for the separation).
    fn cafe_losses(
        cfg: &CafeConfig,
        selected: &[f32],
        labels: &[u32],
        drop: &[f32],
        d_selected: &mut [f32],
    ) -> (f32, f32) {
        let rows = labels.len();
        let dim = selected.len() / rows.max(1);
        let (classes, group) = (cfg.classes, cfg.group());
        let (group_maxima, max_at) = group_max(selected, dim, classes, group);
        let c = group as f32;
        let sum: f32 = group_maxima.iter().sum();
        // The authors' order of operations, in f32 as the autograd path computes it.
        let loss_div = 1.0
            - if cfg.paper_div {
                sum / (rows as f32 * c)
            } else {
                sum / group_maxima.len() as f32 / c
            };
        let dropped: Vec<f32> = selected
            .chunks_exact(dim)
            .flat_map(|row| row.iter().zip(drop).map(|(s, d)| s * d))
            .collect();
        let (dropped_maxima, dropped_at) = group_max(&dropped, dim, classes, group);
        let (lambda, beta) = (cfg.lambda as f32, cfg.beta as f32);
        let (loss_sep, d_sep) = cross_entropy(&dropped_maxima, labels, classes, lambda);
        let d_div = -beta
            / if cfg.paper_div {
                rows as f32 * c
            } else {
                group_maxima.len() as f32 * c
            };
        for (b, row) in d_selected.chunks_exact_mut(dim).enumerate() {
            for j in 0..classes {
                row[max_at[b * classes + j]] += d_div;
                let k = dropped_at[b * classes + j];
                row[k] += d_sep[b * classes + j] * drop[k];
            }
        }
        (loss_sep, loss_div)
    }

    /// Back from d loss / d selected through the mask (`F * sigmoid(g)` or `F * g`), the
    /// ReLUs and the generator's layers, storing each layer's gradients.
    fn generator_backward(
        &mut self,
        forward: &Forward,
        features: &[f32],
        d_selected: &[f32],
        rows: usize,
    ) -> Result<()> {
        let (Some(mask), Some(cfg)) = (&forward.mask, &self.cafe) else {
            return Ok(());
        };
        let sigmoid = cfg.sigmoid_mask;
        let mut d_out: Vec<f32> = d_selected
            .iter()
            .zip(features)
            .zip(mask)
            .map(|((d, f), m)| {
                if sigmoid {
                    d * f * (m * (1.0 - m))
                } else {
                    d * f
                }
            })
            .collect();
        for i in (0..self.generator.len()).rev() {
            if self.relu_after(i) {
                for (d, &a) in d_out.iter_mut().zip(&forward.activations[i + 1]) {
                    if a <= 0.0 {
                        *d = 0.0;
                    }
                }
            }
            match self.generator[i].backward(&forward.activations[i], &d_out, rows, i > 0)? {
                Some(dx) => d_out = dx,
                None => break,
            }
        }
        Ok(())
    }
}

impl Step for FusedStep<'_> {
    fn step(&mut self, batch: &Batch, drop: &[f32]) -> Result<StepOutcome> {
        let labels = batch.labels.to_vec1::<u32>()?;
        let rows = labels.len();
        let features = host_values(&batch.features, "frozen features")?;
        let dim = self.fc.input;
        if features.len() != rows * dim {
            return Err(Error::config(format!(
                "frozen features of {} values for {rows} labels of width {dim}",
                features.len()
            )));
        }
        let mask_input = match self.generator.is_empty() {
            true => None,
            false => Some(host_values(
                &batch.mask_input,
                "the mask generator's input",
            )?),
        };
        let forward = self.forward(&features, mask_input, rows)?;
        let classes = self.fc.output;
        let (loss_cls, d_logits) = cross_entropy(&forward.logits, &labels, classes, 1.0);
        let mut outcome = StepOutcome {
            loss: loss_cls,
            loss_cls,
            loss_sep: 0.0,
            loss_div: 0.0,
            correct: forward
                .logits
                .chunks_exact(classes)
                .zip(&labels)
                .filter(|(row, &label)| argmax(row) == label as usize)
                .count(),
        };
        let needs_input_grad = self.cafe.is_some();
        let d_selected = self
            .fc
            .backward(&forward.selected, &d_logits, rows, needs_input_grad)?;
        if let (Some(cfg), Some(mut d_selected)) = (self.cafe.clone(), d_selected) {
            let (loss_sep, loss_div) =
                Self::cafe_losses(&cfg, &forward.selected, &labels, drop, &mut d_selected);
            outcome.loss_sep = loss_sep;
            outcome.loss_div = loss_div;
            // The authors' order of summation.
            outcome.loss = (loss_cls + loss_div * cfg.beta as f32) + loss_sep * cfg.lambda as f32;
            self.generator_backward(&forward, &features, &d_selected, rows)?;
        }
        let config = self.adam.config().clone();
        for layer in self.layers_mut() {
            layer
                .params_mut()
                .into_iter()
                .for_each(|p| p.update(&config));
        }
        Ok(outcome)
    }

    /// Writes the parameters into the model's variables and the moments into the optimiser.
    fn synced(&mut self) -> Result<Synced<'_>> {
        for layer in self.generator.iter().chain(std::iter::once(&self.fc)) {
            layer.weight.write_back(&mut self.adam)?;
            layer.bias.write_back(&mut self.adam)?;
        }
        Ok(Synced {
            model: self.model,
            adam: &mut self.adam,
        })
    }
}

/// The values of a batch tensor the model needs, in host memory.
fn host_values(t: &Option<Tensor>, what: &str) -> Result<Vec<f32>> {
    let t = t
        .as_ref()
        .ok_or_else(|| Error::config(format!("the batch lacks {what}")))?;
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::classifier::{Classifier, GeneratorSpec, Method, ModelSpec};
    use crate::model::{drop_vector, init_var_builder, model_tensors};
    use crate::train::step::AutogradStep;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    /// Three steps by hand and three through autograd, from the same start, agree in
    /// every loss, every parameter and every Adam moment, for each method and head option
    /// the fused step covers.
    #[test]
    fn hand_written_steps_match_autograd() -> Result<()> {
        let device = Device::Cpu;
        let (rows, dim, input) = (6, 23, 13);
        // Seeded inputs: candle's randn is not, and a test must not change between runs.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut normal = |shape: (usize, usize)| -> Result<Tensor> {
            let values: Vec<f32> = (0..shape.0 * shape.1)
                .map(|_| rng.sample(rand_distr::StandardNormal))
                .collect();
            Ok(Tensor::from_vec(values, shape, &device)?)
        };
        let features = normal((rows, dim))?;
        let mask_input = normal((rows, input))?;
        let batch = Batch {
            images: None,
            features: Some(features),
            mask_input: Some(mask_input),
            labels: Tensor::new(&[0u32, 6, 2, 2, 5, 1], &device)?,
        };
        let base = CafeConfig::default().with_feature_dim(dim);
        let variants: Vec<(Method, CafeConfig, Vec<usize>)> = vec![
            (Method::Cafe, base.clone(), vec![17]),
            (Method::Cafe, base.clone(), vec![]),
            (
                Method::Cafe,
                CafeConfig {
                    paper_div: true,
                    unrestricted_mask: true,
                    ..base.clone()
                },
                vec![9, 11],
            ),
            (Method::CafeNoSigmoid, base.clone(), vec![17]),
            (Method::CafeNoMask, base.clone(), vec![]),
            (Method::LinearProbe, base.clone(), vec![]),
        ];
        let lr = 0.01;
        for (method, cafe, hidden) in variants {
            let spec = ModelSpec::new(
                method,
                cafe,
                GeneratorSpec::Mlp {
                    input: "test".into(),
                    input_dim: input,
                    hidden: hidden.clone(),
                },
            );
            let what = format!("{} {hidden:?} {:?}", method.name(), spec.cafe);
            let new_model = || Classifier::new(init_var_builder(HashMap::new(), 7, &device), &spec);
            let (by_hand, by_autograd) = (new_model()?, new_model()?);
            let cfg = AdamConfig {
                lr,
                ..AdamConfig::default()
            };
            let adam_hand = Adam::new(by_hand.trainable_vars(), cfg.clone())?;
            let layers = by_hand.host_layers().expect("all linear");
            let mut hand_step = FusedStep::check_out(&by_hand, layers, adam_hand)?;
            let mut auto_step = AutogradStep {
                model: &by_autograd,
                adam: Adam::new(by_autograd.trainable_vars(), cfg.clone())?,
                device: device.clone(),
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            for step in 0..3 {
                let drop = drop_vector(dim, 7, spec.cafe.drop_per_group, &mut rng)?;
                let hand = hand_step.step(&batch, &drop)?;
                let auto = auto_step.step(&batch, &drop)?;
                for (name, a, b) in [
                    ("loss", hand.loss, auto.loss),
                    ("cls", hand.loss_cls, auto.loss_cls),
                    ("sep", hand.loss_sep, auto.loss_sep),
                    ("div", hand.loss_div, auto.loss_div),
                ] {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{what} step {step} {name}: {a} vs {b}"
                    );
                }
            }
            let adam_hand = hand_step.synced()?.adam;
            let adam_auto = auto_step.synced()?.adam;
            let hand = model_tensors(&by_hand)?;
            for (name, auto) in model_tensors(&by_autograd)? {
                let diff = (&hand[&name] - &auto)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                // Adam divides by the gradient's running magnitude, so a gradient near
                // zero turns rounding into a visible step: measure in units of the
                // learning rate (a wrong gradient moves a parameter by about lr a step).
                assert!(
                    (diff as f64) < 1e-3 * lr,
                    "{what}: {name} differs by {diff}"
                );
                let (m_hand, v_hand, t_hand) = adam_hand.moments(&name).expect("held");
                let (m_auto, v_auto, t_auto) = adam_auto.moments(&name).expect("held");
                assert_eq!(t_hand, t_auto, "{what}: {name} step count");
                for (kind, h, a) in [("exp_avg", m_hand, m_auto), ("exp_avg_sq", v_hand, v_auto)] {
                    let diff = (h - a)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                    assert!(
                        diff / scale < 1e-4,
                        "{what}: {kind} of {name} differs by {diff}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn resnet_generators_are_not_fused() -> Result<()> {
        let cafe = CafeConfig {
            trunk_widths: [2, 4, 4, 8],
            ..CafeConfig::default()
        };
        let spec = ModelSpec::new(
            Method::Cafe,
            cafe.clone(),
            GeneratorSpec::Resnet {
                widths: cafe.trunk_widths,
            },
        );
        let model = Classifier::new(init_var_builder(HashMap::new(), 1, &Device::Cpu), &spec)?;
        assert!(model.host_layers().is_none());
        Ok(())
    }
}
