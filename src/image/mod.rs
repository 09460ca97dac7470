//! Images in, encoder input out: the one preprocessing path of gfer.
//!
//! [`decode`] turns any supported file into RGB u8 (EXIF orientation applied, size
//! checked first). [`Preprocess`] turns that into the `[3,S,S]` f32 input of the
//! encoders, reproducing Pillow/torchvision exactly (see [`resample`]): `cafe` is the
//! authors' input, `clip` is CLIP's own. [`Augment`] is CAFE's training-time chain.
//!
//! In the layers: at the bottom with the data sets; training, evaluation and prediction
//! all preprocess through it, so there is one preprocessing path.

mod augment;
mod decode;
pub mod draw;
pub mod resample;

pub use ::image::RgbImage;
pub use augment::{Augment, EraseRect};
pub use decode::{decode, jpeg_dimensions, open, DecodeLimits};
use resample::Filter;

use crate::error::{Error, Result};
use crate::formats::write_atomically;
use rayon::prelude::*;
use std::path::Path;

/// The two input conventions.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The CAFE authors' input: torchvision `Resize((S,S))` on a PIL image (bilinear,
    /// antialiased when shrinking, aspect ratio not kept), ImageNet mean/std.
    Cafe,
    /// CLIP's own: bicubic resize of the shorter side to S, centre crop S x S, CLIP's
    /// mean/std.
    Clip,
}

impl Preset {
    /// Per-channel (mean, std) of the normalisation, as torchvision's `Normalize` uses them.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Preset::Cafe => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Preset::Clip => (
                [0.481_454_66, 0.457_827_5, 0.408_210_73],
                [0.268_629_54, 0.261_302_58, 0.275_777_11],
            ),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Cafe => "cafe",
            Preset::Clip => "clip",
        })
    }
}

/// A preprocessing preset at an input size: RGB u8 image -> `[3,S,S]` f32.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    pub preset: Preset,
    /// Side S of the square output: 224, or 336 for ViT-L/14-336.
    pub size: u32,
}

impl Preprocess {
    pub fn new(preset: Preset, size: u32) -> Self {
        Preprocess { preset, size }
    }

    /// The u8 image the encoder sees, `size` x `size`, before normalisation.
    pub fn resize(&self, img: &RgbImage) -> RgbImage {
        let s = self.size;
        match self.preset {
            Preset::Cafe => resample::resize(img, s, s, Filter::Bilinear),
            Preset::Clip => {
                let (full_w, full_h) = shorter_side_to(img.width(), img.height(), s);
                let left = centre_crop_offset(full_w, s);
                let top = centre_crop_offset(full_h, s);
                resample::resize_window(img, (full_w, full_h), (left, top, s, s), Filter::Bicubic)
            }
        }
    }

    /// `[3,S,S]` (CHW) f32: torchvision's `ToTensor` (/255) then `Normalize`, in f32.
    /// The image must already be `size` x `size` (see [`Preprocess::resize`]).
    pub fn normalise(&self, img: &RgbImage) -> Vec<f32> {
        let (mean, std) = self.preset.mean_std();
        let plane = (img.width() * img.height()) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        out
    }

    /// Resize then normalise: the `[3,S,S]` encoder input of one image.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        self.normalise(&self.resize(img))
    }

    /// A batch `[B,3,S,S]` on `device`, the images preprocessed in parallel.
    pub fn batch(
        &self,
        images: &[RgbImage],
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor> {
        let s = self.size as usize;
        let per_image: Vec<Vec<f32>> = images.par_iter().map(|img| self.apply(img)).collect();
        let data: Vec<f32> = per_image.concat();
        Ok(candle_core::Tensor::from_vec(
            data,
            (images.len(), 3, s, s),
            device,
        )?)
    }
}

/// torchvision `Resize(size)`: the shorter side becomes `size`, the longer one
/// `int(size * long / short)` (truncated, as Python's `int`).
fn shorter_side_to(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((size as u64 * long as u64) as f64 / short as f64) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `CenterCrop`: offset `int(round((full - crop) / 2))`, and Python's
/// `round` sends halves to the even neighbour.
fn centre_crop_offset(full: u32, crop: u32) -> u32 {
    ((full - crop) as f64 / 2.0).round_ties_even() as u32
}

/// File extensions of the images gfer reads (compared without case): what folders, globs
/// and data sets take from a directory.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "gif", "jfif",
];

/// Whether the file name of `path` has an image extension.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Encodes `image` in the format its file name says (`.png`, `.jpg`, ...), written
/// atomically.
pub fn save(image: &RgbImage, path: &Path) -> Result<()> {
    use std::io::Write;
    let format = ::image::ImageFormat::from_path(path).map_err(|err| Error::Image {
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    write_atomically(path, |temporary| {
        let file = std::fs::File::create(temporary).map_err(|err| Error::io(temporary, err))?;
        let mut out = std::io::BufWriter::new(file);
        image
            .write_to(&mut out, format)
            .map_err(|err| Error::Image {
                path: path.display().to_string(),
                reason: format!("cannot encode the image: {err}"),
            })?;
        out.flush().map_err(|err| Error::io(temporary, err))
    })
}

/// blake3 of the decoded RGB pixels and the size, hex: the identity of an image's
/// content. Hashing pixels rather than file bytes finds the same face stored as a PNG in
/// one data set and as CSV pixels in another (MMA vs FER2013); caches key features by it.
pub fn content_hash(image: &RgbImage) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&image.width().to_le_bytes());
    hasher.update(&image.height().to_le_bytes());
    hasher.update(image.as_raw());
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_matches_torchvision() {
        // Values from torchvision's _compute_resized_output_size.
        assert_eq!(shorter_side_to(655, 450, 224), (326, 224));
        assert_eq!(shorter_side_to(37, 91, 24), (24, 59));
        assert_eq!(shorter_side_to(100, 100, 224), (224, 224));
        assert_eq!(shorter_side_to(1, 3, 224), (224, 672));
    }

    #[test]
    fn centre_crop_rounds_half_to_even() {
        assert_eq!(centre_crop_offset(35, 24), 6); // 5.5 -> 6
        assert_eq!(centre_crop_offset(37, 24), 6); // 6.5 -> 6
        assert_eq!(centre_crop_offset(224, 224), 0);
    }

    #[test]
    fn output_is_size_by_size_for_any_shape() {
        let img = RgbImage::from_pixel(3, 1, ::image::Rgb([10, 20, 30]));
        for preset in [Preset::Cafe, Preset::Clip] {
            let pre = Preprocess::new(preset, 224);
            let out = pre.resize(&img);
            assert_eq!(out.dimensions(), (224, 224));
            assert_eq!(pre.apply(&img).len(), 3 * 224 * 224);
        }
    }

    #[test]
    fn normalise_is_chw_with_preset_statistics() {
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                ::image::Rgb([0, 0, 0])
            } else {
                ::image::Rgb([255, 255, 255])
            }
        });
        let pre = Preprocess::new(Preset::Cafe, 2);
        let x = pre.normalise(&img);
        let (mean, std) = Preset::Cafe.mean_std();
        for c in 0..3 {
            assert_eq!(x[c * 2], (0.0 - mean[c]) / std[c]);
            assert_eq!(x[c * 2 + 1], (1.0 - mean[c]) / std[c]);
        }
    }

    #[test]
    fn batch_stacks_images_in_order() {
        let a = RgbImage::from_pixel(5, 7, ::image::Rgb([0, 0, 0]));
        let b = RgbImage::from_pixel(9, 4, ::image::Rgb([255, 255, 255]));
        let pre = Preprocess::new(Preset::Clip, 8);
        let t = pre
            .batch(&[a.clone(), b.clone()], &candle_core::Device::Cpu)
            .unwrap();
        assert_eq!(t.dims(), &[2, 3, 8, 8]);
        let rows = t.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], pre.apply(&a));
        assert_eq!(rows[1], pre.apply(&b));
    }

    #[test]
    fn preset_names_are_lowercase() {
        assert_eq!(serde_json::to_string(&Preset::Cafe).unwrap(), "\"cafe\"");
        assert_eq!(
            serde_json::from_str::<Preset>("\"clip\"").unwrap(),
            Preset::Clip
        );
        assert_eq!(Preset::Clip.to_string(), "clip");
    }
}
