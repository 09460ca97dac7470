//! The paper's experiment in one call: for every source data set and every method, train
//! on the source's train split, evaluate on every target's held-out split, and write the
//! sources x targets accuracy table (Markdown, CSV, JSON), per-class tables and
//! confusion-matrix images for every cell.
//!
//! Frozen features of the evaluation images are cached (in `OUT/cache`, shared by every
//! method and, in fast mode, with training), so each image is encoded once per backbone.

use crate::backbone::{load_encoder, Encoder};
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::eval::report::confusion_image;
use crate::eval::table::{AccuracyTable, TableRow};
use crate::image::{DecodeLimits, Preprocess};
use crate::inference::ExpressionModel;
use crate::model::classifier::{GeneratorSpec, Method, ModelSpec};
use crate::tensorfile::write_atomically;
use crate::train::cache::{self, CacheKey, CachedFeatures};
use crate::train::pixels::LabelledImages;
use crate::train::session::{self, held_out_split, usable_samples, RunOutcome, TrainConfig};
use crate::train::trainer::{Batch, EvalSource};
use crate::Expression;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// A data set in the protocol: a short name for the tables, and its spec.
#[derive(Clone, Debug, Serialize)]
pub struct Named {
    pub name: String,
    pub spec: String,
}

/// `NAME=KIND:PATH...` names a data set; a bare spec is named by its kind (with a number
/// added when two share one).
pub fn name_specs(specs: &[String]) -> Vec<Named> {
    let mut out: Vec<Named> = Vec::new();
    for spec in specs {
        let (name, spec) = match spec.split_once('=') {
            Some((name, rest)) if !name.contains(':') && !name.is_empty() => {
                (name.to_string(), rest.to_string())
            }
            _ => (
                crate::eval::table::spec_kind(spec).to_string(),
                spec.clone(),
            ),
        };
        let taken = |n: &str| out.iter().any(|o| o.name == n);
        let mut unique = name.clone();
        let mut k = 2;
        while taken(&unique) {
            unique = format!("{name}-{k}");
            k += 1;
        }
        out.push(Named { name: unique, spec });
    }
    out
}

pub struct ProtocolConfig {
    pub sources: Vec<Named>,
    pub targets: Vec<Named>,
    pub methods: Vec<Method>,
    /// The training configuration of every run; `data` and `method` are set per run.
    pub base: TrainConfig,
    pub out: PathBuf,
    /// Put the paper's published numbers beside ours.
    pub reference_paper: bool,
}

/// A target's held-out images, decoded lazily, with their cached clean features.
struct Target {
    named: Named,
    images: LabelledImages,
    hashes: Vec<String>,
}

/// Evaluation batches: cached frozen features, plus pixels when the model's generator
/// reads them.
struct CachedEval<'a> {
    target: &'a Target,
    cache: &'a CachedFeatures,
    rows: Vec<usize>,
    preprocess: Preprocess,
    with_pixels: bool,
    generator_reads_feature: bool,
    device: Device,
}

impl EvalSource for CachedEval<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn eval_batch(&self, indices: &[usize]) -> Result<Batch> {
        let dim = self.cache.dim;
        let mut values = Vec::with_capacity(indices.len() * dim);
        for &i in indices {
            values.extend_from_slice(self.cache.get(self.rows[i], 0));
        }
        let features = Tensor::from_vec(values, (indices.len(), dim), &self.device)?;
        let images = if self.with_pixels {
            let images = &self.target.images;
            let pixels: Vec<Vec<f32>> = indices
                .par_iter()
                .map(|&i| {
                    images.sources[i]
                        .load(&images.limits)
                        .map(|im| self.preprocess.apply(&im))
                })
                .collect::<Result<_>>()?;
            let s = self.preprocess.size as usize;
            Some(Tensor::from_vec(
                pixels.concat(),
                (indices.len(), 3, s, s),
                &self.device,
            )?)
        } else {
            None
        };
        let labels: Vec<u32> = indices
            .iter()
            .map(|&i| self.target.images.labels[i])
            .collect();
        Ok(Batch {
            images,
            mask_input: self.generator_reads_feature.then(|| features.clone()),
            features: Some(features),
            labels: Tensor::new(labels, &self.device)?,
        })
    }

    fn labels(&self) -> Vec<usize> {
        self.target
            .images
            .labels
            .iter()
            .map(|&l| l as usize)
            .collect()
    }
}

/// One cell of the table, as written to `cells/<method>/<source>__<target>.json`.
#[derive(Serialize)]
struct Cell<'a> {
    method: &'a str,
    source: &'a Named,
    target: &'a Named,
    split: String,
    metrics: &'a Metrics,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Runs the protocol and returns the accuracy table (also written to `out`).
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
    let limits = DecodeLimits {
        max_pixels: cfg.base.max_pixels,
    };
    // Open everything first, so a bad spec or an empty split is reported before training.
    let mut datasets: Vec<(Named, Dataset)> = Vec::new();
    for named in cfg.sources.iter().chain(&cfg.targets) {
        if datasets.iter().any(|(n, _)| n.spec == named.spec) {
            continue;
        }
        let dataset = data::open(&named.spec, &Default::default())?;
        datasets.push((named.clone(), dataset));
    }
    for source in &cfg.sources {
        let (_, dataset) = datasets
            .iter()
            .find(|(n, _)| n.spec == source.spec)
            .ok_or_else(|| Error::config("unreachable"))?;
        dataset.check_trainable(data::Split::Train)?;
    }
    let mut targets = Vec::new();
    for named in &cfg.targets {
        let (_, dataset) = datasets
            .iter()
            .find(|(n, _)| n.spec == named.spec)
            .ok_or_else(|| Error::config("unreachable"))?;
        let split = held_out_split(dataset).ok_or_else(|| Error::Dataset {
            spec: named.spec.clone(),
            message: "has no test or val split to evaluate on".to_string(),
        })?;
        let (samples, hashes, skipped) = usable_samples(&dataset.split(split), &limits, progress);
        for (what, why) in skipped {
            tracing::warn!("target {}: skipping {what}: {why}", named.name);
        }
        targets.push((
            split,
            Target {
                named: named.clone(),
                images: LabelledImages {
                    sources: samples.iter().map(|s| s.source.clone()).collect(),
                    labels: samples.iter().map(|s| s.label.index() as u32).collect(),
                    limits,
                },
                hashes,
            },
        ));
    }

    let encoder: Option<Box<dyn Encoder>> = match &cfg.base.weights {
        Some(w) => Some(load_encoder(cfg.base.backbone, w, device)?),
        None => None,
    };
    let cache_dir = cfg.out.join("cache");
    let preprocess = Preprocess::new(
        cfg.base.preprocess,
        encoder.as_ref().map(|e| e.input_size()).unwrap_or(224) as u32,
    );
    let clean = match encoder.as_deref() {
        Some(encoder) => {
            let key = CacheKey {
                encoder,
                preprocess,
                seed: cfg.base.recipe.seed,
                views: cfg.base.fast.as_ref().map(|f| f.views).unwrap_or(1),
            };
            let sources: Vec<_> = targets
                .iter()
                .flat_map(|(_, t)| t.images.sources.clone())
                .collect();
            let hashes: Vec<_> = targets.iter().flat_map(|(_, t)| t.hashes.clone()).collect();
            cache::build_clean(&cache_dir, &key, &sources, &hashes, &limits, stop, progress)?;
            Some(CachedFeatures::open(&key.clean_path(&cache_dir))?)
        }
        None => None,
    };

    let mut table = AccuracyTable {
        targets: cfg.targets.iter().map(|t| t.name.clone()).collect(),
        rows: Vec::new(),
    };
    let mut per_class = String::from("# Per-class accuracy (recall, %) of every cell\n\n");
    for source in &cfg.sources {
        for &method in &cfg.methods {
            let mut train_cfg = cfg.base.clone();
            train_cfg.data = source.spec.clone();
            train_cfg.method = method;
            if let Some(fast) = &mut train_cfg.fast {
                fast.cache_dir = cache_dir.clone();
            }
            let run_dir = cfg.out.join("runs").join(&source.name).join(method.name());
            tracing::info!("training {} on {}", method.name(), source.name);
            let bundle = match session::run(&train_cfg, &run_dir, stop, None, progress, device)? {
                RunOutcome::Finished(report) => report.bundle,
                RunOutcome::Interrupted { .. } => {
                    return Err(Error::config(format!(
                        "interrupted while training {} on {}; rerun the same command to continue \
                         (finished runs are kept)",
                        method.name(),
                        source.name
                    )))
                }
            };
            let model = ExpressionModel::load(&bundle, cfg.base.weights.as_deref(), device)?;
            let spec: ModelSpec = serde_json::from_value(model.meta.model.clone())
                .map_err(|e| Error::config(e.to_string()))?;
            let mut row = TableRow {
                method: method.name().to_string(),
                source: source.name.clone(),
                accuracy: Vec::new(),
            };
            for (split, target) in &targets {
                let metrics = match (&clean, method.uses_frozen_features()) {
                    (Some(clean), true) => {
                        let rows = target
                            .hashes
                            .iter()
                            .map(|h| {
                                clean.row_of(h).ok_or_else(|| {
                                    Error::config(format!("{h} missing from the cache"))
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        let eval = CachedEval {
                            target,
                            cache: clean,
                            rows,
                            preprocess,
                            with_pixels: matches!(
                                spec.generator,
                                Some(GeneratorSpec::Resnet { .. })
                            ),
                            generator_reads_feature: matches!(
                                spec.generator,
                                Some(GeneratorSpec::Mlp { .. })
                            ),
                            device: device.clone(),
                        };
                        model.evaluate_source(&eval, 64)?
                    }
                    _ => {
                        let samples: Vec<data::Sample> = target
                            .images
                            .sources
                            .iter()
                            .zip(&target.images.labels)
                            .map(|(s, &l)| data::Sample {
                                source: s.clone(),
                                label: Expression::from_index(l as usize)
                                    .unwrap_or(Expression::Neutral),
                                split: *split,
                                domain: target.named.name.clone(),
                            })
                            .collect();
                        let refs: Vec<&data::Sample> = samples.iter().collect();
                        model.evaluate(&refs, 64, &limits, progress)?.0
                    }
                };
                row.accuracy.push(metrics.accuracy);
                let cell_name = format!("{}__{}", source.name, target.named.name);
                let cell_dir = cfg.out.join("cells").join(method.name());
                let json = serde_json::to_vec_pretty(&Cell {
                    method: method.name(),
                    source,
                    target: &target.named,
                    split: split.to_string(),
                    metrics: &metrics,
                })
                .map_err(|e| Error::config(e.to_string()))?;
                write_file(&cell_dir.join(format!("{cell_name}.json")), &json)?;
                let title = format!(
                    "{}: {} -> {} ({split})",
                    method.name(),
                    source.name,
                    target.named.name
                );
                let png = confusion_image(&metrics, &title);
                let png_path = cell_dir.join(format!("{cell_name}.png"));
                write_atomically(&png_path, |tmp| {
                    png.save_with_format(tmp, image::ImageFormat::Png)
                        .map_err(|e| Error::Image {
                            path: png_path.display().to_string(),
                            reason: e.to_string(),
                        })
                })?;
                per_class.push_str(&format!("## {title}\n\n{}\n", per_class_markdown(&metrics)));
            }
            table.rows.push(row);
        }
    }
    write_file(
        &cfg.out.join("table.md"),
        table.markdown(cfg.reference_paper).as_bytes(),
    )?;
    write_file(&cfg.out.join("table.csv"), table.csv().as_bytes())?;
    write_file(
        &cfg.out.join("table.json"),
        &serde_json::to_vec_pretty(&table).map_err(|e| Error::config(e.to_string()))?,
    )?;
    write_file(&cfg.out.join("per_class.md"), per_class.as_bytes())?;
    Ok(table)
}

fn per_class_markdown(metrics: &Metrics) -> String {
    let classes = &metrics.confusion.classes;
    let support = metrics.confusion.support();
    let mut out = String::from("| class | accuracy | images |\n|---|---:|---:|\n");
    for (i, class) in classes.iter().enumerate() {
        let acc = metrics.per_class_accuracy[i]
            .map(|a| format!("{:.2}", 100.0 * a))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!("| {class} | {acc} | {} |\n", support[i]));
    }
    out.push_str(&format!(
        "| **all** | **{:.2}** (macro-F1 {:.2}) | {} |\n",
        100.0 * metrics.accuracy,
        100.0 * metrics.macro_f1,
        metrics.total
    ));
    out
}
