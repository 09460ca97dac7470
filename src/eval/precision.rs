//! What a quantized encoder (`--precision bf16|int8`) changes on labelled images: the
//! cosine similarity of each image's feature to the f32 one, and, given a model trained on
//! f32 features, its predictions and accuracy (`gfer bench precision`).

use crate::backbone::features::cosine_similarities;
use crate::backbone::Encoder;
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::eval::evaluate::decode_labelled;
use crate::eval::metrics::{Confusion, Metrics};
use crate::image::{DecodeLimits, Preprocess, Preset};
use crate::model::inference::ExpressionModel;
use crate::model::Trainable;
use candle_core::{Device, Tensor};

/// One precision's way from pixels to features, and to logits where there is a model.
pub enum Runner {
    Encoder(Box<dyn Encoder>),
    Model(Box<ExpressionModel>),
}

impl Runner {
    /// The model's preprocessing, or `preset` at the encoder's input size.
    pub fn preprocess(&self, preset: Preset) -> Preprocess {
        match self {
            Runner::Encoder(encoder) => Preprocess::new(preset, encoder.input_size() as u32),
            Runner::Model(model) => model.preprocess(),
        }
    }

    /// `[B,3,S,S]` pixels -> `[B,D]` features and, for a model, `[B,C]` logits.
    fn run(&self, pixels: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            Runner::Encoder(encoder) => Ok((encoder.encode(pixels)?, None)),
            Runner::Model(model) => {
                let batch = model.inference_batch(pixels)?;
                let logits = model.classifier().logits(&batch)?;
                let features = batch.features.ok_or_else(|| {
                    Error::config("this model reads no frozen features: no precision to compare")
                })?;
                Ok((features, Some(logits)))
            }
        }
    }
}

/// What the quantized precision changed on one set of images.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrecisionComparison {
    /// Each readable image's cosine similarity between its two features.
    pub cosines: Vec<f32>,
    /// With a model: its metrics on f32 features, on the quantized ones, and how many of
    /// its predictions differ between the two.
    pub f32: Option<Metrics>,
    pub quantized: Option<Metrics>,
    pub changed_predictions: usize,
    /// Images that could not be read, with the reason (left out of everything above).
    pub failures: Vec<(String, String)>,
}

impl PrecisionComparison {
    pub fn lowest_cosine(&self) -> f32 {
        self.cosines.iter().copied().fold(f32::INFINITY, f32::min)
    }

    pub fn median_cosine(&self) -> f32 {
        let mut sorted = self.cosines.clone();
        sorted.sort_by(f32::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f32::NAN)
    }
}

/// Runs every image of `samples` through both runners, built on the same weights in
/// CPU memory (where the quantized encoders run), one in f32 and one quantized, and
/// compares what they give.
pub fn compare_precisions(
    f32_runner: &Runner,
    quantized_runner: &Runner,
    samples: &[&Sample],
    preprocess: Preprocess,
    batch_size: usize,
    limits: &DecodeLimits,
    progress: &indicatif::ProgressBar,
) -> Result<PrecisionComparison> {
    let classes = match f32_runner {
        Runner::Model(model) => Some(model.class_names()),
        Runner::Encoder(_) => None,
    };
    let confusion = || classes.clone().map(Confusion::new);
    let (mut exact_confusion, mut quantized_confusion) = (confusion(), confusion());
    let mut cosines = Vec::with_capacity(samples.len());
    let mut changed_predictions = 0;
    let mut failures = Vec::new();
    progress.set_length(samples.len() as u64);
    progress.set_position(0);
    for chunk in samples.chunks(batch_size.max(1)) {
        let (images, labels) = decode_labelled(chunk, limits, &mut failures);
        if !images.is_empty() {
            let pixels = preprocess.batch(&images, &Device::Cpu)?;
            let (exact, exact_logits) = f32_runner.run(&pixels)?;
            let (quantized, quantized_logits) = quantized_runner.run(&pixels)?;
            cosines.extend(cosine_similarities(&exact, &quantized)?);
            if let (Some(a), Some(b)) = (exact_logits, quantized_logits) {
                let a = a.argmax(1)?.to_vec1::<u32>()?;
                let b = b.argmax(1)?.to_vec1::<u32>()?;
                for ((&a, &b), &truth) in a.iter().zip(&b).zip(&labels) {
                    changed_predictions += usize::from(a != b);
                    if let (Some(exact), Some(quantized)) =
                        (&mut exact_confusion, &mut quantized_confusion)
                    {
                        exact.add(truth, a as usize);
                        quantized.add(truth, b as usize);
                    }
                }
            }
        }
        progress.inc(chunk.len() as u64);
    }
    Ok(PrecisionComparison {
        cosines,
        f32: exact_confusion.map(|c| c.metrics()),
        quantized: quantized_confusion.map(|c| c.metrics()),
        changed_predictions,
        failures,
    })
}
