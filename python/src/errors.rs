//! gfer's errors as Python exceptions, by kind ([`gfer::Error::kind`]), each carrying the
//! library's message (which names the file, line, tensor or shape at fault).

use gfer::{Error, ErrorKind};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

pyo3::create_exception!(
    gfer,
    GferError,
    PyValueError,
    "Something given to gfer is wrong or missing: a file, an image, an array, an option,\n\
a data set, weights. The message says what and where. A subclass of ValueError."
);

/// The Python exception for a library error: `GferError` (a `ValueError`) for bad input,
/// `OSError` for a file or program that failed (its subclass by errno, e.g.
/// `FileNotFoundError`), `KeyboardInterrupt` for work the user stopped, `RuntimeError` for
/// a bug.
pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err.kind() {
        ErrorKind::BadInput => GferError::new_err(message),
        ErrorKind::Io => match &err {
            // OSError(errno, message) becomes the subclass of that errno.
            Error::Io { source, .. } => match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, message)),
                None => PyOSError::new_err(message),
            },
            _ => PyOSError::new_err(message),
        },
        ErrorKind::Interrupted => PyKeyboardInterrupt::new_err(message),
        ErrorKind::Internal => PyRuntimeError::new_err(message),
    }
}

/// `.or_raise()?` on a library result raises its error in Python.
pub trait OrRaise<T> {
    fn or_raise(self) -> Result<T, PyErr>;
}

impl<T> OrRaise<T> for gfer::Result<T> {
    fn or_raise(self) -> Result<T, PyErr> {
        self.map_err(to_py)
    }
}

/// A `GferError` (bad input) with this message.
pub fn bad_input(message: impl Into<String>) -> PyErr {
    GferError::new_err(message.into())
}
