//! tvault: a deduplicating, content-addressed backup engine for machine-learning model
//! artifacts. The `tvault` binary is a thin CLI over this library.
//!
//! ```no_run
//! use std::path::Path;
//! use tvault_core::ops::{backup, restore};
//! use tvault_core::repo::Repository;
//!
//! # fn main() -> tvault_core::error::Result<()> {
//! let repo = Repository::init(Path::new("/tmp/repo"))?;
//! let mut repo = repo;
//! let report = backup::run(&mut repo, &backup::BackupOptions::new(vec!["/data/ckpt".into()]), &tvault_core::progress::NoProgress)?;
//! let mut repo = Repository::open(Path::new("/tmp/repo"))?;
//! restore::run(&mut repo, &restore::RestoreOptions::new(&report.snapshot_id.to_hex(), "/tmp/out"), &tvault_core::progress::NoProgress)?;
//! # Ok(()) }
//! ```

pub mod chunker;
pub mod codec;
pub mod error;
pub mod format;
pub mod id;
pub mod index;
pub mod ops;
pub mod pack;
pub mod progress;
pub mod repo;
pub mod snapshot;
pub mod tree;

/// Runs the engine's parallel work (chunking, hashing, compression, decoding) on `n` threads
/// instead of one per core. Call it once, before any work starts.
pub fn set_worker_threads(n: usize) -> error::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .build_global()
        .map_err(|e| error::Error::Invalid(format!("cannot start {n} worker threads: {e}")))
}
