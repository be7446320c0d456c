//! `--limit-upload RATE`: caps the average rate at which a command writes to the repository,
//! so a backup to object storage leaves a shared uplink to the training job. A backend wrapper:
//! before each put it sleeps until the bytes put since the start (this one included) are back
//! under the limit. Packs are put whole, so the rate is an average over packs (tens of MiB),
//! not a smooth stream; reads are not limited.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Backend;
use crate::error::Result;

pub struct UploadLimit {
    inner: Arc<dyn Backend>,
    bytes_per_sec: u64,
    /// When the first put began, and the bytes put since.
    state: Mutex<Option<(Instant, u64)>>,
}

impl UploadLimit {
    pub fn new(inner: Arc<dyn Backend>, bytes_per_sec: u64) -> UploadLimit {
        UploadLimit {
            inner,
            bytes_per_sec: bytes_per_sec.max(1),
            state: Mutex::new(None),
        }
    }

    /// How long to wait before putting `n` more bytes.
    fn delay(&self, n: usize) -> Duration {
        let mut state = self.state.lock().expect("upload limit");
        let (start, done) = state.get_or_insert((Instant::now(), 0));
        *done += n as u64;
        let due = Duration::from_secs_f64(*done as f64 / self.bytes_per_sec as f64);
        due.saturating_sub(start.elapsed())
    }
}

impl Backend for UploadLimit {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        std::thread::sleep(self.delay(data.len()));
        self.inner.put(key, data)
    }
    fn put_shared(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        std::thread::sleep(self.delay(data.len()));
        self.inner.put_shared(key, data)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemBackend;

    #[test]
    fn puts_are_spread_so_the_average_rate_stays_under_the_limit() {
        let limited = UploadLimit::new(Arc::new(MemBackend::default()), 1_000_000);
        let started = Instant::now();
        for i in 0..4 {
            limited.put(&format!("data/{i}"), &[0u8; 100_000]).unwrap();
        }
        // 400 kB at 1 MB/s: at least 0.4 s (the first put waits for its own bytes too).
        assert!(
            started.elapsed() >= Duration::from_millis(390),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(limited.list("data").unwrap().len(), 4);
    }
}
