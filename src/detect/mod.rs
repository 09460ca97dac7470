//! Face detection: where the faces are in an ordinary photo, their five landmarks, and
//! the crop around each that the expression model sees.
//!
//! Detectors sit behind the small [`FaceDetector`] trait. [`mtcnn`] (the default) finds
//! small and turned faces and gives the five points the data sets were aligned with;
//! [`seetaface`] (boxes only) is built into the binary. [`align`] turns five landmarks
//! into an upright face crop, as the aligned training sets were made.
//!
//! In the layers: beside the encoders, on the images; prediction uses it.

pub mod align;
pub mod mtcnn;
pub mod seetaface;

pub use seetaface::{SeetaFaceDetector, SeetaSettings};

use crate::error::{Error, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// An axis-aligned box in pixel coordinates, always inside the image it refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// The longer side.
    pub fn side(&self) -> u32 {
        self.width.max(self.height)
    }

    /// The whole of a `width` x `height` image.
    pub fn whole(width: u32, height: u32) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width,
            height,
        }
    }
}

/// One detected face: its box (clipped to the image), the detector's confidence, and
/// the five landmarks when the detector gives them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    pub rect: Rect,
    /// Detector-specific confidence; higher is more certain.
    pub score: f32,
    /// Left eye, right eye, nose tip, left and right mouth corners (as seen in the image),
    /// as (x, y) in image coordinates.
    pub landmarks: Option<Landmarks>,
}

/// Five facial points: left eye, right eye, nose tip, left and right mouth corners, as
/// seen in the image, each (x, y).
pub type Landmarks = [[f32; 2]; 5];

/// Which face detector finds the faces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// MTCNN (facenet-pytorch's weights): small and turned faces, and five landmarks.
    #[default]
    Mtcnn,
    /// SeetaFace's frontal cascade, built into the binary: boxes only.
    Seetaface,
}

/// The detector, its threshold, and where MTCNN's weights are.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorOptions {
    pub kind: DetectorKind,
    /// The score a face needs: MTCNN's final probability (default
    /// [`mtcnn::DEFAULT_MIN_SCORE`]) or SeetaFace's cascade score (default
    /// [`SeetaSettings::default`]'s).
    pub threshold: Option<f32>,
    /// The assets folder MTCNN's weights are read from, and fetched into when missing.
    pub assets: PathBuf,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            kind: DetectorKind::default(),
            threshold: None,
            assets: crate::assets::default_dir(),
        }
    }
}

impl DetectorOptions {
    /// The detector these options describe. MTCNN's weights are fetched (with pip, from
    /// PyPI's facenet-pytorch) when the assets folder lacks them.
    pub fn build(&self) -> Result<Box<dyn FaceDetector>> {
        match self.kind {
            DetectorKind::Seetaface => {
                let mut settings = SeetaSettings::default();
                if let Some(threshold) = self.threshold {
                    settings.score_threshold = f64::from(threshold);
                }
                Ok(Box::new(SeetaFaceDetector::with_settings(settings)?))
            }
            DetectorKind::Mtcnn => {
                let min_score = self.threshold.unwrap_or(mtcnn::DEFAULT_MIN_SCORE);
                if !(0.0..=1.0).contains(&min_score) {
                    return Err(Error::config(format!(
                        "MTCNN's threshold is a probability in [0, 1], got {min_score}"
                    )));
                }
                let weights = self.assets.join(crate::assets::MTCNN_WEIGHTS);
                if !mtcnn::WEIGHT_FILES.iter().all(|f| weights.join(f).exists()) {
                    tracing::info!(
                        "MTCNN's weights are not in {}: fetching them",
                        self.assets.display()
                    );
                    crate::assets::fetch(&self.assets, &["mtcnn".to_string()])?;
                }
                let mtcnn = mtcnn::Mtcnn::load(&weights, mtcnn::MtcnnSettings::default())?;
                Ok(Box::new(mtcnn::MtcnnDetector { mtcnn, min_score }))
            }
        }
    }
}

/// Finds faces in a photo.
pub trait FaceDetector: Send + Sync {
    /// Boxes of the faces in `image`, ordered left to right (then top to bottom), every
    /// box non-empty and inside the image. An image without faces gives an empty list.
    fn detect(&self, image: &RgbImage) -> Result<Vec<FaceBox>>;
}

/// The part of a box (which detectors may place partly outside) that lies inside a
/// `width` x `height` image; `None` when nothing does.
pub(crate) fn clip_to_image(
    x: i32,
    y: i32,
    w: u32,
    h: u32,
    width: u32,
    height: u32,
) -> Option<Rect> {
    let x0 = i64::from(x).clamp(0, i64::from(width));
    let y0 = i64::from(y).clamp(0, i64::from(height));
    let x1 = (i64::from(x) + i64::from(w)).clamp(0, i64::from(width));
    let y1 = (i64::from(y) + i64::from(h)).clamp(0, i64::from(height));
    (x1 > x0 && y1 > y0).then(|| Rect {
        x: x0 as u32,
        y: y0 as u32,
        width: (x1 - x0) as u32,
        height: (y1 - y0) as u32,
    })
}

/// The square crop the expression model sees for a detected face: a square centred on
/// the face whose side is the face's longer side plus `margin` of it on every side
/// (margin 0.2 -> 1.4 x the face), moved (not cut) to lie inside the image, and shrunk to
/// the image's shorter side only when it cannot fit. Like the aligned training crops, it
/// shows the whole face with a little hair and chin around it, and stays square so
/// resizing does not distort it.
pub fn square_crop(face: Rect, margin: f32, image_width: u32, image_height: u32) -> Rect {
    let wanted = (face.side() as f32 * (1.0 + 2.0 * margin.max(0.0))).round() as u32;
    let side = wanted.max(1).min(image_width).min(image_height);
    let centre_x = face.x as f32 + face.width as f32 / 2.0;
    let centre_y = face.y as f32 + face.height as f32 / 2.0;
    let place = |centre: f32, limit: u32| -> u32 {
        let start = (centre - side as f32 / 2.0).round().max(0.0) as u32;
        start.min(limit - side)
    };
    Rect {
        x: place(centre_x, image_width),
        y: place(centre_y, image_height),
        width: side,
        height: side,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_only_the_part_inside_the_image() {
        assert_eq!(
            clip_to_image(-10, 5, 30, 20, 100, 100),
            Some(Rect {
                x: 0,
                y: 5,
                width: 20,
                height: 20
            })
        );
        assert_eq!(
            clip_to_image(90, 90, 30, 30, 100, 100),
            Some(Rect {
                x: 90,
                y: 90,
                width: 10,
                height: 10
            })
        );
        assert_eq!(clip_to_image(-40, 0, 30, 30, 100, 100), None);
        assert_eq!(clip_to_image(100, 0, 30, 30, 100, 100), None);
    }

    #[test]
    fn crop_is_a_centred_square_with_the_margin() {
        let face = Rect {
            x: 100,
            y: 100,
            width: 50,
            height: 40,
        };
        // side 50 * 1.4 = 70, centred on (125, 120).
        assert_eq!(
            square_crop(face, 0.2, 400, 300),
            Rect {
                x: 90,
                y: 85,
                width: 70,
                height: 70
            }
        );
        assert_eq!(
            square_crop(face, 0.0, 400, 300),
            Rect {
                x: 100,
                y: 95,
                width: 50,
                height: 50
            }
        );
    }

    #[test]
    fn crop_near_an_edge_is_moved_inside_not_cut() {
        let face = Rect {
            x: 0,
            y: 280,
            width: 20,
            height: 20,
        };
        let crop = square_crop(face, 0.5, 400, 300);
        assert_eq!(
            crop,
            Rect {
                x: 0,
                y: 260,
                width: 40,
                height: 40
            }
        );
    }

    #[test]
    fn crop_larger_than_the_image_shrinks_to_its_shorter_side() {
        let face = Rect {
            x: 10,
            y: 10,
            width: 80,
            height: 50,
        };
        let crop = square_crop(face, 0.5, 120, 60);
        assert_eq!(crop.width, 60);
        assert_eq!(crop.height, 60);
        assert_eq!(crop.y, 0);
        assert!(crop.x + crop.width <= 120);
    }
}
