//! Frozen-encoder features of a set of images, stored as one safetensors file: tensor
//! `features` [N,D] f32, and in the metadata the image paths in row order, their content
//! hashes, labels when known, the backbone, its weights fingerprint, the encoder's
//! precision (files without one are f32), the preprocessing and the gfer version.
//! Extraction is batched, resumable (rows whose content hash is already in the file are not
//! encoded again) and safe to interrupt.
//!
//! A job array shares the work out: task K of N writes the rows of every N-th image from
//! the K-th to its own file ([`shard_path`]); the same extraction without a shard then
//! gathers those rows into the one file, in the images' order, encoding nothing again.

use crate::backbone::{Encoder, Precision};
use crate::data::{ImageSource, Sample, Shard};
use crate::error::{Error, Result};
use crate::formats::tensorfile;
use crate::image::{content_hash, DecodeLimits, Preprocess, RgbImage};
use crate::Expression;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The identity of the features in a file: rows from another encoder, other weights,
/// another precision or other preprocessing are never mixed in.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureKey {
    pub backbone: String,
    pub fingerprint: String,
    pub precision: Precision,
    pub preprocess: Preprocess,
}

impl std::fmt::Display for FeatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (weights {}, precision {}, {:?})",
            self.backbone,
            self.fingerprint,
            self.precision.name(),
            self.preprocess
        )
    }
}

/// One image's row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub path: String,
    pub hash: String,
    pub label: Option<Expression>,
}

pub struct FeatureSet {
    pub key: FeatureKey,
    pub dim: usize,
    pub rows: Vec<Row>,
    /// Row-major [rows.len(), dim].
    pub values: Vec<f32>,
}

impl FeatureSet {
    pub fn empty(key: FeatureKey, dim: usize) -> Self {
        FeatureSet {
            key,
            dim,
            rows: Vec::new(),
            values: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Index of the row with this content hash.
    pub fn index_by_hash(&self) -> HashMap<&str, usize> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.hash.as_str(), i))
            .collect()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let features = Tensor::from_slice(&self.values, (self.rows.len(), self.dim), &Device::Cpu)?;
        let json = |v: serde_json::Value| v.to_string();
        let metadata = BTreeMap::from([
            ("format".to_string(), "gfer-features-1".to_string()),
            (
                "paths".to_string(),
                json(self.rows.iter().map(|r| r.path.clone()).collect()),
            ),
            (
                "hashes".to_string(),
                json(self.rows.iter().map(|r| r.hash.clone()).collect()),
            ),
            (
                "labels".to_string(),
                json(
                    self.rows
                        .iter()
                        .map(|r| r.label.map(|l| l.name().to_string()))
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ),
            ("backbone".to_string(), self.key.backbone.clone()),
            (
                "weights_fingerprint".to_string(),
                self.key.fingerprint.clone(),
            ),
            (
                "precision".to_string(),
                self.key.precision.name().to_string(),
            ),
            (
                "preprocess".to_string(),
                serde_json::to_string(&self.key.preprocess)
                    .map_err(|e| Error::config(e.to_string()))?,
            ),
            (
                "gfer_version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ]);
        tensorfile::save(
            path,
            &HashMap::from([("features".to_string(), features)]),
            &metadata,
        )
    }

    pub fn load(path: &Path) -> Result<FeatureSet> {
        let display = path.display().to_string();
        let bad = |message: String| Error::weights(&display, message);
        let file = tensorfile::load(path, &Device::Cpu)?;
        let field = |name: &str| {
            file.metadata
                .get(name)
                .ok_or_else(|| bad(format!("not a gfer features file: no '{name}' metadata")))
        };
        let strings = |name: &str| -> Result<Vec<String>> {
            serde_json::from_str(field(name)?).map_err(|e| bad(format!("metadata {name}: {e}")))
        };
        let paths = strings("paths")?;
        let hashes = strings("hashes")?;
        let labels: Vec<Option<String>> = serde_json::from_str(field("labels")?)
            .map_err(|e| bad(format!("metadata labels: {e}")))?;
        let preprocess: Preprocess = serde_json::from_str(field("preprocess")?)
            .map_err(|e| bad(format!("metadata preprocess: {e}")))?;
        // Files written before the precision was recorded hold f32 features.
        let precision = match file.metadata.get("precision") {
            None => Precision::F32,
            Some(name) => serde_json::from_value(serde_json::Value::String(name.clone()))
                .map_err(|e| bad(format!("metadata precision: {e}")))?,
        };
        let features = file
            .tensors
            .get("features")
            .ok_or_else(|| bad("no tensor named 'features'".to_string()))?;
        let (n, dim) = features.dims2().map_err(|_| {
            bad(format!(
                "tensor 'features' has shape {:?}, expected [N,D]",
                features.dims()
            ))
        })?;
        if paths.len() != n || hashes.len() != n || labels.len() != n {
            return Err(bad(format!(
                "{n} feature rows but {} paths, {} hashes, {} labels",
                paths.len(),
                hashes.len(),
                labels.len()
            )));
        }
        let rows = paths
            .into_iter()
            .zip(hashes)
            .zip(labels)
            .map(|((path, hash), label)| Row {
                path,
                hash,
                label: label.as_deref().and_then(Expression::from_name),
            })
            .collect();
        Ok(FeatureSet {
            key: FeatureKey {
                backbone: field("backbone")?.clone(),
                fingerprint: field("weights_fingerprint")?.clone(),
                precision,
                preprocess,
            },
            dim,
            rows,
            values: features
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
        })
    }
}

impl FeatureSet {
    /// The features file at `out` when there is one (it must hold features of `key`),
    /// else an empty set.
    fn open_or_new(out: &Path, key: FeatureKey, dim: usize) -> Result<FeatureSet> {
        if !out.exists() {
            return Ok(FeatureSet::empty(key, dim));
        }
        let set = FeatureSet::load(out)?;
        if set.key != key {
            return Err(Error::config(format!(
                "{} holds features of {}; this run uses {key}: choose another --out or delete \
                 the file",
                out.display(),
                set.key,
            )));
        }
        Ok(set)
    }
}

/// An image that could not be used, and why.
#[derive(Clone, Debug)]
pub struct Failure {
    pub path: String,
    pub reason: String,
}

pub struct ExtractOptions {
    pub batch_size: usize,
    pub limits: DecodeLimits,
    /// How often the output file is rewritten during a long run.
    pub save_every: Duration,
}

#[derive(Default, Debug)]
pub struct ExtractSummary {
    pub encoded: usize,
    pub reused: usize,
    pub failures: Vec<Failure>,
    pub interrupted: bool,
}

/// One image to encode: where it comes from, and its label when known.
#[derive(Clone)]
pub struct ExtractItem {
    pub source: ImageSource,
    pub label: Option<Expression>,
}

impl From<&Sample> for ExtractItem {
    fn from(sample: &Sample) -> Self {
        ExtractItem {
            source: sample.source.clone(),
            label: Some(sample.label),
        }
    }
}

/// Encodes every item into the features file at `out`. Rows already in the file (same
/// content hash, same [`FeatureKey`]) are kept and not encoded again; new rows are
/// appended. The file is rewritten atomically every `save_every` and at the end, also
/// when `stop` is raised (Ctrl-C), after the current batch. Unreadable images are
/// reported in the summary and skipped.
pub fn extract(
    encoder: &dyn Encoder,
    preprocess: Preprocess,
    items: &[ExtractItem],
    out: &Path,
    options: &ExtractOptions,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
) -> Result<ExtractSummary> {
    let key = FeatureKey {
        backbone: encoder.id().to_string(),
        fingerprint: encoder.fingerprint().to_string(),
        precision: encoder.precision(),
        preprocess,
    };
    let mut set = FeatureSet::open_or_new(out, key, encoder.dim())?;
    let mut known: HashSet<String> = set.rows.iter().map(|r| r.hash.clone()).collect();
    let from_shards = shard_rows(out, &set.key)?;
    let mut summary = ExtractSummary::default();
    let mut last_save = Instant::now();
    progress.set_length(items.len() as u64);
    for chunk in items.chunks(options.batch_size.max(1)) {
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
        let mut rows = Vec::new();
        let mut to_encode = Vec::new();
        for (row, image) in new_rows(chunk, &options.limits, &mut known, &mut summary) {
            if !from_shards.contains_key(&row.hash) {
                to_encode.push(image);
            }
            rows.push(row);
        }
        let mut encoded = Vec::new().into_iter();
        if !to_encode.is_empty() {
            encoded = encode_images(encoder, preprocess, &to_encode, &Device::Cpu)?.into_iter();
        }
        for row in rows {
            match from_shards.get(&row.hash) {
                Some(values) => {
                    set.values.extend_from_slice(values);
                    summary.reused += 1;
                }
                None => {
                    set.values.extend(encoded.by_ref().take(set.dim));
                    summary.encoded += 1;
                }
            }
            set.rows.push(row);
        }
        progress.inc(chunk.len() as u64);
        if last_save.elapsed() >= options.save_every {
            set.save(out)?;
            last_save = Instant::now();
        }
    }
    set.save(out)?;
    Ok(summary)
}

/// The features of `images` in one forward pass, row-major `[images.len(), D]`: each
/// image preprocessed with `preprocess`, the batch put on `device` and encoded. The one
/// encoding step of [`extract`] (and of the Python `Encoder`).
pub fn encode_images(
    encoder: &dyn Encoder,
    preprocess: Preprocess,
    images: &[RgbImage],
    device: &Device,
) -> Result<Vec<f32>> {
    let features = encoder.encode(&preprocess.batch(images, device)?)?;
    Ok(features.flatten_all()?.to_vec1::<f32>()?)
}

/// The rows of `chunk` to add, in order, each with its image: those that decode and are
/// not already `known` (by content hash); the others are counted in `summary`.
fn new_rows(
    chunk: &[ExtractItem],
    limits: &DecodeLimits,
    known: &mut HashSet<String>,
    summary: &mut ExtractSummary,
) -> Vec<(Row, RgbImage)> {
    let decoded: Vec<Result<RgbImage>> = chunk
        .par_iter()
        .map(|item| item.source.load(limits))
        .collect();
    let mut rows = Vec::new();
    for (item, image) in chunk.iter().zip(decoded) {
        match image {
            Err(e) => summary.failures.push(Failure {
                path: item.source.describe(),
                reason: e.to_string(),
            }),
            Ok(image) => {
                let hash = content_hash(&image);
                if !known.insert(hash.clone()) {
                    summary.reused += 1;
                    continue;
                }
                let row = Row {
                    path: item.source.describe(),
                    hash,
                    label: item.label,
                };
                rows.push((row, image));
            }
        }
    }
    rows
}

/// The cosine similarity of each row of two `[N, D]` feature batches: how far a quantized
/// encoder moved each image's feature from f32's.
pub fn cosine_similarities(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
    let norm = |t: &Tensor| t.sqr()?.sum(1)?.sqrt();
    let dot = (&a * &b)?.sum(1)?;
    let cosine = (dot / (norm(&a)? * norm(&b)?)?)?;
    Ok(cosine.to_dtype(DType::F32)?.to_vec1()?)
}

/// Where task K of N writes its part of `out`: `feats.safetensors` ->
/// `feats.shard-0-of-4.safetensors`.
pub fn shard_path(out: &Path, shard: Shard) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let name = match out.extension() {
        Some(ext) => format!(
            "{stem}.shard-{}-of-{}.{}",
            shard.index,
            shard.count,
            ext.to_string_lossy()
        ),
        None => format!("{stem}.shard-{}-of-{}", shard.index, shard.count),
    };
    out.with_file_name(name)
}

/// The rows the shard files of `out` hold (features of `key` only), by content hash.
fn shard_rows(out: &Path, key: &FeatureKey) -> Result<HashMap<String, Vec<f32>>> {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let prefix = format!("{stem}.shard-");
    let folder = match out.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) => folder.to_path_buf(),
        None => PathBuf::from("."),
    };
    let mut rows = HashMap::new();
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Ok(rows);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(&prefix) || entry.path() == out {
            continue;
        }
        let shard = FeatureSet::load(&entry.path())?;
        if &shard.key != key {
            tracing::warn!("{name}: features of {}, not {key}; not gathered", shard.key);
            continue;
        }
        for (row, values) in shard.rows.iter().zip(shard.values.chunks_exact(shard.dim)) {
            rows.insert(row.hash.clone(), values.to_vec());
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Preset;

    fn key(precision: Precision) -> FeatureKey {
        FeatureKey {
            backbone: "clip-vit-b32".into(),
            fingerprint: "0123456789abcdef".into(),
            precision,
            preprocess: Preprocess::new(Preset::Cafe, 224),
        }
    }

    fn one_row(precision: Precision) -> FeatureSet {
        FeatureSet {
            key: key(precision),
            dim: 2,
            rows: vec![Row {
                path: "a.png".into(),
                hash: "aa".into(),
                label: None,
            }],
            values: vec![1.0, 2.0],
        }
    }

    #[test]
    fn the_file_records_the_precision_and_one_without_it_is_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        one_row(Precision::Int8).save(&path).unwrap();
        let file = tensorfile::load(&path, &Device::Cpu).unwrap();
        assert_eq!(file.metadata["precision"], "int8");
        assert_eq!(FeatureSet::load(&path).unwrap().key, key(Precision::Int8));

        // A file written before the precision was recorded.
        let mut old = file.metadata.clone();
        old.remove("precision");
        tensorfile::save(&path, &file.tensors, &old).unwrap();
        assert_eq!(FeatureSet::load(&path).unwrap().key, key(Precision::F32));
    }

    #[test]
    fn features_of_another_precision_are_not_mixed_in_and_both_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        one_row(Precision::F32).save(&path).unwrap();
        let same = FeatureSet::open_or_new(&path, key(Precision::F32), 2).unwrap();
        assert_eq!(same.len(), 1);
        let error = match FeatureSet::open_or_new(&path, key(Precision::Int8), 2) {
            Ok(_) => panic!("int8 features were added to a file of f32 ones"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("precision f32")
                && error.contains("this run uses")
                && error.contains("precision int8"),
            "{error}"
        );
    }
}
