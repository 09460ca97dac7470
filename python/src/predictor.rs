//! `gfer.Predictor` and `gfer.Face`: the library's [`gfer::predict::Predictor`] (detect,
//! crop, classify, faces of many photos batched into one forward pass) on Python images.

use crate::errors::{bad_input, OrRaise};
use crate::images::{self, ImageInput};
use crate::work;
use gfer::backbone::Precision;
use gfer::detect::Rect;
use gfer::detect::{DetectorKind, DetectorOptions, Landmarks};
use gfer::image::{DecodeLimits, RgbImage};
use gfer::predict::output::LANDMARK_COLUMNS;
use gfer::predict::{Alignment, ImagePrediction, PredictOptions};
use numpy::ndarray::Array3;
use numpy::{IntoPyArray, PyArray3};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A trained model bundle with its frozen encoder and a face detector: finds the faces in
/// photos and predicts their expressions, as ``gfer predict`` does.
///
/// Args:
///     model: The model bundle written by ``gfer.train`` (``model.safetensors``).
///     weights: The frozen encoder weights the model was trained on (not needed by a
///         model that reads no frozen feature, ``method="resnet"``).
///     device: ``"auto"`` (the first GPU when gfer is built with CUDA and one is
///         usable, else the CPU), ``"cpu"``, ``"cuda"`` (the first GPU) or ``"cuda:N"``.
///     precision: The arithmetic of the frozen encoder's linear layers, ``"f32"``,
///         ``"bf16"``, ``"int8"`` or ``"int8-fast"`` (``gfer predict --precision``; layer norm, softmax and
///         the residuals stay f32; bf16 and the int8s run on the CPU only).
///     detector: ``"mtcnn"`` (MTCNN, with five landmarks; its weights are read from
///         ``assets``, fetched there on first use) or ``"seetaface"`` (SeetaFace's frontal
///         detector, built in, boxes only) finds the faces; ``"none"`` takes each image as
///         one face (for photos that are face crops).
///     batch_size: Most faces per forward pass.
///     det_threshold: The score a face needs: MTCNN's probability (default 0.9) or
///         SeetaFace's cascade score (default 2.0).
///     align: ``"landmarks"`` turns each face upright by its five landmarks (MTCNN's), as
///         the aligned training sets were made; ``"none"`` takes the square crop as found.
///     assets: The folder MTCNN's weights are in (default: ``$GFER_ASSETS``, else
///         ``./assets``).
///     margin: Margin around a detected face on every side, as a fraction of its size,
///         in the crop the model sees.
///     min_face: Detected faces smaller than this many pixels are skipped.
///     max_pixels: Images with more pixels than this are refused (decompression bombs).
///     progress: Show a progress bar on a terminal when predicting many images.
///
/// Raises:
///     GferError: The bundle or the weights are unreadable or do not match (a
///         ``ValueError``).
///     OSError: A file could not be read (``FileNotFoundError`` when missing).
#[pyclass(module = "gfer", frozen)]
pub struct Predictor {
    pub(crate) inner: gfer::predict::Predictor,
    classes: Arc<Vec<String>>,
    pub(crate) limits: DecodeLimits,
    model: PathBuf,
    progress: bool,
}

#[pymethods]
impl Predictor {
    #[new]
    #[pyo3(
        signature = (model, weights=None, device="auto", detector="mtcnn", batch_size=32, *, precision="f32", det_threshold=None, align="landmarks", assets=None, margin=0.2, min_face=48, max_pixels=64_000_000, progress=true),
        text_signature = "(model, weights=None, device='auto', detector='mtcnn', batch_size=32, *, precision='f32', det_threshold=None, align='landmarks', assets=None, margin=0.2, min_face=48, max_pixels=64000000, progress=True)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        weights: Option<PathBuf>,
        device: &str,
        detector: &str,
        batch_size: usize,
        precision: &str,
        det_threshold: Option<f32>,
        align: &str,
        assets: Option<PathBuf>,
        margin: f32,
        min_face: u32,
        max_pixels: u64,
        progress: bool,
    ) -> PyResult<Self> {
        let precision: Precision = crate::runs::choice("precision", precision)?;
        let (detect, kind) = match detector {
            "mtcnn" => (true, DetectorKind::Mtcnn),
            "seetaface" => (true, DetectorKind::Seetaface),
            "none" => (false, DetectorKind::default()),
            other => {
                return Err(bad_input(format!(
                    "detector={}: expected 'mtcnn' or 'seetaface' (find the faces) or 'none' \
                     (each image is one face)",
                    work::py_str(other)
                )))
            }
        };
        let align = match align {
            "landmarks" => Alignment::Landmarks,
            "none" => Alignment::None,
            other => {
                return Err(bad_input(format!(
                    "align={}: expected 'landmarks' (upright by the five landmarks) or 'none' \
                     (the square crop as found)",
                    work::py_str(other)
                )))
            }
        };
        let options = PredictOptions {
            detect,
            detector: DetectorOptions {
                kind,
                threshold: det_threshold,
                assets: assets.unwrap_or_else(gfer::assets::default_dir),
            },
            align,
            crop_margin: margin,
            min_face_size: min_face,
            batch_size,
        };
        let device = work::device(device)?;
        let inner = py
            .detach(|| {
                gfer::predict::Predictor::from_bundle(
                    &model,
                    weights.as_deref(),
                    precision,
                    &device,
                    options,
                )
            })
            .or_raise()?;
        Ok(Predictor {
            classes: Arc::new(inner.class_names().to_vec()),
            inner,
            limits: DecodeLimits { max_pixels },
            model,
            progress,
        })
    }

    /// The names of the classes, in the order of every face's probabilities.
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.classes.to_vec()
    }

    /// The faces in one image, or in each image of a list, and their expressions.
    ///
    /// Args:
    ///     images: An image (a path, encoded bytes, a PIL image, or a NumPy ``uint8``
    ///         array of shape ``(height, width, 3)`` in RGB) or a list of them. A list is
    ///         read and predicted a step of images at a time, as ``gfer predict`` does
    ///         (memory stays bounded); the faces of a step share forward passes.
    ///
    /// Returns:
    ///     For one image, its faces (left to right); for a list, one such list per image.
    ///
    /// Raises:
    ///     GferError: An image is unreadable, or an array has the wrong shape or dtype
    ///         (the message names the file or the list index, and the shape).
    ///     OSError: A file could not be read (``FileNotFoundError`` when missing).
    ///     KeyboardInterrupt: Ctrl-C; the work stopped after its current step.
    #[pyo3(signature = (images, /))]
    fn predict(&self, py: Python<'_>, images: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let images = images::from_python(images)?;
        // `gfer predict`'s step: at most 16 decoded images at a time.
        let step = self.inner.options().batch_size.clamp(1, 16);
        let mut faces = self.faces(py, images.inputs, step)?;
        if images.single {
            return Ok(faces.remove(0).into_pyobject(py)?.into_any().unbind());
        }
        Ok(faces.into_pyobject(py)?.into_any().unbind())
    }

    /// The faces of many images at once: every image is read, then all of their faces go
    /// through the model together (``batch_size`` faces per forward pass), as the
    /// library's ``Predictor::predict_batch``.
    ///
    /// Args:
    ///     images: A list of images (paths, encoded bytes, PIL images or NumPy ``uint8``
    ///         arrays of shape ``(height, width, 3)``), or one image.
    ///
    /// Returns:
    ///     One list of faces per image, in order.
    ///
    /// Raises:
    ///     GferError: An image is unreadable, or an array has the wrong shape or dtype.
    ///     OSError: A file could not be read.
    ///     KeyboardInterrupt: Ctrl-C.
    #[pyo3(signature = (images, /))]
    fn predict_batch(&self, py: Python<'_>, images: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<Face>>> {
        let images = images::from_python(images)?;
        let step = images.inputs.len().max(1);
        self.faces(py, images.inputs, step)
    }

    fn __repr__(&self) -> String {
        format!(
            "Predictor(model={}, classes={}, detector={})",
            crate::work::py_str(&self.model.display().to_string()),
            self.classes.len(),
            crate::work::py_str(
                match (
                    self.inner.options().detect,
                    self.inner.options().detector.kind
                ) {
                    (false, _) => "none",
                    (true, DetectorKind::Mtcnn) => "mtcnn",
                    (true, DetectorKind::Seetaface) => "seetaface",
                }
            )
        )
    }
}

/// Every face of one image with its crop's pixels.
type Found = (ImagePrediction, Vec<RgbImage>);

impl Predictor {
    /// Predicts `inputs`, `step` images per call of the library (decoded in parallel,
    /// their faces batched together), with the GIL released; faces in image order.
    fn faces(
        &self,
        py: Python<'_>,
        inputs: Vec<ImageInput>,
        step: usize,
    ) -> PyResult<Vec<Vec<Face>>> {
        let total = inputs.len();
        let stop = AtomicBool::new(false);
        let progress = work::progress_bar(self.progress && total > step, total as u64, "images");
        let ran = work::run(
            py,
            &stop,
            &progress,
            "interrupted: stopping after the current images",
            || -> gfer::Result<Vec<Found>> {
                let mut found = Vec::with_capacity(total);
                let mut inputs = inputs.into_iter();
                while !stop.load(Ordering::SeqCst) {
                    let chunk: Vec<ImageInput> = inputs.by_ref().take(step).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    let n = chunk.len() as u64;
                    let images = images::decode_all(chunk, &self.limits)?;
                    let predictions = self.inner.predict_batch(&images)?;
                    for (prediction, image) in predictions.into_iter().zip(&images) {
                        let crops = prediction
                            .faces
                            .iter()
                            .map(|face| self.inner.face_pixels(image, face))
                            .collect::<gfer::Result<_>>()?;
                        found.push((prediction, crops));
                    }
                    progress.inc(n);
                }
                Ok(found)
            },
        );
        progress.finish_and_clear();
        let found = ran.output.or_raise()?;
        if ran.interrupted {
            return Err(PyKeyboardInterrupt::new_err(format!(
                "interrupted: stopped after {} of {total} images",
                found.len()
            )));
        }
        found
            .into_iter()
            .map(|(prediction, crops)| {
                prediction
                    .faces
                    .into_iter()
                    .zip(crops)
                    .map(|(face, crop)| Face::new(py, face, crop, &self.classes))
                    .collect()
            })
            .collect()
    }
}

/// One face found in an image, and what the model makes of it.
///
/// Attributes:
///     box: The face as the detector boxed it, ``(x, y, width, height)`` in pixels (the
///         whole image with ``detector="none"``).
///     crop_box: The square region around the face, ``(x, y, width, height)``: what the
///         model saw when the face was not aligned.
///     crop: The pixels the model saw, a NumPy ``uint8`` array ``(height, width, 3)``, RGB:
///         the face turned upright by its landmarks when ``aligned``, else ``crop_box``'s.
///     score: The detector's confidence; ``None`` with ``detector="none"``.
///     landmarks: The five landmarks ``[(x, y), ...]`` (left eye, right eye, nose, left
///         and right mouth corner, as seen), with MTCNN; else ``None``.
///     roll: The head's roll in degrees (the eyes' line against the horizontal), from
///         the landmarks; else ``None``.
///     aligned: Whether the model saw the face aligned by its landmarks.
///     label: The most probable class.
///     confidence: Its probability.
///     probabilities: The probability of each class, ``{class: p}``, in class order.
#[pyclass(module = "gfer", frozen)]
pub struct Face {
    bbox: Rect,
    crop_box: Rect,
    crop: Py<PyArray3<u8>>,
    score: Option<f32>,
    landmarks: Option<Landmarks>,
    roll: Option<f32>,
    aligned: bool,
    label: String,
    confidence: f32,
    probabilities: Vec<f32>,
    classes: Arc<Vec<String>>,
}

fn rect(r: Rect) -> (u32, u32, u32, u32) {
    (r.x, r.y, r.width, r.height)
}

impl Face {
    fn new(
        py: Python<'_>,
        face: gfer::predict::Face,
        crop: RgbImage,
        classes: &Arc<Vec<String>>,
    ) -> PyResult<Face> {
        let (width, height) = crop.dimensions();
        let pixels = Array3::from_shape_vec((height as usize, width as usize, 3), crop.into_raw())
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("face crop: {e}")))?;
        Ok(Face {
            bbox: face.bbox,
            crop_box: face.crop,
            crop: pixels.into_pyarray(py).unbind(),
            score: face.detection_score,
            landmarks: face.landmarks,
            roll: face.roll,
            aligned: face.aligned,
            label: face.label,
            confidence: face.confidence,
            probabilities: face.probabilities,
            classes: classes.clone(),
        })
    }
}

#[pymethods]
impl Face {
    /// The face as the detector boxed it: ``(x, y, width, height)``.
    #[getter(r#box)]
    fn bbox(&self) -> (u32, u32, u32, u32) {
        rect(self.bbox)
    }

    /// The square region around the face, ``(x, y, width, height)``: the model saw its
    /// pixels when the face was not aligned.
    #[getter]
    fn crop_box(&self) -> (u32, u32, u32, u32) {
        rect(self.crop_box)
    }

    /// The pixels the model saw: a NumPy ``uint8`` array ``(height, width, 3)``, RGB (the
    /// upright face when ``aligned``, else ``crop_box``'s pixels).
    #[getter]
    fn crop(&self, py: Python<'_>) -> Py<PyArray3<u8>> {
        self.crop.clone_ref(py)
    }

    /// The detector's confidence; ``None`` when faces are not detected.
    #[getter]
    fn score(&self) -> Option<f32> {
        self.score
    }

    /// The five landmarks ``[(x, y), ...]`` (left eye, right eye, nose, left and right
    /// mouth corner, as seen); ``None`` without MTCNN.
    #[getter]
    fn landmarks(&self) -> Option<Vec<(f32, f32)>> {
        self.landmarks
            .map(|points| points.iter().map(|[x, y]| (*x, *y)).collect())
    }

    /// The head's roll in degrees (the eyes' line against the horizontal); ``None``
    /// without landmarks.
    #[getter]
    fn roll(&self) -> Option<f32> {
        self.roll
    }

    /// Whether the model saw the face aligned by its landmarks.
    #[getter]
    fn aligned(&self) -> bool {
        self.aligned
    }

    /// The most probable class.
    #[getter]
    fn label(&self) -> &str {
        &self.label
    }

    /// The probability of ``label``.
    #[getter]
    fn confidence(&self) -> f32 {
        self.confidence
    }

    /// The probability of each class, ``{class: p}``, in the order of ``class_names``.
    #[getter]
    fn probabilities<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (class, p) in self.classes.iter().zip(&self.probabilities) {
            dict.set_item(class, *p)?;
        }
        Ok(dict)
    }

    /// The face as one flat record with the columns of ``gfer predict --format csv``:
    /// ``x``, ``y``, ``width``, ``height`` (the box), ``detection_score`` (``score``),
    /// ``label``, ``confidence``, one column per class, ``roll`` and the landmarks
    /// (``left_eye_x``, ``left_eye_y``, ... ``mouth_right_y``; ``None`` without MTCNN).
    /// A list of them makes a ``pandas.DataFrame``.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("x", self.bbox.x)?;
        dict.set_item("y", self.bbox.y)?;
        dict.set_item("width", self.bbox.width)?;
        dict.set_item("height", self.bbox.height)?;
        dict.set_item("detection_score", self.score)?;
        dict.set_item("label", &self.label)?;
        dict.set_item("confidence", self.confidence)?;
        for (class, p) in self.classes.iter().zip(&self.probabilities) {
            dict.set_item(class, *p)?;
        }
        dict.set_item("roll", self.roll)?;
        for (i, name) in LANDMARK_COLUMNS.iter().enumerate() {
            dict.set_item(*name, self.landmarks.map(|points| points[i / 2][i % 2]))?;
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let score = self
            .score
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "None".into());
        format!(
            "Face(label={}, confidence={:.3}, box={:?}, score={score})",
            crate::work::py_str(&self.label),
            self.confidence,
            rect(self.bbox)
        )
    }
}
