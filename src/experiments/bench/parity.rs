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
use crate::model::{Batch, CafeConfig, Classifier, ModelSpec, Trainable};
use crate::train::optim::{Adam, AdamConfig, ExponentialLr};
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
        let entry = self.worst.entry(kind).or_insert((0.0, String::new()));
        if rel > entry.0 {
            *entry = (rel, name.to_string());
        }
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

fn meta<T: std::str::FromStr>(
    metadata: &BTreeMap<String, String>,
    key: &str,
    file: &Path,
) -> Result<T> {
    let text = metadata
        .get(key)
        .ok_or_else(|| bad(file, format!("metadata lacks `{key}`")))?;
    text.parse()
        .map_err(|_| bad(file, format!("metadata `{key}` = {text:?} does not parse")))
}

fn tensor<'a>(tensors: &'a HashMap<String, Tensor>, name: &str, file: &Path) -> Result<&'a Tensor> {
    tensors
        .get(name)
        .ok_or_else(|| bad(file, format!("no tensor {name}")))
}

/// Replays one fixture on `device` in `dtype`: every step when `all_steps`, else the first
/// forward pass only (and the f32 gradients for information).
pub fn replay(file: &Path, device: &Device, dtype: DType, all_steps: bool) -> Result<Report> {
    let TensorFile { tensors, metadata } = tensorfile::load(file, device)?;
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype().is_float() {
                v.to_dtype(dtype)?
            } else {
                v
            };
            Ok((k, v))
        })
        .collect::<Result<_>>()?;
    let steps: usize = meta(&metadata, "steps", file)?;
    let steps_per_epoch: usize = meta(&metadata, "steps_per_epoch", file)?;
    let classes: usize = meta(&metadata, "classes", file)?;
    let group: usize = meta(&metadata, "group", file)?;
    let widths = match metadata.get("widths") {
        None => RESNET18_WIDTHS,
        Some(text) => {
            let w: Vec<usize> = text
                .split(',')
                .map(|v| v.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|_| bad(file, format!("widths {text:?} do not parse")))?;
            w.try_into()
                .map_err(|_| bad(file, format!("widths {text:?}: four needed")))?
        }
    };
    let images = tensor(&tensors, "input.images", file)?;
    let features = tensor(&tensors, "input.features", file)?;
    let labels = tensor(&tensors, "input.labels", file)?;
    let feature_dim = features.dim(1)?;
    let cfg = CafeConfig {
        feature_dim,
        classes,
        lambda: meta(&metadata, "lambda", file)?,
        beta: meta(&metadata, "beta", file)?,
        // The fixture brings its own drop vectors.
        drop_per_group: 0,
        trunk_widths: widths,
        ..CafeConfig::default()
    };
    if cfg.group() != group {
        return Err(bad(
            file,
            format!(
                "group {group} in the metadata, {} from D and L",
                cfg.group()
            ),
        ));
    }

    let given: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("init.").map(|n| (n.to_string(), v.clone())))
        .collect();
    let vb = VarBuilder::from_tensors(given.clone(), dtype, device);
    let generator = GeneratorSpec::Resnet { widths };
    let model = Classifier::new(vb, &ModelSpec::new(Method::Cafe, cfg.clone(), generator))?;
    let model_names: BTreeSet<String> = model
        .trainable_vars()
        .into_iter()
        .chain(model.buffers())
        .map(|(n, _)| n)
        .collect();
    let given_names: BTreeSet<String> = given.keys().cloned().collect();
    if model_names != given_names {
        let missing: Vec<_> = model_names.difference(&given_names).collect();
        let extra: Vec<_> = given_names.difference(&model_names).collect();
        return Err(bad(
            file,
            format!(
                "init.* must be exactly the model's tensors: missing {missing:?}, extra {extra:?}"
            ),
        ));
    }

    let adam_cfg = AdamConfig {
        lr: meta(&metadata, "lr", file)?,
        weight_decay: meta(&metadata, "weight_decay", file)?,
        ..AdamConfig::default()
    };
    let mut optimizer = Adam::new(model.trainable_vars(), adam_cfg)?;
    let schedule = ExponentialLr {
        gamma: meta(&metadata, "gamma", file)?,
    };
    let batch = Batch {
        images: Some(images.clone()),
        features: Some(features.clone()),
        mask_input: None,
        labels: labels.clone(),
    };

    let mut report = Report::default();
    let steps = if all_steps { steps } else { 1 };
    for step in 0..steps {
        let drop = tensor(&tensors, &format!("input.drop.{step}"), file)?;
        let losses = model.train_losses(&batch, drop)?;
        let grads = losses.loss.backward()?;
        if step == 0 {
            let expect = |name: &str| tensor(&tensors, &format!("expect.{name}"), file);
            report.compare(
                "forward",
                "logits",
                &losses.logits,
                expect("logits")?,
                FORWARD_TOL,
            )?;
            for (name, ours) in [
                ("loss_cls", &losses.loss_cls),
                ("loss_sep", &losses.loss_sep),
                ("loss_div", &losses.loss_div),
                ("loss", &losses.loss),
            ] {
                report.compare(
                    "forward",
                    name,
                    &ours.reshape(1)?,
                    expect(name)?,
                    FORWARD_TOL,
                )?;
            }
            if !all_steps {
                let mut info = Report::default();
                for (name, var) in model.trainable_vars() {
                    if let Some(ours) = grads.get(var.as_tensor()) {
                        let expected = expect(&format!("grad.{name}"))?;
                        info.compare("gradient", &name, ours, expected, LATER_TOL)?;
                    }
                }
                report.f32_gradient = info.worst.remove("gradient");
                return Ok(report);
            }
            for (name, var) in model.trainable_vars() {
                let ours = grads
                    .get(var.as_tensor())
                    .ok_or_else(|| Error::internal(format!("no gradient for {name}")))?;
                report.compare(
                    "gradient",
                    &format!("grad.{name}"),
                    ours,
                    expect(&format!("grad.{name}"))?,
                    LATER_TOL,
                )?;
            }
        }
        optimizer.step(&grads)?;
        for (name, var) in model.trainable_vars().into_iter().chain(model.buffers()) {
            let key = format!("expect.step{step}.{name}");
            let kind = if name.contains("running_") {
                "running stat"
            } else {
                "after step"
            };
            report.compare(
                kind,
                &key,
                var.as_tensor(),
                tensor(&tensors, &key, file)?,
                LATER_TOL,
            )?;
        }
        if (step + 1) % steps_per_epoch == 0 {
            schedule.step(&mut optimizer);
        }
    }
    let eval_logits = model.logits(&batch)?;
    report.compare(
        "eval logits",
        "eval_logits",
        &eval_logits,
        tensor(&tensors, "expect.eval_logits", file)?,
        LATER_TOL,
    )?;
    Ok(report)
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
