//! The inference pipeline that `gfer predict`, `gfer serve` and library users share:
//! photo -> face boxes ([`crate::detect`]) -> square crops -> the model's own
//! preprocessing -> class probabilities, with the faces of many photos batched into one
//! forward pass.
//!
//! In the layers: beside training and evaluation, on the model alone; `serve` and the demo
//! use it.
//!
//! ```no_run
//! # fn main() -> gfer::Result<()> {
//! use gfer::backbone::Precision;
//! use gfer::predict::{PredictOptions, Predictor};
//! use std::path::Path;
//! let device = candle_core::Device::Cpu;
//! let predictor = Predictor::from_bundle(
//!     Path::new("runs/raf-cafe/model.safetensors"),
//!     Some(Path::new("ViT-B-32.safetensors")),
//!     Precision::F32,
//!     &device,
//!     PredictOptions::default(),
//! )?;
//! let photo = gfer::image::open(Path::new("group.jpg"), &Default::default())?;
//! for face in predictor.predict(&photo)?.faces {
//!     println!("{:?} {} {:.2}", face.bbox, face.label, face.confidence);
//! }
//! # Ok(()) }
//! ```

pub mod draw;
pub mod inputs;
pub mod output;
pub mod run;
pub mod video;

use crate::backbone::Precision;
use crate::data::FaceCropping;
use crate::detect::align::{aligned_crop, roll_degrees, Template};
use crate::detect::{square_crop, DetectorKind, DetectorOptions, FaceDetector, Landmarks, Rect};
use crate::error::{Error, Result};
use crate::model::argmax;
use crate::model::inference::ExpressionModel;
use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// What the predictor needs from a trained model: its preprocessing and class names, and
/// class probabilities for a batch of preprocessed face crops.
pub trait FaceClassifier: Send + Sync {
    /// The preprocessing the model was trained with (applied to every face crop).
    fn preprocess(&self) -> crate::image::Preprocess;
    /// Names of the classes, in the order of the probability columns.
    fn class_names(&self) -> Vec<String>;
    /// Where the model's weights live; preprocessed pixels are put there.
    fn device(&self) -> Device;
    /// `[B,3,S,S]` preprocessed pixels -> `[B,C]` probabilities (rows sum to 1).
    fn probabilities(&self, pixels: &Tensor) -> Result<Tensor>;
}

/// How a detected face becomes the crop the model sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Alignment {
    /// Upright by the five landmarks, as the aligned training sets were made (when the
    /// detector gives landmarks; a square crop otherwise).
    #[default]
    Landmarks,
    /// The square crop around the box, as detected.
    None,
}

/// How photos become faces and faces become forward passes.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictOptions {
    /// Find faces with the detector; when false every image is taken as one face (for
    /// photos that are already face crops).
    pub detect: bool,
    /// Which detector, and its threshold.
    pub detector: DetectorOptions,
    /// Whether faces are aligned by their landmarks before the model sees them.
    pub align: Alignment,
    /// Margin added around a detected face on every side, as a fraction of its longer
    /// side, before the square crop (see [`square_crop`]).
    pub crop_margin: f32,
    /// Detected faces whose longer side is below this many pixels are skipped (and
    /// counted in [`ImagePrediction::too_small`]): upscaled to the model's input they
    /// carry too little detail to read an expression from.
    pub min_face_size: u32,
    /// Most face crops in one forward pass.
    pub batch_size: usize,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            detect: true,
            detector: DetectorOptions::default(),
            align: Alignment::default(),
            crop_margin: 0.2,
            min_face_size: 48,
            batch_size: 32,
        }
    }
}

impl PredictOptions {
    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::config("batch size must be at least 1"));
        }
        if !(0.0..=2.0).contains(&self.crop_margin) {
            return Err(Error::config(format!(
                "crop margin must be between 0 and 2 (a fraction of the face size), got {}",
                self.crop_margin
            )));
        }
        Ok(())
    }

    /// How these options cut faces from photos, in the terms a bundle records them;
    /// `None` with detection off (the photos are then the user's own crops).
    pub fn face_cropping(&self) -> Option<FaceCropping> {
        if !self.detect {
            return None;
        }
        let (detector, has_landmarks) = match self.detector.kind {
            DetectorKind::Mtcnn => ("mtcnn", true),
            DetectorKind::Seetaface => ("seetaface", false),
        };
        let aligned = has_landmarks && self.align == Alignment::Landmarks;
        Some(FaceCropping {
            detector: detector.into(),
            align: if aligned { "landmarks" } else { "none" }.into(),
            margin: Some(self.crop_margin),
        })
    }
}

/// The warning for a model whose training faces were cut (`trained`) otherwise than
/// `options` cut them; `None` when they agree or either is unknown.
pub fn cutting_mismatch(
    trained: Option<&FaceCropping>,
    options: &PredictOptions,
) -> Option<String> {
    let (trained, ours) = (trained?, options.face_cropping()?);
    let differences = trained.differences(&ours);
    if differences.is_empty() {
        return None;
    }
    Some(format!(
        "the model learned from faces cut with {trained}; these faces are cut with {}: \
         expect lower accuracy",
        differences.join(", ")
    ))
}

/// One face found in a photo and what the model makes of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Face {
    /// The face as the detector boxed it (the whole image with detection off).
    pub bbox: Rect,
    /// The square region the model saw (the whole image with detection off).
    pub crop: Rect,
    /// The detector's confidence; absent with detection off.
    pub detection_score: Option<f32>,
    /// The five landmarks (eyes, nose, mouth corners), when the detector gives them.
    pub landmarks: Option<Landmarks>,
    /// The roll of the head (the eyes' line against the horizontal, in degrees), from the
    /// landmarks.
    pub roll: Option<f32>,
    /// Whether the model saw the face aligned by its landmarks (else the square crop).
    pub aligned: bool,
    /// The face's track across a video's frames, with tracking on.
    pub track: Option<u64>,
    /// Probability of each class, in the order of [`Predictor::class_names`].
    pub probabilities: Vec<f32>,
    /// The most probable class.
    pub label: String,
    /// Its probability.
    pub confidence: f32,
}

/// Everything predicted for one photo.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImagePrediction {
    pub width: u32,
    pub height: u32,
    /// The faces, left to right. Empty when the photo shows no (large enough) face.
    pub faces: Vec<Face>,
    /// Faces the detector found but that were smaller than the minimum face size.
    pub too_small: usize,
}

/// Detector + classifier + options: the one inference pipeline.
pub struct Predictor {
    classifier: Arc<dyn FaceClassifier>,
    detector: Option<Box<dyn FaceDetector>>,
    class_names: Vec<String>,
    options: PredictOptions,
}

/// A trained model bundle with its frozen encoder is the classifier of `gfer predict` and
/// `gfer serve`.
impl FaceClassifier for ExpressionModel {
    fn preprocess(&self) -> crate::image::Preprocess {
        ExpressionModel::preprocess(self)
    }
    fn class_names(&self) -> Vec<String> {
        ExpressionModel::class_names(self)
    }
    fn device(&self) -> Device {
        ExpressionModel::device(self).clone()
    }
    fn probabilities(&self, pixels: &Tensor) -> Result<Tensor> {
        ExpressionModel::probabilities(self, pixels)
    }
}

impl Predictor {
    /// A predictor for a model bundle and the frozen encoder weights it was trained on
    /// (`None` only for a model that reads no frozen feature), the encoder in `precision`,
    /// on `device`.
    pub fn from_bundle(
        bundle: &Path,
        encoder_weights: Option<&Path>,
        precision: Precision,
        device: &Device,
        options: PredictOptions,
    ) -> Result<Self> {
        let model = ExpressionModel::load(bundle, encoder_weights, precision, device)?;
        if let Some(warning) = cutting_mismatch(model.meta.faces.as_ref(), &options) {
            tracing::warn!("{}: {warning}", bundle.display());
        }
        Self::new(Arc::new(model), options)
    }

    /// A predictor around `classifier`, finding faces with the detector of
    /// `options.detector` when `options.detect` is set.
    pub fn new(classifier: Arc<dyn FaceClassifier>, options: PredictOptions) -> Result<Self> {
        let detector = match options.detect {
            true => Some(options.detector.build()?),
            false => None,
        };
        Self::build(classifier, detector, options)
    }

    /// A predictor with another face detector (used when `options.detect` is set).
    pub fn with_detector(
        classifier: Arc<dyn FaceClassifier>,
        detector: Box<dyn FaceDetector>,
        options: PredictOptions,
    ) -> Result<Self> {
        let detector = options.detect.then_some(detector);
        Self::build(classifier, detector, options)
    }

    fn build(
        classifier: Arc<dyn FaceClassifier>,
        detector: Option<Box<dyn FaceDetector>>,
        options: PredictOptions,
    ) -> Result<Self> {
        options.validate()?;
        let class_names = classifier.class_names();
        if class_names.is_empty() {
            return Err(Error::Inference("the classifier has no classes".into()));
        }
        Ok(Predictor {
            classifier,
            detector,
            class_names,
            options,
        })
    }

    /// Names of the classes, in the order of every [`Face::probabilities`].
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    pub fn options(&self) -> &PredictOptions {
        &self.options
    }

    /// The faces in one photo and their expressions.
    pub fn predict(&self, image: &RgbImage) -> Result<ImagePrediction> {
        let mut predictions = self.predict_batch(std::slice::from_ref(image))?;
        Ok(predictions.remove(0))
    }

    /// The faces in several photos; the faces of all of them go through the model
    /// together, `batch_size` crops per forward pass. Detection runs on the photos in
    /// parallel.
    pub fn predict_batch(&self, images: &[RgbImage]) -> Result<Vec<ImagePrediction>> {
        let located: Vec<LocatedFaces> = images
            .par_iter()
            .map(|image| self.locate_faces(image))
            .collect::<Result<_>>()?;

        let crops: Vec<RgbImage> = located
            .iter()
            .zip(images)
            .flat_map(|(faces, image)| faces.boxes.iter().map(move |face| (face, image)))
            .collect::<Vec<_>>()
            .par_iter()
            .map(|(face, image)| self.cut(image, face.crop, face.landmarks))
            .collect::<Result<_>>()?;
        let probabilities = self.classify(&crops)?;

        let mut probabilities = probabilities.into_iter();
        let predictions = located
            .into_iter()
            .zip(images)
            .map(|(located, image)| ImagePrediction {
                width: image.width(),
                height: image.height(),
                too_small: located.too_small,
                faces: located
                    .boxes
                    .into_iter()
                    .zip(probabilities.by_ref())
                    .map(|(face, probabilities)| self.face(face, probabilities))
                    .collect(),
            })
            .collect();
        Ok(predictions)
    }

    /// The pixels the model saw of `face`, found in `image`, before its preprocessing (to
    /// show or keep the faces found): the upright crop when the face was aligned, else
    /// the square [`Face::crop`].
    pub fn face_pixels(&self, image: &RgbImage, face: &Face) -> Result<RgbImage> {
        let landmarks = face.landmarks.filter(|_| face.aligned);
        self.cut(image, face.crop, landmarks)
    }

    /// What the model sees of a face: the upright crop aligned by its landmarks (with
    /// alignment on), or the square `crop` of the image.
    fn cut(&self, image: &RgbImage, crop: Rect, landmarks: Option<Landmarks>) -> Result<RgbImage> {
        match (landmarks, self.options.align) {
            (Some(landmarks), Alignment::Landmarks) => {
                let template = Template::arcface(self.options.crop_margin);
                aligned_crop(image, &landmarks, &template, crop.width.max(1))
            }
            _ => Ok(
                image::imageops::crop_imm(image, crop.x, crop.y, crop.width, crop.height)
                    .to_image(),
            ),
        }
    }

    /// Where the faces of one photo are and the crop of each.
    fn locate_faces(&self, image: &RgbImage) -> Result<LocatedFaces> {
        let (width, height) = image.dimensions();
        let Some(detector) = &self.detector else {
            let whole = Rect::whole(width, height);
            let boxes = if width > 0 && height > 0 {
                vec![LocatedFace {
                    bbox: whole,
                    crop: whole,
                    score: None,
                    landmarks: None,
                }]
            } else {
                Vec::new()
            };
            return Ok(LocatedFaces {
                boxes,
                too_small: 0,
            });
        };
        let detected = detector.detect(image)?;
        let (large, small): (Vec<_>, Vec<_>) = detected
            .into_iter()
            .partition(|face| face.rect.side() >= self.options.min_face_size);
        let boxes = large
            .into_iter()
            .map(|face| LocatedFace {
                bbox: face.rect,
                crop: square_crop(face.rect, self.options.crop_margin, width, height),
                score: Some(face.score),
                landmarks: face.landmarks,
            })
            .collect();
        Ok(LocatedFaces {
            boxes,
            too_small: small.len(),
        })
    }

    /// Class probabilities of each crop, `batch_size` crops per forward pass.
    fn classify(&self, crops: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let preprocess = self.classifier.preprocess();
        let device = self.classifier.device();
        let classes = self.class_names.len();
        let mut rows = Vec::with_capacity(crops.len());
        for chunk in crops.chunks(self.options.batch_size) {
            let pixels = preprocess.batch(chunk, &device)?;
            let probabilities = self.classifier.probabilities(&pixels)?;
            if probabilities.dims() != [chunk.len(), classes] {
                return Err(Error::Inference(format!(
                    "the classifier returned probabilities of shape {:?} for {} faces and {} classes",
                    probabilities.dims(),
                    chunk.len(),
                    classes
                )));
            }
            rows.extend(
                probabilities
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec2::<f32>()?,
            );
        }
        Ok(rows)
    }

    fn face(&self, located: LocatedFace, probabilities: Vec<f32>) -> Face {
        let top = argmax(&probabilities);
        Face {
            bbox: located.bbox,
            crop: located.crop,
            detection_score: located.score,
            landmarks: located.landmarks,
            roll: located.landmarks.as_ref().map(roll_degrees),
            aligned: located.landmarks.is_some() && self.options.align == Alignment::Landmarks,
            track: None,
            label: self.class_names[top].clone(),
            confidence: probabilities[top],
            probabilities,
        }
    }
}

struct LocatedFace {
    bbox: Rect,
    crop: Rect,
    score: Option<f32>,
    landmarks: Option<Landmarks>,
}

struct LocatedFaces {
    boxes: Vec<LocatedFace>,
    too_small: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::FaceBox;

    #[test]
    fn options_name_how_they_cut_faces_and_a_differently_trained_model_is_warned_of() {
        let defaults = PredictOptions::default();
        let mtcnn_aligned = defaults.face_cropping().unwrap();
        assert_eq!(
            (
                mtcnn_aligned.detector.as_str(),
                mtcnn_aligned.align.as_str()
            ),
            ("mtcnn", "landmarks")
        );
        assert_eq!(cutting_mismatch(Some(&mtcnn_aligned), &defaults), None);
        assert_eq!(cutting_mismatch(None, &defaults), None);
        // SeetaFace gives no landmarks: its faces are never aligned.
        let seetaface = PredictOptions {
            detector: DetectorOptions {
                kind: DetectorKind::Seetaface,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(seetaface.face_cropping().unwrap().align, "none");
        let warning = cutting_mismatch(Some(&mtcnn_aligned), &seetaface).unwrap();
        assert!(
            warning.contains("detector seetaface instead of mtcnn"),
            "{warning}"
        );
        let no_detection = PredictOptions {
            detect: false,
            ..Default::default()
        };
        assert_eq!(no_detection.face_cropping(), None);
        assert_eq!(cutting_mismatch(Some(&mtcnn_aligned), &no_detection), None);
    }

    /// Probabilities from the mean red and green of each crop: class 0 wins on red
    /// crops, class 1 on green ones.
    struct RedOrGreen;

    impl FaceClassifier for RedOrGreen {
        fn preprocess(&self) -> crate::image::Preprocess {
            crate::image::Preprocess::new(crate::image::Preset::Cafe, 8)
        }
        fn class_names(&self) -> Vec<String> {
            vec!["red".into(), "green".into()]
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn probabilities(&self, pixels: &Tensor) -> Result<Tensor> {
            let means = pixels
                .mean_keepdim(3)?
                .mean_keepdim(2)?
                .squeeze(3)?
                .squeeze(2)?;
            let red_green = means.narrow(1, 0, 2)?;
            Ok(candle_nn::ops::softmax(&(red_green * 10.0)?, 1)?)
        }
    }

    /// Reports fixed boxes, whatever the image.
    struct FixedBoxes(Vec<Rect>);

    impl FaceDetector for FixedBoxes {
        fn detect(&self, _image: &RgbImage) -> Result<Vec<FaceBox>> {
            Ok(self
                .0
                .iter()
                .map(|&rect| FaceBox {
                    rect,
                    score: 5.0,
                    landmarks: None,
                })
                .collect())
        }
    }

    fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    /// 200x100: left half red, right half green.
    fn red_and_green() -> RgbImage {
        RgbImage::from_fn(200, 100, |x, _| {
            if x < 100 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 255, 0])
            }
        })
    }

    #[test]
    fn each_face_is_classified_from_its_own_crop() {
        let detector = FixedBoxes(vec![rect(30, 30, 40, 40), rect(130, 30, 40, 40)]);
        let options = PredictOptions {
            crop_margin: 0.1,
            min_face_size: 10,
            ..Default::default()
        };
        let predictor =
            Predictor::with_detector(Arc::new(RedOrGreen), Box::new(detector), options).unwrap();
        let prediction = predictor.predict(&red_and_green()).unwrap();
        let labels: Vec<&str> = prediction.faces.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(labels, ["red", "green"]);
        assert_eq!(prediction.faces[0].crop, rect(26, 26, 48, 48));
        assert_eq!(prediction.faces[0].detection_score, Some(5.0));
        for face in &prediction.faces {
            let sum: f32 = face.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
            assert!(face.confidence > 0.99);
        }
    }

    #[test]
    fn a_face_s_pixels_are_its_crop_as_the_model_saw_it() {
        let image = red_and_green();
        let detector = FixedBoxes(vec![rect(85, 20, 30, 30)]);
        let options = PredictOptions {
            crop_margin: 0.0,
            min_face_size: 10,
            ..Default::default()
        };
        let predictor =
            Predictor::with_detector(Arc::new(RedOrGreen), Box::new(detector), options).unwrap();
        let face = &predictor.predict(&image).unwrap().faces[0];
        assert!(!face.aligned, "a face without landmarks is not aligned");
        let pixels = predictor.face_pixels(&image, face).unwrap();
        assert_eq!(pixels.dimensions(), (face.crop.width, face.crop.height));
        // The red half ends at x = 100 of the image.
        let border = 100 - face.crop.x;
        assert_eq!(pixels.get_pixel(border - 1, 0).0, [255, 0, 0]);
        assert_eq!(
            pixels.get_pixel(border, face.crop.height - 1).0,
            [0, 255, 0]
        );
    }

    #[test]
    fn small_faces_are_skipped_and_counted() {
        let detector = FixedBoxes(vec![rect(10, 10, 20, 20), rect(130, 30, 60, 50)]);
        let options = PredictOptions {
            min_face_size: 48,
            ..Default::default()
        };
        let predictor =
            Predictor::with_detector(Arc::new(RedOrGreen), Box::new(detector), options).unwrap();
        let prediction = predictor.predict(&red_and_green()).unwrap();
        assert_eq!(prediction.faces.len(), 1);
        assert_eq!(prediction.faces[0].bbox, rect(130, 30, 60, 50));
        assert_eq!(prediction.too_small, 1);
    }

    #[test]
    fn without_detection_the_whole_image_is_one_face() {
        let options = PredictOptions {
            detect: false,
            ..Default::default()
        };
        let predictor = Predictor::new(Arc::new(RedOrGreen), options).unwrap();
        let red = RgbImage::from_pixel(30, 20, image::Rgb([200, 10, 10]));
        let prediction = predictor.predict(&red).unwrap();
        assert_eq!(prediction.faces.len(), 1);
        assert_eq!(prediction.faces[0].bbox, rect(0, 0, 30, 20));
        assert_eq!(prediction.faces[0].crop, rect(0, 0, 30, 20));
        assert_eq!(prediction.faces[0].detection_score, None);
        assert_eq!(prediction.faces[0].label, "red");
    }

    #[test]
    fn batches_split_faces_across_forward_passes_in_order() {
        let options = PredictOptions {
            detect: false,
            batch_size: 2,
            ..Default::default()
        };
        let predictor = Predictor::new(Arc::new(RedOrGreen), options).unwrap();
        let colours = [
            [250, 0, 0],
            [0, 250, 0],
            [0, 250, 0],
            [250, 0, 0],
            [0, 250, 0],
        ];
        let images: Vec<RgbImage> = colours
            .iter()
            .map(|&c| RgbImage::from_pixel(16, 16, image::Rgb(c)))
            .collect();
        let predictions = predictor.predict_batch(&images).unwrap();
        let labels: Vec<&str> = predictions
            .iter()
            .map(|p| p.faces[0].label.as_str())
            .collect();
        assert_eq!(labels, ["red", "green", "green", "red", "green"]);
    }

    #[test]
    fn bad_options_are_refused() {
        for options in [
            PredictOptions {
                batch_size: 0,
                ..Default::default()
            },
            PredictOptions {
                crop_margin: -0.5,
                ..Default::default()
            },
        ] {
            assert!(Predictor::new(Arc::new(RedOrGreen), options).is_err());
        }
    }
}
