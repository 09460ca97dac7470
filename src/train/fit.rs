//! The training loop shared by every method and by both data paths (the full recipe on
//! pixels, and fast mode on cached features): seeded shuffling, batches, the channel-drop
//! vector, Adam with L2 and ExponentialLR, per-epoch evaluation, the epoch log, atomic
//! checkpoints, exact resume and clean interruption.
//!
//! Everything random is derived from (seed, epoch, step or sample index), never from a
//! generator that runs through the whole training, so a run resumed from any checkpoint
//! draws exactly what the uninterrupted run would have drawn.

use crate::error::{Error, Result};
use crate::eval::metrics::{Confusion, Metrics};
use crate::formats::tensorfile::{self, TensorFile};
use crate::model::{drop_vector, CafeLosses, NamedVar};
use crate::train::fused::{FusedModel, FusedStep};
use crate::train::optim::{Adam, AdamConfig, ExponentialLr};
use crate::train::run_folder::RunDir;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
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

/// A generator for one purpose at one point of training: the same (seed, purpose, a, b)
/// always gives the same stream.
pub fn rng_for(seed: u64, purpose: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, v) in [seed, purpose, a, b].iter().enumerate() {
        key[i * 8..(i + 1) * 8].copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(*blake3::hash(&key).as_bytes())
}

/// Purposes of the derived generators.
pub const RNG_SHUFFLE: u64 = 1;
pub const RNG_DROP: u64 = 2;
pub const RNG_AUGMENT: u64 = 3;
pub const RNG_VIEW: u64 = 4;

/// The inputs of one step: whatever the model reads (pixels, frozen features, cached
/// mask-generator inputs) and the labels [B] (u32).
pub struct Batch {
    pub images: Option<Tensor>,
    pub features: Option<Tensor>,
    pub mask_input: Option<Tensor>,
    pub labels: Tensor,
}

/// Where batches come from: the full recipe decodes, augments and encodes images; fast
/// mode reads cached features.
pub trait BatchSource {
    /// Number of training samples.
    fn len(&self) -> usize;
    /// The augmented training batch of these samples in `epoch`.
    fn train_batch(&self, indices: &[usize], epoch: usize) -> Result<Batch>;
}

/// Clean (not augmented) batches of a held-out set, for evaluation.
pub trait EvalSource {
    fn len(&self) -> usize;
    fn eval_batch(&self, indices: &[usize]) -> Result<Batch>;
    fn labels(&self) -> Vec<usize>;
}

/// A model the loop can train.
pub trait Trainable {
    fn train_losses(&self, batch: &Batch, drop: &Tensor) -> Result<CafeLosses>;
    fn logits(&self, batch: &Batch) -> Result<Tensor>;
    fn trainable_vars(&self) -> Vec<NamedVar>;
    /// Kept but not trained (BatchNorm running statistics).
    fn buffers(&self) -> Vec<NamedVar>;
    /// Width of the frozen feature (the drop vector's length).
    fn feature_dim(&self) -> usize;
    fn classes(&self) -> usize;
    fn drop_per_group(&self) -> usize;
    /// The model as plain layers when its step can run by hand ([`FusedStep`]).
    fn fused(&self) -> Option<FusedModel> {
        None
    }
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

/// Called after each epoch with the model's tensors (trained and kept), so the caller
/// can write the bundle: `best` is true when the epoch improved the held-out accuracy.
pub type SaveModel<'a> = dyn FnMut(&HashMap<String, Tensor>, &str) -> Result<()> + 'a;

pub struct TrainContext<'a> {
    pub run: &'a RunDir,
    pub recipe: &'a Recipe,
    pub stop: &'a AtomicBool,
    pub progress: &'a indicatif::ProgressBar,
    pub device: &'a Device,
    /// Stop (save, as on Ctrl-C) after this many steps of this invocation: for jobs with
    /// a time limit, and for testing resume.
    pub max_steps: Option<usize>,
}

/// Trains `model` on `source` for the recipe's epochs, resuming from the run folder's
/// checkpoint when there is one. After every epoch: the epoch log line, the checkpoint,
/// and `save_model(tensors, "best")` when the held-out accuracy improved; at the end
/// `save_model(tensors, "final")`.
pub fn train(
    ctx: &TrainContext,
    model: &dyn Trainable,
    source: &dyn BatchSource,
    held_out: Option<&dyn EvalSource>,
    save_model: &mut SaveModel,
) -> Result<Outcome> {
    let recipe = ctx.recipe;
    if source.len() == 0 {
        return Err(Error::config("the training split has no images"));
    }
    let mut adam = Adam::new(
        model.trainable_vars(),
        AdamConfig {
            lr: recipe.lr,
            weight_decay: recipe.weight_decay,
            ..AdamConfig::default()
        },
    )?;
    let schedule = ExponentialLr {
        gamma: recipe.gamma,
    };
    let mut progress = resume(ctx.run, model, &mut adam)?;
    // Fast mode on the CPU steps by hand; the model's variables are brought up to date
    // before anything reads them.
    let mut fused = match (ctx.device.is_cpu(), model.fused()) {
        (true, Some(parts)) => Some(FusedStep::check_out(parts, &adam)?),
        _ => None,
    };
    ctx.run.truncate_jsonl("log.jsonl", progress.epoch)?;
    let mut log: Vec<EpochLog> = Vec::new();
    let steps_per_epoch = source.len().div_ceil(recipe.batch_size);
    let mut steps_taken = 0;

    while progress.epoch < recipe.epochs {
        let epoch = progress.epoch;
        let mut order: Vec<usize> = (0..source.len()).collect();
        order.shuffle(&mut rng_for(recipe.seed, RNG_SHUFFLE, epoch as u64, 0));
        ctx.progress.set_length(source.len() as u64);
        ctx.progress
            .set_position((progress.step * recipe.batch_size).min(source.len()) as u64);
        ctx.progress
            .set_message(format!("epoch {}/{}", epoch + 1, recipe.epochs));
        for (step, indices) in order
            .chunks(recipe.batch_size)
            .enumerate()
            .skip(progress.step)
        {
            if ctx.stop.load(Ordering::SeqCst) || ctx.max_steps.is_some_and(|m| steps_taken >= m) {
                if let Some(fused) = &fused {
                    fused.write_back(&mut adam)?;
                }
                save_checkpoint(ctx.run, model, &adam, &progress)?;
                return Ok(Outcome::Interrupted {
                    epoch,
                    step: progress.step,
                });
            }
            let started = Instant::now();
            let batch = source.train_batch(indices, epoch)?;
            let global_step = (epoch * steps_per_epoch + step) as u64;
            let drop = drop_vector(
                model.feature_dim(),
                model.classes(),
                model.drop_per_group(),
                &mut rng_for(recipe.seed, RNG_DROP, global_step, 0),
            )?;
            let outcome = match &mut fused {
                Some(fused) => fused.step(&batch, &drop, adam.config())?,
                None => {
                    let losses = model.train_losses(&batch, &Tensor::new(drop, ctx.device)?)?;
                    crate::train::backward_and_update(losses, &batch.labels, &mut adam)?
                }
            };

            let n = indices.len() as f64;
            let loss = outcome.loss as f64;
            if !loss.is_finite() {
                return Err(Error::config(format!(
                    "the loss became {loss} at epoch {} step {step}; lower --lr or check the data",
                    epoch + 1
                )));
            }
            let sums = &mut progress.partial;
            sums.loss += loss * n;
            sums.loss_cls += outcome.loss_cls as f64 * n;
            sums.loss_sep += outcome.loss_sep as f64 * n;
            sums.loss_div += outcome.loss_div as f64 * n;
            sums.correct += outcome.correct as u64;
            sums.seen += indices.len() as u64;
            sums.seconds += started.elapsed().as_secs_f64();
            progress.step = step + 1;
            steps_taken += 1;
            ctx.progress.inc(indices.len() as u64);
            ctx.progress.set_message(format!(
                "epoch {}/{} loss {:.4}",
                epoch + 1,
                recipe.epochs,
                sums.loss / sums.seen as f64
            ));
        }

        if let Some(fused) = &fused {
            fused.write_back(&mut adam)?;
        }
        let sums = std::mem::take(&mut progress.partial);
        let eval_accuracy = match held_out {
            Some(held_out) => {
                let names = (0..model.classes()).map(|c| c.to_string()).collect();
                Some(evaluate(model, held_out, recipe.batch_size.max(64), names)?.accuracy)
            }
            None => None,
        };
        let seen = sums.seen.max(1) as f64;
        let entry = EpochLog {
            epoch: epoch + 1,
            loss: sums.loss / seen,
            loss_cls: sums.loss_cls / seen,
            loss_sep: sums.loss_sep / seen,
            loss_div: sums.loss_div / seen,
            train_accuracy: sums.correct as f64 / seen,
            eval_accuracy,
            lr: adam.lr(),
            seconds: sums.seconds,
            images_per_second: sums.seen as f64 / sums.seconds.max(1e-9),
        };
        schedule.step(&mut adam);
        progress.epoch += 1;
        progress.step = 0;
        let improved = match (eval_accuracy, progress.best_accuracy) {
            (Some(now), Some(best)) => now > best,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if improved {
            progress.best_accuracy = eval_accuracy;
            save_model(&model_tensors(model)?, "best")?;
        }
        ctx.run.append_jsonl("log.jsonl", &entry)?;
        save_checkpoint(ctx.run, model, &adam, &progress)?;
        tracing::info!(
            "epoch {}/{}: loss {:.4} (cls {:.4} sep {:.4} div {:.4}), train acc {:.2}%{}, {:.1} img/s",
            entry.epoch,
            recipe.epochs,
            entry.loss,
            entry.loss_cls,
            entry.loss_sep,
            entry.loss_div,
            100.0 * entry.train_accuracy,
            eval_accuracy
                .map(|a| format!(", held-out acc {:.2}%", 100.0 * a))
                .unwrap_or_default(),
            entry.images_per_second
        );
        log.push(entry);
    }
    save_model(&model_tensors(model)?, "final")?;
    Ok(Outcome::Finished { log })
}

/// Accuracy and the rest on a held-out set (the model in evaluation mode).
pub fn evaluate(
    model: &dyn Trainable,
    source: &dyn EvalSource,
    batch_size: usize,
    class_names: Vec<String>,
) -> Result<Metrics> {
    let labels = source.labels();
    let mut confusion = Confusion::new(class_names);
    let indices: Vec<usize> = (0..source.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = source.eval_batch(chunk)?;
        let predicted = model.logits(&batch)?.argmax(1)?.to_vec1::<u32>()?;
        for (&i, &p) in chunk.iter().zip(&predicted) {
            confusion.add(labels[i], p as usize);
        }
    }
    Ok(confusion.metrics())
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

fn save_checkpoint(
    run: &RunDir,
    model: &dyn Trainable,
    adam: &Adam,
    progress: &Progress,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = model_tensors(model)?
        .into_iter()
        .map(|(name, t)| (format!("model.{name}"), t))
        .collect();
    let (adam_tensors, adam_meta) = adam.state()?;
    tensors.extend(
        adam_tensors
            .into_iter()
            .map(|(name, t)| (format!("adam.{name}"), t)),
    );
    let mut metadata: BTreeMap<String, String> = adam_meta
        .into_iter()
        .map(|(k, v)| (format!("adam.{k}"), v))
        .collect();
    metadata.insert(
        "progress".to_string(),
        serde_json::to_string(progress).map_err(|e| Error::config(e.to_string()))?,
    );
    tensorfile::save(&run.checkpoint(CHECKPOINT), &tensors, &metadata)
}

/// Restores model, optimiser and progress from the run's checkpoint, if it has one.
fn resume(run: &RunDir, model: &dyn Trainable, adam: &mut Adam) -> Result<Progress> {
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
    let adam_meta: HashMap<String, String> = metadata
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
