//! Prediction over many inputs, as `gfer predict` runs it: decode a step of images in
//! parallel, predict them in one batch, write the results in input order, draw them if
//! asked, and keep going past anything unreadable.

use super::draw::annotate;
use super::inputs::Input;
use super::output::{ImageResult, PredictionWriter};
use super::{ImagePrediction, Predictor};
use crate::error::{Error, Result};
use crate::image::DecodeLimits;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

pub struct RunOptions {
    pub limits: DecodeLimits,
    /// Write a copy of every photo with its faces drawn under this folder.
    pub draw_dir: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Images decoded and predicted together; bounds the decoded photos held in memory.
    pub images_per_step: usize,
}

/// What a run did, for the closing summary and the exit status.
#[derive(Debug, Default, PartialEq)]
pub struct RunSummary {
    pub images: usize,
    pub faces: usize,
    pub images_without_face: usize,
    pub faces_too_small: usize,
    /// Inputs that could not be read or predicted, or whose drawing could not be written:
    /// (input, reason).
    pub failed: Vec<(String, String)>,
}

/// Predicts every input and writes one record per face (or per failure) to `writer`.
/// Only an output that cannot be written stops the run; every other problem is recorded
/// in the summary and in the output.
pub fn predict_inputs<W: Write>(
    predictor: &Predictor,
    inputs: &[Input],
    options: &RunOptions,
    writer: &mut PredictionWriter<W>,
) -> Result<RunSummary> {
    let progress = if options.progress {
        ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}  {msg}")
            .map_err(|err| Error::config(err.to_string()))?,
    );
    let mut summary = RunSummary::default();
    for step in inputs.chunks(options.images_per_step.max(1)) {
        let decoded: Vec<std::result::Result<RgbImage, String>> = step
            .par_iter()
            .map(|input| read_image(input, &options.limits).map_err(reason))
            .collect();
        // The decoded images go to the model together; each input keeps the index of its
        // image, or why it has none.
        let mut images = Vec::with_capacity(decoded.len());
        let slots: Vec<std::result::Result<usize, String>> = decoded
            .into_iter()
            .map(|d| {
                d.map(|image| {
                    images.push(image);
                    images.len() - 1
                })
            })
            .collect();
        let predictions: Vec<std::result::Result<ImagePrediction, String>> =
            match predictor.predict_batch(&images) {
                Ok(predictions) => predictions.into_iter().map(Ok).collect(),
                // One image that breaks the batch must not cost the others their answers.
                Err(_) => images
                    .iter()
                    .map(|image| predictor.predict(image).map_err(|err| err.to_string()))
                    .collect(),
            };

        for (input, slot) in step.iter().zip(slots) {
            let source = input.to_string();
            let (outcome, image) = match slot {
                Ok(i) => (predictions[i].clone(), Some(&images[i])),
                Err(reason) => (Err(reason), None),
            };
            let result = ImageResult {
                source,
                frame: None,
                outcome,
            };
            writer.write(&result)?;
            summary.images += 1;
            let mut problem = None;
            match &result.outcome {
                Ok(prediction) => {
                    summary.faces += prediction.faces.len();
                    summary.faces_too_small += prediction.too_small;
                    if prediction.faces.is_empty() {
                        summary.images_without_face += 1;
                    }
                    if let (Some(dir), Some(image)) = (&options.draw_dir, image) {
                        let drawn = annotate(image, prediction, predictor.class_names());
                        problem = crate::image::save(&drawn, &draw_path(dir, input))
                            .err()
                            .map(|err| err.to_string());
                    }
                }
                Err(reason) => problem = Some(reason.clone()),
            }
            if let Some(reason) = problem {
                progress.suspend(|| eprintln!("{}: {reason}", result.source));
                summary.failed.push((result.source, reason));
            }
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    Ok(summary)
}

/// Why an input failed, without the path that every record already carries.
fn reason(err: Error) -> String {
    match err {
        Error::Image { reason, .. } => reason,
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

fn read_image(input: &Input, limits: &DecodeLimits) -> Result<RgbImage> {
    match input {
        Input::File(path) => crate::image::open(path, limits),
        Input::Stdin => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .map_err(|err| Error::io("<stdin>", err))?;
            crate::image::decode(&bytes, "-", limits)
        }
    }
}

/// Where the drawing of `input` goes: the input's path (without root or `..`) under
/// `dir`, so photos of the same name in different folders do not overwrite each other.
/// Stdin's drawing is `stdin.png`.
pub fn draw_path(dir: &Path, input: &Input) -> PathBuf {
    match input {
        Input::Stdin => dir.join("stdin.png"),
        Input::File(path) => {
            let relative: PathBuf = path
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect();
            let mut out = dir.join(relative);
            // Keep formats the encoder can write; anything else becomes PNG.
            if image::ImageFormat::from_path(&out)
                .map(|f| !f.can_write())
                .unwrap_or(true)
            {
                let name = out
                    .file_name()
                    .map(|n| format!("{}.png", n.to_string_lossy()))
                    .unwrap_or_else(|| "image.png".into());
                out.set_file_name(name);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawings_mirror_the_input_path_under_the_folder() {
        let dir = Path::new("/out");
        assert_eq!(
            draw_path(dir, &Input::File("/photos/2020/a.jpg".into())),
            PathBuf::from("/out/photos/2020/a.jpg")
        );
        assert_eq!(
            draw_path(dir, &Input::File("../x/b.png".into())),
            PathBuf::from("/out/x/b.png")
        );
        assert_eq!(
            draw_path(dir, &Input::File("c.heic".into())),
            PathBuf::from("/out/c.heic.png")
        );
        assert_eq!(
            draw_path(dir, &Input::Stdin),
            PathBuf::from("/out/stdin.png")
        );
    }
}
