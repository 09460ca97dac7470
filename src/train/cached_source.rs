//! Batches from the feature cache: frozen features read from the memory-mapped files
//! instead of running the encoder. In training each epoch samples one cached augmented
//! view per image; in evaluation the clean view is read. The mask generator reads the same
//! cached feature (an MLP on F), or its own cached input of the same view (a frozen
//! ResNet-18's pooled feature, an encoder block's mean patch token), or, for a ResNet-18
//! generator on pixels, the image decoded and preprocessed ([`CachedSource::with_pixels`]).

use crate::error::{Error, Result};
use crate::eval::EvalSource;
use crate::image::Preprocess;
use crate::model::Batch;
use crate::train::cache::CachedFeatures;
use crate::train::fit::BatchSource;
use crate::train::pixels::LabelledImages;
use crate::train::rng::{rng_for, RNG_PICK_VIEW};
use candle_core::{Device, Tensor};
use rand::Rng;

pub struct CachedSource<'a> {
    cache: &'a CachedFeatures,
    /// Row of each sample in `cache`.
    rows: Vec<usize>,
    labels: Vec<u32>,
    seed: u64,
    device: Device,
    /// The mask generator's own input and each sample's row in it; `None`: it reads F.
    mask: Option<(&'a CachedFeatures, Vec<usize>)>,
    /// The samples' images, for a generator that reads pixels.
    pixels: Option<(&'a LabelledImages, Preprocess)>,
}

impl<'a> CachedSource<'a> {
    /// The samples with these content hashes, which must all be in the cache.
    pub fn new(
        cache: &'a CachedFeatures,
        hashes: &[String],
        labels: Vec<u32>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Ok(CachedSource {
            cache,
            rows: cache.rows_of(hashes)?,
            labels,
            seed,
            device: device.clone(),
            mask: None,
            pixels: None,
        })
    }

    /// The mask generator reads `mask` (the same views of the same images, in the same
    /// order as `hashes`) instead of F.
    pub fn with_mask_input(mut self, mask: &'a CachedFeatures, hashes: &[String]) -> Result<Self> {
        if mask.views != self.cache.views {
            return Err(Error::internal(format!(
                "the mask input cache holds {} views per image, the feature cache {}",
                mask.views, self.cache.views
            )));
        }
        self.mask = Some((mask, mask.rows_of(hashes)?));
        Ok(self)
    }

    /// Evaluation batches carry the clean pixels of `images` (the samples, in order) too.
    pub fn with_pixels(mut self, images: &'a LabelledImages, preprocess: Preprocess) -> Self {
        self.pixels = Some((images, preprocess));
        self
    }

    /// The rows of view `view_of(sample)` of these samples, from `cache`.
    fn read(
        &self,
        cache: &CachedFeatures,
        rows: &[usize],
        indices: &[usize],
        views: &[usize],
    ) -> Result<Tensor> {
        let mut values = Vec::with_capacity(indices.len() * cache.dim);
        for (&i, &v) in indices.iter().zip(views) {
            values.extend_from_slice(cache.get(rows[i], v));
        }
        Ok(Tensor::from_vec(
            values,
            (indices.len(), cache.dim),
            &self.device,
        )?)
    }

    fn batch(&self, indices: &[usize], view_of: impl Fn(usize) -> usize) -> Result<Batch> {
        let views: Vec<usize> = indices.iter().map(|&i| view_of(i)).collect();
        let features = self.read(self.cache, &self.rows, indices, &views)?;
        let mask_input = match &self.mask {
            None => features.clone(),
            Some((cache, rows)) => self.read(cache, rows, indices, &views)?,
        };
        let images = match self.pixels {
            Some((images, preprocess)) => {
                Some(images.clean_pixels(indices, &preprocess, &self.device)?)
            }
            None => None,
        };
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Batch {
            images,
            mask_input: Some(mask_input),
            features: Some(features),
            labels: Tensor::new(labels, &self.device)?,
        })
    }
}

impl BatchSource for CachedSource<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn train_batch(&self, indices: &[usize], epoch: usize) -> Result<Batch> {
        let views = self.cache.views;
        self.batch(indices, |i| {
            rng_for(self.seed, RNG_PICK_VIEW, epoch as u64, i as u64).gen_range(0..views)
        })
    }
}

impl EvalSource for CachedSource<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn eval_batch(&self, indices: &[usize]) -> Result<Batch> {
        self.batch(indices, |_| 0)
    }

    fn labels(&self) -> Vec<usize> {
        self.labels.iter().map(|&l| l as usize).collect()
    }
}
