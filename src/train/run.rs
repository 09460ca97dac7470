//! One training run from a configuration: open the data set, check it, load the frozen
//! encoder, build the model, train, and write the run folder with its model bundles.
//! `gfer train` and `gfer protocol` both call [`run`].

use crate::backbone::{load_encoder, Backbone, Encoder};
use crate::data::{self, Dataset, Sample, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::image::content_hash;
use crate::image::{Augment, DecodeLimits, Preprocess, Preset};
use crate::model::bundle::{Bundle, BundleMeta, FORMAT_VERSION};
use crate::model::classifier::{Classifier, GeneratorSpec, MaskInput, Method, ModelSpec};
use crate::model::{init_var_builder, resnet, CafeConfig, FrozenResnet};
use crate::train::cache::{self, CacheKey, MaskSource};
use crate::train::cached_source::FastSource;
use crate::train::fit::{self, EvalSource, Outcome, Recipe, TrainContext};
use crate::train::pixels::{LabelledImages, PixelSource};
use crate::train::run_folder::{code_revision, RunDir};
use crate::Expression;
use candle_core::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Everything a run needs; written to the run folder as `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The source data set spec; its train split trains, its test split (or val, when
    /// it has no test split) is evaluated after every epoch.
    pub data: String,
    pub backbone: Option<Backbone>,
    pub weights: Option<PathBuf>,
    pub preprocess: Preset,
    pub method: Method,
    pub cafe: CafeConfig,
    /// ResNet-18 starting weights (MS-Celeb or torchvision), else PyTorch's initialisation.
    pub mask_init: Option<PathBuf>,
    pub allow_partial: bool,
    pub recipe: Recipe,
    pub max_pixels: u64,
    /// Fast mode: train on cached frozen features instead of running the encoder and a
    /// ResNet-18 on every augmented image.
    pub fast: Option<FastConfig>,
}

/// Fast mode's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FastConfig {
    /// Augmented views cached per training image.
    pub views: usize,
    /// What the MLP mask generator reads: the frozen feature (`feature`), the pooled
    /// feature of a frozen ResNet-18 (`resnet18`, weights from `mask_init`), or the mean
    /// patch token of an encoder block (`tokens:LAYER`). Each is cached per view.
    #[serde(default)]
    pub generator: MaskInput,
    /// Hidden widths of the MLP mask generator (empty: one linear layer); `None` takes the
    /// generator's default ([`MaskInput::default_hidden`]: 128 on the encoder's feature
    /// or tokens, none on the ResNet feature).
    #[serde(default)]
    pub hidden: Option<Vec<usize>>,
    /// Where the feature cache lives (shared between runs and methods).
    pub cache_dir: PathBuf,
}

impl Default for FastConfig {
    fn default() -> Self {
        FastConfig {
            views: 8,
            generator: MaskInput::Feature,
            hidden: None,
            cache_dir: PathBuf::from("runs/cache"),
        }
    }
}

impl FastConfig {
    /// The MLP's hidden widths: as given, else the generator's default.
    pub fn hidden_widths(&self) -> Vec<usize> {
        self.hidden
            .clone()
            .unwrap_or_else(|| self.generator.default_hidden())
    }
}

/// What a finished run produced.
pub struct TrainReport {
    pub run: PathBuf,
    /// The final model (`model.safetensors`).
    pub bundle: PathBuf,
    pub log: Vec<fit::EpochLog>,
    pub held_out: Option<Metrics>,
}

pub enum RunOutcome {
    Finished(TrainReport),
    Interrupted {
        run: PathBuf,
        epoch: usize,
        step: usize,
    },
}

pub const CONFIG: &str = "config.json";
pub const FINAL_BUNDLE: &str = "model.safetensors";
pub const BEST_BUNDLE: &str = "best.safetensors";

/// Reads the configuration of an existing run folder (for `--resume`).
pub fn load_config(run: &Path) -> Result<TrainConfig> {
    let path = run.join(CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Data {
        file: path,
        line: None,
        message: format!("not a gfer run configuration: {e}"),
    })
}

/// Decodes every image once, in parallel, and keeps those that decode, with their content
/// hashes; the others are returned with the reason, to be reported (a bad image never
/// stops a run).
pub fn usable_samples<'a>(
    samples: &[&'a Sample],
    limits: &DecodeLimits,
    progress: &indicatif::ProgressBar,
) -> (Vec<&'a Sample>, Vec<String>, Vec<(String, String)>) {
    progress.set_length(samples.len() as u64);
    progress.set_position(0);
    progress.set_message("checking images");
    let results: Vec<std::result::Result<(&Sample, String), (String, String)>> = samples
        .par_iter()
        .map(|s| {
            let r = s
                .source
                .load(limits)
                .map(|image| (*s, content_hash(&image)))
                .map_err(|e| (s.source.describe(), e.to_string()));
            progress.inc(1);
            r
        })
        .collect();
    let mut ok = Vec::new();
    let mut hashes = Vec::new();
    let mut bad = Vec::new();
    for r in results {
        match r {
            Ok((s, h)) => {
                ok.push(s);
                hashes.push(h);
            }
            Err(e) => bad.push(e),
        }
    }
    (ok, hashes, bad)
}

/// The held-out split of a source: test when it has one, else val.
pub fn held_out_split(dataset: &Dataset) -> Option<Split> {
    [Split::Test, Split::Val]
        .into_iter()
        .find(|&s| !dataset.split(s).is_empty())
}

fn labelled(samples: &[&Sample], limits: DecodeLimits) -> LabelledImages {
    LabelledImages {
        sources: samples.iter().map(|s| s.source.clone()).collect(),
        labels: samples.iter().map(|s| s.label.index() as u32).collect(),
        limits,
    }
}

/// A fingerprint of a list of samples (what, which label, which split), so a run records
/// exactly which data it saw.
pub fn samples_fingerprint(samples: &[&Sample]) -> String {
    let mut hasher = blake3::Hasher::new();
    for s in samples {
        hasher.update(s.source.describe().as_bytes());
        hasher.update(&[s.label.index() as u8, s.split as u8, b'\n']);
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// Trains as configured into the run folder `out` (resuming when it holds a checkpoint).
pub fn run(
    cfg: &TrainConfig,
    out: &Path,
    stop: &AtomicBool,
    max_steps: Option<usize>,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<RunOutcome> {
    if let Some(fast) = &cfg.fast {
        if fast.generator == MaskInput::Resnet18
            && cfg.method.uses_generator()
            && cfg.mask_init.is_none()
        {
            return Err(Error::config(
                "--generator resnet18 reads a frozen, pretrained ResNet-18: pass its weights \
                 with --mask-init (resnet18_msceleb.pth or a torchvision state dict)",
            ));
        }
    }
    let run_dir = RunDir::create(out)?;
    let dataset = data::open(&cfg.data, &Default::default())?;
    dataset.check_trainable(Split::Train)?;
    let limits = DecodeLimits {
        max_pixels: cfg.max_pixels,
    };
    let (train, train_hashes, mut skipped) =
        usable_samples(&dataset.split(Split::Train), &limits, progress);
    let held_split = held_out_split(&dataset);
    let (held, held_hashes, held_skipped) = match held_split {
        Some(split) => usable_samples(&dataset.split(split), &limits, progress),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    skipped.extend(held_skipped);
    for (what, why) in &skipped {
        tracing::warn!("skipping an image: {why} ({what})");
    }

    let encoder: Option<Box<dyn Encoder>> = if cfg.method.uses_frozen_features() {
        let weights = cfg.weights.as_deref().ok_or_else(|| {
            Error::config(format!(
                "method {} needs --weights for the frozen encoder",
                cfg.method.name()
            ))
        })?;
        Some(load_encoder(cfg.backbone, weights, device)?)
    } else {
        None
    };
    let input_size = encoder.as_ref().map(|e| e.input_size()).unwrap_or(224) as u32;
    let preprocess = Preprocess::new(cfg.preprocess, input_size);
    let cafe = match &encoder {
        Some(encoder) => cfg.cafe.with_feature_dim(encoder.dim()),
        None => cfg.cafe.clone(),
    };
    let generator = match &cfg.fast {
        None => GeneratorSpec::Resnet {
            widths: cfg.cafe.trunk_widths,
        },
        Some(fast) => {
            if cfg.method == Method::Resnet {
                return Err(Error::config(
                    "fast mode trains on cached frozen features; the plain ResNet method has none",
                ));
            }
            // Methods without a mask generator read F alone: nothing else to cache.
            let input = if cfg.method.uses_generator() {
                fast.generator
            } else {
                MaskInput::Feature
            };
            let input_dim = match (input, &encoder) {
                (MaskInput::Feature, _) => cafe.feature_dim,
                (MaskInput::Resnet18, _) => cfg.cafe.trunk_widths[3],
                (MaskInput::Tokens(layer), Some(encoder)) => {
                    crate::backbone::check_layer(encoder.as_ref(), layer)
                        .map_err(|e| Error::config(format!("--generator tokens:{layer}: {e}")))?;
                    encoder.token_dim()
                }
                (MaskInput::Tokens(_), None) => 0,
            };
            GeneratorSpec::Mlp {
                input: input.spec_name(),
                input_dim,
                hidden: fast.hidden_widths(),
            }
        }
    };
    let spec = ModelSpec::new(cfg.method, cafe, generator);
    let given = match &spec.generator {
        Some(GeneratorSpec::Resnet { .. }) => match &cfg.mask_init {
            Some(path) => {
                resnet::load_checkpoint(path, cfg.cafe.trunk_widths, cfg.allow_partial, device)?
            }
            None => HashMap::new(),
        },
        Some(GeneratorSpec::Mlp { input, .. })
            if MaskInput::from_spec_name(input)? == MaskInput::Resnet18 =>
        {
            let path = cfg
                .mask_init
                .as_deref()
                .ok_or_else(|| Error::config("--generator resnet18 needs --mask-init"))?;
            resnet::load_checkpoint(path, cfg.cafe.trunk_widths, cfg.allow_partial, device)?
                .into_iter()
                .map(|(name, t)| (format!("{}.{name}", FrozenResnet::PREFIX), t))
                .collect()
        }
        _ => HashMap::new(),
    };
    let model = Classifier::new(init_var_builder(given, cfg.recipe.seed, device), &spec)?;

    if !run_dir.path(CONFIG).exists() {
        run_dir.write_json(CONFIG, cfg)?;
        run_dir.write_text("revision.txt", &(code_revision() + "\n"))?;
        run_dir.write_json(
            "data.json",
            &serde_json::json!({
                "spec": cfg.data,
                "train": { "images": train.len(), "fingerprint": samples_fingerprint(&train),
                           "counts": class_counts(&train) },
                "held_out": held_split.map(|s| serde_json::json!({
                    "split": s, "images": held.len(), "fingerprint": samples_fingerprint(&held),
                    "counts": class_counts(&held) })),
                "skipped": skipped.iter().map(|(w, r)| serde_json::json!({"image": w, "reason": r})).collect::<Vec<_>>(),
                "dropped_by_loader": dataset.dropped.len(),
            }),
        )?;
    }

    let (backbone, fingerprint) = match &encoder {
        Some(e) => (e.id().to_string(), e.fingerprint().to_string()),
        None => ("none".to_string(), String::new()),
    };
    let meta = BundleMeta {
        format_version: FORMAT_VERSION,
        gfer_version: env!("CARGO_PKG_VERSION").to_string(),
        backbone,
        backbone_fingerprint: fingerprint,
        feature_dim: spec.cafe.feature_dim,
        preprocess,
        classes: Expression::names(),
        model: serde_json::to_value(&spec).map_err(|e| Error::config(e.to_string()))?,
        training: serde_json::to_value(cfg).map_err(|e| Error::config(e.to_string()))?,
    };
    let mut save_model = |tensors: &HashMap<String, candle_core::Tensor>, which: &str| {
        let name = if which == "best" {
            BEST_BUNDLE
        } else {
            FINAL_BUNDLE
        };
        Bundle {
            origin: String::new(),
            meta: meta.clone(),
            tensors: tensors.clone(),
        }
        .save(&run_dir.path(name))
    };

    let ctx = TrainContext {
        run: &run_dir,
        recipe: &cfg.recipe,
        stop,
        progress,
        device,
        max_steps,
    };
    let labels_of = |samples: &[&Sample]| {
        samples
            .iter()
            .map(|s| s.label.index() as u32)
            .collect::<Vec<_>>()
    };
    let finished = match (&cfg.fast, encoder.as_deref()) {
        (Some(fast), Some(encoder)) => {
            let mask = match model.mask_input() {
                Some(MaskInput::Resnet18) => model.frozen_resnet().map(MaskSource::Resnet),
                Some(MaskInput::Tokens(layer)) => Some(MaskSource::Tokens(layer)),
                _ => None,
            };
            let key = CacheKey {
                encoder,
                preprocess,
                seed: cfg.recipe.seed,
                views: fast.views,
                mask,
            };
            let sources =
                |samples: &[&Sample]| samples.iter().map(|s| s.source.clone()).collect::<Vec<_>>();
            let cached = cache::build(
                &fast.cache_dir,
                &key,
                (&sources(&train), &train_hashes),
                (&sources(&held), &held_hashes),
                &limits,
                stop,
                progress,
            )?;
            tracing::info!("feature cache: {}", cached.counts);
            let mut source = FastSource::new(
                &cached.views,
                &train_hashes,
                labels_of(&train),
                cfg.recipe.seed,
                device,
            )?;
            let mut held_source = FastSource::new(
                &cached.clean,
                &held_hashes,
                labels_of(&held),
                cfg.recipe.seed,
                device,
            )?;
            if let (Some(views), Some(clean)) = (&cached.mask_views, &cached.mask_clean) {
                source = source.with_mask_input(views, &train_hashes)?;
                held_source = held_source.with_mask_input(clean, &held_hashes)?;
            }
            let held_ref: Option<&dyn EvalSource> = if held.is_empty() {
                None
            } else {
                Some(&held_source)
            };
            let outcome = fit::train(&ctx, &model, &source, held_ref, &mut save_model)?;
            finish(outcome, &model, held_ref)?
        }
        (Some(_), None) => {
            return Err(Error::config(
                "fast mode needs a frozen encoder (--weights)",
            ))
        }
        (None, encoder) => {
            let pixels = |samples: &[&Sample]| PixelSource {
                images: labelled(samples, limits),
                encoder,
                preprocess,
                augment: Augment::default(),
                seed: cfg.recipe.seed,
                device: device.clone(),
            };
            let source = pixels(&train);
            let held_source = pixels(&held);
            let held_ref: Option<&dyn EvalSource> = if held.is_empty() {
                None
            } else {
                Some(&held_source)
            };
            let outcome = fit::train(&ctx, &model, &source, held_ref, &mut save_model)?;
            finish(outcome, &model, held_ref)?
        }
    };
    match finished {
        Err((epoch, step)) => Ok(RunOutcome::Interrupted {
            run: out.to_path_buf(),
            epoch,
            step,
        }),
        Ok((log, held_out)) => {
            write_report(&run_dir, cfg, &log, held_out.as_ref())?;
            Ok(RunOutcome::Finished(TrainReport {
                run: out.to_path_buf(),
                bundle: run_dir.path(FINAL_BUNDLE),
                log,
                held_out,
            }))
        }
    }
}

/// The training log and final held-out metrics of a finished run, or the (epoch, step)
/// where an interrupted run stopped.
type Finished = std::result::Result<(Vec<fit::EpochLog>, Option<Metrics>), (usize, usize)>;

fn finish(
    outcome: Outcome,
    model: &Classifier,
    held_out: Option<&dyn EvalSource>,
) -> Result<Finished> {
    Ok(match outcome {
        Outcome::Interrupted { epoch, step } => Err((epoch, step)),
        Outcome::Finished { log } => {
            let metrics = match held_out {
                Some(h) => Some(fit::evaluate(model, h, 64, Expression::names())?),
                None => None,
            };
            Ok((log, metrics))
        }
    })
}

fn class_counts(samples: &[&Sample]) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for e in Expression::ALL {
        counts.insert(
            e.name().to_string(),
            samples.iter().filter(|s| s.label == e).count().into(),
        );
    }
    counts.into()
}

fn write_report(
    run: &RunDir,
    cfg: &TrainConfig,
    log: &[fit::EpochLog],
    held_out: Option<&Metrics>,
) -> Result<()> {
    let mut text = format!(
        "# gfer training run\n\nsource `{}`, method `{}`, {} epochs, batch {}, lr {}, seed {}\n\n\
         | epoch | loss | cls | sep | div | train acc | held-out acc | lr | img/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        cfg.data,
        cfg.method.name(),
        cfg.recipe.epochs,
        cfg.recipe.batch_size,
        cfg.recipe.lr,
        cfg.recipe.seed
    );
    for e in log {
        text.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.2}% | {} | {:.2e} | {:.1} |\n",
            e.epoch,
            e.loss,
            e.loss_cls,
            e.loss_sep,
            e.loss_div,
            100.0 * e.train_accuracy,
            e.eval_accuracy
                .map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(|| "-".into()),
            e.lr,
            e.images_per_second
        ));
    }
    if let Some(m) = held_out {
        let mut m = m.clone();
        m.confusion.classes = Expression::names();
        text.push_str(&format!(
            "\n## Final model on the held-out split\n\n```\n{}```\n",
            m.to_table()
        ));
    }
    run.write_text("report.md", &text)
}
