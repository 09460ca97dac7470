//! Face detection: where the faces are in an ordinary photo, and the square crop around
//! each that the expression model sees.
//!
//! Detectors sit behind the small [`FaceDetector`] trait so a better one (BlazeFace,
//! MTCNN) can be added without touching the prediction pipeline. The one built in is
//! SeetaFace's frontal detector through the pure-Rust `rustface` crate; its model file
//! (BSD-2-Clause, 1.2 MB) ships inside the rustface package, and build.rs compiles it into
//! the binary, so detection needs no download and no path at run time.
//!
//! In the layers: beside the encoders, on the images; prediction uses it.

use crate::error::{Error, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// The SeetaFace frontal model exactly as `rustface` 0.1.7 ships it (see NOTICES.md).
const SEETA_FRONTAL_MODEL: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/seeta_fd_frontal_v1.0.bin"));

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

/// One detected face: its box (clipped to the image) and the detector's confidence.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    pub rect: Rect,
    /// Detector-specific confidence; higher is more certain.
    pub score: f32,
}

/// Finds faces in a photo.
pub trait FaceDetector: Send + Sync {
    /// Boxes of the faces in `image`, ordered left to right (then top to bottom), every
    /// box non-empty and inside the image. An image without faces gives an empty list.
    fn detect(&self, image: &RgbImage) -> Result<Vec<FaceBox>>;
}

/// Tuning of the SeetaFace cascade (the defaults are the ones `rustface`'s examples use).
#[derive(Clone, Debug, PartialEq)]
pub struct SeetaSettings {
    /// Detections scoring below this are dropped (typical values: 0.95, 2.0, 2.8, 4.5;
    /// lower finds more faces and more false ones).
    pub score_threshold: f64,
    /// Ratio between the sides of adjacent levels of the image pyramid, in (0.01, 0.99).
    pub pyramid_scale_factor: f32,
    /// Sliding-window step in pixels, at least 1.
    pub window_step: u32,
}

impl Default for SeetaSettings {
    fn default() -> Self {
        SeetaSettings {
            score_threshold: 2.0,
            pyramid_scale_factor: 0.8,
            window_step: 4,
        }
    }
}

/// SeetaFace's funnel-structured cascade for frontal faces (via `rustface`).
///
/// `rustface`'s detector keeps scratch buffers and is neither `Send` nor `Sync`, so each
/// call builds a fresh one from the shared, immutable model (cloning the model costs far
/// less than the detection itself; see the `detect_many_faces` test's timing note). Calls
/// from several threads therefore run in parallel without a lock.
pub struct SeetaFaceDetector {
    model: rustface::Model,
    settings: SeetaSettings,
}

impl SeetaFaceDetector {
    /// The built-in frontal model with the default settings.
    pub fn new() -> Result<Self> {
        Self::with_settings(SeetaSettings::default())
    }

    pub fn with_settings(settings: SeetaSettings) -> Result<Self> {
        if settings.score_threshold.is_nan() || settings.score_threshold <= 0.0 {
            return Err(Error::config(format!(
                "face detector score threshold must be > 0, got {}",
                settings.score_threshold
            )));
        }
        if !(0.01..=0.99).contains(&settings.pyramid_scale_factor) {
            return Err(Error::config(format!(
                "face detector pyramid scale factor must be in [0.01, 0.99], got {}",
                settings.pyramid_scale_factor
            )));
        }
        if settings.window_step == 0 {
            return Err(Error::config(
                "face detector window step must be at least 1",
            ));
        }
        let model = read_builtin_model()?;
        Ok(SeetaFaceDetector { model, settings })
    }
}

/// Reads the embedded model. `rustface` panics (rather than failing) on a malformed
/// model, so the panic is caught and reported like any other error.
fn read_builtin_model() -> Result<rustface::Model> {
    let read = std::panic::catch_unwind(|| rustface::read_model(SEETA_FRONTAL_MODEL));
    match read {
        Ok(Ok(model)) => Ok(model),
        Ok(Err(err)) => Err(Error::Detection(format!(
            "built-in SeetaFace model does not parse: {err}"
        ))),
        Err(_) => Err(Error::Detection(
            "built-in SeetaFace model does not parse (rustface panicked)".into(),
        )),
    }
}

/// The smallest face SeetaFace finds: its window is 40 px and its pyramid never enlarges
/// the image.
const SEETA_WINDOW: u32 = 40;

impl FaceDetector for SeetaFaceDetector {
    fn detect(&self, image: &RgbImage) -> Result<Vec<FaceBox>> {
        let (width, height) = image.dimensions();
        if width.min(height) < SEETA_WINDOW {
            return Ok(Vec::new());
        }
        let gray = image::imageops::grayscale(image);
        let settings = &self.settings;
        // rustface panics on inputs it considers illegal instead of returning an error; a
        // photo from a client must never take the process down, so the panic is caught.
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut detector = rustface::create_detector_with_model(self.model.clone());
            detector.set_min_face_size(20);
            detector.set_score_thresh(settings.score_threshold);
            detector.set_pyramid_scale_factor(settings.pyramid_scale_factor);
            detector.set_slide_window_step(settings.window_step, settings.window_step);
            detector.detect(&rustface::ImageData::new(gray.as_raw(), width, height))
        }))
        .map_err(|_| {
            Error::Detection(format!(
                "SeetaFace detector panicked on a {width}x{height} image"
            ))
        })?;
        let mut faces: Vec<FaceBox> = found
            .iter()
            .filter_map(|face| {
                let b = face.bbox();
                let rect = clip_to_image(b.x(), b.y(), b.width(), b.height(), width, height)?;
                Some(FaceBox {
                    rect,
                    score: face.score() as f32,
                })
            })
            .collect();
        faces.sort_by_key(|f| (f.rect.x, f.rect.y));
        Ok(faces)
    }
}

/// The part of a box (which detectors may place partly outside) that lies inside a
/// `width` x `height` image; `None` when nothing does.
fn clip_to_image(x: i32, y: i32, w: u32, h: u32, width: u32, height: u32) -> Option<Rect> {
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

    #[test]
    fn invalid_settings_are_refused() {
        for settings in [
            SeetaSettings {
                score_threshold: 0.0,
                ..Default::default()
            },
            SeetaSettings {
                pyramid_scale_factor: 1.5,
                ..Default::default()
            },
            SeetaSettings {
                window_step: 0,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                SeetaFaceDetector::with_settings(settings),
                Err(Error::Config(_))
            ));
        }
    }

    #[test]
    fn tiny_and_blank_images_have_no_faces() {
        let detector = SeetaFaceDetector::new().unwrap();
        for (w, h) in [(1, 1), (39, 500), (64, 64)] {
            let image = RgbImage::from_pixel(w, h, image::Rgb([128, 128, 128]));
            assert!(detector.detect(&image).unwrap().is_empty(), "{w}x{h}");
        }
    }
}
