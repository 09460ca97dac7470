//! Decoding any supported file into RGB u8, with the EXIF orientation applied and the
//! size checked before any pixel memory is allocated.

use std::io::Cursor;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Formats gfer decodes; the format is recognised from the content, not the file name.
const FORMATS: [ImageFormat; 6] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::WebP,
    ImageFormat::Gif,
];

/// Limits checked on the header, before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width x height accepted. Larger images are refused with that reason
    /// rather than decoded: a few kilobytes of PNG can claim gigapixels (a
    /// "decompression bomb"), and no face image needs more.
    pub max_pixels: u64,
}

impl DecodeLimits {
    /// 64 megapixels, e.g. 8000 x 8000: every camera photo, not a 12000 x 12000 image.
    pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
        }
    }
}

fn image_error(origin: &str, reason: impl Into<String>) -> Error {
    Error::Image {
        path: origin.to_string(),
        reason: reason.into(),
    }
}

/// Says in words what went wrong in the `image` crate.
fn describe(format: ImageFormat, err: ImageError) -> String {
    let name = format!("{format:?}").to_uppercase();
    match err {
        ImageError::Decoding(e) => format!("corrupt or truncated {name} data: {e}"),
        ImageError::Unsupported(e) => format!("unsupported {name} variant: {e}"),
        ImageError::Limits(e) => format!("{name} image too large to decode: {e}"),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {name} file: the data ends early ({e})")
        }
        ImageError::IoError(e) => format!("cannot read {name} data: {e}"),
        other => format!("cannot decode {name}: {other}"),
    }
}

/// A JPEG cut short can decode "successfully" (the missing part filled in). Pillow
/// refuses a file that ends without the end-of-image marker FF D9; so do we. The marker
/// may be followed by padding or an appended trailer, so the last 64 KiB are searched.
/// (Like Pillow, a file cut short whose last bytes happen to hold FF D9 is accepted.)
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const TAIL: usize = 64 * 1024;
    let tail = &bytes[bytes.len().saturating_sub(TAIL)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decode an image file's bytes to RGB u8. `origin` names the file in errors.
///
/// Grey, grey+alpha, palette, RGBA, 16-bit and CMYK images all become RGB u8 (alpha is
/// dropped, as Pillow's `convert("RGB")` does; 16 bits become 8 by rounding
/// v * 255 / 65535). The EXIF orientation is applied. GIFs give their first frame.
pub fn decode(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(image_error(origin, "empty file (0 bytes), not an image"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_error(origin, format!("cannot read: {e}")))?;
    let format = match reader.format() {
        Some(f) if FORMATS.contains(&f) => f,
        Some(f) => {
            return Err(image_error(
                origin,
                format!("{f:?} images are not supported (JPEG, PNG, BMP, TIFF, WebP and GIF are)"),
            ))
        }
        None => {
            let start: String = bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(image_error(
                origin,
                format!(
                    "not an image: the content is not JPEG, PNG, BMP, TIFF, WebP or GIF \
                     ({} bytes starting {start})",
                    bytes.len()
                ),
            ));
        }
    };
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, origin, limits);
    }

    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_error(origin, describe(format, e)))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, origin, limits)?;
    // The decoders' own allocation limit, sized for the largest accepted image at 16-bit
    // RGBA plus the decoders' working buffers.
    let mut decoder_limits = ::image::Limits::default();
    decoder_limits.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(8)
            .saturating_add(256 << 20),
    );
    decoder
        .set_limits(decoder_limits)
        .map_err(|e| image_error(origin, describe(format, e)))?;
    // A broken EXIF block is no reason to lose the image: it is then shown as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| image_error(origin, describe(format, e)))?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

fn check_size(width: u32, height: u32, origin: &str, limits: &DecodeLimits) -> Result<()> {
    let pixels = width as u64 * height as u64;
    if pixels == 0 {
        return Err(image_error(
            origin,
            format!("{width}x{height} image has no pixels"),
        ));
    }
    if pixels > limits.max_pixels {
        return Err(image_error(
            origin,
            format!(
                "{width}x{height} = {pixels} pixels is over the limit of {} pixels \
                 (refused before decoding, as a possible decompression bomb)",
                limits.max_pixels
            ),
        ));
    }
    Ok(())
}

/// JPEGs go through `jpeg-decoder`, whose chroma upsampling is libjpeg's "fancy"
/// (triangle) filter as in Pillow's libjpeg-turbo; the `image` crate's decoder rounds
/// between the two upsampling directions and ends up to 11 levels away on sharp colour
/// edges. The IDCT still differs in rounding: a few levels on a few percent of pixels.
fn decode_jpeg(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    let corrupt = |e: jpeg_decoder::Error| match e {
        jpeg_decoder::Error::Unsupported(what) => {
            image_error(origin, format!("unsupported JPEG variant: {what:?}"))
        }
        jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            image_error(origin, "truncated JPEG file: the data ends early")
        }
        other => image_error(origin, format!("corrupt or truncated JPEG data: {other}")),
    };
    if !jpeg_is_complete(bytes) {
        return Err(image_error(
            origin,
            "truncated JPEG file: no end-of-image marker",
        ));
    }
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(corrupt)?;
    let info = decoder
        .info()
        .ok_or_else(|| image_error(origin, "corrupt JPEG: no frame header"))?;
    let (width, height) = (info.width as u32, info.height as u32);
    check_size(width, height, origin, limits)?;
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let data = decoder.decode().map_err(corrupt)?;
    let wrong_size = || image_error(origin, "corrupt JPEG: decoded data does not match its size");
    use jpeg_decoder::PixelFormat;
    let mut img = match info.pixel_format {
        PixelFormat::L8 => DynamicImage::ImageLuma8(
            ::image::GrayImage::from_raw(width, height, data).ok_or_else(wrong_size)?,
        ),
        PixelFormat::L16 => {
            let values = data
                .chunks_exact(2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                .collect();
            DynamicImage::ImageLuma16(
                ::image::ImageBuffer::from_raw(width, height, values).ok_or_else(wrong_size)?,
            )
        }
        PixelFormat::RGB24 => {
            DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, data).ok_or_else(wrong_size)?)
        }
        PixelFormat::CMYK32 => {
            let rgb = data.chunks_exact(4).flat_map(cmyk_to_rgb).collect();
            DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, rgb).ok_or_else(wrong_size)?)
        }
    };
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Pillow's CMYK -> RGB: each channel (255 - k) * (1 - c / 255), rounded as its
/// MULDIV255 does.
fn cmyk_to_rgb(cmyk: &[u8]) -> [u8; 3] {
    let not_k = 255 - cmyk[3] as u32;
    let channel = |c: u8| {
        let t = c as u32 * not_k + 128;
        (not_k - (((t >> 8) + t) >> 8)) as u8
    };
    [channel(cmyk[0]), channel(cmyk[1]), channel(cmyk[2])]
}

/// Read and decode an image file (see [`decode`]).
pub fn open(path: &std::path::Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, &path.display().to_string(), limits)
}
