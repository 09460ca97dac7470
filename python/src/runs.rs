//! `gfer.train`, `gfer.evaluate`, `gfer.protocol` and `gfer.find_images`: the CLI's
//! `train`, `eval`, `protocol` and input expansion with its options as keyword arguments
//! (same names, underscores for dashes, `lambda_` for `--lambda`; same defaults), returning
//! what they wrote as dicts. Each call runs the library with the GIL released and Ctrl-C
//! handled as the CLI handles it ([`crate::work::run`]).

use crate::errors::{bad_input, OrRaise};
use crate::work;
use gfer::backbone::{Backbone, Precision};
use gfer::data::{Shard, Split};
use gfer::eval::evaluate_images;
use gfer::eval::metrics::Confusion;
use gfer::experiments::protocol::{
    self as protocol_lib, name_specs, MethodVariant, ProtocolConfig,
};
use gfer::image::{DecodeLimits, Preset};
use gfer::model::classifier::{MaskInput, Method};
use gfer::model::inference::ExpressionModel;
use gfer::model::CafeConfig;
use gfer::train::fit::Recipe;
use gfer::train::run::{self, FastConfig, RunOutcome, TrainConfig, Watch};
use gfer::Error;
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// A named choice (`method`, `backbone`, `precision`, `preprocess`, `generator`) parsed as the CLI
/// parses it; a wrong one names the choices.
pub fn choice<T: serde::de::DeserializeOwned>(option: &str, value: &str) -> PyResult<T> {
    serde_json::from_value(Value::String(value.to_string()))
        .map_err(|e| bad_input(format!("{option}={}: {e}", work::py_str(value))))
}

/// A library value as Python objects (dicts, lists, floats, ints, strings, None), as it
/// serialises to JSON: a struct's fields in their order.
fn to_python<'py, T: serde::Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("to JSON: {e}")))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// A dict with its keys in the order written.
macro_rules! dict {
    ($py:expr, { $($key:expr => $value:expr),* $(,)? }) => {{
        let dict = PyDict::new($py);
        $( dict.set_item($key, $value)?; )*
        dict
    }};
}

/// A `str` or a list of `str`; with `commas`, a `str` is split at commas as the CLI
/// splits the flag's value.
fn strings(option: &str, value: &Bound<'_, PyAny>, commas: bool) -> PyResult<Vec<String>> {
    if value.is_instance_of::<PyString>() {
        let text: String = value.extract()?;
        if !commas {
            return Ok(vec![text]);
        }
        return Ok(text
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect());
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<pyo3::types::PyTuple>() {
        return value
            .try_iter()?
            .map(|item| item?.extract::<String>())
            .collect::<PyResult<Vec<_>>>()
            .map_err(|_| bad_input(format!("{option}: expected a str or a list of str")));
    }
    Err(bad_input(format!(
        "{option}: expected a str or a list of str, got {}",
        value.get_type().name()?
    )))
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// The training settings `gfer train` and `gfer protocol` share (the CLI's
/// `TrainingFlags`).
struct TrainingFlags {
    backbone: Option<Backbone>,
    weights: Option<PathBuf>,
    precision: Precision,
    preprocess: Preset,
    mask_init: Option<PathBuf>,
    allow_partial: bool,
    recipe: Recipe,
    cafe: CafeConfig,
    max_pixels: u64,
    fast: bool,
    views: usize,
    generator: MaskInput,
    mlp_hidden: Option<Vec<usize>>,
    cache: PathBuf,
}

impl TrainingFlags {
    /// As `gfer train`'s flags make it.
    fn config(&self, data: String, method: Method) -> TrainConfig {
        TrainConfig {
            data,
            backbone: self.backbone,
            weights: self.weights.clone(),
            precision: self.precision,
            preprocess: self.preprocess,
            method,
            cafe: self.cafe.clone(),
            mask_init: self.mask_init.clone(),
            allow_partial: self.allow_partial,
            recipe: self.recipe.clone(),
            max_pixels: self.max_pixels,
            fast: self.fast.then(|| self.fast_config()),
        }
    }

    fn fast_config(&self) -> FastConfig {
        FastConfig {
            views: self.views,
            generator: self.generator,
            hidden: self.mlp_hidden.clone(),
            cache_dir: self.cache.clone(),
        }
    }
}

/// The options of every training run, shared by `train` and `protocol`'s signatures.
macro_rules! training_flags {
    ($backbone:ident, $weights:ident, $precision:ident, $preprocess:ident, $mask_init:ident,
     $allow_partial:ident, $epochs:ident, $batch_size:ident, $lr:ident,
     $weight_decay:ident, $gamma:ident, $seed:ident, $lambda:ident, $beta:ident,
     $paper_div:ident, $group_max_inference:ident, $unrestricted_mask:ident,
     $max_pixels:ident, $fast:ident, $views:ident, $generator:ident, $mlp_hidden:ident,
     $cache:ident) => {
        TrainingFlags {
            backbone: $backbone.map(|b| choice("backbone", b)).transpose()?,
            weights: $weights,
            precision: choice("precision", $precision)?,
            preprocess: choice("preprocess", $preprocess)?,
            mask_init: $mask_init,
            allow_partial: $allow_partial,
            recipe: Recipe {
                epochs: $epochs,
                batch_size: $batch_size,
                lr: $lr,
                weight_decay: $weight_decay,
                gamma: $gamma,
                seed: $seed,
            },
            cafe: CafeConfig {
                lambda: $lambda,
                beta: $beta,
                paper_div: $paper_div,
                group_max_inference: $group_max_inference,
                unrestricted_mask: $unrestricted_mask,
                ..CafeConfig::default()
            },
            max_pixels: $max_pixels,
            fast: $fast,
            views: $views,
            generator: choice("generator", $generator)?,
            mlp_hidden: $mlp_hidden,
            cache: $cache,
        }
    };
}

/// Train CAFE (or a baseline) on one data set, as ``gfer train``: on the train split of
/// ``data``, scored on its test split (val when it has none) after every epoch, into the
/// run folder ``out`` (``config.json``, ``log.jsonl``, ``checkpoints/last.safetensors``,
/// ``best.safetensors``, ``model.safetensors``, ``report.md``). The defaults are the
/// authors' recipe; every option is ``gfer train``'s flag of the same name (``lambda_``
/// for ``--lambda``).
///
/// Ctrl-C finishes the current step, saves the checkpoint and raises
/// ``KeyboardInterrupt``; ``train(resume=out)`` continues to the same weights as an
/// uninterrupted run.
///
/// Args:
///     data: The data set spec, e.g. ``"rafdb:/data/raf-basic"`` or ``"folder:/data/faces"``.
///     out: The run folder to write (must not hold a run yet).
///     resume: Continue the run in this folder from its checkpoint, with its own
///         configuration (instead of ``data`` and ``out``).
///     cache_only: With ``fast=True``: build fast mode's feature cache and stop.
///     shard: With ``cache_only``: cache only task K's part of N, ``"K/N"``.
///     method: ``"cafe"``, an ablation (``"cafe-no-sep"``, ``"cafe-no-div"``,
///         ``"cafe-mask-only"``, ``"cafe-no-sigmoid"``, ``"cafe-no-mask"``) or a baseline
///         (``"linear-probe"``, ``"concat"``, ``"resnet"``).
///     stop_after_steps: Stop (saving, as on Ctrl-C) after this many steps.
///     backbone: Frozen encoder architecture; inferred from the weights when ``None``.
///     weights: Frozen encoder weights (not needed by ``method="resnet"``).
///     precision: The arithmetic of the frozen encoder's linear layers, ``"f32"``,
///         ``"bf16"``, ``"int8"`` or ``"int8-fast"`` (``--precision``; layer norm, softmax and the
///         residuals stay f32; bf16 and the int8s run on the CPU only).
///     preprocess: ``"cafe"`` or ``"clip"``.
///     mask_init: ResNet-18 starting weights (MS-Celeb or torchvision).
///     allow_partial: Accept a ``mask_init`` with missing or mis-shaped tensors.
///     epochs, batch_size, lr, weight_decay, gamma, seed: The recipe (Adam with L2
///         weight decay, ExponentialLR ``gamma`` per epoch).
///     lambda_: Weight of the separation loss.
///     beta: Weight of the channel-diverse loss.
///     paper_div: The paper's diverse-loss normalisation instead of the code's.
///     group_max_inference: Classify by the group maxima instead of the FC.
///     unrestricted_mask: No ReLU before the sigmoid.
///     max_pixels: Images with more pixels than this are skipped.
///     fast: Fast mode: train on cached frozen features with an MLP mask generator.
///     views: Fast mode: augmented views cached per training image.
///     generator: Fast mode: what the mask generator reads, ``"feature"``,
///         ``"resnet18"`` or ``"tokens:LAYER"``.
///     mlp_hidden: Fast mode: hidden widths of the MLP (``[]`` for one linear layer;
///         ``None``: the generator's default).
///     cache: Fast mode: the feature cache folder.
///     device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
///         usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
///     progress: Show progress bars on a terminal.
///
/// Returns:
///     ``{"run", "finished", "bundle", "best", "log", "metrics", "stopped_at"}``: the run
///     folder; whether it trained to the end; the final and best model bundles; the
///     epochs this call trained (``log.jsonl`` holds them all); the final model's metrics
///     on the held-out split (``None`` without one); and, when ``stop_after_steps``
///     stopped it, ``{"epoch", "step"}``. With ``cache_only``: ``{"cache", "counts"}``.
///
/// Raises:
///     GferError: A wrong option, data set, image or weights file.
///     OSError: A file could not be read or written.
///     KeyboardInterrupt: Ctrl-C; the run was saved and can be resumed.
#[pyfunction]
#[pyo3(
    signature = (
        data=None, out=None, *, resume=None, cache_only=false, shard=None, method="cafe",
        stop_after_steps=None, backbone=None, weights=None, precision="f32", preprocess="cafe",
        mask_init=None,
        allow_partial=false, epochs=Recipe::default().epochs,
        batch_size=Recipe::default().batch_size, lr=Recipe::default().lr,
        weight_decay=Recipe::default().weight_decay, gamma=Recipe::default().gamma,
        seed=Recipe::default().seed, lambda_=CafeConfig::default().lambda,
        beta=CafeConfig::default().beta, paper_div=false, group_max_inference=false,
        unrestricted_mask=false, max_pixels=DecodeLimits::DEFAULT_MAX_PIXELS, fast=false,
        views=FastConfig::default().views, generator="feature", mlp_hidden=None,
        cache=FastConfig::default().cache_dir, device="auto", progress=true
    ),
    text_signature = "(data=None, out=None, *, resume=None, cache_only=False, shard=None, method='cafe', stop_after_steps=None, backbone=None, weights=None, precision='f32', preprocess='cafe', mask_init=None, allow_partial=False, epochs=60, batch_size=32, lr=0.0002, weight_decay=0.0001, gamma=0.9, seed=3407, lambda_=1.5, beta=5.0, paper_div=False, group_max_inference=False, unrestricted_mask=False, max_pixels=64000000, fast=False, views=8, generator='feature', mlp_hidden=None, cache='runs/cache', device='auto', progress=True)"
)]
#[allow(clippy::too_many_arguments)]
pub fn train<'py>(
    py: Python<'py>,
    data: Option<String>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    cache_only: bool,
    shard: Option<&str>,
    method: &str,
    stop_after_steps: Option<usize>,
    backbone: Option<&str>,
    weights: Option<PathBuf>,
    precision: &str,
    preprocess: &str,
    mask_init: Option<PathBuf>,
    allow_partial: bool,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    weight_decay: f64,
    gamma: f64,
    seed: u64,
    lambda_: f64,
    beta: f64,
    paper_div: bool,
    group_max_inference: bool,
    unrestricted_mask: bool,
    max_pixels: u64,
    fast: bool,
    views: usize,
    generator: &str,
    mlp_hidden: Option<Vec<usize>>,
    cache: PathBuf,
    device: &str,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let flags = training_flags!(
        backbone,
        weights,
        precision,
        preprocess,
        mask_init,
        allow_partial,
        epochs,
        batch_size,
        lr,
        weight_decay,
        gamma,
        seed,
        lambda_,
        beta,
        paper_div,
        group_max_inference,
        unrestricted_mask,
        max_pixels,
        fast,
        views,
        generator,
        mlp_hidden,
        cache
    );
    let method: Method = choice("method", method)?;
    let shard: Option<Shard> = shard
        .map(|s| {
            s.parse()
                .map_err(|e: Error| bad_input(format!("shard: {e}")))
        })
        .transpose()?;
    if shard.is_some() && !cache_only {
        return Err(bad_input("shard applies to cache_only=True"));
    }
    let device = work::device(device)?;
    if cache_only {
        if !flags.fast {
            return Err(bad_input(
                "cache_only=True builds fast mode's cache: pass fast=True",
            ));
        }
        if out.is_some() || resume.is_some() {
            return Err(bad_input(
                "cache_only=True builds the cache alone: it takes no out or resume",
            ));
        }
        let data = data.ok_or_else(|| bad_input("train: data is required"))?;
        return build_cache(py, flags.config(data, method), shard, &device, progress);
    }
    let (cfg, out) = config_and_folder(py, data, out, resume, |data| flags.config(data, method))?;
    let stop = AtomicBool::new(false);
    let bar = work::progress_bar(progress, 0, "images");
    let ran = work::run(
        py,
        &stop,
        &bar,
        "interrupted: finishing the current step and saving",
        || {
            let watch = Watch {
                stop: &stop,
                progress: &bar,
                max_steps: stop_after_steps,
            };
            run::train(&cfg, &out, &watch, &device)
        },
    );
    bar.finish_and_clear();
    train_result(py, ran.output.or_raise()?, ran.interrupted)
}

/// The run's configuration and folder: a new run's from the options, or, with `resume`,
/// the configuration the run folder holds.
fn config_and_folder(
    py: Python<'_>,
    data: Option<String>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    config: impl FnOnce(String) -> TrainConfig,
) -> PyResult<(TrainConfig, PathBuf)> {
    match resume {
        Some(run) => {
            if data.is_some() || out.is_some() {
                return Err(bad_input(
                    "resume continues the run with its own configuration: pass no data or out",
                ));
            }
            Ok((py.detach(|| run::load_config(&run)).or_raise()?, run))
        }
        None => {
            let out = out.ok_or_else(|| bad_input("train: out (the run folder) is required"))?;
            let data = data.ok_or_else(|| bad_input("train: data is required"))?;
            if out.join(run::CONFIG).exists() {
                return Err(bad_input(format!(
                    "{0} already holds a run; pass resume={0:?} to continue it, or choose another out",
                    path_text(&out)
                )));
            }
            Ok((config(data), out))
        }
    }
}

/// What `train` returns for how the run ended; Ctrl-C raises `KeyboardInterrupt` saying
/// how to continue.
fn train_result<'py>(
    py: Python<'py>,
    outcome: RunOutcome,
    interrupted: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let resume_hint = |run: &Path| format!("gfer.train(resume={})", work::py_str(&path_text(run)));
    let none = py.None();
    let result = match outcome {
        RunOutcome::Interrupted { run, epoch, step } => {
            if interrupted {
                return Err(PyKeyboardInterrupt::new_err(format!(
                    "stopped in epoch {} after step {step}; saved. Continue with: {}",
                    epoch + 1,
                    resume_hint(&run)
                )));
            }
            dict!(py, {
                "run" => path_text(&run),
                "finished" => false,
                "bundle" => &none,
                "best" => &none,
                "log" => PyList::empty(py),
                "metrics" => &none,
                "stopped_at" => dict!(py, {"epoch" => epoch + 1, "step" => step}),
            })
        }
        RunOutcome::Finished(report) => {
            if interrupted {
                return Err(PyKeyboardInterrupt::new_err(format!(
                    "interrupted after the run had finished: {}",
                    path_text(&report.bundle)
                )));
            }
            let best = report.run.join(run::BEST_BUNDLE);
            dict!(py, {
                "run" => path_text(&report.run),
                "finished" => true,
                "bundle" => path_text(&report.bundle),
                "best" => best.exists().then(|| path_text(&best)),
                "log" => to_python(py, &report.log)?,
                "metrics" => to_python(py, &report.held_out)?,
                "stopped_at" => &none,
            })
        }
    };
    Ok(result.into_any())
}

/// `train(cache_only=True)`: fast mode's feature cache of (a part of) the data set.
fn build_cache<'py>(
    py: Python<'py>,
    cfg: TrainConfig,
    shard: Option<Shard>,
    device: &candle_core::Device,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let stop = AtomicBool::new(false);
    let bar = work::progress_bar(progress, 0, "images");
    let ran = work::run(py, &stop, &bar, "interrupted: saving the cache", || {
        let watch = Watch {
            stop: &stop,
            progress: &bar,
            max_steps: None,
        };
        run::build_cache(&cfg, shard, &watch, device)
    });
    bar.finish_and_clear();
    let counts = ran.output.or_raise()?;
    if ran.interrupted {
        return Err(PyKeyboardInterrupt::new_err(
            "interrupted: the cache keeps what was encoded; run again to complete it",
        ));
    }
    let count =
        |c: Option<gfer::train::cache::BuildCount>| -> PyResult<Option<Bound<'py, PyDict>>> {
            Ok(match c {
                Some(c) => Some(dict!(py, {"computed" => c.computed, "reused" => c.reused})),
                None => None,
            })
        };
    let cache = cfg.fast.as_ref().map(|f| path_text(&f.cache_dir));
    let counts = dict!(py, {
        "clean" => count(Some(counts.clean))?,
        "views" => count(Some(counts.views))?,
        "mask_clean" => count(counts.mask_clean)?,
        "mask_views" => count(counts.mask_views)?,
    });
    Ok(dict!(py, {"cache" => cache, "counts" => counts}).into_any())
}

/// Evaluate a model bundle on data sets, as ``gfer eval --json``: accuracy, per-class
/// accuracy (recall), macro-F1 and the confusion matrix on each data set's test split
/// (val when it has none).
///
/// Args:
///     model: The model bundle written by ``gfer.train``.
///     data: A data set spec or a list of them, e.g. ``"rafdb:/data/raf-basic"``.
///     weights: The frozen encoder weights the model was trained on.
///     precision: The arithmetic of the frozen encoder's linear layers, ``"f32"``,
///         ``"bf16"``, ``"int8"`` or ``"int8-fast"`` (``--precision``; layer norm, softmax and the
///         residuals stay f32; bf16 and the int8s run on the CPU only).
///     split: The split to evaluate, ``"train"``, ``"val"`` or ``"test"`` (default: test,
///         or val when there is no test split).
///     batch_size: Images per forward pass.
///     max_pixels: Images with more pixels than this are skipped.
///     device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
///         usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
///     progress: Show a progress bar on a terminal.
///
/// Returns:
///     ``{"model": model, "results": {spec: {"split", "metrics", "skipped"}}}``, the
///     object ``gfer eval --json`` prints; ``metrics`` holds ``total``, ``correct``,
///     ``accuracy``, ``per_class_accuracy``, ``macro_f1`` and ``confusion``
///     (``classes``, ``counts[true][predicted]``).
///
/// Raises:
///     GferError: A wrong option, data set or model.
///     OSError: A file could not be read.
///     KeyboardInterrupt: Ctrl-C; the evaluation stopped after its current batch.
#[pyfunction]
#[pyo3(
    signature = (model, data, *, weights=None, precision="f32", split=None, batch_size=64, max_pixels=DecodeLimits::DEFAULT_MAX_PIXELS, device="auto", progress=true),
    text_signature = "(model, data, *, weights=None, precision='f32', split=None, batch_size=64, max_pixels=64000000, device='auto', progress=True)"
)]
#[allow(clippy::too_many_arguments)]
pub fn evaluate<'py>(
    py: Python<'py>,
    model: PathBuf,
    data: &Bound<'py, PyAny>,
    weights: Option<PathBuf>,
    precision: &str,
    split: Option<&str>,
    batch_size: usize,
    max_pixels: u64,
    device: &str,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let precision: Precision = choice("precision", precision)?;
    let specs = strings("data", data, false)?;
    if specs.is_empty() {
        return Err(bad_input("evaluate: data names no data set"));
    }
    let split: Option<Split> = split
        .map(|s| {
            s.parse()
                .map_err(|e: String| bad_input(format!("split: {e}")))
        })
        .transpose()?;
    let device = work::device(device)?;
    let limits = DecodeLimits { max_pixels };
    let batch_size = batch_size.max(1);
    let stop = AtomicBool::new(false);
    let bar = work::progress_bar(progress, 0, "images");
    let model_text = path_text(&model);
    let ran = work::run(
        py,
        &stop,
        &bar,
        "interrupted: stopping after the current batch",
        || -> gfer::Result<Option<Vec<Evaluated>>> {
            let model = ExpressionModel::load(&model, weights.as_deref(), precision, &device)?;
            let mut results = Vec::new();
            for spec in &specs {
                let dataset = gfer::data::open(spec, &Default::default())?;
                let split = match split.or_else(|| dataset.held_out_split()) {
                    Some(split) => split,
                    None => {
                        return Err(Error::config(format!(
                            "{spec} has no test or val split; pass split=\"train\" to use its \
                             training images"
                        )))
                    }
                };
                let samples = dataset.split(split);
                if samples.is_empty() {
                    return Err(Error::config(format!(
                        "{spec} has no images in its {split} split"
                    )));
                }
                bar.set_length(samples.len() as u64);
                bar.set_position(0);
                // One batch at a time (the batches of `gfer eval`), so that Ctrl-C stops
                // between them; the metrics come from the summed confusion matrix.
                let mut confusion = Confusion::new(model.class_names());
                let mut failures = Vec::new();
                for chunk in samples.chunks(batch_size) {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return Ok(None);
                    }
                    let hidden = indicatif::ProgressBar::hidden();
                    let (metrics, failed) =
                        evaluate_images(&model, chunk, batch_size, &limits, &hidden)?;
                    for (row, counts) in confusion.counts.iter_mut().zip(&metrics.confusion.counts)
                    {
                        for (total, count) in row.iter_mut().zip(counts) {
                            *total += count;
                        }
                    }
                    failures.extend(failed);
                    bar.inc(chunk.len() as u64);
                }
                for (what, why) in &failures {
                    tracing::warn!("skipped {what}: {why}");
                }
                results.push((spec.clone(), split, confusion.metrics(), failures.len()));
            }
            Ok(Some(results))
        },
    );
    bar.finish_and_clear();
    let results = match ran.output.or_raise()? {
        Some(results) if !ran.interrupted => results,
        _ => {
            return Err(PyKeyboardInterrupt::new_err(
                "interrupted: the evaluation stopped before its end",
            ))
        }
    };
    let by_spec = PyDict::new(py);
    for (spec, split, metrics, skipped) in results {
        by_spec.set_item(
            spec,
            dict!(py, {
                "split" => split.name(),
                "metrics" => to_python(py, &metrics)?,
                "skipped" => skipped,
            }),
        )?;
    }
    Ok(dict!(py, {"model" => model_text, "results" => by_spec}).into_any())
}

/// One data set's evaluation: its spec, the split scored, the metrics, the images skipped.
type Evaluated = (String, Split, gfer::eval::metrics::Metrics, usize);

/// Train on each source, test on every target: the paper's cross-domain table, as
/// ``gfer protocol``. For every source and method: trains (runs kept under
/// ``out/runs/SOURCE/VARIANT``, so a rerun continues where it stopped), evaluates on every
/// target's test split (val when it has none), and writes ``out/table.md``,
/// ``table.csv``, ``table.json``, ``per_class.md`` and a metrics file and confusion image
/// per cell. The training options are ``gfer.train``'s.
///
/// Args:
///     source: Data sets to train on, ``NAME=SPEC`` (e.g. ``"raf=rafdb:/data/raf-basic"``):
///         a list, or one str with commas between them.
///     target: Data sets to test on, likewise; a target named as the source is seen.
///     method: Methods side by side, each ``METHOD[:full|:fast[:GENERATOR]]``
///         (``"cafe"``, ``"cafe:full"``, ``"cafe:fast:resnet18"``, ``"linear-probe:fast"``):
///         a list or a comma-separated str.
///     out: The protocol's folder.
///     cell: In a job array: run only task K's part of N, ``"K/N"``.
///     merge: Instead of running: write the tables of the protocol in this folder from
///         its finished runs.
///     reference: ``"paper"`` puts the published numbers (Table 1) beside ours.
///     device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
///         usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
///     progress: Show progress bars on a terminal.
///
/// Returns:
///     ``{"out", "complete", "rows", "table", "markdown", "missing", "failed"}``: the
///     folder; whether every run has finished; one dict per row (``method``, ``source``,
///     the accuracy in [0, 1] on each target, ``mean``, ``unseen_mean``, and with
///     ``reference="paper"`` a ``TARGET (paper)`` column of the published %), which
///     ``pandas.DataFrame(rows)`` takes as it is; ``table.json``'s content;
///     ``table.md``'s; the runs not finished and the failed ones
///     (``{"run", "error"}``).
///
/// Raises:
///     GferError: A wrong option, data set, image or weights file.
///     OSError: A file could not be read or written.
///     KeyboardInterrupt: Ctrl-C; the current run was saved, and calling again with the
///         same arguments continues.
#[pyfunction]
#[pyo3(
    signature = (
        source=None, target=None, *, method=None, out=None, cell=None, merge=None,
        reference=None, backbone=None, weights=None, precision="f32", preprocess="cafe",
        mask_init=None,
        allow_partial=false, epochs=Recipe::default().epochs,
        batch_size=Recipe::default().batch_size, lr=Recipe::default().lr,
        weight_decay=Recipe::default().weight_decay, gamma=Recipe::default().gamma,
        seed=Recipe::default().seed, lambda_=CafeConfig::default().lambda,
        beta=CafeConfig::default().beta, paper_div=false, group_max_inference=false,
        unrestricted_mask=false, max_pixels=DecodeLimits::DEFAULT_MAX_PIXELS, fast=false,
        views=FastConfig::default().views, generator="feature", mlp_hidden=None,
        cache=FastConfig::default().cache_dir, device="auto", progress=true
    ),
    text_signature = "(source=None, target=None, *, method='cafe', out=None, cell=None, merge=None, reference=None, backbone=None, weights=None, precision='f32', preprocess='cafe', mask_init=None, allow_partial=False, epochs=60, batch_size=32, lr=0.0002, weight_decay=0.0001, gamma=0.9, seed=3407, lambda_=1.5, beta=5.0, paper_div=False, group_max_inference=False, unrestricted_mask=False, max_pixels=64000000, fast=False, views=8, generator='feature', mlp_hidden=None, cache='runs/cache', device='auto', progress=True)"
)]
#[allow(clippy::too_many_arguments)]
pub fn protocol<'py>(
    py: Python<'py>,
    source: Option<&Bound<'py, PyAny>>,
    target: Option<&Bound<'py, PyAny>>,
    method: Option<&Bound<'py, PyAny>>,
    out: Option<PathBuf>,
    cell: Option<&str>,
    merge: Option<PathBuf>,
    reference: Option<&str>,
    backbone: Option<&str>,
    weights: Option<PathBuf>,
    precision: &str,
    preprocess: &str,
    mask_init: Option<PathBuf>,
    allow_partial: bool,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    weight_decay: f64,
    gamma: f64,
    seed: u64,
    lambda_: f64,
    beta: f64,
    paper_div: bool,
    group_max_inference: bool,
    unrestricted_mask: bool,
    max_pixels: u64,
    fast: bool,
    views: usize,
    generator: &str,
    mlp_hidden: Option<Vec<usize>>,
    cache: PathBuf,
    device: &str,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let flags = training_flags!(
        backbone,
        weights,
        precision,
        preprocess,
        mask_init,
        allow_partial,
        epochs,
        batch_size,
        lr,
        weight_decay,
        gamma,
        seed,
        lambda_,
        beta,
        paper_div,
        group_max_inference,
        unrestricted_mask,
        max_pixels,
        fast,
        views,
        generator,
        mlp_hidden,
        cache
    );
    let reference_paper = match reference {
        None => false,
        Some("paper") => true,
        Some(other) => {
            return Err(bad_input(format!(
                "reference={}: the one reference is 'paper'",
                work::py_str(other)
            )))
        }
    };
    if let Some(folder) = merge {
        if source.is_some() || target.is_some() || out.is_some() || cell.is_some() {
            return Err(bad_input(
                "merge writes the tables of an existing protocol folder: pass no source, \
                 target, out or cell",
            ));
        }
        let merged = py
            .detach(|| {
                let merged = protocol_lib::merge(&folder)?;
                let reference = protocol_lib::read_plan(&folder)?.reference_paper;
                Ok((merged, reference))
            })
            .or_raise()?;
        return protocol_result(py, &folder, &merged.0, merged.1);
    }
    let (Some(source), Some(target)) = (source, target) else {
        return Err(bad_input("protocol: source and target are required"));
    };
    let out = out.ok_or_else(|| bad_input("protocol: out (the protocol's folder) is required"))?;
    let cell: Option<Shard> = cell
        .map(|s| {
            s.parse()
                .map_err(|e: Error| bad_input(format!("cell: {e}")))
        })
        .transpose()?;
    let methods = match method {
        Some(method) => strings("method", method, true)?,
        None => vec!["cafe".to_string()],
    };
    let default = flags.fast.then_some(flags.generator);
    let methods = methods
        .iter()
        .map(|m| MethodVariant::parse(m, default))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| bad_input(format!("method {e}")))?;
    let cfg = ProtocolConfig {
        sources: name_specs(&strings("source", source, true)?),
        targets: name_specs(&strings("target", target, true)?),
        methods,
        base: flags.config(String::new(), Method::Cafe),
        fast: flags.fast_config(),
        out: out.clone(),
        reference_paper,
        cell,
    };
    let device = work::device(device)?;
    let stop = AtomicBool::new(false);
    let bar = work::progress_bar(progress, 0, "images");
    let ran = work::run(
        py,
        &stop,
        &bar,
        "interrupted: finishing the current step and saving",
        || protocol_lib::run(&cfg, &stop, &bar, &device),
    );
    bar.finish_and_clear();
    let merged = ran.output.or_raise()?;
    if ran.interrupted {
        return Err(PyKeyboardInterrupt::new_err(
            "interrupted after the protocol had finished",
        ));
    }
    protocol_result(py, &out, &merged, cfg.reference_paper)
}

/// What `protocol` returns: the table as rows for pandas, as `table.json` and as Markdown,
/// and what is still missing or failed.
fn protocol_result<'py>(
    py: Python<'py>,
    out: &Path,
    merged: &protocol_lib::Merged,
    reference: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let table = &merged.table;
    let rows = PyList::empty(py);
    for row in &table.rows {
        let record = dict!(py, {"method" => &row.method, "source" => &row.source});
        for (target, accuracy) in table.targets.iter().zip(&row.accuracy) {
            record.set_item(target, accuracy)?;
        }
        record.set_item("mean", row.mean())?;
        record.set_item("unseen_mean", table.unseen_mean(row))?;
        if reference {
            for (target, paper) in table.targets.iter().zip(&row.paper) {
                record.set_item(format!("{target} (paper)"), paper)?;
            }
        }
        rows.append(record)?;
    }
    let failed = PyList::empty(py);
    for (run, error) in &merged.failed {
        failed.append(dict!(py, {"run" => run, "error" => error}))?;
    }
    Ok(dict!(py, {
        "out" => path_text(out),
        "complete" => merged.is_complete(),
        "rows" => rows,
        "table" => to_python(py, table)?,
        "markdown" => table.markdown(reference),
        "missing" => &merged.missing,
        "failed" => failed,
    })
    .into_any())
}

/// The image files that inputs name, as ``gfer predict`` expands its arguments: files,
/// folders (searched recursively for image extensions) and glob patterns
/// (``"photos/**/*.jpg"``), sorted and without duplicates.
///
/// Args:
///     inputs: Paths and patterns.
///
/// Returns:
///     The image paths, sorted.
///
/// Raises:
///     GferError: An input names nothing (the message lists each one and why).
#[pyfunction]
#[pyo3(signature = (*inputs))]
pub fn find_images(py: Python<'_>, inputs: Vec<PathBuf>) -> PyResult<Vec<String>> {
    let arguments: Vec<String> = inputs.iter().map(|p| path_text(p)).collect();
    let collected = py.detach(|| gfer::predict::inputs::collect(&arguments));
    let mut problems: Vec<String> = collected
        .missing
        .iter()
        .map(|(input, why)| format!("{input}: {why}"))
        .collect();
    let mut found = Vec::with_capacity(collected.inputs.len());
    for input in collected.inputs {
        match input {
            gfer::predict::inputs::Input::File(path) => found.push(path_text(&path)),
            gfer::predict::inputs::Input::Stdin => {
                problems.push("-: standard input is for the command line; pass bytes".into())
            }
        }
    }
    if !problems.is_empty() {
        return Err(bad_input(problems.join("; ")));
    }
    Ok(found)
}
