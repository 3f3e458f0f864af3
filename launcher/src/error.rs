//! The launcher library's one error type. Every message says what was wrong, where (file, field,
//! AWS operation) and what to do; the variant says what kind of failure it is (an AWS error keeps
//! its [`ErrorKind`]), which decides the exit code of `oxtune` (`cli`: invalid input 2, nothing was
//! sent to AWS; everything else 1).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job file, flag, limit, value or data file is wrong.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a local file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An AWS call failed; `kind` is what the service's error means for the user.
    #[error("{message}")]
    Aws { kind: ErrorKind, message: String },
    /// The trainer's reader rejected the data (the same check the job will make).
    #[error(transparent)]
    Data(#[from] trainer::data::DataError),
    /// Running something failed: a process, a download, an archive.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// Input the user can fix before anything is sent or run.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::Invalid(_) | Error::Data(_))
    }

    /// What an AWS error means for the user (None for the other variants).
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Error::Aws { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// A closure for `map_err` that names the file an I/O error happened on.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io { path: path.to_path_buf(), source }
    }
}

/// What kind of failure an API error is, for messages and exit codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    AccessDenied,
    BadCredentials,
    UnknownRole,
    ResourceLimit,
    Capacity,
    Throttled,
    NotFound,
    Validation,
    Network,
    Other,
}
