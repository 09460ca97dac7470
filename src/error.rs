//! The library's error type. Every variant carries enough context (file, line, tensor
//! name, shapes) for a user to find what was wrong without a debugger, and says what kind
//! of failure it is ([`Error::kind`]) so a caller can react: fix the input, retry, resume,
//! or report a bug.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An image that could not be decoded or was refused (too large, empty, not an image).
    #[error("{path}: {reason}")]
    Image { path: String, reason: String },

    /// A weights or checkpoint file that is unreadable or does not match the model.
    #[error("{path}: {message}")]
    Weights { path: String, message: String },

    /// A data-set file that does not parse; `line` is 1-based when known.
    #[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },

    /// A model bundle that is unreadable or does not fit the encoder it is used with.
    #[error("model bundle {path}: {message}")]
    Bundle { path: String, message: String },

    /// A wrong option, argument or combination of them.
    #[error("{0}")]
    Config(String),

    /// The device asked for (`--device cuda`) cannot be used: the reason says what to
    /// install or build.
    #[error("{0}")]
    Device(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A data set that cannot be used as asked: unknown kind, missing path, empty split.
    #[error("data set {spec}: {message}")]
    Dataset { spec: String, message: String },

    /// A third-party file that `scripts/fetch-assets` fetches is not there.
    #[error("{}: missing; {hint}", path.display())]
    MissingAsset { path: PathBuf, hint: String },

    /// A face detector that failed on an image (or whose built-in model is unreadable).
    #[error("face detection: {0}")]
    Detection(String),

    /// A model that returned something unusable (wrong shape, no classes).
    #[error("inference: {0}")]
    Inference(String),

    /// Training diverged: the loss stopped being a finite number.
    #[error("the loss became {loss} at epoch {epoch} step {step}; lower --lr or check the data")]
    Diverged {
        loss: f32,
        epoch: usize,
        step: usize,
    },

    /// A program gfer runs (pip and npm for the assets, Python for a reference) failed.
    #[error("{program}: {message}")]
    External { program: String, message: String },

    /// The user stopped the work (Ctrl-C); what was done is kept.
    #[error("interrupted: {0}")]
    Interrupted(String),

    /// A broken invariant of gfer's own: a bug to report.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something the user gave (a file, an image, an option, a data set, weights) is
    /// wrong or missing: fix the input and run again.
    BadInput,
    /// Reading or writing a file, or running another program, failed.
    Io,
    /// The user stopped the work; running the same command again continues it.
    Interrupted,
    /// A bug in gfer (or in a library it uses).
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::External { .. } => ErrorKind::Io,
            Error::Interrupted(_) => ErrorKind::Interrupted,
            Error::Internal(_) | Error::Candle(_) => ErrorKind::Internal,
            Error::Image { .. }
            | Error::Weights { .. }
            | Error::Data { .. }
            | Error::Bundle { .. }
            | Error::Config(_)
            | Error::Device(_)
            | Error::Dataset { .. }
            | Error::MissingAsset { .. }
            | Error::Detection(_)
            | Error::Inference(_)
            | Error::Diverged { .. } => ErrorKind::BadInput,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    pub fn interrupted(message: impl Into<String>) -> Self {
        Error::Interrupted(message.into())
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    pub fn weights(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            message: message.into(),
        }
    }
}
