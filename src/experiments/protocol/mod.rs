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

mod cells;
mod variants;

pub use variants::{name_specs, MethodVariant, NamedDataset};

use crate::backbone::{load_encoder, Encoder};
use crate::data::{self, usable_samples, Dataset, ImageSource, Split, Usable};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::eval::table::{AccuracyTable, TableRow};
use crate::eval::{evaluate, evaluate_images};
use crate::formats::write_file_atomically;
use crate::image::{DecodeLimits, Preprocess};
use crate::model::classifier::GeneratorSpec;
use crate::model::inference::ExpressionModel;
use crate::train::cache::{self, CacheImages, CacheKey, CachedFeatures, MaskSource};
use crate::train::cached_source::CachedSource;
use crate::train::pixels::LabelledImages;
use crate::train::run::{self, FastConfig, RunOutcome, TrainConfig, Watch};
use candle_core::Device;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

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
    pub out: PathBuf,
    /// Put the paper's published numbers beside ours.
    pub reference_paper: bool,
}

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

/// Runs the protocol and returns the accuracy table (also written to `cfg.out`).
pub fn run(
    cfg: &ProtocolConfig,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<AccuracyTable> {
    if cfg.sources.is_empty() || cfg.targets.is_empty() || cfg.methods.is_empty() {
        return Err(Error::config(
            "the protocol needs at least one source, one target and one method",
        ));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
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
        Some(w) => Some(load_encoder(cfg.base.backbone, w, device)?),
        None => None,
    };
    let features = match encoder.as_deref() {
        Some(encoder) => Some(TargetFeatures::build(
            cfg, encoder, &targets, stop, progress,
        )?),
        None => None,
    };
    let mut report = Report::new(cfg);
    for source in &cfg.sources {
        for variant in cfg.variants() {
            let bundle = train_cell_model(cfg, source, variant, stop, progress, device)?;
            let model = ExpressionModel::load(&bundle, cfg.base.weights.as_deref(), device)?;
            let mask = match (MaskSource::for_model(model.classifier()), &features) {
                (Some(mask), Some(features)) => Some(features.mask_input(mask, stop, progress)?),
                _ => None,
            };
            let mut accuracy = Vec::new();
            for target in &targets {
                let metrics = score(&model, target, features.as_ref(), mask.as_ref(), progress)?;
                accuracy.push(metrics.accuracy);
                report.add_cell(cfg, variant, source, target, &metrics)?;
            }
            report.add_row(variant, source, accuracy);
        }
    }
    report.write(cfg)?;
    Ok(report.table)
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

/// Trains one row's model (or finds it trained) and returns its bundle.
fn train_cell_model(
    cfg: &ProtocolConfig,
    source: &NamedDataset,
    variant: MethodVariant,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
    device: &Device,
) -> Result<PathBuf> {
    let label = variant.label();
    let mut train_cfg = cfg.base.clone();
    train_cfg.data = source.spec.clone();
    train_cfg.method = variant.method;
    train_cfg.fast = variant.generator().map(|generator| FastConfig {
        generator,
        cache_dir: cfg.cache_dir(),
        ..cfg.fast.clone()
    });
    let run_dir = cfg.out.join("runs").join(&source.name).join(variant.slug());
    tracing::info!("training {label} on {}", source.name);
    let watch = Watch {
        stop,
        progress,
        max_steps: None,
    };
    match run::train(&train_cfg, &run_dir, &watch, device)? {
        RunOutcome::Finished(report) => Ok(report.bundle),
        RunOutcome::Interrupted { .. } => Err(Error::interrupted(format!(
            "while training {label} on {}; rerun the same command to continue (finished \
             runs are kept)",
            source.name
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

/// The table and the per-class sections as the cells come in.
struct Report {
    table: AccuracyTable,
    per_class: String,
}

impl Report {
    fn new(cfg: &ProtocolConfig) -> Self {
        Report {
            table: AccuracyTable {
                targets: cfg.targets.iter().map(|t| t.name.clone()).collect(),
                target_kinds: cfg.targets.iter().map(|t| t.kind().to_string()).collect(),
                rows: Vec::new(),
            },
            per_class: String::from("# Per-class accuracy (recall, %) of every cell\n\n"),
        }
    }

    fn add_cell(
        &mut self,
        cfg: &ProtocolConfig,
        variant: MethodVariant,
        source: &NamedDataset,
        target: &Target,
        metrics: &Metrics,
    ) -> Result<()> {
        let cells_dir = cfg.out.join("cells").join(variant.slug());
        let split = target.split.to_string();
        let section = cells::write_cell(
            &cells_dir,
            &variant.label(),
            source,
            target.named,
            &split,
            metrics,
        )?;
        self.per_class.push_str(&section);
        Ok(())
    }

    fn add_row(&mut self, variant: MethodVariant, source: &NamedDataset, accuracy: Vec<f64>) {
        let row = TableRow::new(
            variant.label(),
            source.name.clone(),
            source.kind().to_string(),
            accuracy,
            &self.table.target_kinds,
        );
        self.table.rows.push(row);
    }

    /// `table.md`, `table.csv`, `table.json` and `per_class.md`; with the paper's numbers
    /// asked for, a warning naming the data sets the paper did not use.
    fn write(&self, cfg: &ProtocolConfig) -> Result<()> {
        let (out, reference) = (&cfg.out, cfg.reference_paper);
        let unmatched = self.table.unmatched_by_paper();
        if reference && !unmatched.is_empty() {
            tracing::warn!(
                "--reference paper: the paper has no numbers for {} (it used rafdb, ferplus, \
                 affectnet, sfew and mma); their cells show ours alone",
                unmatched.join(", ")
            );
        }
        let markdown = self.table.markdown(reference);
        write_file_atomically(&out.join("table.md"), markdown.as_bytes())?;
        write_file_atomically(&out.join("table.csv"), self.table.csv(reference).as_bytes())?;
        let json = serde_json::to_vec_pretty(&self.table)
            .map_err(|e| Error::internal(format!("table.json: {e}")))?;
        write_file_atomically(&out.join("table.json"), &json)?;
        write_file_atomically(&out.join("per_class.md"), self.per_class.as_bytes())
    }
}
