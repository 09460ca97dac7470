//! The paper's experiment in one call: for every source data set and every method, train
//! on the source's train split, evaluate on every target's held-out split, and write the
//! sources x targets accuracy table (Markdown, CSV, JSON), per-class tables and
//! confusion-matrix images for every cell ([`cells`]).
//!
//! A method runs in one or more variants ([`MethodVariant`]): the full recipe, or fast
//! mode with one of its mask generators, so both come out side by side in one table; each
//! variant has its own run folder and row label (`cafe:full`, `cafe:fast`,
//! `cafe:fast:resnet18`, ...).
//!
//! Frozen features of the evaluation images are cached (in `OUT/cache`, shared by every
//! method and, in fast mode, with training), so each image is encoded once per backbone.
//!
//! The runs (one per source and method variant) are independent, so the protocol also
//! runs as a job array, every task on one shared folder: task K of N (`--cell K/N`) takes
//! every N-th run from the K-th, in the order of [`runs`] (sources as given, then methods
//! as given). Each run writes its cells; the tables are merged from the cells
//! ([`merge`]) by every task as it ends, so the last one writes the whole table, or by
//! `gfer protocol --merge OUT`. `OUT/protocol.json` records the configuration, and a task
//! given another one is refused. A task killed midway is resumed by running it again:
//! finished runs are skipped, a run's own checkpoint resumes it, and the shared caches
//! and run folders are locked ([`FileLock`]) so that tasks never write them at once.

mod cells;
mod merge;
mod variants;

pub use merge::{merge, Merged};
pub use variants::{name_specs, MethodVariant, NamedDataset};

use crate::backbone::{load_encoder, Encoder};
use crate::data::Shard;
use crate::data::{self, usable_samples, Dataset, ImageSource, Split, Usable};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::metrics::Metrics;
use crate::eval::{evaluate, evaluate_images};
use crate::formats::{write_file_atomically, FileLock};
use crate::image::{DecodeLimits, Preprocess};
use crate::model::classifier::GeneratorSpec;
use crate::model::inference::ExpressionModel;
use crate::train::cache::{self, CacheImages, CacheKey, CachedFeatures, MaskSource};
use crate::train::cached_source::CachedSource;
use crate::train::pixels::LabelledImages;
use crate::train::run::{self, FastConfig, RunOutcome, TrainConfig, Watch};
use candle_core::Device;
use cells::Cell;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProtocolConfig {
    pub sources: Vec<NamedDataset>,
    pub targets: Vec<NamedDataset>,
    /// Methods and variants, each a row per source (duplicates by label are run once).
    pub methods: Vec<MethodVariant>,
    /// The training configuration of every run; `data`, `method` and `fast` are set per
    /// run from the method's variant.
    pub base: TrainConfig,
    /// Settings of the fast variants (views, MLP widths); their generator comes from the
    /// variant and their cache is `OUT/cache`.
    pub fast: FastConfig,
    /// The protocol's folder (not recorded: it is where the record is).
    #[serde(skip)]
    pub out: PathBuf,
    /// Put the paper's published numbers beside ours.
    pub reference_paper: bool,
    /// This task's part of the runs, in a job array; `None`: every run.
    #[serde(skip)]
    pub cell: Option<Shard>,
}

/// The configuration's record in the protocol's folder.
const PLAN: &str = "protocol.json";
/// In a run's folder: why it failed, written by the task that ran it.
const FAILED: &str = "failed.txt";

impl ProtocolConfig {
    fn cache_dir(&self) -> PathBuf {
        self.out.join("cache")
    }

    fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.base.max_pixels,
        }
    }

    /// The method variants in the order given, each once.
    fn variants(&self) -> Vec<MethodVariant> {
        let mut variants: Vec<MethodVariant> = Vec::new();
        for v in &self.methods {
            if !variants.iter().any(|w| w.label() == v.label()) {
                variants.push(*v);
            }
        }
        variants
    }
}

/// One run of the protocol: a method variant trained on a source, then scored on every
/// target.
pub struct Run<'c> {
    pub source: &'c NamedDataset,
    pub variant: MethodVariant,
}

impl Run<'_> {
    /// `cafe:fast on raf`.
    pub fn describe(&self) -> String {
        format!("{} on {}", self.variant.label(), self.source.name)
    }

    /// `OUT/runs/SOURCE/VARIANT`.
    fn dir(&self, cfg: &ProtocolConfig) -> PathBuf {
        cfg.out
            .join("runs")
            .join(&self.source.name)
            .join(self.variant.slug())
    }

    /// Whether every target's cell is written.
    fn is_done(&self, cfg: &ProtocolConfig) -> bool {
        cfg.targets.iter().all(|target| {
            cells::cell_stem(&cfg.out, self.variant, &self.source.name, &target.name)
                .with_extension("json")
                .exists()
        })
    }
}

/// Every run of the protocol in its fixed order: sources as given, and for each the
/// method variants as given (each label once). `--cell K/N` takes the i-th run when
/// i mod N = K.
pub fn runs(cfg: &ProtocolConfig) -> Vec<Run<'_>> {
    let variants = cfg.variants();
    cfg.sources
        .iter()
        .flat_map(|source| variants.iter().map(move |&variant| Run { source, variant }))
        .collect()
}

/// Runs this task's part of the protocol (all of it without `cfg.cell`) and merges the
/// tables from every finished run; complete once every task has finished.
pub fn run(
    cfg: &ProtocolConfig,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<Merged> {
    if cfg.sources.is_empty() || cfg.targets.is_empty() || cfg.methods.is_empty() {
        return Err(Error::config(
            "the protocol needs at least one source, one target and one method",
        ));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    record_plan(cfg)?;
    let mine: Vec<Run> = runs(cfg)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| cfg.cell.is_none_or(|cell| cell.contains(*i)))
        .map(|(_, run)| run)
        .filter(|run| !run.is_done(cfg))
        .collect();
    if !mine.is_empty() {
        run_cells(cfg, &mine, stop, progress, device)?;
    }
    merge::merge_plan(cfg)
}

/// Writes the configuration to `OUT/protocol.json`, or checks that the one there is the
/// same: the tasks of one protocol share one configuration.
fn record_plan(cfg: &ProtocolConfig) -> Result<()> {
    let path = cfg.out.join(PLAN);
    let plan = serde_json::to_value(cfg).map_err(|e| Error::internal(format!("{PLAN}: {e}")))?;
    let _lock = FileLock::acquire(&path, "write")?;
    if path.exists() {
        let recorded = read_plan(&cfg.out)?;
        let recorded =
            serde_json::to_value(&recorded).map_err(|e| Error::internal(format!("{PLAN}: {e}")))?;
        if recorded != plan {
            return Err(Error::config(format!(
                "{} records another configuration of sources, targets, methods or training \
                 options; run the same command in every task, or choose another --out",
                path.display()
            )));
        }
        return Ok(());
    }
    let text =
        serde_json::to_string_pretty(&plan).map_err(|e| Error::internal(format!("{PLAN}: {e}")))?;
    write_file_atomically(&path, (text + "\n").as_bytes())
}

/// The configuration recorded in the protocol's folder `out`.
pub fn read_plan(out: &Path) -> Result<ProtocolConfig> {
    let path = out.join(PLAN);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut cfg: ProtocolConfig = serde_json::from_str(&text).map_err(|e| Error::Data {
        file: path.clone(),
        line: None,
        message: format!("not a gfer protocol record: {e}"),
    })?;
    cfg.out = out.to_path_buf();
    Ok(cfg)
}

/// Trains and scores `runs`, writing their cells. A run that fails is recorded in its
/// folder (`failed.txt`) and stops the task.
fn run_cells(
    cfg: &ProtocolConfig,
    runs: &[Run],
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<()> {
    // Open everything first, so a bad spec or an empty split is reported before training.
    let opened = open_all(cfg.sources.iter().chain(&cfg.targets))?;
    let (sources, targets) = opened.split_at(cfg.sources.len());
    for (_, dataset) in sources {
        dataset.check_trainable(Split::Train)?;
    }
    let targets = targets
        .iter()
        .map(|(named, dataset)| Target::open(named, dataset, cfg.limits(), progress))
        .collect::<Result<Vec<_>>>()?;
    let encoder = match &cfg.base.weights {
        Some(w) => Some(load_encoder(
            cfg.base.backbone,
            w,
            device,
            cfg.base.precision,
        )?),
        None => None,
    };
    let features = match encoder.as_deref() {
        Some(encoder) => Some(TargetFeatures::build(
            cfg, encoder, &targets, stop, progress,
        )?),
        None => None,
    };
    for run in runs {
        let dir = run.dir(cfg);
        // One task at a time in a run folder; another may have finished it meanwhile.
        let _lock = FileLock::acquire(&dir, "run")?;
        if run.is_done(cfg) {
            continue;
        }
        let failed = dir.join(FAILED);
        let scored = train_and_score(
            cfg,
            run,
            &targets,
            features.as_ref(),
            stop,
            progress,
            device,
        );
        match scored {
            Ok(()) if failed.exists() => {
                std::fs::remove_file(&failed).map_err(|e| Error::io(&failed, e))?
            }
            Ok(()) => {}
            Err(e) => {
                if e.kind() != ErrorKind::Interrupted {
                    write_file_atomically(&failed, format!("{e}\n").as_bytes())?;
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Trains one run's model (or finds it trained) and writes its cell on every target.
fn train_and_score(
    cfg: &ProtocolConfig,
    run: &Run,
    targets: &[Target],
    features: Option<&TargetFeatures>,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<()> {
    let bundle = train_cell_model(cfg, run, stop, progress, device)?;
    let model = ExpressionModel::load(
        &bundle,
        cfg.base.weights.as_deref(),
        cfg.base.precision,
        device,
    )?;
    let mask = match (MaskSource::for_model(model.classifier()), features) {
        (Some(mask), Some(features)) => Some(features.mask_input(mask, stop, progress)?),
        _ => None,
    };
    for target in targets {
        let metrics = score(&model, target, features, mask.as_ref(), progress)?;
        let cell = Cell {
            method: run.variant.label(),
            source: run.source.clone(),
            target: target.named.clone(),
            split: target.split.to_string(),
            metrics,
        };
        cells::write_cell(&cfg.out, run.variant, &cell)?;
    }
    Ok(())
}

/// Every named data set with its data set, in order, each spec opened once.
fn open_all<'c>(
    names: impl Iterator<Item = &'c NamedDataset>,
) -> Result<Vec<(&'c NamedDataset, Rc<Dataset>)>> {
    let mut by_spec: HashMap<&str, Rc<Dataset>> = HashMap::new();
    names
        .map(|named| {
            let dataset = match by_spec.get(named.spec.as_str()) {
                Some(dataset) => dataset.clone(),
                None => {
                    let dataset = Rc::new(data::open(&named.spec, &Default::default())?);
                    by_spec.insert(&named.spec, dataset.clone());
                    dataset
                }
            };
            Ok((named, dataset))
        })
        .collect()
}

/// A target: the usable images of its held-out split, labelled, with content hashes.
struct Target<'a> {
    named: &'a NamedDataset,
    split: Split,
    usable: Usable<'a>,
    images: LabelledImages,
}

impl<'a> Target<'a> {
    fn open(
        named: &'a NamedDataset,
        dataset: &'a Dataset,
        limits: DecodeLimits,
        progress: &indicatif::ProgressBar,
    ) -> Result<Self> {
        let split = dataset.held_out_split().ok_or_else(|| Error::Dataset {
            spec: named.spec.clone(),
            message: "has no test or val split to evaluate on".to_string(),
        })?;
        let usable = usable_samples(&dataset.split(split), &limits, progress);
        for (what, why) in &usable.skipped {
            tracing::warn!("target {}: skipping {what}: {why}", named.name);
        }
        let images = LabelledImages::new(&usable.samples, limits);
        Ok(Target {
            named,
            split,
            usable,
            images,
        })
    }
}

/// The frozen features of every target image, cached in `OUT/cache` (shared by every
/// method and, in fast mode, with training), and how they were computed.
struct TargetFeatures<'e> {
    encoder: &'e dyn Encoder,
    seed: u64,
    views: usize,
    dir: PathBuf,
    preprocess: Preprocess,
    limits: DecodeLimits,
    /// Every target's images, in target order.
    sources: Vec<ImageSource>,
    hashes: Vec<String>,
    clean: CachedFeatures,
}

impl<'e> TargetFeatures<'e> {
    fn build(
        cfg: &ProtocolConfig,
        encoder: &'e dyn Encoder,
        targets: &[Target],
        stop: &AtomicBool,
        progress: &indicatif::ProgressBar,
    ) -> Result<Self> {
        let sources: Vec<ImageSource> = targets.iter().flat_map(|t| t.usable.sources()).collect();
        let hashes: Vec<String> = targets
            .iter()
            .flat_map(|t| t.usable.hashes.clone())
            .collect();
        let (dir, limits) = (cfg.cache_dir(), cfg.limits());
        let key = CacheKey {
            encoder,
            preprocess: Preprocess::new(cfg.base.preprocess, encoder.input_size() as u32),
            seed: cfg.base.recipe.seed,
            views: cfg.fast.views,
            mask: None,
        };
        let images = CacheImages {
            sources: &sources,
            hashes: &hashes,
            limits: &limits,
        };
        cache::build_clean(&dir, &key, images, stop, progress)?;
        let clean = CachedFeatures::open(&key.clean_path(&dir))?;
        Ok(TargetFeatures {
            encoder,
            seed: key.seed,
            views: key.views,
            preprocess: key.preprocess,
            dir,
            limits,
            sources,
            hashes,
            clean,
        })
    }

    fn key<'k>(&'k self, mask: Option<MaskSource<'k>>) -> CacheKey<'k> {
        CacheKey {
            encoder: self.encoder,
            preprocess: self.preprocess,
            seed: self.seed,
            views: self.views,
            mask,
        }
    }

    fn images(&self) -> CacheImages<'_> {
        CacheImages {
            sources: &self.sources,
            hashes: &self.hashes,
            limits: &self.limits,
        }
    }

    /// The clean cache of what a mask generator reads besides F (a frozen ResNet-18's
    /// pooled feature, an encoder block's tokens), completed where it lacks an image.
    fn mask_input(
        &self,
        mask: MaskSource,
        stop: &AtomicBool,
        progress: &indicatif::ProgressBar,
    ) -> Result<CachedFeatures> {
        let key = self.key(Some(mask));
        cache::build_clean(&self.dir, &key, self.images(), stop, progress)?;
        let path = key
            .mask_clean_path(&self.dir)
            .ok_or_else(|| Error::internal("a mask input cache key without a mask path"))?;
        CachedFeatures::open(&path)
    }
}

/// Trains one run's model (or finds it trained) and returns its bundle.
fn train_cell_model(
    cfg: &ProtocolConfig,
    run: &Run,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<PathBuf> {
    let mut train_cfg = cfg.base.clone();
    train_cfg.data = run.source.spec.clone();
    train_cfg.method = run.variant.method;
    train_cfg.fast = run.variant.generator().map(|generator| FastConfig {
        generator,
        cache_dir: cfg.cache_dir(),
        ..cfg.fast.clone()
    });
    tracing::info!("training {}", run.describe());
    let watch = Watch {
        stop,
        progress,
        max_steps: None,
    };
    match run::train(&train_cfg, &run.dir(cfg), &watch, device)? {
        RunOutcome::Finished(report) => Ok(report.bundle),
        RunOutcome::Interrupted { .. } => Err(Error::interrupted(format!(
            "while training {}; rerun the same command to continue (finished runs are kept)",
            run.describe()
        ))),
    }
}

/// The metrics of a trained model on a target: from the cached features when the model
/// reads them (with pixels for a ResNet-18 generator, with its own cached input for a
/// fast generator that reads something else), else from the images.
fn score(
    model: &ExpressionModel,
    target: &Target,
    features: Option<&TargetFeatures>,
    mask: Option<&CachedFeatures>,
    progress: &indicatif::ProgressBar,
) -> Result<Metrics> {
    let classifier = model.classifier();
    let Some(features) = features.filter(|_| classifier.spec.method.uses_frozen_features()) else {
        let limits = target.images.limits;
        return Ok(evaluate_images(model, &target.usable.samples, 64, &limits, progress)?.0);
    };
    let hashes = &target.usable.hashes;
    let labels = target.images.labels.clone();
    let device = model.device();
    let mut source = CachedSource::new(&features.clean, hashes, labels, features.seed, device)?;
    if let Some(mask) = mask {
        source = source.with_mask_input(mask, hashes)?;
    }
    if matches!(
        classifier.spec.generator,
        Some(GeneratorSpec::Resnet { .. })
    ) {
        source = source.with_pixels(&target.images, features.preprocess);
    }
    evaluate(classifier, &source, 64, model.class_names())
}
