//! One training run from a configuration, in the steps of [`train`]: check the options,
//! open the data set and set its unusable images aside, load the frozen encoder, build the
//! model, write the run folder's metadata, train (on pixels, or in fast mode on the
//! feature cache), and write the report. `gfer train` and `gfer protocol` both call it.

use crate::backbone::{check_layer, load_encoder, Backbone, Encoder, Precision};
use crate::data::{
    self, samples_fingerprint, usable_samples, Dataset, Sample, Shard, Split, Usable,
};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::eval::{evaluate, EvalSource};
use crate::image::{Augment, DecodeLimits, Preprocess, Preset};
use crate::model::bundle::{Bundle, BundleMeta, FORMAT_VERSION};
use crate::model::classifier::{GeneratorSpec, MaskInput, Method};
use crate::model::{init_var_builder, resnet, CafeConfig, Classifier, FrozenResnet, ModelSpec};
use crate::train::cache::{self, Cache, CacheCounts, CacheImages, CacheKey, MaskSource};
use crate::train::cached_source::CachedSource;
pub use crate::train::fit::Watch;
use crate::train::fit::{self, BatchSource, Outcome, Recipe, Snapshot, TrainContext};
use crate::train::pixels::{LabelledImages, PixelSource};
use crate::train::run_folder::{code_revision, RunFolder};
use crate::Expression;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Everything a run needs; written to the run folder as `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The source data set spec; its train split trains, its test split (or val, when
    /// it has no test split) is evaluated after every epoch.
    pub data: String,
    pub backbone: Option<Backbone>,
    pub weights: Option<PathBuf>,
    /// The arithmetic of the frozen encoder's linear layers (runs written before it was
    /// recorded were f32).
    #[serde(default)]
    pub precision: Precision,
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

/// Trains as configured into the run folder `out` (resuming when it holds a checkpoint).
pub fn train(cfg: &TrainConfig, out: &Path, watch: &Watch, device: &Device) -> Result<RunOutcome> {
    check_options(cfg)?;
    let folder = RunFolder::create(out)?;
    let dataset = data::open(&cfg.data, &Default::default())?;
    dataset.check_trainable(Split::Train)?;
    let data = RunData::sort(&dataset, cfg, None, watch.progress);
    let encoder = frozen_encoder(cfg, device)?;
    let model = build_model(cfg, encoder.as_deref(), device)?;
    if !folder.path(CONFIG).exists() {
        write_metadata(&folder, cfg, &dataset, &data)?;
    }
    let bundles = BundleWriter::new(&folder, cfg, &dataset, &model.spec, encoder.as_deref())?;
    let ctx = TrainContext {
        run: &folder,
        recipe: &cfg.recipe,
        watch,
        device,
    };
    let trained = match (&cfg.fast, encoder.as_deref()) {
        (Some(fast), Some(encoder)) => {
            train_fast(&ctx, cfg, fast, encoder, &model, &data, &bundles)?
        }
        (Some(_), None) => {
            return Err(Error::config(
                "fast mode needs a frozen encoder (--weights)",
            ))
        }
        (None, encoder) => train_on_pixels(&ctx, cfg, encoder, &model, &data, &bundles)?,
    };
    match trained {
        (Outcome::Interrupted { epoch, step }, _) => Ok(RunOutcome::Interrupted {
            run: out.to_path_buf(),
            epoch,
            step,
        }),
        (Outcome::Finished { log }, held_out) => {
            write_report(&folder, cfg, &log, held_out.as_ref())?;
            Ok(RunOutcome::Finished(TrainReport {
                run: out.to_path_buf(),
                bundle: folder.path(FINAL_BUNDLE),
                log,
                held_out,
            }))
        }
    }
}

/// Combinations refused before anything is read.
fn check_options(cfg: &TrainConfig) -> Result<()> {
    let Some(fast) = &cfg.fast else {
        return Ok(());
    };
    if fast.generator == MaskInput::Resnet18
        && cfg.method.uses_generator()
        && cfg.mask_init.is_none()
    {
        return Err(Error::config(
            "--generator resnet18 reads a frozen, pretrained ResNet-18: pass its weights \
             with --mask-init (resnet18_msceleb.pth or a torchvision state dict)",
        ));
    }
    if cfg.method == Method::Resnet {
        return Err(Error::config(
            "fast mode trains on cached frozen features; the plain ResNet method has none",
        ));
    }
    Ok(())
}

/// The training split and the held-out one (test, else val), each with its usable
/// samples and their content hashes; the images set aside are logged.
struct RunData<'a> {
    train: Usable<'a>,
    held_split: Option<Split>,
    held: Usable<'a>,
    limits: DecodeLimits,
}

impl<'a> RunData<'a> {
    /// The samples of the run, or with `shard` only that part of each split.
    fn sort(
        dataset: &'a Dataset,
        cfg: &TrainConfig,
        shard: Option<Shard>,
        progress: &indicatif::ProgressBar,
    ) -> Self {
        let limits = DecodeLimits {
            max_pixels: cfg.max_pixels,
        };
        let part = |samples: Vec<&'a Sample>| match shard {
            Some(shard) => shard.select(&samples),
            None => samples,
        };
        let train = usable_samples(&part(dataset.split(Split::Train)), &limits, progress);
        let held_split = dataset.held_out_split();
        let held_samples = held_split.map(|s| dataset.split(s)).unwrap_or_default();
        let held = usable_samples(&part(held_samples), &limits, progress);
        for (what, why) in train.skipped.iter().chain(&held.skipped) {
            tracing::warn!("skipping an image: {why} ({what})");
        }
        RunData {
            train,
            held_split,
            held,
            limits,
        }
    }
}

fn frozen_encoder(cfg: &TrainConfig, device: &Device) -> Result<Option<Box<dyn Encoder>>> {
    if !cfg.method.uses_frozen_features() {
        return Ok(None);
    }
    let weights = cfg.weights.as_deref().ok_or_else(|| {
        Error::config(format!(
            "method {} needs --weights for the frozen encoder",
            cfg.method.name()
        ))
    })?;
    Ok(Some(load_encoder(
        cfg.backbone,
        weights,
        device,
        cfg.precision,
    )?))
}

/// The model the configuration describes: its ResNet-18 (the mask generator, or the
/// frozen one a fast-mode generator reads) from `--mask-init` when given, every other
/// tensor initialised from the seed.
fn build_model(
    cfg: &TrainConfig,
    encoder: Option<&dyn Encoder>,
    device: &Device,
) -> Result<Classifier> {
    let cafe = match encoder {
        Some(encoder) => cfg.cafe.with_feature_dim(encoder.dim()),
        None => cfg.cafe.clone(),
    };
    let generator = match &cfg.fast {
        None => GeneratorSpec::Resnet {
            widths: cfg.cafe.trunk_widths,
        },
        Some(fast) => fast_generator(cfg, fast, &cafe, encoder)?,
    };
    let spec = ModelSpec::new(cfg.method, cafe, generator);
    let resnet_under = |prefix: &str| -> Result<HashMap<String, Tensor>> {
        let Some(path) = &cfg.mask_init else {
            return Ok(HashMap::new());
        };
        let widths = cfg.cafe.trunk_widths;
        Ok(
            resnet::load_checkpoint(path, widths, cfg.allow_partial, device)?
                .into_iter()
                .map(|(name, t)| (format!("{prefix}{name}"), t))
                .collect(),
        )
    };
    let given = match &spec.generator {
        Some(GeneratorSpec::Resnet { .. }) => resnet_under("")?,
        Some(GeneratorSpec::Mlp { input, .. })
            if MaskInput::from_spec_name(input)? == MaskInput::Resnet18 =>
        {
            resnet_under(&format!("{}.", FrozenResnet::PREFIX))?
        }
        _ => HashMap::new(),
    };
    Classifier::new(init_var_builder(given, cfg.recipe.seed, device), &spec)
}

/// Fast mode's MLP mask generator: what it reads and how wide that is.
fn fast_generator(
    cfg: &TrainConfig,
    fast: &FastConfig,
    cafe: &CafeConfig,
    encoder: Option<&dyn Encoder>,
) -> Result<GeneratorSpec> {
    // Methods without a mask generator read F alone: nothing else to cache.
    let input = if cfg.method.uses_generator() {
        fast.generator
    } else {
        MaskInput::Feature
    };
    let input_dim = match (input, encoder) {
        (MaskInput::Feature, _) => cafe.feature_dim,
        (MaskInput::Resnet18, _) => cfg.cafe.trunk_widths[3],
        (MaskInput::Tokens(layer), Some(encoder)) => {
            check_layer(encoder, layer)
                .map_err(|e| Error::config(format!("--generator tokens:{layer}: {e}")))?;
            encoder.token_dim()
        }
        (MaskInput::Tokens(_), None) => 0,
    };
    Ok(GeneratorSpec::Mlp {
        input: input.spec_name(),
        input_dim,
        hidden: fast.hidden_widths(),
    })
}

/// `config.json`, `revision.txt` and `data.json`: what the run is, from which code, on
/// exactly which images.
fn write_metadata(
    folder: &RunFolder,
    cfg: &TrainConfig,
    dataset: &Dataset,
    data: &RunData,
) -> Result<()> {
    folder.write_json(CONFIG, cfg)?;
    folder.write_text("revision.txt", &(code_revision() + "\n"))?;
    let (train, held) = (&data.train.samples, &data.held.samples);
    let skipped = data.train.skipped.iter().chain(&data.held.skipped);
    folder.write_json(
        "data.json",
        &serde_json::json!({
            "spec": cfg.data,
            "train": { "images": train.len(), "fingerprint": samples_fingerprint(train),
                       "counts": class_counts(train) },
            "held_out": data.held_split.map(|s| serde_json::json!({
                "split": s, "images": held.len(), "fingerprint": samples_fingerprint(held),
                "counts": class_counts(held) })),
            "skipped": skipped.map(|(w, r)| serde_json::json!({"image": w, "reason": r})).collect::<Vec<_>>(),
            "dropped_by_loader": dataset.dropped.len(),
        }),
    )
}

/// Writes the run's model bundles: the metadata every bundle of the run shares, and the
/// tensors the loop hands over.
struct BundleWriter<'a> {
    folder: &'a RunFolder,
    meta: BundleMeta,
}

impl<'a> BundleWriter<'a> {
    fn new(
        folder: &'a RunFolder,
        cfg: &TrainConfig,
        dataset: &Dataset,
        spec: &ModelSpec,
        encoder: Option<&dyn Encoder>,
    ) -> Result<Self> {
        let (backbone, fingerprint) = match encoder {
            Some(e) => (e.id().to_string(), e.fingerprint().to_string()),
            None => ("none".to_string(), String::new()),
        };
        let input_size = encoder.map(|e| e.input_size()).unwrap_or(224) as u32;
        let json = |value: serde_json::Result<serde_json::Value>| {
            value.map_err(|e| Error::internal(format!("bundle metadata: {e}")))
        };
        Ok(BundleWriter {
            folder,
            meta: BundleMeta {
                format_version: FORMAT_VERSION,
                gfer_version: env!("CARGO_PKG_VERSION").to_string(),
                backbone,
                backbone_fingerprint: fingerprint,
                feature_dim: spec.cafe.feature_dim,
                preprocess: Preprocess::new(cfg.preprocess, input_size),
                classes: Expression::names(),
                model: json(serde_json::to_value(spec))?,
                training: json(serde_json::to_value(cfg))?,
                faces: dataset.face_cropping.clone(),
            },
        })
    }

    fn preprocess(&self) -> Preprocess {
        self.meta.preprocess
    }

    fn save(&self, tensors: &HashMap<String, Tensor>, snapshot: Snapshot) -> Result<()> {
        let name = match snapshot {
            Snapshot::Best => BEST_BUNDLE,
            Snapshot::Final => FINAL_BUNDLE,
        };
        Bundle {
            origin: String::new(),
            meta: self.meta.clone(),
            tensors: tensors.clone(),
        }
        .save(&self.folder.path(name))
    }
}

fn labels_of(samples: &[&Sample]) -> Vec<u32> {
    samples.iter().map(|s| s.label.index() as u32).collect()
}

/// Fast mode: builds (or completes) the feature cache, then trains on it.
fn train_fast(
    ctx: &TrainContext,
    cfg: &TrainConfig,
    fast: &FastConfig,
    encoder: &dyn Encoder,
    model: &Classifier,
    data: &RunData,
    bundles: &BundleWriter,
) -> Result<(Outcome, Option<Metrics>)> {
    let cached = build_run_cache(cfg, fast, encoder, model, data, ctx.watch)?;
    tracing::info!("feature cache: {}", cached.counts);
    let (train, held) = (&data.train, &data.held);
    let seed = cfg.recipe.seed;
    let labels = labels_of(&train.samples);
    let mut source = CachedSource::new(&cached.views, &train.hashes, labels, seed, ctx.device)?;
    let labels = labels_of(&held.samples);
    let mut held_source = CachedSource::new(&cached.clean, &held.hashes, labels, seed, ctx.device)?;
    if let (Some(views), Some(clean)) = (&cached.mask_views, &cached.mask_clean) {
        source = source.with_mask_input(views, &train.hashes)?;
        held_source = held_source.with_mask_input(clean, &held.hashes)?;
    }
    let held_out = (!held.samples.is_empty()).then_some(&held_source as &dyn EvalSource);
    train_and_score(ctx, model, &source, held_out, bundles)
}

/// Fast mode's cache of the run's images: clean views of the training and held-out images,
/// augmented views of the training images.
fn build_run_cache(
    cfg: &TrainConfig,
    fast: &FastConfig,
    encoder: &dyn Encoder,
    model: &Classifier,
    data: &RunData,
    watch: &Watch,
) -> Result<Cache> {
    let key = CacheKey {
        encoder,
        preprocess: Preprocess::new(cfg.preprocess, encoder.input_size() as u32),
        seed: cfg.recipe.seed,
        views: fast.views,
        mask: MaskSource::for_model(model),
    };
    let (train_sources, held_sources) = (data.train.sources(), data.held.sources());
    cache::build(
        &fast.cache_dir,
        &key,
        CacheImages {
            sources: &train_sources,
            hashes: &data.train.hashes,
            limits: &data.limits,
        },
        CacheImages {
            sources: &held_sources,
            hashes: &data.held.hashes,
            limits: &data.limits,
        },
        watch.stop,
        watch.progress,
    )
}

/// Builds (or completes) fast mode's feature cache for the run `cfg` describes, without
/// training: with `shard`, only that part of each split's images, so that the tasks of a
/// job array build the cache of a large data set together and the run then finds every
/// image cached.
pub fn build_cache(
    cfg: &TrainConfig,
    shard: Option<Shard>,
    watch: &Watch,
    device: &Device,
) -> Result<CacheCounts> {
    check_options(cfg)?;
    let fast = cfg
        .fast
        .as_ref()
        .ok_or_else(|| Error::config("only fast mode has a feature cache to build (--fast)"))?;
    let dataset = data::open(&cfg.data, &Default::default())?;
    let data = RunData::sort(&dataset, cfg, shard, watch.progress);
    let encoder = frozen_encoder(cfg, device)?
        .ok_or_else(|| Error::config("fast mode needs a frozen encoder (--weights)"))?;
    let model = build_model(cfg, Some(encoder.as_ref()), device)?;
    let cached = build_run_cache(cfg, fast, encoder.as_ref(), &model, &data, watch)?;
    Ok(cached.counts)
}

/// The full recipe: every step decodes, augments and encodes its images.
fn train_on_pixels(
    ctx: &TrainContext,
    cfg: &TrainConfig,
    encoder: Option<&dyn Encoder>,
    model: &Classifier,
    data: &RunData,
    bundles: &BundleWriter,
) -> Result<(Outcome, Option<Metrics>)> {
    let pixels = |usable: &Usable| PixelSource {
        images: LabelledImages::new(&usable.samples, data.limits),
        encoder,
        preprocess: bundles.preprocess(),
        augment: Augment::default(),
        seed: cfg.recipe.seed,
        device: ctx.device.clone(),
    };
    let source = pixels(&data.train);
    let held = pixels(&data.held);
    let held_out = (!data.held.samples.is_empty()).then_some(&held as &dyn EvalSource);
    train_and_score(ctx, model, &source, held_out, bundles)
}

/// Trains, and scores the final model on the held-out split when the run finished.
fn train_and_score(
    ctx: &TrainContext,
    model: &Classifier,
    source: &dyn BatchSource,
    held_out: Option<&dyn EvalSource>,
    bundles: &BundleWriter,
) -> Result<(Outcome, Option<Metrics>)> {
    let outcome = fit::train(ctx, model, source, held_out, &mut |tensors, snapshot| {
        bundles.save(tensors, snapshot)
    })?;
    let metrics = match (&outcome, held_out) {
        (Outcome::Finished { .. }, Some(held_out)) => {
            Some(evaluate(model, held_out, 64, Expression::names())?)
        }
        _ => None,
    };
    Ok((outcome, metrics))
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
    run: &RunFolder,
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
