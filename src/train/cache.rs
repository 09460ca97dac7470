//! The feature cache of fast mode. The encoder is frozen, so its features of every
//! training image can be computed once: the clean view, and K views drawn with the
//! recipe's augmentation. Fast mode then trains the mask generator and head on these
//! cached features, sampling one view per image per epoch.
//!
//! Files (safetensors, in the cache folder), each keyed by everything that changes its
//! contents, so that a change invalidates exactly what it must:
//! - `clean-<encoder fingerprint>-<preprocess>.safetensors`: `features` [N,D].
//! - `views-<encoder fingerprint>-<preprocess>-seed<S>-k<K>.safetensors`: `features` [N,K,D].
//!
//! Rows are identified by the image's content hash (metadata `hashes`); view v of an
//! image is augmented with a generator derived from (seed, content hash, v), so a view
//! does not depend on which other images are in the set or in what order. Building a
//! cache keeps the rows already there and computes only the missing ones. At training
//! time the files are memory-mapped.

use crate::backbone::Encoder;
use crate::data::ImageSource;
use crate::error::{Error, Result};
use crate::image::{Augment, DecodeLimits, Preprocess, RgbImage};
use crate::tensorfile;
use crate::train::trainer::{rng_for, RNG_VIEW};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A cache file mapped into memory: `rows` content hashes, each with `views` x `dim` f32.
pub struct CachedFeatures {
    map: memmap2::Mmap,
    /// Byte offset of the tensor data in the file.
    offset: usize,
    pub views: usize,
    pub dim: usize,
    index: HashMap<String, usize>,
}

impl CachedFeatures {
    /// Maps a cache file; fails clearly on anything that is not one.
    pub fn open(path: &Path) -> Result<CachedFeatures> {
        let display = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Safety: cache files are only replaced by rename, never written in place, so the
        // mapped bytes do not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, header) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| Error::weights(&display, format!("not a feature cache: {e}")))?;
        let info = header
            .tensors()
            .get("features")
            .cloned()
            .ok_or_else(|| Error::weights(&display, "no tensor named 'features'"))?;
        if info.dtype != safetensors::Dtype::F32 {
            return Err(Error::weights(&display, "features are not f32"));
        }
        let (rows, views, dim) = match info.shape.as_slice() {
            [n, d] => (*n, 1, *d),
            [n, k, d] => (*n, *k, *d),
            other => {
                return Err(Error::weights(
                    &display,
                    format!("features have shape {other:?}"),
                ))
            }
        };
        let hashes: Vec<String> = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("hashes"))
            .and_then(|h| serde_json::from_str(h).ok())
            .ok_or_else(|| Error::weights(&display, "no 'hashes' metadata"))?;
        if hashes.len() != rows {
            return Err(Error::weights(
                &display,
                format!("{rows} rows but {} hashes", hashes.len()),
            ));
        }
        let offset = 8 + header_len + info.data_offsets.0;
        if map.len() < offset + rows * views * dim * 4 || offset % 4 != 0 {
            return Err(Error::weights(&display, "truncated feature cache"));
        }
        let index = hashes
            .into_iter()
            .enumerate()
            .map(|(i, h)| (h, i))
            .collect();
        Ok(CachedFeatures {
            map,
            offset,
            views,
            dim,
            index,
        })
    }

    pub fn row_of(&self, hash: &str) -> Option<usize> {
        self.index.get(hash).copied()
    }

    /// The features of view `view` of row `row`.
    pub fn get(&self, row: usize, view: usize) -> &[f32] {
        let start = self.offset + ((row * self.views + view) * self.dim) * 4;
        let bytes = &self.map[start..start + self.dim * 4];
        // Safety: the offset is a multiple of 4 (checked in `open`) in a page-aligned map,
        // and any bit pattern is a valid f32.
        let (head, floats, _) = unsafe { bytes.align_to::<f32>() };
        debug_assert!(head.is_empty());
        floats
    }
}

/// Which files a cache needs.
pub struct CacheKey<'a> {
    pub encoder: &'a dyn Encoder,
    pub preprocess: Preprocess,
    pub seed: u64,
    pub views: usize,
}

impl CacheKey<'_> {
    fn preprocess_tag(&self) -> String {
        format!("{:?}{}", self.preprocess.preset, self.preprocess.size).to_lowercase()
    }

    pub fn clean_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "clean-{}-{}-{}.safetensors",
            self.encoder.id(),
            self.encoder.fingerprint(),
            self.preprocess_tag()
        ))
    }

    pub fn views_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "views-{}-{}-{}-seed{}-k{}.safetensors",
            self.encoder.id(),
            self.encoder.fingerprint(),
            self.preprocess_tag(),
            self.seed,
            self.views
        ))
    }
}

/// How many rows a build computed and how many it found already cached.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct BuildCount {
    pub computed: usize,
    pub reused: usize,
}

/// The first 8 bytes of a hex content hash, as the augmentation key of an image.
fn hash_key(hash: &str) -> u64 {
    u64::from_str_radix(&hash[..16.min(hash.len())], 16).unwrap_or(0)
}

/// Makes sure the clean file (`views == 0`) or the views file holds every image, encoding
/// only what is missing. Images are identified by `hashes` (content hashes, as computed by
/// [`crate::image::content_hash`]); `load` decodes image i.
#[allow(clippy::too_many_arguments)]
fn build_file(
    path: &Path,
    key: &CacheKey,
    augmented: bool,
    sources: &[ImageSource],
    hashes: &[String],
    limits: &DecodeLimits,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
) -> Result<BuildCount> {
    let views = if augmented { key.views } else { 1 };
    let dim = key.encoder.dim();
    let old = if path.exists() {
        Some(CachedFeatures::open(path)?)
    } else {
        None
    };
    let mut rows: Vec<(String, Vec<f32>)> = Vec::new();
    let mut todo: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, hash) in hashes.iter().enumerate() {
        if !seen.insert(hash.clone()) {
            continue;
        }
        match old.as_ref().and_then(|o| o.row_of(hash).map(|r| (o, r))) {
            Some((o, r)) if o.views == views && o.dim == dim => {
                let values = (0..views)
                    .flat_map(|v| o.get(r, v).iter().copied())
                    .collect();
                rows.push((hash.clone(), values));
            }
            _ => todo.push(i),
        }
    }
    let count = BuildCount {
        computed: todo.len(),
        reused: rows.len(),
    };
    progress.set_length(todo.len() as u64);
    progress.set_position(0);
    progress.set_message(if augmented {
        "encoding augmented views"
    } else {
        "encoding clean views"
    });
    let augment = Augment::default();
    let device = Device::Cpu;
    // Encode in chunks of images, all views of an image together.
    let per_chunk = (32 / views).max(1);
    for chunk in todo.chunks(per_chunk) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let images: Vec<RgbImage> = chunk
            .par_iter()
            .map(|&i| sources[i].load(limits))
            .collect::<Result<_>>()?;
        let pixels: Vec<f32> = images
            .par_iter()
            .zip(chunk.par_iter())
            .flat_map_iter(|(image, &i)| {
                (0..views).flat_map(move |v| {
                    if augmented {
                        let mut rng = rng_for(key.seed, RNG_VIEW, hash_key(&hashes[i]), v as u64);
                        augment.apply(image, &key.preprocess, &mut rng)
                    } else {
                        key.preprocess.apply(image)
                    }
                })
            })
            .collect();
        let s = key.preprocess.size as usize;
        let batch = Tensor::from_vec(pixels, (chunk.len() * views, 3, s, s), &device)?;
        let features = key
            .encoder
            .encode(&batch)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (j, &i) in chunk.iter().enumerate() {
            let row = features[j * views * dim..(j + 1) * views * dim].to_vec();
            rows.push((hashes[i].clone(), row));
        }
        progress.inc(chunk.len() as u64);
    }
    // Rows of images not in this set (another data set sharing the cache) are kept.
    if let Some(o) = &old {
        if o.views == views && o.dim == dim {
            let mut others: Vec<(&String, usize)> = o
                .index
                .iter()
                .filter(|(h, _)| !seen.contains(*h))
                .map(|(h, &r)| (h, r))
                .collect();
            others.sort_by_key(|(_, r)| *r);
            for (hash, r) in others {
                rows.push((
                    hash.clone(),
                    (0..views)
                        .flat_map(|v| o.get(r, v).iter().copied())
                        .collect(),
                ));
            }
        }
    }
    drop(old);
    let n = rows.len();
    let shape: Vec<usize> = if augmented {
        vec![n, views, dim]
    } else {
        vec![n, dim]
    };
    let (hash_list, values): (Vec<String>, Vec<Vec<f32>>) = rows.into_iter().unzip();
    let tensor = Tensor::from_vec(values.concat(), shape, &device)?;
    let metadata = BTreeMap::from([
        ("format".to_string(), "gfer-feature-cache-1".to_string()),
        (
            "hashes".to_string(),
            serde_json::to_string(&hash_list).map_err(|e| Error::config(e.to_string()))?,
        ),
        ("backbone".to_string(), key.encoder.id().to_string()),
        (
            "weights_fingerprint".to_string(),
            key.encoder.fingerprint().to_string(),
        ),
        ("seed".to_string(), key.seed.to_string()),
    ]);
    tensorfile::save(
        path,
        &HashMap::from([("features".to_string(), tensor)]),
        &metadata,
    )?;
    if stop.load(Ordering::SeqCst) {
        return Err(Error::config(
            "interrupted while building the feature cache (what was encoded is saved)",
        ));
    }
    Ok(count)
}

/// Builds (or completes) the cache for a training run and maps it: clean views of the
/// training and held-out images, augmented views of the training images.
#[allow(clippy::too_many_arguments)]
pub fn build(
    dir: &Path,
    key: &CacheKey,
    train: (&[ImageSource], &[String]),
    held_out: (&[ImageSource], &[String]),
    limits: &DecodeLimits,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
) -> Result<(CachedFeatures, CachedFeatures, BuildCount, BuildCount)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let clean_path = key.clean_path(dir);
    let views_path = key.views_path(dir);
    let sources: Vec<ImageSource> = train.0.iter().chain(held_out.0).cloned().collect();
    let hashes: Vec<String> = train.1.iter().chain(held_out.1).cloned().collect();
    let clean = build_file(
        &clean_path,
        key,
        false,
        &sources,
        &hashes,
        limits,
        stop,
        progress,
    )?;
    let views = build_file(
        &views_path,
        key,
        true,
        train.0,
        train.1,
        limits,
        stop,
        progress,
    )?;
    Ok((
        CachedFeatures::open(&clean_path)?,
        CachedFeatures::open(&views_path)?,
        clean,
        views,
    ))
}

/// Builds (or completes) only the clean-view file, e.g. for evaluation images.
pub fn build_clean(
    dir: &Path,
    key: &CacheKey,
    sources: &[ImageSource],
    hashes: &[String],
    limits: &DecodeLimits,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
) -> Result<BuildCount> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    build_file(
        &key.clean_path(dir),
        key,
        false,
        sources,
        hashes,
        limits,
        stop,
        progress,
    )
}
