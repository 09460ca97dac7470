//! `gfer.Encoder`: a frozen encoder's features of Python images, encoded by the library
//! exactly as `gfer extract` encodes them ([`gfer::backbone::features::encode_images`]).

use crate::errors::OrRaise;
use crate::images::{self, ImageInput};
use crate::work;
use candle_core::Device;
use gfer::backbone::features::encode_images;
use gfer::backbone::{load_encoder, Backbone, Precision};
use gfer::image::{DecodeLimits, Preprocess, Preset};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// A frozen image encoder (CLIP or DINOv2): images in, one feature vector per image out,
/// bit for bit what ``gfer extract`` writes for the same images and batch size.
///
/// Args:
///     weights: Encoder weights (safetensors, PyTorch ``.pt``/``.bin``/``.pth``, or a
///         DINOv2 checkpoint converted by ``gfer convert``).
///     backbone: The architecture (``"clip-vit-b32"``, ``"clip-vit-b16"``,
///         ``"clip-vit-l14"``, ``"clip-vit-l14-336"``, ``"dinov2"``); inferred from the
///         weights when ``None``.
///     preprocess: ``"cafe"`` (the authors' 224x224 resize and ImageNet normalisation) or
///         ``"clip"`` (CLIP's bicubic resize, centre crop and normalisation).
///     device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
///         usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
///     precision: The arithmetic of the encoder's linear layers, ``"f32"``, ``"bf16"``, ``"int8"``
///         or ``"int8-fast"`` (``gfer extract --precision``; layer norm, softmax and the residuals
///         stay f32; bf16 and the int8s run on the CPU only).
///     batch_size: Images per forward pass (``gfer extract --batch-size``).
///     max_pixels: Images with more pixels than this are refused.
///     progress: Show a progress bar on a terminal when encoding many images.
///
/// Raises:
///     GferError: The weights are unreadable or not the architecture asked for.
///     OSError: The file could not be read.
#[pyclass(module = "gfer", frozen)]
pub struct Encoder {
    pub(crate) encoder: Box<dyn gfer::backbone::Encoder>,
    pub(crate) preprocess: Preprocess,
    pub(crate) device: Device,
    pub(crate) limits: DecodeLimits,
    batch_size: usize,
    weights: PathBuf,
    progress: bool,
}

#[pymethods]
impl Encoder {
    #[new]
    #[pyo3(
        signature = (weights, backbone=None, preprocess="cafe", *, device="auto", precision="f32", batch_size=16, max_pixels=64_000_000, progress=true),
        text_signature = "(weights, backbone=None, preprocess='cafe', *, device='auto', precision='f32', batch_size=16, max_pixels=64000000, progress=True)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        weights: PathBuf,
        backbone: Option<&str>,
        preprocess: &str,
        device: &str,
        precision: &str,
        batch_size: usize,
        max_pixels: u64,
        progress: bool,
    ) -> PyResult<Self> {
        let backbone: Option<Backbone> = backbone
            .map(|b| crate::runs::choice("backbone", b))
            .transpose()?;
        let preset: Preset = crate::runs::choice("preprocess", preprocess)?;
        let precision: Precision = crate::runs::choice("precision", precision)?;
        if batch_size == 0 {
            return Err(crate::errors::bad_input("batch_size must be at least 1"));
        }
        let device = work::device(device)?;
        let encoder = py
            .detach(|| load_encoder(backbone, &weights, &device, precision))
            .or_raise()?;
        Ok(Encoder {
            preprocess: Preprocess::new(preset, encoder.input_size() as u32),
            encoder,
            device,
            limits: DecodeLimits { max_pixels },
            batch_size,
            weights,
            progress,
        })
    }

    /// The features of images.
    ///
    /// Args:
    ///     images: An image (a path, encoded bytes, a PIL image, or a NumPy ``uint8``
    ///         array of shape ``(height, width, 3)`` in RGB) or a list of them.
    ///
    /// Returns:
    ///     A ``float32`` array of shape ``(N, dim)``, one row per image in order (``N`` is
    ///     1 for one image).
    ///
    /// Raises:
    ///     GferError: An image is unreadable, or an array has the wrong shape or dtype.
    ///     OSError: A file could not be read.
    ///     KeyboardInterrupt: Ctrl-C; the work stopped after its current batch.
    #[pyo3(signature = (images, /))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let inputs = images::from_python(images)?.inputs;
        let total = inputs.len();
        let stop = AtomicBool::new(false);
        let progress = work::progress_bar(
            self.progress && total > self.batch_size,
            total as u64,
            "images",
        );
        let ran = work::run(
            py,
            &stop,
            &progress,
            "interrupted: stopping after the current batch",
            || -> gfer::Result<Vec<f32>> {
                let mut values = Vec::with_capacity(total * self.encoder.dim());
                let mut inputs = inputs.into_iter();
                while !stop.load(Ordering::SeqCst) {
                    let chunk: Vec<ImageInput> = inputs.by_ref().take(self.batch_size).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    let n = chunk.len() as u64;
                    let images = images::decode_all(chunk, &self.limits)?;
                    values.extend(encode_images(
                        self.encoder.as_ref(),
                        self.preprocess,
                        &images,
                        &self.device,
                    )?);
                    progress.inc(n);
                }
                Ok(values)
            },
        );
        progress.finish_and_clear();
        let values = ran.output.or_raise()?;
        let dim = self.encoder.dim();
        if ran.interrupted {
            return Err(PyKeyboardInterrupt::new_err(format!(
                "interrupted: stopped after encoding {} of {total} images",
                values.len() / dim.max(1)
            )));
        }
        let rows = values.len() / dim.max(1);
        let array = Array2::from_shape_vec((rows, dim), values).map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!("features [{rows}, {dim}]: {e}"))
        })?;
        Ok(array.into_pyarray(py))
    }

    /// Width of the features (e.g. 512 for CLIP ViT-B/32).
    #[getter]
    fn dim(&self) -> usize {
        self.encoder.dim()
    }

    /// The architecture, as ``gfer`` names it (``"clip-vit-b32"``, ``"dinov2-small"``, ...).
    #[getter]
    fn backbone(&self) -> &str {
        self.encoder.id()
    }

    /// The fingerprint of the weights that feature files and model bundles record.
    #[getter]
    fn fingerprint(&self) -> &str {
        self.encoder.fingerprint()
    }

    /// The arithmetic of the encoder's linear layers, ``"f32"``, ``"bf16"``, ``"int8"`` or ``"int8-fast"``.
    #[getter]
    fn precision(&self) -> &str {
        self.encoder.precision().name()
    }

    /// Side of the square input the images are resized to.
    #[getter]
    fn input_size(&self) -> usize {
        self.encoder.input_size()
    }

    /// The preprocessing, ``"cafe"`` or ``"clip"``.
    #[getter]
    fn preprocess(&self) -> String {
        self.preprocess.preset.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Encoder(weights={}, backbone={}, dim={}, preprocess={})",
            crate::work::py_str(&self.weights.display().to_string()),
            crate::work::py_str(self.encoder.id()),
            self.encoder.dim(),
            crate::work::py_str(&self.preprocess.preset.to_string())
        )
    }
}
