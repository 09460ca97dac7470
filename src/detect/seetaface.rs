//! SeetaFace's funnel-structured cascade for frontal faces, through the pure-Rust
//! `rustface` crate: boxes only, no landmarks. Its model file (BSD-2-Clause, 1.2 MB) ships
//! inside the rustface package, and build.rs compiles it into the binary, so this
//! detector needs no download and no path at run time.

use super::{clip_to_image, FaceBox, FaceDetector};
use crate::error::{Error, Result};
use image::RgbImage;

/// The SeetaFace frontal model exactly as `rustface` 0.1.7 ships it (see NOTICES.md).
const SEETA_FRONTAL_MODEL: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/seeta_fd_frontal_v1.0.bin"));

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
                    landmarks: None,
                })
            })
            .collect();
        faces.sort_by_key(|f| (f.rect.x, f.rect.y));
        Ok(faces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
