//! PLACEHOLDER (not committed): mirrors the API the images helper is writing, so that
//! predict/serve compile until crate::image lands in main.
use crate::error::{Error, Result};
use ::image::RgbImage;
use candle_core::{Device, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_pixels: u64,
}

pub fn decode(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    let err = |reason: String| Error::Image {
        path: origin.to_string(),
        reason,
    };
    let reader = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let (w, h) = reader.into_dimensions().map_err(|e| err(e.to_string()))?;
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(err(format!(
            "{w}x{h} is over the limit of {} pixels",
            limits.max_pixels
        )));
    }
    let reader = ::image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    Ok(reader.decode().map_err(|e| err(e.to_string()))?.to_rgb8())
}

pub fn open(path: &std::path::Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, &path.display().to_string(), limits)
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 64_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Cafe,
    Clip,
}

#[derive(Clone, Copy, Debug)]
pub struct Preprocess {
    pub preset: Preset,
    pub size: u32,
}

impl Preprocess {
    pub fn new(preset: Preset, size: u32) -> Self {
        Preprocess { preset, size }
    }
    pub fn batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        let s = self.size;
        let mut data = Vec::with_capacity(images.len() * 3 * (s * s) as usize);
        for im in images {
            let r = ::image::imageops::resize(im, s, s, ::image::imageops::FilterType::Triangle);
            for c in 0..3 {
                for p in r.pixels() {
                    data.push(p[c] as f32 / 255.0);
                }
            }
        }
        Ok(Tensor::from_vec(
            data,
            (images.len(), 3, s as usize, s as usize),
            device,
        )?)
    }
}
