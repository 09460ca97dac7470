//! A trained model ready to use: the bundle's classifier with the frozen encoder it was
//! trained on. `eval`, `predict` and `serve` all go through [`ExpressionModel`].

use crate::backbone::{load_encoder, Encoder};
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::eval::metrics::{Confusion, Metrics};
use crate::image::{DecodeLimits, Preprocess, RgbImage};
use crate::model::bundle::{Bundle, BundleMeta};
use crate::model::classifier::{Classifier, GeneratorSpec, MaskInput, ModelSpec};
use crate::train::fit::{Batch, EvalSource, Trainable};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::path::Path;

pub struct ExpressionModel {
    pub meta: BundleMeta,
    encoder: Option<Box<dyn Encoder>>,
    classifier: Classifier,
    device: Device,
}

impl ExpressionModel {
    /// Loads a bundle and the encoder weights it was trained on (`weights` may be `None`
    /// only for a model that reads no frozen feature, the plain ResNet). A bundle whose
    /// encoder does not match the weights is refused, saying which.
    pub fn load(bundle_path: &Path, weights: Option<&Path>, device: &Device) -> Result<Self> {
        let bundle = Bundle::load(bundle_path, device)?;
        let spec: ModelSpec =
            serde_json::from_value(bundle.meta.model.clone()).map_err(|e| Error::Bundle {
                path: bundle.origin.clone(),
                message: format!("unreadable model description: {e}"),
            })?;
        if let Some(GeneratorSpec::Mlp { input, .. }) = &spec.generator {
            // Refused now rather than at the first image.
            MaskInput::from_spec_name(input).map_err(|e| Error::Bundle {
                path: bundle.origin.clone(),
                message: e.to_string(),
            })?;
        }
        let encoder = if spec.method.uses_frozen_features() {
            let weights = weights.ok_or_else(|| Error::Bundle {
                path: bundle.origin.clone(),
                message: format!(
                    "this model reads {} features: pass the encoder weights it was trained on (--weights)",
                    bundle.meta.backbone
                ),
            })?;
            let encoder = load_encoder(None, weights, device)?;
            bundle.check_encoder(encoder.as_ref())?;
            Some(encoder)
        } else {
            None
        };
        let classifier = Classifier::from_tensors(&spec, bundle.tensors, &bundle.origin, device)?;
        Ok(ExpressionModel {
            meta: bundle.meta,
            encoder,
            classifier,
            device: device.clone(),
        })
    }

    pub fn preprocess(&self) -> Preprocess {
        self.meta.preprocess
    }

    pub fn class_names(&self) -> Vec<String> {
        self.meta.classes.clone()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's inputs for `[B,3,S,S]` preprocessed pixels: the frozen feature and
    /// whatever the mask generator reads (an encoder block's mean patch token, the frozen
    /// ResNet-18's pooled feature), computed as they were cached for training.
    pub fn inference_batch(&self, pixels: &Tensor) -> Result<Batch> {
        self.classifier.inference_batch(
            pixels.clone(),
            self.encoder.as_deref(),
            self.meta.preprocess.preset,
        )
    }

    /// `[B,3,S,S]` preprocessed pixels -> `[B,C]` logits.
    pub fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        self.classifier.logits(&self.inference_batch(pixels)?)
    }

    /// The trained model (e.g. to read its frozen ResNet-18).
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// `[B,3,S,S]` preprocessed pixels -> `[B,C]` class probabilities.
    pub fn probabilities(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(&self.logits(pixels)?)?)
    }

    /// Probabilities of decoded images (any size; preprocessed here).
    pub fn classify_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.preprocess().batch(images, &self.device)?;
        Ok(self.probabilities(&pixels)?.to_vec2::<f32>()?)
    }

    /// Accuracy, per-class accuracy, macro-F1 and confusion on labelled samples.
    /// Unreadable images are returned with the reason and left out of the metrics.
    pub fn evaluate(
        &self,
        samples: &[&Sample],
        batch_size: usize,
        limits: &DecodeLimits,
        progress: &indicatif::ProgressBar,
    ) -> Result<(Metrics, Vec<(String, String)>)> {
        let mut confusion = Confusion::new(self.class_names());
        let mut failures = Vec::new();
        progress.set_length(samples.len() as u64);
        progress.set_position(0);
        for chunk in samples.chunks(batch_size.max(1)) {
            let decoded: Vec<Result<RgbImage>> =
                chunk.par_iter().map(|s| s.source.load(limits)).collect();
            let mut images = Vec::new();
            let mut labels = Vec::new();
            for (sample, image) in chunk.iter().zip(decoded) {
                match image {
                    Ok(image) => {
                        images.push(image);
                        labels.push(sample.label.index());
                    }
                    Err(e) => failures.push((sample.source.describe(), e.to_string())),
                }
            }
            for (probabilities, truth) in self.classify_images(&images)?.iter().zip(labels) {
                confusion.add(truth, argmax(probabilities));
            }
            progress.inc(chunk.len() as u64);
        }
        Ok((confusion.metrics(), failures))
    }
}

impl ExpressionModel {
    /// Metrics on prepared evaluation batches (e.g. cached features).
    pub fn evaluate_source(&self, source: &dyn EvalSource, batch_size: usize) -> Result<Metrics> {
        crate::train::fit::evaluate(&self.classifier, source, batch_size, self.class_names())
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}
