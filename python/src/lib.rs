//! `gfer._gfer`, the extension module of the `gfer` Python package: the gfer library
//! (`../src`) called from Python. The bindings only convert and call: Python images to
//! RGB pixels and back, options to the library's configurations, results to dicts and
//! NumPy arrays, library errors to exceptions ([`errors`]). Every model computation runs
//! with the GIL released, Ctrl-C handled as the CLI handles it ([`work`]).

mod bench;
mod encoder;
mod errors;
mod images;
mod logging;
mod predictor;
mod runs;
mod work;

use pyo3::prelude::*;

/// gfer: generalizable facial expression recognition (CAFE, ECCV 2024), in Rust.
#[pymodule]
mod _gfer {
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::bench::{_time_library_encode, _time_library_predict_batch};
    #[pymodule_export]
    use super::encoder::Encoder;
    #[pymodule_export]
    use super::errors::GferError;
    #[pymodule_export]
    use super::predictor::{Face, Predictor};
    #[pymodule_export]
    use super::runs::{evaluate, find_images, protocol, train};

    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        module.add("__version__", env!("CARGO_PKG_VERSION"))?;
        super::logging::install();
        Ok(())
    }
}
