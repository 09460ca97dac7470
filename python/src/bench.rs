//! Hidden timers for `scripts/bench-python`: the library call alone, timed in Rust on
//! the same images and objects as the Python call it is compared with, so that the
//! difference is what the bindings add (converting the inputs, building the results,
//! releasing and taking the GIL).

use crate::encoder::Encoder;
use crate::errors::OrRaise;
use crate::images;
use crate::predictor::Predictor;
use gfer::backbone::features::encode_images;
use pyo3::prelude::*;
use std::time::Instant;

/// Seconds that `gfer::backbone::features::encode_images` takes on `images` (decoded and
/// converted first, untimed), in one forward pass, with the GIL released.
#[pyfunction]
pub fn _time_library_encode(
    py: Python<'_>,
    encoder: &Encoder,
    images: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    let inputs = images::from_python(images)?.inputs;
    let decoded = py
        .detach(|| images::decode_all(inputs, &encoder.limits))
        .or_raise()?;
    py.detach(|| {
        let start = Instant::now();
        let features = encode_images(
            encoder.encoder.as_ref(),
            encoder.preprocess,
            &decoded,
            &encoder.device,
        )?;
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(features);
        Ok(seconds)
    })
    .or_raise()
}

/// Seconds that `gfer::predict::Predictor::predict_batch` takes on `images` (decoded and
/// converted first, untimed), with the GIL released.
#[pyfunction]
pub fn _time_library_predict_batch(
    py: Python<'_>,
    predictor: &Predictor,
    images: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    let inputs = images::from_python(images)?.inputs;
    let decoded = py
        .detach(|| images::decode_all(inputs, &predictor.limits))
        .or_raise()?;
    py.detach(|| {
        let start = Instant::now();
        let predictions = predictor.inner.predict_batch(&decoded)?;
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(predictions);
        Ok(seconds)
    })
    .or_raise()
}
