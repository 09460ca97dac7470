//! Replays the CAFE parity fixtures (the authors' training steps re-created in PyTorch,
//! `scripts/reference/cafe.py`; schema in tests/fixtures/parity/README.md) on any device:
//! `tests/cafe_parity.rs` runs them on the CPU, `gfer bench parity --device cuda` on a GPU.
//!
//! Tolerance: `max |ours - torch| <= tol * max |torch|` per tensor, [`FORWARD_TOL`] for the
//! first forward pass (logits, losses) and [`LATER_TOL`] for gradients, the tensors after
//! each step and the final evaluation-mode logits.
//!
//! The expected values are PyTorch's in float64 (rounded to f32). Each fixture is replayed
//! twice ([`REPLAYS`]): in f64, every value of every step is compared; in f32, the
//! dtype gfer trains in, the first forward pass is. The f32 gradients are not compared:
//! where a ReLU input or a max-pool window lies within round-off of a tie, any f32
//! implementation may take the other branch and move a gradient by far more than
//! round-off; their worst deviation is reported for information only.

use crate::error::{Error, Result};
use crate::formats::tensorfile::{self, TensorFile};
use crate::model::classifier::{GeneratorSpec, Method};
use crate::model::resnet::RESNET18_WIDTHS;
use crate::model::{Batch, CafeConfig, CafeLosses, Classifier, ModelSpec, Trainable};
use crate::train::optim::{Adam, AdamConfig, ExponentialLr};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Tolerance of the first forward pass (logits and losses).
pub const FORWARD_TOL: f64 = 1e-4;
/// Tolerance of gradients, the tensors after each step and the final evaluation logits.
pub const LATER_TOL: f64 = 1e-3;

/// The worst relative error seen per kind of comparison, and every failure.
#[derive(Default, Debug)]
pub struct Report {
    /// Per kind ("forward", "gradient", "after step", "running stat", "eval logits"): the
    /// worst relative error and the tensor it was seen on.
    pub worst: BTreeMap<&'static str, (f64, String)>,
    /// Comparisons over their tolerance, each saying which tensor and by how much.
    pub failures: Vec<String>,
    /// With an f32 replay: the worst f32 gradient (not compared, see the module's text).
    pub f32_gradient: Option<(f64, String)>,
}

impl Report {
    /// Takes in another report's worst values and failures.
    fn merge(&mut self, other: Report) {
        for (kind, (rel, tensor)) in other.worst {
            self.note_worst(kind, rel, &tensor);
        }
        self.failures.extend(other.failures);
    }

    fn note_worst(&mut self, kind: &'static str, rel: f64, tensor: &str) {
        let entry = self.worst.entry(kind).or_insert((0.0, String::new()));
        if rel > entry.0 {
            *entry = (rel, tensor.to_string());
        }
    }

    fn compare(
        &mut self,
        kind: &'static str,
        name: &str,
        ours: &Tensor,
        expected: &Tensor,
        tol: f64,
    ) -> Result<()> {
        if ours.dims() != expected.dims() {
            self.failures.push(format!(
                "{name}: shape {:?}, expected {:?}",
                ours.dims(),
                expected.dims()
            ));
            return Ok(());
        }
        let values = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.to_device(&Device::Cpu)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?)
        };
        let (a, b) = (values(ours)?, values(expected)?);
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        let rel = if a.iter().all(|v| v.is_finite()) {
            diff / scale
        } else {
            f64::INFINITY
        };
        self.note_worst(kind, rel, name);
        if rel > tol {
            self.failures
                .push(format!("{name}: relative error {rel:.2e} > {tol:.0e}"));
        }
        Ok(())
    }
}

/// A fixture that does not follow the schema.
fn bad(file: &Path, message: impl Into<String>) -> Error {
    Error::Weights {
        path: file.display().to_string(),
        message: format!(
            "{} (not a CAFE parity fixture? see tests/fixtures/parity/README.md)",
            message.into()
        ),
    }
}

/// A fixture as read: its tensors in the replay's dtype and what its metadata says.
struct Fixture<'a> {
    file: &'a Path,
    tensors: HashMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
}

impl<'a> Fixture<'a> {
    /// The fixture's tensors on `device`, floating-point ones in `dtype`.
    fn load(file: &'a Path, device: &Device, dtype: DType) -> Result<Self> {
        let TensorFile { tensors, metadata } = tensorfile::load(file, device)?;
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| {
                let t = if t.dtype().is_float() {
                    t.to_dtype(dtype)?
                } else {
                    t
                };
                Ok((name, t))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            file,
            tensors,
            metadata,
        })
    }

    fn meta<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let text = self
            .metadata
            .get(key)
            .ok_or_else(|| bad(self.file, format!("metadata lacks `{key}`")))?;
        text.parse().map_err(|_| {
            bad(
                self.file,
                format!("metadata `{key}` = {text:?} does not parse"),
            )
        })
    }

    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| bad(self.file, format!("no tensor {name}")))
    }

    /// PyTorch's value of `name` (`expect.<name>`).
    fn expected(&self, name: &str) -> Result<&Tensor> {
        self.tensor(&format!("expect.{name}"))
    }

    /// The ResNet widths (`widths`, the full ResNet-18's when absent).
    fn widths(&self) -> Result<[usize; 4]> {
        let Some(text) = self.metadata.get("widths") else {
            return Ok(RESNET18_WIDTHS);
        };
        let widths: Vec<usize> = text
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|_| bad(self.file, format!("widths {text:?} do not parse")))?;
        widths
            .try_into()
            .map_err(|_| bad(self.file, format!("widths {text:?}: four needed")))
    }

    /// The CAFE model's configuration, checked against the fixture's group size.
    fn cafe_config(&self, widths: [usize; 4]) -> Result<CafeConfig> {
        let cfg = CafeConfig {
            feature_dim: self.tensor("input.features")?.dim(1)?,
            classes: self.meta("classes")?,
            lambda: self.meta("lambda")?,
            beta: self.meta("beta")?,
            // The fixture brings its own drop vectors.
            drop_per_group: 0,
            trunk_widths: widths,
            ..CafeConfig::default()
        };
        let group: usize = self.meta("group")?;
        if cfg.group() != group {
            let message = format!(
                "group {group} in the metadata, {} from D and L",
                cfg.group()
            );
            return Err(bad(self.file, message));
        }
        Ok(cfg)
    }

    /// The model built from the fixture's `init.*` tensors, which must be exactly the
    /// model's.
    fn model(&self, device: &Device, dtype: DType) -> Result<Classifier> {
        let widths = self.widths()?;
        let spec = ModelSpec::new(
            Method::Cafe,
            self.cafe_config(widths)?,
            GeneratorSpec::Resnet { widths },
        );
        let given: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("init.").map(|n| (n.to_string(), v.clone())))
            .collect();
        let given_names: BTreeSet<String> = given.keys().cloned().collect();
        let model = Classifier::new(VarBuilder::from_tensors(given, dtype, device), &spec)?;
        let model_names: BTreeSet<String> = model
            .trainable_vars()
            .into_iter()
            .chain(model.buffers())
            .map(|(n, _)| n)
            .collect();
        if model_names != given_names {
            let missing: Vec<_> = model_names.difference(&given_names).collect();
            let extra: Vec<_> = given_names.difference(&model_names).collect();
            return Err(bad(
                self.file,
                format!(
                    "init.* must be exactly the model's tensors: missing {missing:?}, \
                     extra {extra:?}"
                ),
            ));
        }
        Ok(model)
    }

    fn batch(&self) -> Result<Batch> {
        Ok(Batch {
            images: Some(self.tensor("input.images")?.clone()),
            features: Some(self.tensor("input.features")?.clone()),
            mask_input: None,
            labels: self.tensor("input.labels")?.clone(),
        })
    }
}

/// Replays one fixture on `device` in `dtype`: every step when `all_steps`, else the first
/// forward pass only (and the f32 gradients for information).
pub fn replay(file: &Path, device: &Device, dtype: DType, all_steps: bool) -> Result<Report> {
    let fixture = Fixture::load(file, device, dtype)?;
    let model = fixture.model(device, dtype)?;
    let batch = fixture.batch()?;
    let adam = AdamConfig {
        lr: fixture.meta("lr")?,
        weight_decay: fixture.meta("weight_decay")?,
        ..AdamConfig::default()
    };
    let mut optimizer = Adam::new(model.trainable_vars(), adam)?;
    let schedule = ExponentialLr {
        gamma: fixture.meta("gamma")?,
    };
    let steps_per_epoch: usize = fixture.meta("steps_per_epoch")?;

    let mut report = Report::default();
    let steps = if all_steps { fixture.meta("steps")? } else { 1 };
    for step in 0..steps {
        let drop = fixture.tensor(&format!("input.drop.{step}"))?;
        let losses = model.train_losses(&batch, drop)?;
        let grads = losses.loss.backward()?;
        if step == 0 {
            compare_forward(&mut report, &fixture, &losses)?;
            if !all_steps {
                report.f32_gradient = gradients(&fixture, &model, &grads)?
                    .worst
                    .remove("gradient");
                return Ok(report);
            }
            report.merge(gradients(&fixture, &model, &grads)?);
        }
        optimizer.step(&grads)?;
        compare_after_step(&mut report, &fixture, &model, step)?;
        if (step + 1) % steps_per_epoch == 0 {
            schedule.step(&mut optimizer);
        }
    }
    let eval_logits = model.logits(&batch)?;
    let expected = fixture.expected("eval_logits")?;
    report.compare(
        "eval logits",
        "eval_logits",
        &eval_logits,
        expected,
        LATER_TOL,
    )?;
    Ok(report)
}

/// The first forward pass: logits and each loss.
fn compare_forward(report: &mut Report, fixture: &Fixture, losses: &CafeLosses) -> Result<()> {
    let logits = fixture.expected("logits")?;
    report.compare("forward", "logits", &losses.logits, logits, FORWARD_TOL)?;
    for (name, ours) in [
        ("loss_cls", &losses.loss_cls),
        ("loss_sep", &losses.loss_sep),
        ("loss_div", &losses.loss_div),
        ("loss", &losses.loss),
    ] {
        let expected = fixture.expected(name)?;
        report.compare("forward", name, &ours.reshape(1)?, expected, FORWARD_TOL)?;
    }
    Ok(())
}

/// The first step's gradient of every trainable tensor, in a report of its own.
fn gradients(fixture: &Fixture, model: &Classifier, grads: &GradStore) -> Result<Report> {
    let mut report = Report::default();
    for (name, var) in model.trainable_vars() {
        let ours = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::internal(format!("no gradient for {name}")))?;
        let key = format!("grad.{name}");
        report.compare("gradient", &key, ours, fixture.expected(&key)?, LATER_TOL)?;
    }
    Ok(report)
}

/// Every trainable tensor and running statistic after optimizer step `step`.
fn compare_after_step(
    report: &mut Report,
    fixture: &Fixture,
    model: &Classifier,
    step: usize,
) -> Result<()> {
    for (name, var) in model.trainable_vars().into_iter().chain(model.buffers()) {
        let key = format!("step{step}.{name}");
        let kind = if name.contains("running_") {
            "running stat"
        } else {
            "after step"
        };
        let expected = fixture.expected(&key)?;
        report.compare(
            kind,
            &format!("expect.{key}"),
            var.as_tensor(),
            expected,
            LATER_TOL,
        )?;
    }
    Ok(())
}

/// One fixture's two replays: f64 with every step, f32 with the first forward pass.
pub const REPLAYS: [(DType, bool); 2] = [(DType::F64, true), (DType::F32, false)];

/// The `*.safetensors` fixtures of each path: a folder's, sorted, or the file itself.
pub fn fixtures_in(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_file() {
            files.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(Error::config(format!(
                "{} holds no *.safetensors parity fixture",
                path.display()
            )));
        }
        files.extend(found);
    }
    Ok(files)
}
