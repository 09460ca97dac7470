//! A trained model ready to use: the bundle's classifier with the frozen encoder it was
//! trained on. `eval`, `predict` and `serve` all go through [`ExpressionModel`].

use crate::backbone::{load_encoder, Encoder, Precision};
use crate::error::{Error, Result};
use crate::image::{Preprocess, RgbImage};
use crate::model::bundle::{Bundle, BundleMeta};
use crate::model::classifier::{Classifier, GeneratorSpec, MaskInput, ModelSpec};
use crate::model::{Batch, Trainable};
use candle_core::{Device, Tensor};
use std::path::Path;

pub struct ExpressionModel {
    pub meta: BundleMeta,
    encoder: Option<Box<dyn Encoder>>,
    classifier: Classifier,
    device: Device,
}

impl ExpressionModel {
    /// Loads a bundle and the encoder weights it was trained on (`weights` may be `None`
    /// only for a model that reads no frozen feature, the plain ResNet), the encoder in
    /// `precision` (whatever precision the model was trained with: only the weights must
    /// match). A bundle whose encoder does not match the weights is refused, saying which.
    pub fn load(
        bundle_path: &Path,
        weights: Option<&Path>,
        precision: Precision,
        device: &Device,
    ) -> Result<Self> {
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
            let encoder = load_encoder(None, weights, device, precision)?;
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
}
