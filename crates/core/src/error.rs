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

    #[error("{0}")]
    Locked(String),

    #[error("restore target {path} is not empty: choose an empty directory or pass --overwrite")]
    TargetNotEmpty { path: PathBuf },

    /// The OS error is part of the message (not a `source`), so it is printed once.
    #[error("{path}: {err}{}", hint(err))]
    Io { path: PathBuf, err: io::Error },

    #[error("{0}")]
    Invalid(String),
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
