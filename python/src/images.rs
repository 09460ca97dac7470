//! What Python passes as images: a path (`str` or `os.PathLike`), encoded bytes, a PIL
//! image, or a NumPy `uint8` array `[H,W,3]` (RGB); one of them or a list. Arrays and PIL
//! images are copied into RGB pixels while the GIL is held; paths and bytes are decoded
//! later, by the library, with the GIL released.

use crate::errors::bad_input;
use gfer::image::{DecodeLimits, RgbImage};
use numpy::{PyArray3, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyString, PyTuple};
use rayon::prelude::*;
use std::path::PathBuf;

/// One image as given, ready to decode without the GIL.
pub enum ImageInput {
    Path(PathBuf),
    Bytes { data: Vec<u8>, origin: String },
    Pixels(RgbImage),
}

impl ImageInput {
    /// The decoded RGB image (decoded as `gfer predict` and `gfer extract` decode files).
    pub fn decode(self, limits: &DecodeLimits) -> gfer::Result<RgbImage> {
        match self {
            ImageInput::Path(path) => gfer::image::open(&path, limits),
            ImageInput::Bytes { data, origin } => gfer::image::decode(&data, &origin, limits),
            ImageInput::Pixels(image) => Ok(image),
        }
    }
}

/// The images of one call, and whether the caller passed one image rather than a list.
pub struct Images {
    pub inputs: Vec<ImageInput>,
    pub single: bool,
}

/// Reads `images`: one image, or a list or tuple of them.
pub fn from_python(images: &Bound<'_, PyAny>) -> PyResult<Images> {
    if images.is_instance_of::<PyList>() || images.is_instance_of::<PyTuple>() {
        let inputs = images
            .try_iter()?
            .enumerate()
            .map(|(i, item)| one(&item?, &format!("images[{i}]")))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Images {
            inputs,
            single: false,
        });
    }
    Ok(Images {
        inputs: vec![one(images, "image")?],
        single: true,
    })
}

/// Decodes every input in parallel, in order; the first that fails (in input order) is
/// the error, naming its file or its place in the list.
pub fn decode_all(inputs: Vec<ImageInput>, limits: &DecodeLimits) -> gfer::Result<Vec<RgbImage>> {
    let decoded: Vec<gfer::Result<RgbImage>> = inputs
        .into_par_iter()
        .map(|input| input.decode(limits))
        .collect();
    decoded.into_iter().collect()
}

/// One image; `what` names it in errors (`image`, `images[3]`).
fn one(item: &Bound<'_, PyAny>, what: &str) -> PyResult<ImageInput> {
    if item.is_instance_of::<PyString>() {
        return Ok(ImageInput::Path(item.extract()?));
    }
    if let Ok(bytes) = item.cast::<PyBytes>() {
        return Ok(ImageInput::Bytes {
            data: bytes.as_bytes().to_vec(),
            origin: format!("{what} (bytes)"),
        });
    }
    if let Ok(bytes) = item.cast::<PyByteArray>() {
        return Ok(ImageInput::Bytes {
            data: bytes.to_vec(),
            origin: format!("{what} (bytearray)"),
        });
    }
    if let Ok(array) = item.cast::<PyUntypedArray>() {
        return pixels(array, what).map(ImageInput::Pixels);
    }
    if is_pil_image(item)? {
        return pil_pixels(item, what).map(ImageInput::Pixels);
    }
    if item.hasattr("__fspath__")? {
        return Ok(ImageInput::Path(item.extract()?));
    }
    if item.is_instance_of::<PyList>() || item.is_instance_of::<PyTuple>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{what}: a list inside the list of images; pass one flat list"
        )));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "{what}: expected a path (str or os.PathLike), bytes, a PIL image or a NumPy uint8 \
         array of shape (height, width, 3); got {}",
        item.get_type().name()?
    )))
}

/// A PIL image: an instance of a class from a `PIL` module with `mode` and `convert`.
fn is_pil_image(item: &Bound<'_, PyAny>) -> PyResult<bool> {
    let module: String = item.get_type().getattr("__module__")?.extract()?;
    Ok(module.starts_with("PIL.") && item.hasattr("mode")? && item.hasattr("convert")?)
}

/// A PIL image's pixels in RGB (`Image.convert("RGB")` for any other mode, as gfer's own
/// decoder converts grey, palette and alpha images).
fn pil_pixels(image: &Bound<'_, PyAny>, what: &str) -> PyResult<RgbImage> {
    let py = image.py();
    let mode: String = image.getattr("mode")?.extract()?;
    let rgb = if mode == "RGB" {
        image.clone()
    } else {
        image.call_method1("convert", ("RGB",))?
    };
    let array = py.import("numpy")?.call_method1("asarray", (rgb,))?;
    pixels(
        array.cast::<PyUntypedArray>()?,
        &format!("{what} (PIL, mode {mode})"),
    )
}

/// A NumPy array's pixels: it must be `uint8` of shape `(height, width, 3)`, RGB.
fn pixels(array: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<RgbImage> {
    let shape = array.shape().to_vec();
    let dtype = array.dtype().str()?.to_string();
    let described = format!(
        "{what}: a NumPy array of shape {} and dtype {dtype}",
        python_tuple(&shape)
    );
    let hint = match shape.as_slice() {
        [_, _] => " (a grey image: stack it to RGB, e.g. numpy.stack([a] * 3, axis=-1))",
        [_, _, 4] => " (RGBA: drop the alpha channel, a[..., :3])",
        [_, _, 3, _] | [_, _, _, 3] => " (a batch: pass a list of images, list(a))",
        [3, _, _] => " (channels first? use a.transpose(1, 2, 0))",
        _ => "",
    };
    if shape.len() != 3 || shape[2] != 3 {
        return Err(bad_input(format!(
            "{described}; expected shape (height, width, 3), RGB{hint}"
        )));
    }
    let Ok(typed) = array.cast::<PyArray3<u8>>() else {
        return Err(bad_input(format!(
            "{described}; expected dtype uint8 (0-255): convert it, e.g. \
             numpy.clip(a * 255, 0, 255).astype(numpy.uint8) for floats in [0, 1]"
        )));
    };
    let (height, width) = (shape[0], shape[1]);
    if height == 0 || width == 0 {
        return Err(bad_input(format!("{described}: the image is empty")));
    }
    let too_large = || bad_input(format!("{described}: too large"));
    let (height, width) = (
        u32::try_from(height).map_err(|_| too_large())?,
        u32::try_from(width).map_err(|_| too_large())?,
    );
    let readonly = typed.readonly();
    let raw: Vec<u8> = match readonly.as_slice() {
        Ok(contiguous) => contiguous.to_vec(),
        // A view (a slice, a transposed array): row-major copy.
        Err(_) => readonly.as_array().iter().copied().collect(),
    };
    RgbImage::from_raw(width, height, raw)
        .ok_or_else(|| bad_input(format!("{described}: the pixels do not fill it")))
}

/// `(32, 32, 3)`, `(5,)`: a shape as Python prints it.
fn python_tuple(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
