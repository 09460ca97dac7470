//! Batches for the full recipe: decode each image, apply the recipe's augmentation, and
//! run the frozen encoder on the augmented pixels (CLIP sees the augmented image, as in
//! the authors' code), without gradients.

use crate::backbone::Encoder;
use crate::data::ImageSource;
use crate::error::Result;
use crate::image::{Augment, DecodeLimits, Preprocess, RgbImage};
use crate::train::fit::{rng_for, Batch, BatchSource, EvalSource, RNG_AUGMENT};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Labelled images, decoded on demand.
pub struct LabelledImages {
    pub sources: Vec<ImageSource>,
    pub labels: Vec<u32>,
    pub limits: DecodeLimits,
}

impl LabelledImages {
    fn decode(&self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        indices
            .par_iter()
            .map(|&i| self.sources[i].load(&self.limits))
            .collect()
    }

    fn labels_of(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Tensor::new(labels, device)?)
    }
}

pub struct PixelSource<'a> {
    pub images: LabelledImages,
    /// The frozen encoder; `None` for the plain ResNet method, which reads no feature.
    pub encoder: Option<&'a dyn Encoder>,
    pub preprocess: Preprocess,
    pub augment: Augment,
    pub seed: u64,
    pub device: Device,
}

impl PixelSource<'_> {
    fn batch_of(&self, pixels: Vec<Vec<f32>>, indices: &[usize]) -> Result<Batch> {
        let size = self.preprocess.size as usize;
        let n = pixels.len();
        let flat: Vec<f32> = pixels.into_iter().flatten().collect();
        let images = Tensor::from_vec(flat, (n, 3, size, size), &self.device)?;
        let features = match self.encoder {
            Some(encoder) => Some(encoder.encode(&images)?.detach()),
            None => None,
        };
        Ok(Batch {
            images: Some(images),
            features,
            mask_input: None,
            labels: self.images.labels_of(indices, &self.device)?,
        })
    }
}

impl BatchSource for PixelSource<'_> {
    fn len(&self) -> usize {
        self.images.sources.len()
    }

    fn train_batch(&self, indices: &[usize], epoch: usize) -> Result<Batch> {
        let decoded = self.images.decode(indices)?;
        let pixels: Vec<Vec<f32>> = decoded
            .par_iter()
            .zip(indices.par_iter())
            .map(|(image, &i)| {
                let mut rng = rng_for(self.seed, RNG_AUGMENT, epoch as u64, i as u64);
                self.augment.apply(image, &self.preprocess, &mut rng)
            })
            .collect();
        self.batch_of(pixels, indices)
    }
}

impl EvalSource for PixelSource<'_> {
    fn len(&self) -> usize {
        self.images.sources.len()
    }

    fn eval_batch(&self, indices: &[usize]) -> Result<Batch> {
        let decoded = self.images.decode(indices)?;
        let pixels: Vec<Vec<f32>> = decoded
            .par_iter()
            .map(|image| self.preprocess.apply(image))
            .collect();
        self.batch_of(pixels, indices)
    }

    fn labels(&self) -> Vec<usize> {
        self.images.labels.iter().map(|&l| l as usize).collect()
    }
}
