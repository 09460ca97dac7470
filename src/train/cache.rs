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
//! An encoder whose linear layers are not f32 (`--precision bf16|int8`) has its precision
//! after the fingerprint (`clean-<encoder fingerprint>-int8-<preprocess>`), so that its
//! features never mix with f32 ones, and f32 caches keep the names they always had.
//!
//! When the mask generator reads something other than F, that input has files of its own,
//! the same views of the same images, keyed additionally by what it depends on:
//! - `resnet18` (pooled features of a frozen ResNet-18): `clean-resnet18-<ResNet
//!   fingerprint>-<preprocess>` and `views-resnet18-<ResNet fingerprint>-<preprocess>-
//!   seed<S>-k<K>` (the ResNet reads the view the encoder saw, ImageNet-normalised).
//! - `tokens:LAYER` (mean patch token of an encoder block): `clean-<encoder fingerprint>-
//!   <preprocess>-tokens<LAYER>` and `views-...-tokens<LAYER>-seed<S>-k<K>`, computed in
//!   the same encoder pass as F.
//!
//! Changing the ResNet checkpoint or the layer recomputes only those files; the encoder
//! features are reused.
//!
//! Rows are identified by the image's content hash (metadata `hashes`); view v of an
//! image is augmented with a generator derived from (seed, content hash, v), so a view
//! does not depend on which other images are in the set or in what order. Building a
//! cache keeps the rows already there and computes only the missing ones. At training
//! time the files are memory-mapped.
//!
//! Several processes (the tasks of a job array) may build into one cache folder at once.
//! A build holds a lock named after its set of images while it encodes, so tasks that
//! need the same images wait for the first and then find them cached, while tasks with
//! other images encode theirs at the same time; each then adds its rows under the file's
//! write lock, reading the file as it is at that moment, so no task's rows are lost (see
//! [`FileLock`] for the locks and what a killed task leaves).

use crate::backbone::{Encoder, Precision};
use crate::data::ImageSource;
use crate::error::{Error, Result};
use crate::formats::{tensorfile, FileLock};
use crate::image::{Augment, DecodeLimits, Preprocess, RgbImage};
use crate::model::classifier::{Classifier, MaskInput};
use crate::model::FrozenResnet;
use crate::train::rng::{rng_for, RNG_VIEW};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
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
        // SAFETY: cache files are only replaced by rename, never written in place, so the
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

    /// The row of each of these content hashes, every one of which must be cached.
    pub fn rows_of(&self, hashes: &[String]) -> Result<Vec<usize>> {
        hashes
            .iter()
            .map(|h| {
                self.row_of(h).ok_or_else(|| {
                    Error::internal(format!("image {h} is missing from the feature cache"))
                })
            })
            .collect()
    }

    /// The features of view `view` of row `row`.
    pub fn get(&self, row: usize, view: usize) -> &[f32] {
        let start = self.offset + ((row * self.views + view) * self.dim) * 4;
        // The map is page-aligned and `open` checked that the offset is a multiple of 4.
        bytemuck::cast_slice(&self.map[start..start + self.dim * 4])
    }
}

/// What a `resnet18` or `tokens:LAYER` mask generator reads, cached beside F.
#[derive(Clone, Copy)]
pub enum MaskSource<'a> {
    /// The pooled output of this frozen ResNet-18.
    Resnet(&'a FrozenResnet),
    /// The mean patch token of encoder block LAYER (from 1).
    Tokens(usize),
}

impl<'a> MaskSource<'a> {
    /// What `model`'s mask generator reads besides F, when it reads something else.
    pub fn for_model(model: &'a Classifier) -> Option<Self> {
        match model.mask_input()? {
            MaskInput::Resnet18 => model.frozen_resnet().map(MaskSource::Resnet),
            MaskInput::Tokens(layer) => Some(MaskSource::Tokens(layer)),
            MaskInput::Feature => None,
        }
    }
}

/// Which files a cache needs.
pub struct CacheKey<'a> {
    pub encoder: &'a dyn Encoder,
    pub preprocess: Preprocess,
    pub seed: u64,
    pub views: usize,
    /// The mask generator's own input when it is not F (`None`: it reads F).
    pub mask: Option<MaskSource<'a>>,
}

impl CacheKey<'_> {
    fn preprocess_tag(&self) -> String {
        format!("{:?}{}", self.preprocess.preset, self.preprocess.size).to_lowercase()
    }

    fn encoder_tag(&self) -> String {
        let precision = match self.encoder.precision() {
            Precision::F32 => String::new(),
            other => format!("-{}", other.name()),
        };
        format!(
            "{}-{}{precision}-{}",
            self.encoder.id(),
            self.encoder.fingerprint(),
            self.preprocess_tag()
        )
    }

    fn views_tag(&self) -> String {
        format!("seed{}-k{}", self.seed, self.views)
    }

    pub fn clean_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("clean-{}.safetensors", self.encoder_tag()))
    }

    pub fn views_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "views-{}-{}.safetensors",
            self.encoder_tag(),
            self.views_tag()
        ))
    }

    /// What the mask input files are named by (without `clean-`/`views-`).
    fn mask_tag(&self) -> Option<String> {
        Some(match self.mask? {
            MaskSource::Resnet(net) => {
                format!("resnet18-{}-{}", net.fingerprint(), self.preprocess_tag())
            }
            MaskSource::Tokens(layer) => format!("{}-tokens{layer}", self.encoder_tag()),
        })
    }

    /// The clean views of the mask generator's input, when it is not F.
    pub fn mask_clean_path(&self, dir: &Path) -> Option<PathBuf> {
        Some(dir.join(format!("clean-{}.safetensors", self.mask_tag()?)))
    }

    /// The augmented views of the mask generator's input, when it is not F.
    pub fn mask_views_path(&self, dir: &Path) -> Option<PathBuf> {
        Some(dir.join(format!(
            "views-{}-{}.safetensors",
            self.mask_tag()?,
            self.views_tag()
        )))
    }

    fn mask_dim(&self) -> Option<usize> {
        Some(match self.mask? {
            MaskSource::Resnet(net) => net.dim(),
            MaskSource::Tokens(_) => self.encoder.token_dim(),
        })
    }

    fn metadata(&self, hashes: &[String], mask_file: bool) -> Result<BTreeMap<String, String>> {
        let mut metadata = BTreeMap::from([
            ("format".to_string(), "gfer-feature-cache-1".to_string()),
            (
                "hashes".to_string(),
                serde_json::to_string(hashes).map_err(|e| Error::config(e.to_string()))?,
            ),
            ("backbone".to_string(), self.encoder.id().to_string()),
            (
                "weights_fingerprint".to_string(),
                self.encoder.fingerprint().to_string(),
            ),
            (
                "precision".to_string(),
                self.encoder.precision().name().to_string(),
            ),
            ("seed".to_string(), self.seed.to_string()),
        ]);
        match (mask_file, self.mask) {
            (true, Some(MaskSource::Resnet(net))) => {
                metadata.insert("input".into(), "frozen-resnet18 pooled feature".into());
                metadata.insert("resnet_fingerprint".into(), net.fingerprint().into());
            }
            (true, Some(MaskSource::Tokens(layer))) => {
                metadata.insert(
                    "input".into(),
                    format!("mean patch token of encoder block {layer}"),
                );
            }
            _ => {}
        }
        Ok(metadata)
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

/// The `[3,S,S]` pixels the cache encodes for an image: the clean view (`view` `None`)
/// or augmented view `view`, drawn from (seed, content hash, view) alone. F and the mask
/// generator's input of a view are computed from these same pixels.
pub fn view_pixels(key: &CacheKey, image: &RgbImage, hash: &str, view: Option<usize>) -> Vec<f32> {
    match view {
        None => key.preprocess.apply(image),
        Some(v) => {
            let mut rng = rng_for(key.seed, RNG_VIEW, hash_key(hash), v as u64);
            Augment::default().apply(image, &key.preprocess, &mut rng)
        }
    }
}

/// One cache file being completed: the rows it keeps and the images it still needs.
struct Completion {
    path: PathBuf,
    views: usize,
    dim: usize,
    old: Option<CachedFeatures>,
    rows: Vec<(String, Vec<f32>)>,
    /// Indices (into the image list) to compute.
    todo: HashSet<usize>,
    reused: usize,
}

impl Completion {
    /// Reads what `path` already holds for the images `unique` (indices of distinct hashes).
    fn open(
        path: PathBuf,
        views: usize,
        dim: usize,
        hashes: &[String],
        unique: &[usize],
    ) -> Result<Self> {
        let old = if path.exists() {
            Some(CachedFeatures::open(&path)?)
        } else {
            None
        };
        let fits = |o: &CachedFeatures| o.views == views && o.dim == dim;
        let mut rows = Vec::new();
        let mut todo = HashSet::new();
        for &i in unique {
            match old
                .as_ref()
                .filter(|o| fits(o))
                .and_then(|o| o.row_of(&hashes[i]).map(|r| (o, r)))
            {
                Some((o, r)) => rows.push((
                    hashes[i].clone(),
                    (0..views)
                        .flat_map(|v| o.get(r, v).iter().copied())
                        .collect(),
                )),
                None => {
                    todo.insert(i);
                }
            }
        }
        let reused = rows.len();
        Ok(Completion {
            path,
            views,
            dim,
            old,
            rows,
            todo,
            reused,
        })
    }

    fn count(&self) -> BuildCount {
        BuildCount {
            computed: self.todo.len(),
            reused: self.reused,
        }
    }

    /// Stores the computed rows `values` ([n * views * dim]) of the images `items`.
    fn add(&mut self, items: &[usize], hashes: &[String], values: &[f32]) {
        let per = self.views * self.dim;
        for (j, &i) in items.iter().enumerate() {
            self.rows
                .push((hashes[i].clone(), values[j * per..(j + 1) * per].to_vec()));
        }
    }

    /// Writes the file: the rows of this set, and the rows of images not in it (another
    /// data set sharing the cache) kept as they were. Nothing is written when nothing
    /// changed.
    fn finish(
        mut self,
        seen: &HashSet<String>,
        metadata: impl FnOnce(&[String]) -> Result<BTreeMap<String, String>>,
        augmented: bool,
    ) -> Result<()> {
        let (views, dim) = (self.views, self.dim);
        if self.rows.len() == self.reused
            && self
                .old
                .as_ref()
                .is_some_and(|o| o.views == views && o.dim == dim)
        {
            return Ok(());
        }
        // Another task may have added rows since this build opened the file: the file as it
        // is now, read under the write lock, gives the rows of the images not in this set.
        let _writing = FileLock::acquire(&self.path, "write")?;
        let current = match self.path.exists() {
            true => Some(CachedFeatures::open(&self.path)?),
            false => None,
        };
        if let Some(o) = current
            .as_ref()
            .filter(|o| o.views == views && o.dim == dim)
        {
            let mut others: Vec<(&String, usize)> = o
                .index
                .iter()
                .filter(|(h, _)| !seen.contains(*h))
                .map(|(h, &r)| (h, r))
                .collect();
            others.sort_by_key(|(_, r)| *r);
            for (hash, r) in others {
                self.rows.push((
                    hash.clone(),
                    (0..views)
                        .flat_map(|v| o.get(r, v).iter().copied())
                        .collect(),
                ));
            }
        }
        self.old = None;
        let n = self.rows.len();
        let shape: Vec<usize> = if augmented {
            vec![n, views, dim]
        } else {
            vec![n, dim]
        };
        let (hash_list, values): (Vec<String>, Vec<Vec<f32>>) = self.rows.into_iter().unzip();
        let tensor = Tensor::from_vec(values.concat(), shape, &Device::Cpu)?;
        tensorfile::save(
            &self.path,
            &HashMap::from([("features".to_string(), tensor)]),
            &metadata(&hash_list)?,
        )
    }
}

/// The rows of `batch` (`[rows, ...]`) at `rows`, as one tensor.
fn select(batch: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let index = Tensor::new(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        batch.device(),
    )?;
    Ok(batch.index_select(&index, 0)?)
}

/// The files one build completes: the encoder features and, with `key.mask`, the mask
/// generator's input beside them, clean (one view) or augmented (`key.views` views).
struct BuildFiles {
    augmented: bool,
    views: usize,
    features: Completion,
    mask: Option<Completion>,
    /// The distinct content hashes of the set.
    seen: HashSet<String>,
    /// The first index of each distinct image.
    unique: Vec<usize>,
}

impl BuildFiles {
    fn open(key: &CacheKey, augmented: bool, dir: &Path, hashes: &[String]) -> Result<Self> {
        let views = if augmented { key.views } else { 1 };
        let mut seen = HashSet::new();
        let unique: Vec<usize> = (0..hashes.len())
            .filter(|&i| seen.insert(hashes[i].clone()))
            .collect();
        let (feature_path, mask_path) = if augmented {
            (key.views_path(dir), key.mask_views_path(dir))
        } else {
            (key.clean_path(dir), key.mask_clean_path(dir))
        };
        let features = Completion::open(feature_path, views, key.encoder.dim(), hashes, &unique)?;
        let mask = match (mask_path, key.mask_dim()) {
            (Some(path), Some(dim)) => Some(Completion::open(path, views, dim, hashes, &unique)?),
            _ => None,
        };
        Ok(BuildFiles {
            augmented,
            views,
            features,
            mask,
            seen,
            unique,
        })
    }

    fn counts(&self) -> (BuildCount, Option<BuildCount>) {
        (
            self.features.count(),
            self.mask.as_ref().map(Completion::count),
        )
    }

    /// The images (the first of each content hash) that either file still lacks.
    fn missing(&self) -> Vec<usize> {
        let lacks = |c: &Completion, i: &usize| c.todo.contains(i);
        self.unique
            .iter()
            .copied()
            .filter(|i| lacks(&self.features, i) || self.mask.as_ref().is_some_and(|m| lacks(m, i)))
            .collect()
    }

    /// Encodes every view of the images `chunk` (decoded as `images`) and stores in each
    /// file what it lacks.
    fn encode(
        &mut self,
        key: &CacheKey,
        chunk: &[usize],
        images: &[RgbImage],
        hashes: &[String],
    ) -> Result<()> {
        let (views, augmented) = (self.views, self.augmented);
        let pixels: Vec<f32> = images
            .par_iter()
            .zip(chunk.par_iter())
            .flat_map_iter(|(image, &i)| {
                (0..views)
                    .flat_map(move |v| view_pixels(key, image, &hashes[i], augmented.then_some(v)))
            })
            .collect();
        let s = key.preprocess.size as usize;
        let batch = Tensor::from_vec(pixels, (chunk.len() * views, 3, s, s), &Device::Cpu)?;
        // The images of the chunk that a file lacks, and their rows in `batch`.
        let lacking = |file: Option<&Completion>| -> (Vec<usize>, Vec<usize>) {
            let positions: Vec<usize> = (0..chunk.len())
                .filter(|&j| file.is_some_and(|f| f.todo.contains(&chunk[j])))
                .collect();
            let rows = positions
                .iter()
                .flat_map(|&j| j * views..(j + 1) * views)
                .collect();
            (positions.iter().map(|&j| chunk[j]).collect(), rows)
        };
        let (f_items, f_rows) = lacking(Some(&self.features));
        let (m_items, m_rows) = lacking(self.mask.as_ref());
        let values = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        match key.mask {
            Some(MaskSource::Tokens(layer)) => {
                // One encoder pass gives both; keep what each file lacks.
                let (f, t) = key.encoder.encode_with_tokens(&batch, layer)?;
                if !f_items.is_empty() {
                    self.features
                        .add(&f_items, hashes, &values(select(&f, &f_rows)?)?);
                }
                if let Some(m) = self.mask.as_mut().filter(|_| !m_items.is_empty()) {
                    m.add(&m_items, hashes, &values(select(&t, &m_rows)?)?);
                }
            }
            other => {
                if !f_items.is_empty() {
                    let f = key.encoder.encode(&select(&batch, &f_rows)?)?;
                    self.features.add(&f_items, hashes, &values(f)?);
                }
                if let (Some(MaskSource::Resnet(net)), Some(m)) = (other, self.mask.as_mut()) {
                    if !m_items.is_empty() {
                        let pooled =
                            net.pooled(&select(&batch, &m_rows)?, key.preprocess.preset)?;
                        m.add(&m_items, hashes, &values(pooled)?);
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self, key: &CacheKey) -> Result<()> {
        let augmented = self.augmented;
        self.features
            .finish(&self.seen, |h| key.metadata(h, false), augmented)?;
        if let Some(m) = self.mask {
            m.finish(&self.seen, |h| key.metadata(h, true), augmented)?;
        }
        Ok(())
    }
}

/// A short name for a set of images: the first 16 hex digits of a hash of their sorted,
/// distinct content hashes.
fn set_fingerprint(hashes: &[String]) -> String {
    let sorted: std::collections::BTreeSet<&String> = hashes.iter().collect();
    let mut hasher = blake3::Hasher::new();
    for hash in sorted {
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// Makes sure the clean files (`augmented` false) or the views files hold every image,
/// computing only what is missing: the encoder features, and with `key.mask` the mask
/// generator's input beside them. Images are identified by their content hashes (as
/// computed by [`crate::image::content_hash`]).
fn build_files(
    key: &CacheKey,
    augmented: bool,
    dir: &Path,
    images: CacheImages,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
) -> Result<(BuildCount, Option<BuildCount>)> {
    // Tasks that need the same images wait for each other, and the later one finds them
    // cached; tasks with other images build beside it.
    let path = if augmented {
        key.views_path(dir)
    } else {
        key.clean_path(dir)
    };
    let _building = FileLock::acquire(&path, &format!("build-{}", set_fingerprint(images.hashes)))?;
    let mut files = BuildFiles::open(key, augmented, dir, images.hashes)?;
    let counts = files.counts();
    let work = files.missing();
    progress.set_length(work.len() as u64);
    progress.set_position(0);
    progress.set_message(if augmented {
        "encoding augmented views"
    } else {
        "encoding clean views"
    });
    // Encode in chunks of images, all views of an image together.
    for chunk in work.chunks((32 / files.views).max(1)) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let decoded: Vec<RgbImage> = chunk
            .par_iter()
            .map(|&i| images.sources[i].load(images.limits))
            .collect::<Result<_>>()?;
        files.encode(key, chunk, &decoded, images.hashes)?;
        progress.inc(chunk.len() as u64);
    }
    let stopped = stop.load(Ordering::SeqCst);
    // Written even when interrupted: what was encoded is kept.
    files.finish(key)?;
    if stopped {
        return Err(Error::interrupted(
            "the feature cache was being built; what was encoded is saved",
        ));
    }
    Ok(counts)
}

/// A training run's cache, mapped.
pub struct Cache {
    /// Clean views of the training and held-out images.
    pub clean: CachedFeatures,
    /// Augmented views of the training images.
    pub views: CachedFeatures,
    /// The mask generator's input (when it is not F): clean views.
    pub mask_clean: Option<CachedFeatures>,
    /// The mask generator's input: augmented views.
    pub mask_views: Option<CachedFeatures>,
    pub counts: CacheCounts,
}

/// What a build computed and reused, file by file.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CacheCounts {
    pub clean: BuildCount,
    pub views: BuildCount,
    pub mask_clean: Option<BuildCount>,
    pub mask_views: Option<BuildCount>,
}

impl std::fmt::Display for CacheCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let one = |c: BuildCount| format!("{} encoded, {} reused", c.computed, c.reused);
        write!(
            f,
            "clean views {}; augmented views {}",
            one(self.clean),
            one(self.views)
        )?;
        if let (Some(c), Some(v)) = (self.mask_clean, self.mask_views) {
            write!(f, "; mask input: clean {}, augmented {}", one(c), one(v))?;
        }
        Ok(())
    }
}

fn open_optional(path: Option<PathBuf>) -> Result<Option<CachedFeatures>> {
    path.map(|p| CachedFeatures::open(&p)).transpose()
}

/// Images to cache: where each comes from, its content hash, and the decoding limits.
#[derive(Clone, Copy)]
pub struct CacheImages<'a> {
    pub sources: &'a [ImageSource],
    pub hashes: &'a [String],
    pub limits: &'a DecodeLimits,
}

/// Builds (or completes) the cache for a training run and maps it: clean views of the
/// training and held-out images, augmented views of the training images, for F and (with
/// `key.mask`) for the mask generator's input.
pub fn build(
    dir: &Path,
    key: &CacheKey,
    train: CacheImages,
    held_out: CacheImages,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
) -> Result<Cache> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let sources: Vec<ImageSource> = train
        .sources
        .iter()
        .chain(held_out.sources)
        .cloned()
        .collect();
    let hashes: Vec<String> = train
        .hashes
        .iter()
        .chain(held_out.hashes)
        .cloned()
        .collect();
    let both = CacheImages {
        sources: &sources,
        hashes: &hashes,
        limits: train.limits,
    };
    let (clean, mask_clean) = build_files(key, false, dir, both, stop, progress)?;
    let (views, mask_views) = build_files(key, true, dir, train, stop, progress)?;
    Ok(Cache {
        clean: CachedFeatures::open(&key.clean_path(dir))?,
        views: CachedFeatures::open(&key.views_path(dir))?,
        mask_clean: open_optional(key.mask_clean_path(dir))?,
        mask_views: open_optional(key.mask_views_path(dir))?,
        counts: CacheCounts {
            clean,
            views,
            mask_clean,
            mask_views,
        },
    })
}

/// Builds (or completes) only the clean-view files, e.g. for evaluation images: F and
/// (with `key.mask`) the mask generator's input.
pub fn build_clean(
    dir: &Path,
    key: &CacheKey,
    images: CacheImages,
    stop: &AtomicBool,
    progress: &indicatif::ProgressBar,
) -> Result<(BuildCount, Option<BuildCount>)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    build_files(key, false, dir, images, stop, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Preset;

    /// An encoder that is only a name, a fingerprint and a precision.
    struct Named(Precision);

    impl Encoder for Named {
        fn id(&self) -> &str {
            "clip-vit-b32"
        }
        fn dim(&self) -> usize {
            512
        }
        fn input_size(&self) -> usize {
            224
        }
        fn fingerprint(&self) -> &str {
            "0123456789abcdef"
        }
        fn precision(&self) -> Precision {
            self.0
        }
        fn encode(&self, _: &Tensor) -> Result<Tensor> {
            unreachable!("the key never encodes")
        }
        fn layers(&self) -> usize {
            12
        }
        fn token_dim(&self) -> usize {
            768
        }
        fn encode_with_tokens(&self, _: &Tensor, _: usize) -> Result<(Tensor, Tensor)> {
            unreachable!("the key never encodes")
        }
    }

    fn names(precision: Precision) -> [String; 4] {
        let encoder = Named(precision);
        let key = CacheKey {
            encoder: &encoder,
            preprocess: Preprocess::new(Preset::Cafe, 224),
            seed: 3407,
            views: 8,
            mask: Some(MaskSource::Tokens(6)),
        };
        let dir = Path::new("cache");
        [
            key.clean_path(dir),
            key.views_path(dir),
            key.mask_clean_path(dir).unwrap(),
            key.mask_views_path(dir).unwrap(),
        ]
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
    }

    #[test]
    fn f32_caches_keep_their_names_and_quantized_ones_are_named_apart() {
        // The names f32 caches had before the precision existed: they are still found.
        assert_eq!(
            names(Precision::F32),
            [
                "clean-clip-vit-b32-0123456789abcdef-cafe224.safetensors",
                "views-clip-vit-b32-0123456789abcdef-cafe224-seed3407-k8.safetensors",
                "clean-clip-vit-b32-0123456789abcdef-cafe224-tokens6.safetensors",
                "views-clip-vit-b32-0123456789abcdef-cafe224-tokens6-seed3407-k8.safetensors",
            ]
        );
        assert_eq!(
            names(Precision::Int8),
            [
                "clean-clip-vit-b32-0123456789abcdef-int8-cafe224.safetensors",
                "views-clip-vit-b32-0123456789abcdef-int8-cafe224-seed3407-k8.safetensors",
                "clean-clip-vit-b32-0123456789abcdef-int8-cafe224-tokens6.safetensors",
                "views-clip-vit-b32-0123456789abcdef-int8-cafe224-tokens6-seed3407-k8.safetensors",
            ]
        );
        assert_ne!(names(Precision::Bf16), names(Precision::Int8));
    }
}
