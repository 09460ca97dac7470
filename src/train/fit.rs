//! The training loop shared by every method and by both data paths (the full recipe on
//! pixels, and fast mode on cached features): seeded shuffling, batches, the channel-drop
//! vector, Adam with L2 and ExponentialLR, per-epoch evaluation, the epoch log, atomic
//! checkpoints, exact resume and clean interruption.
//!
//! Everything random is derived from (seed, epoch, step or sample index) ([`rng`]), so a
//! run resumed from any checkpoint draws exactly what the uninterrupted run would have
//! drawn.

use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalSource};
use crate::formats::tensorfile::{self, TensorFile};
use crate::model::{drop_vector, model_tensors, Batch, Trainable};
use crate::train::fused::FusedStep;
use crate::train::optim::{Adam, AdamConfig, ExponentialLr};
use crate::train::rng::{rng_for, RNG_DROP, RNG_SHUFFLE};
use crate::train::run_folder::RunFolder;
use crate::train::step::{AutogradStep, Step, StepOutcome, Synced};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The recipe's numbers; the defaults are the authors' code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub gamma: f64,
    pub seed: u64,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            epochs: 60,
            batch_size: 32,
            lr: 2e-4,
            weight_decay: 1e-4,
            gamma: 0.9,
            seed: 3407,
        }
    }
}

/// Where batches come from: the full recipe decodes, augments and encodes images; fast
/// mode reads cached features.
pub trait BatchSource {
    /// Number of training samples.
    fn len(&self) -> usize;
    /// The augmented training batch of these samples in `epoch`.
    fn train_batch(&self, indices: &[usize], epoch: usize) -> Result<Batch>;
}

/// One line of the epoch log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub loss_cls: f64,
    pub loss_sep: f64,
    pub loss_div: f64,
    pub train_accuracy: f64,
    /// Accuracy on the source's held-out split, when it has one.
    pub eval_accuracy: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// How a call to [`train`] ended.
pub enum Outcome {
    Finished {
        log: Vec<EpochLog>,
    },
    /// Stopped by the user after a step; the checkpoint holds everything to resume.
    Interrupted {
        epoch: usize,
        step: usize,
    },
}

/// Which model bundle the loop asks its caller to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Snapshot {
    /// After an epoch that improved the held-out accuracy.
    Best,
    /// After the last epoch.
    Final,
}

/// Called with the model's tensors (trained and kept) when a bundle is due.
pub type SaveModel<'a> = dyn FnMut(&HashMap<String, Tensor>, Snapshot) -> Result<()> + 'a;

/// Where training stands: saved in every checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Progress {
    /// Epochs fully done.
    epoch: usize,
    /// Steps done inside the current epoch (non-zero only for an interrupted epoch).
    step: usize,
    best_accuracy: Option<f64>,
    /// Sums over the steps done in the current epoch, so an epoch interrupted and resumed
    /// logs the same figures as one run in one go.
    partial: EpochSums,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct EpochSums {
    loss: f64,
    loss_cls: f64,
    loss_sep: f64,
    loss_div: f64,
    correct: u64,
    seen: u64,
    seconds: f64,
}

const CHECKPOINT: &str = "last.safetensors";
const LOG: &str = "log.jsonl";

/// What a run watches and reports to.
pub struct Watch<'a> {
    /// Set by Ctrl-C: the run saves and stops after the current step.
    pub stop: &'a AtomicBool,
    pub progress: &'a indicatif::ProgressBar,
    /// Stop (save, as on Ctrl-C) after this many steps: for jobs with a time limit, and
    /// for testing resume.
    pub max_steps: Option<usize>,
}

pub struct TrainContext<'a> {
    pub run: &'a RunFolder,
    pub recipe: &'a Recipe,
    pub watch: &'a Watch<'a>,
    pub device: &'a Device,
}

/// Trains `model` on `source` for the recipe's epochs, resuming from the run folder's
/// checkpoint when there is one. After every epoch: the epoch log line, the checkpoint,
/// and the [`Snapshot::Best`] bundle when the held-out accuracy improved; at the end the
/// [`Snapshot::Final`] one.
pub fn train(
    ctx: &TrainContext,
    model: &dyn Trainable,
    source: &dyn BatchSource,
    held_out: Option<&dyn EvalSource>,
    save_model: &mut SaveModel,
) -> Result<Outcome> {
    if source.len() == 0 {
        return Err(Error::config("the training split has no images"));
    }
    let mut adam = Adam::new(
        model.trainable_vars(),
        AdamConfig {
            lr: ctx.recipe.lr,
            weight_decay: ctx.recipe.weight_decay,
            ..AdamConfig::default()
        },
    )?;
    let progress = resume(ctx.run, model, &mut adam)?;
    let epochs = Epochs {
        ctx,
        source,
        held_out,
        drop: DropShape::of(model),
    };
    // From here on the model is read only through the step, which keeps it in sync.
    let mut step = step_for(model, adam, ctx.device)?;
    epochs.run(step.as_mut(), progress, save_model)
}

/// The step that suits `model` on `device`: by hand on the CPU when the model is all
/// linear layers (fast mode), through autograd otherwise.
fn step_for<'m>(
    model: &'m dyn Trainable,
    adam: Adam,
    device: &Device,
) -> Result<Box<dyn Step + 'm>> {
    Ok(match (device.is_cpu(), model.host_layers()) {
        (true, Some(layers)) => Box::new(FusedStep::check_out(model, layers, adam)?),
        _ => Box::new(AutogradStep {
            model,
            adam,
            device: device.clone(),
        }),
    })
}

/// The shape of the channel-drop vector: the model's feature width, classes and channels
/// dropped per class group.
struct DropShape {
    dim: usize,
    classes: usize,
    per_group: usize,
}

impl DropShape {
    fn of(model: &dyn Trainable) -> Self {
        DropShape {
            dim: model.feature_dim(),
            classes: model.classes(),
            per_group: model.drop_per_group(),
        }
    }
}

/// What the epochs of one call to [`train`] share.
struct Epochs<'a> {
    ctx: &'a TrainContext<'a>,
    source: &'a dyn BatchSource,
    held_out: Option<&'a dyn EvalSource>,
    drop: DropShape,
}

impl Epochs<'_> {
    /// The epochs left to train, then the final bundle.
    fn run(
        &self,
        step: &mut dyn Step,
        mut progress: Progress,
        save_model: &mut SaveModel,
    ) -> Result<Outcome> {
        self.ctx.run.truncate_jsonl(LOG, progress.epoch)?;
        let mut log = Vec::new();
        let mut steps_taken = 0;
        while progress.epoch < self.ctx.recipe.epochs {
            if !self.train_epoch(step, &mut progress, &mut steps_taken)? {
                save_checkpoint(self.ctx.run, step.synced()?, &progress)?;
                return Ok(Outcome::Interrupted {
                    epoch: progress.epoch,
                    step: progress.step,
                });
            }
            log.push(self.end_epoch(step, &mut progress, save_model)?);
        }
        save_model(&model_tensors(step.synced()?.model)?, Snapshot::Final)?;
        Ok(Outcome::Finished { log })
    }

    /// The steps of the current epoch from `progress.step` on; false when the user (or
    /// `max_steps`) stopped it before its end.
    fn train_epoch(
        &self,
        step: &mut dyn Step,
        progress: &mut Progress,
        steps_taken: &mut usize,
    ) -> Result<bool> {
        let (ctx, recipe, epoch) = (self.ctx, self.ctx.recipe, progress.epoch);
        let samples = self.source.len();
        let mut order: Vec<usize> = (0..samples).collect();
        order.shuffle(&mut rng_for(recipe.seed, RNG_SHUFFLE, epoch as u64, 0));
        ctx.watch.progress.set_length(samples as u64);
        ctx.watch
            .progress
            .set_position((progress.step * recipe.batch_size).min(samples) as u64);
        ctx.watch
            .progress
            .set_message(format!("epoch {}/{}", epoch + 1, recipe.epochs));
        let steps_per_epoch = samples.div_ceil(recipe.batch_size);
        for (index, indices) in order
            .chunks(recipe.batch_size)
            .enumerate()
            .skip(progress.step)
        {
            if ctx.watch.stop.load(Ordering::SeqCst)
                || ctx.watch.max_steps.is_some_and(|m| *steps_taken >= m)
            {
                return Ok(false);
            }
            let started = Instant::now();
            let batch = self.source.train_batch(indices, epoch)?;
            let global_step = (epoch * steps_per_epoch + index) as u64;
            let drop = drop_vector(
                self.drop.dim,
                self.drop.classes,
                self.drop.per_group,
                &mut rng_for(recipe.seed, RNG_DROP, global_step, 0),
            )?;
            let outcome = step.step(&batch, &drop)?;
            if !outcome.loss.is_finite() {
                return Err(Error::Diverged {
                    loss: outcome.loss,
                    epoch: epoch + 1,
                    step: index,
                });
            }
            progress
                .partial
                .add(&outcome, indices.len(), started.elapsed().as_secs_f64());
            progress.step = index + 1;
            *steps_taken += 1;
            ctx.watch.progress.inc(indices.len() as u64);
            ctx.watch.progress.set_message(format!(
                "epoch {}/{} loss {:.4}",
                epoch + 1,
                recipe.epochs,
                progress.partial.loss / progress.partial.seen as f64
            ));
        }
        Ok(true)
    }

    /// After an epoch's last step: held-out accuracy, the log line, the learning rate's
    /// decay, the best bundle when it improved, and the checkpoint.
    fn end_epoch(
        &self,
        step: &mut dyn Step,
        progress: &mut Progress,
        save_model: &mut SaveModel,
    ) -> Result<EpochLog> {
        let recipe = self.ctx.recipe;
        let sums = std::mem::take(&mut progress.partial);
        let synced = step.synced()?;
        let eval_accuracy = match self.held_out {
            Some(held_out) => {
                let names = (0..synced.model.classes()).map(|c| c.to_string()).collect();
                let batch_size = recipe.batch_size.max(64);
                Some(evaluate(synced.model, held_out, batch_size, names)?.accuracy)
            }
            None => None,
        };
        let entry = sums.log_line(progress.epoch + 1, eval_accuracy, synced.adam.lr());
        ExponentialLr {
            gamma: recipe.gamma,
        }
        .step(synced.adam);
        progress.epoch += 1;
        progress.step = 0;
        let improved = match (eval_accuracy, progress.best_accuracy) {
            (Some(now), Some(best)) => now > best,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if improved {
            progress.best_accuracy = eval_accuracy;
            save_model(&model_tensors(synced.model)?, Snapshot::Best)?;
        }
        self.ctx.run.append_jsonl(LOG, &entry)?;
        save_checkpoint(self.ctx.run, synced, progress)?;
        entry.report(recipe.epochs);
        Ok(entry)
    }
}

impl EpochSums {
    fn add(&mut self, outcome: &StepOutcome, images: usize, seconds: f64) {
        let n = images as f64;
        self.loss += outcome.loss as f64 * n;
        self.loss_cls += outcome.loss_cls as f64 * n;
        self.loss_sep += outcome.loss_sep as f64 * n;
        self.loss_div += outcome.loss_div as f64 * n;
        self.correct += outcome.correct as u64;
        self.seen += images as u64;
        self.seconds += seconds;
    }

    fn log_line(&self, epoch: usize, eval_accuracy: Option<f64>, lr: f64) -> EpochLog {
        let seen = self.seen.max(1) as f64;
        EpochLog {
            epoch,
            loss: self.loss / seen,
            loss_cls: self.loss_cls / seen,
            loss_sep: self.loss_sep / seen,
            loss_div: self.loss_div / seen,
            train_accuracy: self.correct as f64 / seen,
            eval_accuracy,
            lr,
            seconds: self.seconds,
            images_per_second: self.seen as f64 / self.seconds.max(1e-9),
        }
    }
}

impl EpochLog {
    fn report(&self, epochs: usize) {
        tracing::info!(
            "epoch {}/{}: loss {:.4} (cls {:.4} sep {:.4} div {:.4}), train acc {:.2}%{}, {:.1} img/s",
            self.epoch,
            epochs,
            self.loss,
            self.loss_cls,
            self.loss_sep,
            self.loss_div,
            100.0 * self.train_accuracy,
            self.eval_accuracy
                .map(|a| format!(", held-out acc {:.2}%", 100.0 * a))
                .unwrap_or_default(),
            self.images_per_second
        );
    }
}

/// The checkpoint: the model's tensors under `model.`, the optimiser's state under
/// `adam.`, and the progress in the metadata.
fn save_checkpoint(run: &RunFolder, synced: Synced, progress: &Progress) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = model_tensors(synced.model)?
        .into_iter()
        .map(|(name, t)| (format!("model.{name}"), t))
        .collect();
    let adam = synced.adam.state()?;
    tensors.extend(
        adam.tensors
            .into_iter()
            .map(|(name, t)| (format!("adam.{name}"), t)),
    );
    let mut metadata: BTreeMap<String, String> = adam
        .metadata
        .into_iter()
        .map(|(k, v)| (format!("adam.{k}"), v))
        .collect();
    metadata.insert(
        "progress".to_string(),
        serde_json::to_string(progress).map_err(|e| Error::internal(e.to_string()))?,
    );
    tensorfile::save(&run.checkpoint(CHECKPOINT), &tensors, &metadata)
}

/// Restores model, optimiser and progress from the run's checkpoint, if it has one.
fn resume(run: &RunFolder, model: &dyn Trainable, adam: &mut Adam) -> Result<Progress> {
    let path = run.checkpoint(CHECKPOINT);
    if !path.exists() {
        return Ok(Progress::default());
    }
    let display = path.display().to_string();
    let TensorFile { tensors, metadata } = tensorfile::load(&path, &Device::Cpu)?;
    let progress: Progress = metadata
        .get("progress")
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| {
            Error::weights(
                &display,
                "not a gfer training checkpoint (no progress record)",
            )
        })?;
    for (name, var) in model.trainable_vars().into_iter().chain(model.buffers()) {
        let key = format!("model.{name}");
        let saved = tensors
            .get(&key)
            .ok_or_else(|| Error::weights(&display, format!("checkpoint lacks {key}")))?;
        if saved.dims() != var.dims() {
            return Err(Error::weights(
                &display,
                format!(
                    "{key} has shape {:?} in the checkpoint, the model {:?}",
                    saved.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&saved.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    let adam_tensors: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("adam.").map(|k| (k.to_string(), t.clone())))
        .collect();
    let adam_meta: BTreeMap<String, String> = metadata
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("adam.").map(|k| (k.to_string(), v.clone())))
        .collect();
    adam.load_state(&adam_tensors, &adam_meta, &display)?;
    tracing::info!(
        "resuming from {}: {} epochs done, {} steps into the next",
        path.display(),
        progress.epoch,
        progress.step
    );
    Ok(progress)
}
