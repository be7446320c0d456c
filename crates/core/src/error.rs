//! The engine's error type.
//!
//! Rules: every variant names the object it is about (a path, a file in the repository, an ID)
//! and, where there is one, what the user can do about it. The CLI adds context with `anyhow`;
//! the engine never prints.

use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no tvault repository at {path}: create one with `tvault init --repo {path}`")]
    NoRepository { path: PathBuf },

    #[error("{path} is not a tvault repository ({reason}); refusing to touch it")]
    NotARepository { path: PathBuf, reason: String },

    #[error(
        "repository {path} has format version {found}, but this tvault supports versions {supported}; \
         use a tvault release that supports version {found}"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: String,
    },

    #[error("repository file {file} is corrupt: {reason}")]
    Corrupt { file: String, reason: String },

    #[error("chunk {id} (in pack {pack}) is damaged: {reason}")]
    CorruptChunk {
        id: String,
        pack: String,
        reason: String,
    },

    #[error("chunk {id} is not in the repository's index")]
    MissingChunk { id: String },

    #[error("no snapshot matches {prefix:?}; `tvault snapshots` lists them")]
    SnapshotNotFound { prefix: String },

    #[error("snapshot ID {prefix:?} is ambiguous; it matches:\n  {}", candidates.join("\n  "))]
    AmbiguousSnapshot {
        prefix: String,
        candidates: Vec<String>,
    },

    #[error("snapshot ID {prefix:?} is too short or not hex: give at least {min} hex digits")]
    BadSnapshotId { prefix: String, min: usize },

    #[error(
        "repository {path} is encrypted and no password was given: set TVAULT_PASSWORD, pass \
         --password-file FILE or --password-command CMD, or run tvault on a terminal to be asked"
    )]
    PasswordNeeded { path: PathBuf },

    #[error(
        "wrong password: no key of repository {path} opens with it (nothing was read or \
         written); `tvault key list` shows its keys"
    )]
    WrongPassword { path: PathBuf },

    #[error("{0}")]
    Locked(String),

    #[error("restore target {path} is not empty: choose an empty directory or pass --overwrite")]
    TargetNotEmpty { path: PathBuf },

    /// The OS error is part of the message (not a `source`), so it is printed once.
    #[error("{path}: {err}{}", hint(err))]
    Io { path: PathBuf, err: io::Error },

    /// A storage backend's failure that is not an OS error (an object store's HTTP status,
    /// say), classified so that callers can tell what retrying would do.
    #[error("{key}: {message}")]
    Storage {
        key: String,
        class: ErrorClass,
        message: String,
    },

    #[error("{0}")]
    Invalid(String),

    /// The caller asked a backup to stop ([`crate::progress::Progress::abandoned`]).
    #[error(
        "backup abandoned before its snapshot was written: no snapshot of it is visible; what \
         it stored is unreferenced until the next prune"
    )]
    Abandoned,
}

/// What a storage failure means for whoever retries: the object is not there, trying again may
/// work (a timeout, a dropped connection, a server asking to slow down), or it will not. The
/// local backend's errors are classified by their OS error ([`ErrorClass::of_io`]); an object
/// store maps its statuses the same way (404 not found; 408, 429 and 5xx transient; any other
/// 4xx permanent) with [`Error::storage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    NotFound,
    Transient,
    Permanent,
}

impl ErrorClass {
    /// The class of an OS error: `NotFound`; timeouts, interruptions, reset connections and
    /// `WouldBlock` are transient; anything else (permissions, a full disk, bad data) permanent.
    pub fn of_io(kind: io::ErrorKind) -> ErrorClass {
        use io::ErrorKind::*;
        match kind {
            NotFound => ErrorClass::NotFound,
            TimedOut | Interrupted | ConnectionReset | ConnectionAborted | WouldBlock => {
                ErrorClass::Transient
            }
            _ => ErrorClass::Permanent,
        }
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => {
            " (free some space and run the command again; nothing already stored is lost)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => " (check the file's permissions)",
        _ => "",
    }
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            err: source,
        }
    }

    /// A classified storage failure of `key` (see [`ErrorClass`]).
    pub fn storage(key: impl Into<String>, class: ErrorClass, message: impl Into<String>) -> Error {
        Error::Storage {
            key: key.into(),
            class,
            message: message.into(),
        }
    }

    /// How a storage failure classifies; every error that is not one of storage is permanent
    /// (retrying cannot fix a corrupt file or a bad argument).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Io { err, .. } => ErrorClass::of_io(err.kind()),
            Error::Storage { class, .. } => *class,
            _ => ErrorClass::Permanent,
        }
    }

    /// The object (or file) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.class() == ErrorClass::NotFound
    }

    /// Trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    pub fn corrupt(file: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            file: file.into(),
            reason: reason.into(),
        }
    }
}

/// Attaches a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_classify_as_not_found_transient_or_permanent() {
        let io = |kind| Error::io("data/ab/x", io::Error::from(kind));
        assert!(io(io::ErrorKind::NotFound).is_not_found());
        for kind in [
            io::ErrorKind::TimedOut,
            io::ErrorKind::Interrupted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::WouldBlock,
        ] {
            assert!(io(kind).is_transient(), "{kind:?}");
        }
        let full = Error::io("x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.class(), ErrorClass::Permanent);
        assert_eq!(
            io(io::ErrorKind::PermissionDenied).class(),
            ErrorClass::Permanent
        );
        let slow_down = Error::storage("index/ab", ErrorClass::Transient, "HTTP 503");
        assert!(slow_down.is_transient() && !slow_down.is_not_found());
        assert_eq!(slow_down.to_string(), "index/ab: HTTP 503");
        assert_eq!(Error::corrupt("x", "y").class(), ErrorClass::Permanent);
    }
}
