//! Test hooks, kept out of the production code paths: the integration tests drive the binary,
//! so the hooks are switched on by environment variables read when a repository is opened.
//!
//! - `TVAULT_CRASH_AFTER_WRITES=N` aborts the process at the N-th write step. A put of the
//!   local backend has two steps (the temporary file written and fsynced; then renamed into
//!   place), so tests can stop a run at any instant. [`CrashAfter`] wraps the backend and puts
//!   through its two halves ([`StagedPut`]), counting a step after each; `LocalBackend::put`
//!   itself is the two halves back to back, with nothing of this in it.
//! - `TVAULT_TEST_PAUSE=POINT:DIR` holds the process at a named point ([`pause`]); the point
//!   `put-locks` (a lock written under its temporary name, before its rename) is also one of
//!   the wrapper's, between the halves of a put under `locks/`.
//!
//! [`with_hooks`] installs the wrapper only when one of the variables is set, so every real run
//! uses the bare backend.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::backend::{Backend, StagedPut};
use super::storage::ObjectKind;
use crate::error::Result;

/// The crash limit of `TVAULT_CRASH_AFTER_WRITES`, read once.
fn crash_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("TVAULT_CRASH_AFTER_WRITES")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

/// `backend`, wrapped in [`CrashAfter`] when a test hook asks for it.
pub fn with_hooks<B: StagedPut + 'static>(backend: B) -> Arc<dyn Backend> {
    let pausing = std::env::var_os("TVAULT_TEST_PAUSE").is_some();
    match crash_limit() {
        Some(limit) => Arc::new(CrashAfter::new(backend, limit)),
        None if pausing => Arc::new(CrashAfter::new(backend, u64::MAX)),
        None => Arc::new(backend),
    }
}

/// Aborts the process at the `limit`-th write step (each put is two: staged, published). The
/// count is per process, as the test harness counts: every repository opened shares it.
pub struct CrashAfter<B> {
    inner: B,
    limit: u64,
}

impl<B: StagedPut> CrashAfter<B> {
    pub fn new(inner: B, limit: u64) -> CrashAfter<B> {
        CrashAfter { inner, limit }
    }

    fn step(&self) {
        static STEPS: AtomicU64 = AtomicU64::new(0);
        if STEPS.fetch_add(1, Ordering::SeqCst) + 1 >= self.limit {
            std::process::abort();
        }
    }
}

impl<B: StagedPut> Backend for CrashAfter<B> {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let staged = self.inner.stage(key, data)?;
        self.step();
        if ObjectKind::of_key(key) == Some(ObjectKind::Lock) {
            pause("put-locks");
        }
        self.inner.publish(staged)?;
        self.step();
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }

    fn list_leftovers(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_leftovers(prefix)
    }

    fn list_times(&self, prefix: &str) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        self.inner.list_times(prefix)
    }

    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// Test hook: `TVAULT_TEST_PAUSE=POINT:DIR` holds the process at the named point so that a
/// test can make two tvault processes interleave exactly as it wants. Reaching the point, the
/// process creates `DIR/POINT.paused` and waits (at most a minute) until `DIR/POINT.resume`
/// exists; once it does, the point no longer stops anyone. Points:
/// - `locked`: any command, its lock taken and the index read again;
/// - `verify`: verify, its snapshots listed and the index read, before it reads the packs;
/// - `put-locks`: a lock file written under its temporary name, before its rename.
/// - `backup-open`: backup, about to open a file it reads (with `--settle`, its metadata just
///   checked against the walk's);
/// - `backup-opened`: backup, a file opened and its metadata taken, before its content is read.
/// - `copy-indexed`: copy, the first index file written while a snapshot's blobs are still
///   being sent (packs stored and named; more in flight);
/// - `restore-file`: restore (and drill), the first file done (in place, kept or failed),
///   before the next one starts;
/// - `restore-chunk`: restore (and drill), the first chunk written into its file.
///
/// Without the variable (every real run) it costs one cached comparison.
pub fn pause(point: &str) {
    static HOOK: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();
    let hook = HOOK.get_or_init(|| {
        let value = std::env::var("TVAULT_TEST_PAUSE").ok()?;
        let (point, dir) = value.split_once(':')?;
        Some((point.to_string(), PathBuf::from(dir)))
    });
    let Some((name, dir)) = hook else { return };
    if name != point {
        return;
    }
    let resume = dir.join(format!("{point}.resume"));
    if resume.exists() {
        return;
    }
    let _ = File::create(dir.join(format!("{point}.paused")));
    let started = std::time::Instant::now();
    while !resume.exists() && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
