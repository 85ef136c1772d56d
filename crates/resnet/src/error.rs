//! The library's error type: structured, so that callers (and the CLI) can
//! say exactly what went wrong in one line.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a file.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said (part of the message, so not repeated as a source).
        cause: std::io::Error,
    },
    /// A file whose content does not parse.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset where known.
        msg: String,
    },
    /// A state dict lacks a parameter the model needs.
    #[error("missing key `{key}` in the weights{hint}")]
    MissingKey {
        /// The parameter name (torchvision's key).
        key: String,
        /// Extra advice (e.g. which architecture the file seems to hold).
        hint: String,
    },
    /// A state dict holds a parameter the model does not have.
    #[error("unexpected key `{key}` in the weights{hint}")]
    UnexpectedKey {
        /// The parameter name.
        key: String,
        /// Extra advice.
        hint: String,
    },
    /// A parameter has the wrong shape.
    #[error("shape mismatch for `{key}`: the model has {expected:?}, the weights have {found:?}{hint}")]
    ShapeMismatch {
        /// The parameter name.
        key: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The file's shape.
        found: Vec<usize>,
        /// Extra advice.
        hint: String,
    },
    /// An unknown architecture name.
    #[error("unknown architecture `{0}` (run `resnet archs` for the list)")]
    UnknownArch(String),
    /// An architecture specification that cannot be built.
    #[error("invalid architecture: {0}")]
    InvalidSpec(String),
    /// Any other invalid argument.
    #[error("{0}")]
    Invalid(String),
    /// A backend operation failed (a device error, or buffers of the wrong
    /// element type or size).
    #[error("backend: {0}")]
    Backend(String),
    /// Training diverged.
    #[error("{0}")]
    Diverged(String),
    /// Interrupted by the user (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }
    /// A format error in `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
}
