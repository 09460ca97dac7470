//! Batches for fast mode: frozen features read from the memory-mapped cache instead of
//! running the encoder; each epoch samples one cached augmented view per image. The mask
//! generator reads the same cached feature (an MLP on F), or its own cached input of the
//! same view (a frozen ResNet-18's pooled feature, an encoder block's mean patch token).

use crate::error::{Error, Result};
use crate::train::cache::CachedFeatures;
use crate::train::fit::{rng_for, Batch, BatchSource, EvalSource};
use candle_core::{Device, Tensor};
use rand::Rng;

/// Purpose of the generator that picks each image's view in an epoch.
const RNG_PICK_VIEW: u64 = 5;

pub struct FastSource<'a> {
    pub cache: &'a CachedFeatures,
    /// Row of each sample in `cache`.
    pub rows: Vec<usize>,
    pub labels: Vec<u32>,
    pub seed: u64,
    pub device: Device,
    /// The mask generator's own input and each sample's row in it; `None`: it reads F.
    pub mask: Option<(&'a CachedFeatures, Vec<usize>)>,
}

fn rows_in(cache: &CachedFeatures, hashes: &[String]) -> Result<Vec<usize>> {
    hashes
        .iter()
        .map(|h| {
            cache.row_of(h).ok_or_else(|| {
                Error::config(format!("image {h} is missing from the feature cache"))
            })
        })
        .collect()
}

impl<'a> FastSource<'a> {
    /// The samples with these content hashes, which must all be in the cache.
    pub fn new(
        cache: &'a CachedFeatures,
        hashes: &[String],
        labels: Vec<u32>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Ok(FastSource {
            cache,
            rows: rows_in(cache, hashes)?,
            labels,
            seed,
            device: device.clone(),
            mask: None,
        })
    }

    /// The mask generator reads `mask` (the same views of the same images, in the same
    /// order as `hashes`) instead of F.
    pub fn with_mask_input(mut self, mask: &'a CachedFeatures, hashes: &[String]) -> Result<Self> {
        if mask.views != self.cache.views {
            return Err(Error::config(format!(
                "the mask input cache holds {} views per image, the feature cache {}",
                mask.views, self.cache.views
            )));
        }
        self.mask = Some((mask, rows_in(mask, hashes)?));
        Ok(self)
    }

    fn batch(&self, indices: &[usize], view_of: impl Fn(usize) -> usize) -> Result<Batch> {
        let dim = self.cache.dim;
        let mut values = Vec::with_capacity(indices.len() * dim);
        let views: Vec<usize> = indices.iter().map(|&i| view_of(i)).collect();
        for (&i, &v) in indices.iter().zip(&views) {
            values.extend_from_slice(self.cache.get(self.rows[i], v));
        }
        let features = Tensor::from_vec(values, (indices.len(), dim), &self.device)?;
        let mask_input = match &self.mask {
            None => features.clone(),
            Some((cache, rows)) => {
                let mut values = Vec::with_capacity(indices.len() * cache.dim);
                for (&i, &v) in indices.iter().zip(&views) {
                    values.extend_from_slice(cache.get(rows[i], v));
                }
                Tensor::from_vec(values, (indices.len(), cache.dim), &self.device)?
            }
        };
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Batch {
            images: None,
            mask_input: Some(mask_input),
            features: Some(features),
            labels: Tensor::new(labels, &self.device)?,
        })
    }
}

impl BatchSource for FastSource<'_> {
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

impl EvalSource for FastSource<'_> {
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
