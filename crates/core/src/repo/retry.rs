//! Retries of transient backend errors, with exponential backoff and jitter, bounded in
//! attempts and in total time so that a dead endpoint fails a cron job within minutes.
//!
//! Transient: an error whose class is [`ErrorClass::Transient`] (the S3 backend's HTTP 5xx,
//! 408, 429, timeouts and connection failures; a local OS error such as `TimedOut`).
//! Everything else (a missing object, access denied, a missing bucket) is returned at once. Every backend call may be repeated: a put writes the whole
//! object again, a delete of a missing object succeeds.
//!
//! Defaults: [`DEFAULT_ATTEMPTS`] attempts within [`DEFAULT_MAX_TIME`]; the environment
//! variables `TVAULT_RETRY_ATTEMPTS` and `TVAULT_RETRY_MAX_TIME` (seconds) change them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::backend::Backend;
use crate::error::{Error, ErrorClass, Result};

/// Attempts per call, the first included.
pub const DEFAULT_ATTEMPTS: u32 = 6;
/// The most time one call spends on its attempts and the waits between them.
pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(120);
/// The wait before the second attempt; each further one doubles it (with jitter), up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// How calls are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub max_time: Duration,
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            max_time: DEFAULT_MAX_TIME,
            first_backoff: FIRST_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// The defaults, changed by `TVAULT_RETRY_ATTEMPTS` and `TVAULT_RETRY_MAX_TIME` (seconds,
    /// fractions allowed); a value that does not parse is an error that names it.
    pub fn from_env() -> Result<RetryPolicy> {
        let mut policy = RetryPolicy::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var("TVAULT_RETRY_ATTEMPTS") {
            policy.attempts = v.trim().parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                Error::Invalid(format!(
                    "TVAULT_RETRY_ATTEMPTS={v:?} is not a number of attempts (1 or more)"
                ))
            })?;
        }
        if let Some(v) = var("TVAULT_RETRY_MAX_TIME") {
            let secs: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "TVAULT_RETRY_MAX_TIME={v:?} is not a number of seconds"
                    ))
                })?;
            policy.max_time = Duration::from_secs_f64(secs);
        }
        Ok(policy)
    }
}

/// A backend whose transient errors are retried.
pub struct Retry<B: Backend> {
    inner: B,
    policy: RetryPolicy,
    /// Seeds the jitter: a different wait for each call and thread.
    jitter: AtomicU64,
}

impl<B: Backend> Retry<B> {
    pub fn new(inner: B, policy: RetryPolicy) -> Retry<B> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id());
        Retry {
            inner,
            policy,
            jitter: AtomicU64::new(seed),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// A factor in [0.5, 1.5) for "full-ish" jitter, from a splitmix64 step.
    fn jitter(&self) -> f64 {
        let mut z = self
            .jitter
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        0.5 + (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn run<T>(&self, mut call: impl FnMut() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let mut backoff = self.policy.first_backoff;
        let mut attempt = 1;
        loop {
            let e = match call() {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            let wait = backoff.mul_f64(self.jitter()).min(MAX_BACKOFF);
            let out_of_time = started.elapsed() + wait > self.policy.max_time;
            if attempt >= self.policy.attempts || out_of_time {
                return Err(gave_up(e, attempt, started.elapsed()));
            }
            std::thread::sleep(wait);
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }
}

/// The last error, with how long we tried and how to try longer.
fn gave_up(e: Error, attempts: u32, spent: Duration) -> Error {
    let tried = format!(
        "gave up after {attempts} attempt{} in {:.1}s; TVAULT_RETRY_ATTEMPTS and \
         TVAULT_RETRY_MAX_TIME allow more",
        if attempts == 1 { "" } else { "s" },
        spent.as_secs_f64()
    );
    match e {
        Error::Io { path, err } => Error::storage(
            path.display().to_string(),
            ErrorClass::Transient,
            format!("{err} ({tried})"),
        ),
        Error::Storage {
            key,
            class,
            message,
        } => Error::storage(key, class, format!("{message} ({tried})")),
        e => e,
    }
}

impl<B: Backend> Backend for Retry<B> {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.run(|| self.inner.put(key, data))
    }

    fn put_shared(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        // Each attempt shares the same bytes (a reference count, no copy).
        self.run(|| self.inner.put_shared(key, data.clone()))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.run(|| self.inner.get(key))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.run(|| self.inner.get_range(key, offset, len))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.run(|| self.inner.list(prefix))
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.run(|| self.inner.delete(key))
    }

    fn list_leftovers(&self, prefix: &str) -> Result<Vec<String>> {
        self.run(|| self.inner.list_leftovers(prefix))
    }

    fn list_times(&self, prefix: &str) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        self.run(|| self.inner.list_times(prefix))
    }

    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemBackend;
    use std::io::ErrorKind;
    use std::sync::atomic::AtomicU32;

    /// Fails the first `failures` calls with `kind`.
    struct Flaky {
        inner: MemBackend,
        failures: u32,
        kind: ErrorKind,
        calls: AtomicU32,
    }

    impl Backend for Flaky {
        fn put(&self, key: &str, data: &[u8]) -> Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(Error::io(key, std::io::Error::from(self.kind)));
            }
            self.inner.put(key, data)
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
        fn describe(&self, key: &str) -> String {
            key.to_string()
        }
    }

    fn flaky(failures: u32, kind: ErrorKind) -> Retry<Flaky> {
        let b = Flaky {
            inner: MemBackend::default(),
            failures,
            kind,
            calls: AtomicU32::new(0),
        };
        let policy = RetryPolicy {
            attempts: 4,
            max_time: Duration::from_secs(5),
            first_backoff: Duration::from_millis(1),
        };
        Retry::new(b, policy)
    }

    #[test]
    fn transient_errors_are_retried_up_to_the_attempts() {
        let ok = flaky(3, ErrorKind::TimedOut);
        ok.put("data/x", b"x").unwrap();
        assert_eq!(ok.inner().calls.load(Ordering::SeqCst), 4);
        let too_many = flaky(4, ErrorKind::ConnectionReset);
        let e = too_many.put("data/x", b"x").unwrap_err();
        assert!(e.to_string().contains("gave up after 4 attempts"), "{e}");
        assert_eq!(too_many.inner().calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let denied = flaky(1, ErrorKind::PermissionDenied);
        assert!(denied.put("data/x", b"x").is_err());
        assert_eq!(denied.inner().calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_total_time_bounds_the_retries() {
        let mut slow = flaky(100, ErrorKind::TimedOut);
        slow.policy = RetryPolicy {
            attempts: 100,
            max_time: Duration::from_millis(300),
            first_backoff: Duration::from_millis(50),
        };
        let started = Instant::now();
        assert!(slow.put("data/x", b"x").is_err());
        // Waits of 25–75 ms doubling from there: the 300 ms budget allows a handful.
        assert!(slow.inner().calls.load(Ordering::SeqCst) < 10);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
