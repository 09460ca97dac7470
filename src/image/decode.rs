//! Decoding any supported file into RGB u8, with the EXIF orientation applied and the
//! size checked before any pixel memory is allocated.

use std::cell::Cell;
use std::io::{BufRead, Cursor};

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

/// JPEGs go through libjpeg-turbo's own decoder (the one in `mozjpeg`) with its defaults,
/// ISLOW IDCT and "fancy" chroma upsampling, as Pillow's libjpeg-turbo decodes them: the
/// pixels are Pillow's, bit for bit. Like Pillow, 1 component is grey, 3 are asked for as
/// RGB (libjpeg converts YCbCr) and 4 as CMYK (libjpeg converts YCCK), always taken as
/// Adobe's inverted CMYK. Only 8-bit JPEGs: 12-bit ones are refused, as Pillow refuses
/// them. libjpeg's warnings (corrupt entropy data, which it repairs) are ignored, as
/// Pillow ignores them; a file cut short is refused as Pillow refuses it (see
/// [`JpegInput`]). Lossless JPEGs, which this libjpeg does not read, go through
/// `jpeg-decoder` (see [`decode_lossless_jpeg`]).
fn decode_jpeg(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    match decode_jpeg_libjpeg(bytes, origin, limits) {
        Err(_) if is_lossless_jpeg(bytes) => decode_lossless_jpeg(bytes, origin, limits),
        decoded => decoded,
    }
}

fn decode_jpeg_libjpeg(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    let ran_out = Cell::new(false);
    let input = JpegInput {
        data: bytes,
        pos: 0,
        ran_out: &ran_out,
    };
    // libjpeg reports a fatal error through its `error_exit` callback, which must not
    // return; mozjpeg's unwinds from it (`resume_unwind`: no panic message printed) with
    // libjpeg's message, through C compiled with -fexceptions. It is caught here; the
    // decompressor's destructor frees libjpeg's memory on the way. (So gfer must not be
    // built with panic = "abort".)
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_jpeg_unchecked(input, &ran_out, origin, limits)
    }));
    match decoded {
        Ok(result) => result,
        Err(_) if ran_out.get() => Err(image_error(
            origin,
            "truncated JPEG file: the data ends before the image is complete",
        )),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("the JPEG decoder failed");
            Err(image_error(origin, describe_libjpeg(message)))
        }
    }
}

/// The file's bytes as libjpeg reads them, ending as Pillow's input ends. Pillow feeds
/// libjpeg the file in blocks; when libjpeg asks for more than there is, Pillow refuses
/// the file as truncated if rows of pixels are still missing, and stops there with the
/// image if they are all out (libjpeg was only reading on to the end-of-image marker).
/// libjpeg alone would instead pretend an end-of-image marker and fill the missing rows
/// with grey. So here running out is an `io::Error`, which mozjpeg turns into libjpeg's
/// fatal "Input file read error", and is noted in `ran_out` for the caller to tell the
/// two cases apart.
struct JpegInput<'a> {
    data: &'a [u8],
    pos: usize,
    ran_out: &'a Cell<bool>,
}

impl std::io::Read for JpegInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for JpegInput<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.pos < self.data.len() {
            Ok(&self.data[self.pos..])
        } else {
            self.ran_out.set(true);
            // Not `UnexpectedEof`: mozjpeg would take that for a quiet end of file.
            Err(std::io::Error::other("the JPEG data ends early"))
        }
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.data.len());
    }
}

/// Says in words what libjpeg's fatal error means.
fn describe_libjpeg(message: &str) -> String {
    let message = message.trim_start_matches("libjpeg fatal error: ");
    let lower = message.to_lowercase();
    if lower.contains("unsupported") || lower.contains("not supported") || lower.contains("omitted")
    {
        format!("unsupported JPEG variant: {message}")
    } else {
        format!("corrupt JPEG data: {message}")
    }
}

/// The decoding itself; libjpeg's fatal errors unwind out of it (see [`decode_jpeg`]).
fn decode_jpeg_unchecked(
    input: JpegInput<'_>,
    ran_out: &Cell<bool>,
    origin: &str,
    limits: &DecodeLimits,
) -> Result<RgbImage> {
    use mozjpeg::{ColorSpace, Decompress, Marker};
    let io = |e: std::io::Error| image_error(origin, format!("cannot decode JPEG: {e}"));
    // Reads the markers up to the frame header: size and components, nothing allocated
    // for pixels yet. APP1 is kept for the EXIF orientation.
    let header = Decompress::with_markers(&[Marker::APP(1)])
        .from_reader(input)
        .map_err(io)?;
    let (width, height) = (header.width() as u32, header.height() as u32);
    check_size(width, height, origin, limits)?;
    // Pillow reads the first "Exif" APP1 segment (later ones it appends to it).
    let orientation = header
        .markers()
        .filter(|m| m.marker == Marker::APP(1))
        .find_map(|m| m.data.strip_prefix(b"Exif\0\0"))
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let components = header.components().len();
    let out = match components {
        1 => ColorSpace::JCS_GRAYSCALE,
        3 => ColorSpace::JCS_RGB,
        4 => ColorSpace::JCS_CMYK,
        n => {
            return Err(image_error(
                origin,
                format!("unsupported JPEG variant: {n} colour components (1, 3 or 4 are)"),
            ))
        }
    };
    let mut started = header.to_colorspace(out).map_err(io)?;
    let data: Vec<u8> = started.read_scanlines().map_err(io)?;
    // libjpeg reads on to the end-of-image marker. Data ending on the way is no error
    // now that every row is out (see `JpegInput`); other fatal errors still are.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| started.finish())) {
        Ok(finished) => finished.map_err(io)?,
        Err(_) if ran_out.get() => {}
        Err(payload) => std::panic::resume_unwind(payload),
    }
    let wrong_size = || image_error(origin, "corrupt JPEG: decoded data does not match its size");
    let mut img = match components {
        1 => DynamicImage::ImageLuma8(
            ::image::GrayImage::from_raw(width, height, data).ok_or_else(wrong_size)?,
        ),
        3 => {
            DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, data).ok_or_else(wrong_size)?)
        }
        _ => {
            // Pillow reads every CMYK JPEG as "CMYK;I", Adobe's inverted convention.
            let rgb = data
                .chunks_exact(4)
                .flat_map(|p| cmyk_to_rgb(&[255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]]))
                .collect();
            DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, rgb).ok_or_else(wrong_size)?)
        }
    };
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Width and height from a JPEG's frame header, without decoding: any frame type
/// (baseline, progressive, lossless, arithmetic-coded), which the `image` crate's header
/// reader does not all accept. `None` when no frame header comes before the image data.
pub fn jpeg_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut at = 2;
    loop {
        // A marker: 0xFF (any number of them, as fill) and its code.
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        while *bytes.get(at + 1)? == 0xFF {
            at += 1;
        }
        let marker = bytes[at + 1];
        at += 2;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            continue; // markers without a segment
        }
        let be16 = |i: usize| Some(u16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]));
        // SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            return Some((u32::from(be16(at + 5)?), u32::from(be16(at + 3)?)));
        }
        let length = usize::from(be16(at)?);
        if marker == 0xDA || length < 2 {
            return None;
        }
        at += length;
    }
}

fn is_lossless_jpeg(bytes: &[u8]) -> bool {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().is_ok()
        && decoder
            .info()
            .is_some_and(|info| info.coding_process == jpeg_decoder::CodingProcess::Lossless)
}

/// Lossless JPEGs through `jpeg-decoder`. Pillow reads the 8-bit ones (as libjpeg-turbo 3
/// does), and `jpeg-decoder` gives the same pixels; more bits Pillow refuses, and gfer
/// rounds them to 8. A file without the end-of-image marker FF D9 (in its last 64 KiB,
/// where padding or a trailer may follow it) is refused as truncated.
fn decode_lossless_jpeg(bytes: &[u8], origin: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    let corrupt = |e: jpeg_decoder::Error| match e {
        jpeg_decoder::Error::Unsupported(what) => {
            image_error(origin, format!("unsupported JPEG variant: {what:?}"))
        }
        jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            image_error(origin, "truncated JPEG file: the data ends early")
        }
        other => image_error(origin, format!("corrupt or truncated JPEG data: {other}")),
    };
    const TAIL: usize = 64 * 1024;
    let tail = &bytes[bytes.len().saturating_sub(TAIL)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
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
        // jpeg-decoder has inverted Adobe CMYK already.
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
