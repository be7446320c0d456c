//! `--read-limit`: caps the average rate at which backup reads file content, so a backup does
//! not starve a training job's I/O. It works as backpressure: the read loop reports each block
//! it read through `Progress::bytes`, and this wrapper sleeps there until the average rate since
//! the start is back under the limit. Reads happen in blocks, so the rate is an average over
//! blocks (a few MiB), not a smooth stream.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::progress::Progress;

pub struct Throttled<'a> {
    inner: &'a dyn Progress,
    bytes_per_sec: u64,
    state: Mutex<(Instant, u64)>,
}

impl<'a> Throttled<'a> {
    pub fn new(inner: &'a dyn Progress, bytes_per_sec: u64) -> Throttled<'a> {
        Throttled {
            inner,
            bytes_per_sec: bytes_per_sec.max(1),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// How long to wait so that `done` bytes since `start` respect the limit.
    fn delay(&self, start: Instant, done: u64) -> Duration {
        let due = Duration::from_secs_f64(done as f64 / self.bytes_per_sec as f64);
        due.saturating_sub(start.elapsed())
    }
}

impl Progress for Throttled<'_> {
    fn start(&self, files: u64, bytes: u64) {
        *self.state.lock().unwrap() = (Instant::now(), 0);
        self.inner.start(files, bytes);
    }
    fn file(&self, path: &str) {
        self.inner.file(path);
    }
    fn bytes(&self, n: u64) {
        self.inner.bytes(n);
        let wait = {
            let mut state = self.state.lock().unwrap();
            state.1 += n;
            self.delay(state.0, state.1)
        };
        std::thread::sleep(wait);
    }
    fn warn(&self, message: &str) {
        self.inner.warn(message);
    }
    fn finish(&self) {
        self.inner.finish();
    }
    fn abandoned(&self) -> bool {
        self.inner.abandoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn the_delay_keeps_the_average_under_the_limit() {
        let t = Throttled::new(&NoProgress, 100 << 20);
        let start = Instant::now();
        // 200 MiB "read" instantly at 100 MiB/s must wait about 2 s from the start.
        let d = t.delay(start, 200 << 20);
        assert!(
            d > Duration::from_millis(1900) && d <= Duration::from_secs(2),
            "{d:?}"
        );
        // Already slower than the limit: no wait.
        assert_eq!(
            t.delay(start - Duration::from_secs(10), 100 << 20),
            Duration::ZERO
        );
    }
}
