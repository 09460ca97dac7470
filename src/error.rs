//! The library's error type. Every variant carries enough context (file, line, tensor
//! name, shapes) for a user to find what was wrong without a debugger.

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

    /// A wrong option or combination of options.
    #[error("{0}")]
    Config(String),

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
}

impl Error {
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
