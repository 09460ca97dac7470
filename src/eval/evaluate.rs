//! Scoring a model on labelled images: from prepared batches ([`evaluate`], e.g. cached
//! features or the training run's held-out split) or from image files ([`evaluate_images`],
//! `gfer eval`).

use crate::data::Sample;
use crate::error::Result;
use crate::eval::metrics::{Confusion, Metrics};
use crate::image::{DecodeLimits, RgbImage};
use crate::model::inference::ExpressionModel;
use crate::model::{argmax, Batch, Trainable};
use rayon::prelude::*;

/// Clean (not augmented) batches of a labelled set, for evaluation.
pub trait EvalSource {
    fn len(&self) -> usize;
    fn eval_batch(&self, indices: &[usize]) -> Result<Batch>;
    fn labels(&self) -> Vec<usize>;
}

/// Accuracy and the rest of `model` (in evaluation mode) on every batch of `source`.
pub fn evaluate(
    model: &dyn Trainable,
    source: &dyn EvalSource,
    batch_size: usize,
    class_names: Vec<String>,
) -> Result<Metrics> {
    let labels = source.labels();
    let mut confusion = Confusion::new(class_names);
    let indices: Vec<usize> = (0..source.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = source.eval_batch(chunk)?;
        let predicted = model.logits(&batch)?.argmax(1)?.to_vec1::<u32>()?;
        for (&i, &p) in chunk.iter().zip(&predicted) {
            confusion.add(labels[i], p as usize);
        }
    }
    Ok(confusion.metrics())
}

/// Accuracy, per-class accuracy, macro-F1 and confusion of a trained model on labelled
/// image files. Unreadable images are returned with the reason and left out of the
/// metrics.
pub fn evaluate_images(
    model: &ExpressionModel,
    samples: &[&Sample],
    batch_size: usize,
    limits: &DecodeLimits,
    progress: &indicatif::ProgressBar,
) -> Result<(Metrics, Vec<(String, String)>)> {
    let mut confusion = Confusion::new(model.class_names());
    let mut failures = Vec::new();
    progress.set_length(samples.len() as u64);
    progress.set_position(0);
    for chunk in samples.chunks(batch_size.max(1)) {
        let (images, labels) = decode_labelled(chunk, limits, &mut failures);
        for (probabilities, truth) in model.classify_images(&images)?.iter().zip(labels) {
            confusion.add(truth, argmax(probabilities));
        }
        progress.inc(chunk.len() as u64);
    }
    Ok((confusion.metrics(), failures))
}

/// The images of `samples` that decode, with their labels' indices; each that does not is
/// added to `failures` with the reason.
pub(crate) fn decode_labelled(
    samples: &[&Sample],
    limits: &DecodeLimits,
    failures: &mut Vec<(String, String)>,
) -> (Vec<RgbImage>, Vec<usize>) {
    let decoded: Vec<Result<RgbImage>> =
        samples.par_iter().map(|s| s.source.load(limits)).collect();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (sample, image) in samples.iter().zip(decoded) {
        match image {
            Ok(image) => {
                images.push(image);
                labels.push(sample.label.index());
            }
            Err(e) => failures.push((sample.source.describe(), e.to_string())),
        }
    }
    (images, labels)
}
