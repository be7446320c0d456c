//! Progress reporting from the engine. Only the CLI draws anything; the engine calls these
//! hooks, and a silent implementation serves tests and library users.

/// Receives progress events. All methods may be called from several threads.
pub trait Progress: Sync {
    /// The work ahead is known: this many files holding this many bytes to read.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// Work on a file begins.
    fn file(&self, _path: &str) {}
    /// This many more bytes were processed.
    fn bytes(&self, _n: u64) {}
    /// The repository has grown by this many bytes in all so far (new, stored bytes).
    fn added(&self, _total: u64) {}
    /// The step after the bytes are through (writing the index and snapshot, setting metadata):
    /// named, so a bar does not sit at "ETA 0s".
    fn phase(&self, _what: &str) {}
    /// A non-fatal problem, reported as it happens (it also ends up in the final report).
    fn warn(&self, _message: &str) {}
    fn finish(&self) {}
    /// Whether the caller wants the run given up (a second stop signal to `watch`): backup
    /// asks between files and before its commit, and then fails with `Error::Abandoned`,
    /// having written no snapshot.
    fn abandoned(&self) -> bool {
        false
    }
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
