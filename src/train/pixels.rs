//! Batches for the full recipe: decode each image, apply the recipe's augmentation, and
//! run the frozen encoder on the augmented pixels (CLIP sees the augmented image, as in
//! the authors' code), without gradients.

use crate::backbone::Encoder;
use crate::data::{ImageSource, Sample};
use crate::error::Result;
use crate::eval::EvalSource;
use crate::image::{Augment, DecodeLimits, Preprocess, RgbImage};
use crate::model::Batch;
use crate::train::fit::BatchSource;
use crate::train::rng::{rng_for, RNG_AUGMENT};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Labelled images, decoded on demand.
pub struct LabelledImages {
    pub sources: Vec<ImageSource>,
    pub labels: Vec<u32>,
    pub limits: DecodeLimits,
}

impl LabelledImages {
    pub fn new(samples: &[&Sample], limits: DecodeLimits) -> Self {
        LabelledImages {
            sources: samples.iter().map(|s| s.source.clone()).collect(),
            labels: samples.iter().map(|s| s.label.index() as u32).collect(),
            limits,
        }
    }

    fn decode(&self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        indices
            .par_iter()
            .map(|&i| self.sources[i].load(&self.limits))
            .collect()
    }

    /// The preprocessed (not augmented) pixels `[n,3,S,S]` of these images.
    pub fn clean_pixels(
        &self,
        indices: &[usize],
        preprocess: &Preprocess,
        device: &Device,
    ) -> Result<Tensor> {
        let decoded = self.decode(indices)?;
        let pixels: Vec<Vec<f32>> = decoded
            .par_iter()
            .map(|image| preprocess.apply(image))
            .collect();
        pixel_tensor(pixels, preprocess, device)
    }

    fn labels_of(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Tensor::new(labels, device)?)
    }
}

fn pixel_tensor(pixels: Vec<Vec<f32>>, preprocess: &Preprocess, device: &Device) -> Result<Tensor> {
    let size = preprocess.size as usize;
    let n = pixels.len();
    let flat: Vec<f32> = pixels.into_iter().flatten().collect();
    Ok(Tensor::from_vec(flat, (n, 3, size, size), device)?)
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
    fn batch_of(&self, images: Tensor, indices: &[usize]) -> Result<Batch> {
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
        let images = pixel_tensor(pixels, &self.preprocess, &self.device)?;
        self.batch_of(images, indices)
    }
}

impl EvalSource for PixelSource<'_> {
    fn len(&self) -> usize {
        self.images.sources.len()
    }

    fn eval_batch(&self, indices: &[usize]) -> Result<Batch> {
        let images = self
            .images
            .clean_pixels(indices, &self.preprocess, &self.device)?;
        self.batch_of(images, indices)
    }

    fn labels(&self) -> Vec<usize> {
        self.images.labels.iter().map(|&l| l as usize).collect()
    }
}
