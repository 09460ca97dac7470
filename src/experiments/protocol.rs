//! The paper's experiment in one call: for every source data set and every method, train
//! on the source's train split, evaluate on every target's held-out split, and write the
//! sources x targets accuracy table (Markdown, CSV, JSON), per-class tables and
//! confusion-matrix images for every cell.
//!
//! A method runs in one or more variants ([`MethodVariant`]): the full recipe, or fast
//! mode with one of its mask generators, so both come out side by side in one table; each
//! variant has its own run folder and row label (`cafe:full`, `cafe:fast`,
//! `cafe:fast:resnet18`, ...).
//!
//! Frozen features of the evaluation images are cached (in `OUT/cache`, shared by every
//! method and, in fast mode, with training), so each image is encoded once per backbone.

use crate::backbone::{load_encoder, Encoder};
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::eval::report::confusion_image;
use crate::eval::table::{AccuracyTable, TableRow};
use crate::formats::tensorfile::write_atomically;
use crate::image::{DecodeLimits, Preprocess};
use crate::model::classifier::{GeneratorSpec, MaskInput, Method};
use crate::model::inference::ExpressionModel;
use crate::train::cache::{self, CacheKey, CachedFeatures, MaskSource};
use crate::train::fit::{Batch, EvalSource};
use crate::train::pixels::LabelledImages;
use crate::train::run::{
    self, held_out_split, usable_samples, FastConfig, RunOutcome, TrainConfig,
};
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

/// A method in one variant: the authors' full recipe, or fast mode (cached frozen
/// features) with a mask generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodVariant {
    pub method: Method,
    /// `None`: the full recipe; `Some(generator)`: fast mode with that mask generator.
    pub fast: Option<MaskInput>,
}

impl MethodVariant {
    pub fn full(method: Method) -> Self {
        MethodVariant { method, fast: None }
    }

    pub fn fast(method: Method, generator: MaskInput) -> Self {
        MethodVariant {
            method,
            fast: Some(generator),
        }
    }

    /// `METHOD` (the variant `default` says: what `--fast` selects), `METHOD:full`,
    /// `METHOD:fast` (fast mode with `default`'s generator, or `feature`), or
    /// `METHOD:fast:GENERATOR` (`feature`, `resnet18`, `tokens:LAYER`).
    pub fn parse(text: &str, default: Option<MaskInput>) -> std::result::Result<Self, String> {
        let (name, variant) = match text.split_once(':') {
            Some((name, variant)) => (name, Some(variant)),
            None => (text, None),
        };
        let method = <Method as clap::ValueEnum>::from_str(name, false).map_err(|_| {
            let known: Vec<&str> = <Method as clap::ValueEnum>::value_variants()
                .iter()
                .map(|m| m.name())
                .collect();
            format!("'{name}' is not a method ({})", known.join(", "))
        })?;
        let fast = match variant {
            None => default,
            Some("full") => None,
            Some("fast") => Some(default.unwrap_or_default()),
            Some(other) => match other.strip_prefix("fast:") {
                Some(generator) => Some(generator.parse()?),
                None => {
                    return Err(format!(
                        "'{text}': the variant after '{name}:' is full, fast or fast:GENERATOR"
                    ))
                }
            },
        };
        Ok(MethodVariant { method, fast })
    }

    /// The generator that matters: methods without a mask generator read F whatever
    /// the flag says.
    fn generator(&self) -> Option<MaskInput> {
        self.fast.map(|g| {
            if self.method.uses_generator() {
                g
            } else {
                MaskInput::Feature
            }
        })
    }

    /// The row label of the tables: `cafe:full`, `cafe:fast`, `cafe:fast:resnet18`,
    /// `cafe:fast:tokens:6` (the generator is named unless it is `feature`).
    pub fn label(&self) -> String {
        match self.generator() {
            None => format!("{}:full", self.method.name()),
            Some(MaskInput::Feature) => format!("{}:fast", self.method.name()),
            Some(generator) => format!("{}:fast:{generator}", self.method.name()),
        }
    }

    /// The label as a folder name (`cafe-fast-tokens-6`): the run folder
    /// `OUT/runs/SOURCE/<this>` and the cells folder `OUT/cells/<this>`.
    pub fn slug(&self) -> String {
        self.label().replace(':', "-")
    }
}

impl std::fmt::Display for MethodVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

pub struct ProtocolConfig {
    pub sources: Vec<Named>,
    pub targets: Vec<Named>,
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

/// A target's held-out images, decoded lazily, with their cached clean features.
struct Target {
    named: Named,
    images: LabelledImages,
    hashes: Vec<String>,
}

/// Evaluation batches: cached frozen features, plus pixels when the model's generator
/// reads them, or the cached mask generator input of fast mode.
struct CachedEval<'a> {
    target: &'a Target,
    cache: &'a CachedFeatures,
    rows: Vec<usize>,
    preprocess: Preprocess,
    with_pixels: bool,
    generator_reads_feature: bool,
    /// The mask generator's own cached input and the target's rows in it.
    mask: Option<(&'a CachedFeatures, Vec<usize>)>,
    device: Device,
}

fn rows_of(cache: &CachedFeatures, hashes: &[String]) -> Result<Vec<usize>> {
    hashes
        .iter()
        .map(|h| {
            cache
                .row_of(h)
                .ok_or_else(|| Error::config(format!("{h} missing from the cache")))
        })
        .collect()
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
        let mask_input = match &self.mask {
            Some((cache, rows)) => {
                let mut values = Vec::with_capacity(indices.len() * cache.dim);
                for &i in indices {
                    values.extend_from_slice(cache.get(rows[i], 0));
                }
                Some(Tensor::from_vec(
                    values,
                    (indices.len(), cache.dim),
                    &self.device,
                )?)
            }
            None => self.generator_reads_feature.then(|| features.clone()),
        };
        Ok(Batch {
            images,
            mask_input,
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

/// One cell of the table, as written to `cells/<variant>/<source>__<target>.json`.
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
    let target_sources: Vec<_> = targets
        .iter()
        .flat_map(|(_, t)| t.images.sources.clone())
        .collect();
    let target_hashes: Vec<_> = targets.iter().flat_map(|(_, t)| t.hashes.clone()).collect();
    let clean = match encoder.as_deref() {
        Some(encoder) => {
            let key = CacheKey {
                encoder,
                preprocess,
                seed: cfg.base.recipe.seed,
                views: cfg.fast.views,
                mask: None,
            };
            cache::build_clean(
                &cache_dir,
                &key,
                &target_sources,
                &target_hashes,
                &limits,
                stop,
                progress,
            )?;
            Some(CachedFeatures::open(&key.clean_path(&cache_dir))?)
        }
        None => None,
    };

    let mut table = AccuracyTable {
        targets: cfg.targets.iter().map(|t| t.name.clone()).collect(),
        rows: Vec::new(),
    };
    let mut per_class = String::from("# Per-class accuracy (recall, %) of every cell\n\n");
    let mut variants: Vec<MethodVariant> = Vec::new();
    for v in &cfg.methods {
        if !variants.iter().any(|w| w.label() == v.label()) {
            variants.push(*v);
        }
    }
    for source in &cfg.sources {
        for variant in &variants {
            let method = variant.method;
            let label = variant.label();
            let mut train_cfg = cfg.base.clone();
            train_cfg.data = source.spec.clone();
            train_cfg.method = method;
            train_cfg.fast = variant.generator().map(|generator| FastConfig {
                generator,
                cache_dir: cache_dir.clone(),
                ..cfg.fast.clone()
            });
            let run_dir = cfg.out.join("runs").join(&source.name).join(variant.slug());
            tracing::info!("training {label} on {}", source.name);
            let bundle = match run::run(&train_cfg, &run_dir, stop, None, progress, device)? {
                RunOutcome::Finished(report) => report.bundle,
                RunOutcome::Interrupted { .. } => {
                    return Err(Error::config(format!(
                        "interrupted while training {label} on {}; rerun the same command to \
                         continue (finished runs are kept)",
                        source.name
                    )))
                }
            };
            let model = ExpressionModel::load(&bundle, cfg.base.weights.as_deref(), device)?;
            let classifier = model.classifier();
            // A fast generator that reads neither F nor pixels: its input of the target
            // images, cached beside F.
            let mask_source = match (classifier.mask_input(), classifier.frozen_resnet()) {
                (Some(MaskInput::Resnet18), Some(net)) => Some(MaskSource::Resnet(net)),
                (Some(MaskInput::Tokens(layer)), _) => Some(MaskSource::Tokens(layer)),
                _ => None,
            };
            let mask_cache = match (mask_source, encoder.as_deref()) {
                (Some(mask), Some(encoder)) => {
                    let key = CacheKey {
                        encoder,
                        preprocess,
                        seed: cfg.base.recipe.seed,
                        views: cfg.fast.views,
                        mask: Some(mask),
                    };
                    cache::build_clean(
                        &cache_dir,
                        &key,
                        &target_sources,
                        &target_hashes,
                        &limits,
                        stop,
                        progress,
                    )?;
                    key.mask_clean_path(&cache_dir)
                        .map(|p| CachedFeatures::open(&p))
                        .transpose()?
                }
                _ => None,
            };
            let mut row = TableRow {
                method: label.clone(),
                source: source.name.clone(),
                accuracy: Vec::new(),
            };
            for (split, target) in &targets {
                let metrics = match (&clean, method.uses_frozen_features()) {
                    (Some(clean), true) => {
                        let eval = CachedEval {
                            target,
                            cache: clean,
                            rows: rows_of(clean, &target.hashes)?,
                            preprocess,
                            with_pixels: matches!(
                                classifier.spec.generator,
                                Some(GeneratorSpec::Resnet { .. })
                            ),
                            generator_reads_feature: classifier.mask_input()
                                == Some(MaskInput::Feature),
                            mask: match &mask_cache {
                                Some(cache) => Some((cache, rows_of(cache, &target.hashes)?)),
                                None => None,
                            },
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
                let cell_dir = cfg.out.join("cells").join(variant.slug());
                let json = serde_json::to_vec_pretty(&Cell {
                    method: &label,
                    source,
                    target: &target.named,
                    split: split.to_string(),
                    metrics: &metrics,
                })
                .map_err(|e| Error::config(e.to_string()))?;
                write_file(&cell_dir.join(format!("{cell_name}.json")), &json)?;
                let title = format!(
                    "{label}: {} -> {} ({split})",
                    source.name, target.named.name
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_variants_parse_and_label_themselves() {
        let parse = |s: &str, default| MethodVariant::parse(s, default).map(|v| v.label());
        // A bare method takes the default variant (what --fast selects).
        assert_eq!(parse("cafe", None).as_deref(), Ok("cafe:full"));
        assert_eq!(
            parse("cafe", Some(MaskInput::Resnet18)).as_deref(),
            Ok("cafe:fast:resnet18")
        );
        assert_eq!(
            parse("cafe:full", Some(MaskInput::Feature)).as_deref(),
            Ok("cafe:full")
        );
        assert_eq!(parse("cafe:fast", None).as_deref(), Ok("cafe:fast"));
        assert_eq!(
            parse("cafe:fast", Some(MaskInput::Tokens(4))).as_deref(),
            Ok("cafe:fast:tokens:4")
        );
        assert_eq!(
            parse("cafe-no-sep:fast:tokens:6", None).as_deref(),
            Ok("cafe-no-sep:fast:tokens:6")
        );
        // Without a mask generator the generator does not matter, nor appear.
        assert_eq!(
            parse("linear-probe:fast:resnet18", None).as_deref(),
            Ok("linear-probe:fast")
        );
        assert_eq!(parse("resnet:full", None).as_deref(), Ok("resnet:full"));
        let variant = MethodVariant::parse("cafe:fast:tokens:6", None).unwrap();
        assert_eq!(
            variant,
            MethodVariant::fast(Method::Cafe, MaskInput::Tokens(6))
        );
        assert_eq!(variant.slug(), "cafe-fast-tokens-6");
        assert_eq!(MethodVariant::full(Method::Cafe).slug(), "cafe-full");
        for bad in [
            "cafo",
            "cafe:slow",
            "cafe:fast:vgg",
            "cafe:fast:tokens:0",
            "cafe:",
        ] {
            assert!(MethodVariant::parse(bad, None).is_err(), "{bad}");
        }
    }
}
