//! Test hook: a backend layer that fails or delays a chosen fraction of calls, so that tests
//! can show that retries carry a backup through a flaky store and that a store that keeps
//! failing ends it cleanly. Never on by default: it is installed (below the retry layer) only
//! when `TVAULT_TEST_FAULTS` is set, e.g. `TVAULT_TEST_FAULTS=fail=0.2,delay_ms=50,seed=7`:
//! - `fail=F`: the fraction of calls (0 to 1) that fail with a transient "connection reset"
//!   before reaching the store;
//! - `drop=F`: the fraction of calls that reach the store and then lose their answer (the
//!   put is stored, the caller sees a "connection reset");
//! - `delay_ms=N`: every call waits N ms first (a slow store);
//! - `seed=S`: which calls fail (the same seed fails the same share of calls; which ones
//!   varies between runs where several threads call at once);
//! - `ops=put+get+...`: only these calls are affected (default all: put, get, get_range,
//!   list, delete);
//! - `under=FOLDER+...`: only keys in these folders (e.g. `data`) are affected;
//! - `log=PATH`: every call that reaches this layer (the network, below the cache) is
//!   appended to PATH as a line `OP KEY`, so that tests can see what a command downloads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::backend::Backend;
use crate::error::{Error, ErrorClass, Result};

/// What `TVAULT_TEST_FAULTS` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    pub fail: f64,
    pub drop: f64,
    pub delay: Duration,
    pub seed: u64,
    pub ops: Option<Vec<String>>,
    pub log: Option<std::path::PathBuf>,
    pub under: Option<Vec<String>>,
}

impl FaultPlan {
    /// The plan in `TVAULT_TEST_FAULTS`, if it is set.
    pub fn from_env() -> Result<Option<FaultPlan>> {
        match std::env::var("TVAULT_TEST_FAULTS") {
            Ok(v) if !v.trim().is_empty() => FaultPlan::parse(&v).map(Some),
            _ => Ok(None),
        }
    }

    pub fn parse(text: &str) -> Result<FaultPlan> {
        let bad = |why: &str| Error::Invalid(format!("TVAULT_TEST_FAULTS={text:?}: {why}"));
        let mut plan = FaultPlan {
            fail: 0.0,
            drop: 0.0,
            delay: Duration::ZERO,
            seed: 1,
            ops: None,
            log: None,
            under: None,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| bad("expected NAME=VALUE"))?;
            match name {
                "fail" => {
                    plan.fail = value
                        .parse()
                        .ok()
                        .filter(|f| (0.0..=1.0).contains(f))
                        .ok_or_else(|| bad("fail is a fraction from 0 to 1"))?
                }
                "drop" => {
                    plan.drop = value
                        .parse()
                        .ok()
                        .filter(|f| (0.0..=1.0).contains(f))
                        .ok_or_else(|| bad("drop is a fraction from 0 to 1"))?
                }
                "delay_ms" => {
                    plan.delay = Duration::from_millis(
                        value.parse().map_err(|_| bad("delay_ms is a number"))?,
                    )
                }
                "seed" => plan.seed = value.parse().map_err(|_| bad("seed is a number"))?,
                "ops" => {
                    plan.ops = Some(value.split('+').map(String::from).collect());
                }
                "log" => plan.log = Some(value.into()),
                "under" => plan.under = Some(value.split('+').map(String::from).collect()),
                _ => {
                    return Err(bad(
                        "known settings: fail, drop, delay_ms, seed, ops, under, log",
                    ))
                }
            }
        }
        Ok(plan)
    }
}

/// A backend that fails or delays calls as its [`FaultPlan`] says.
pub struct Faults<B: Backend> {
    inner: B,
    plan: FaultPlan,
    calls: AtomicU64,
}

impl<B: Backend> Faults<B> {
    pub fn new(inner: B, plan: FaultPlan) -> Faults<B> {
        Faults {
            inner,
            plan,
            calls: AtomicU64::new(0),
        }
    }

    /// Delays the call, then fails it, or lets it through and says whether to drop its answer.
    fn gate(&self, op: &str, key: &str) -> Result<bool> {
        if let Some(path) = &self.plan.log {
            use std::io::Write;
            let line = format!("{op} {key}\n");
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| Error::io(path, e))?;
        }
        if let Some(ops) = &self.plan.ops {
            if !ops.iter().any(|o| o == op) {
                return Ok(false);
            }
        }
        if let Some(folders) = &self.plan.under {
            let folder = key.split('/').next().unwrap_or_default();
            if !folders.iter().any(|f| f == folder) {
                return Ok(false);
            }
        }
        if !self.plan.delay.is_zero() {
            std::thread::sleep(self.plan.delay);
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let draw = unit(self.plan.seed, n);
        if draw < self.plan.fail {
            return Err(self.fault(op, key, "injected fault"));
        }
        Ok(draw < self.plan.fail + self.plan.drop)
    }

    fn fault(&self, op: &str, key: &str, what: &str) -> Error {
        let message = format!("connection reset: {what} in {op} (TVAULT_TEST_FAULTS)");
        Error::storage(self.inner.describe(key), ErrorClass::Transient, message)
    }

    /// Runs `call` behind the gate.
    fn call<T>(&self, op: &str, key: &str, call: impl FnOnce() -> Result<T>) -> Result<T> {
        let drop = self.gate(op, key)?;
        let out = call()?;
        if drop {
            return Err(self.fault(op, key, "injected dropped answer"));
        }
        Ok(out)
    }
}

/// A number in [0, 1) for call `n` of a run seeded with `seed` (splitmix64).
fn unit(seed: u64, n: u64) -> f64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(n.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl<B: Backend> Backend for Faults<B> {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.call("put", key, || self.inner.put(key, data))
    }

    fn put_shared(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        self.call("put", key, || self.inner.put_shared(key, data))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.call("get", key, || self.inner.get(key))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.call("get_range", key, || self.inner.get_range(key, offset, len))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.call("list", prefix, || self.inner.list(prefix))
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.call("delete", key, || self.inner.delete(key))
    }

    fn list_leftovers(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_leftovers(prefix)
    }

    fn list_times(&self, prefix: &str) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        self.call("list", prefix, || self.inner.list_times(prefix))
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
    fn a_plan_parses_and_fails_about_its_fraction_of_calls() {
        let plan = FaultPlan::parse("fail=0.2,delay_ms=0,seed=7,ops=put+get").unwrap();
        assert_eq!(plan.ops, Some(vec!["put".into(), "get".into()]));
        let b = Faults::new(MemBackend::default(), plan);
        let failed = (0..1000).filter(|_| b.put("data/x", b"x").is_err()).count();
        assert!((150..250).contains(&failed), "{failed} of 1000 failed");
        // Calls not named in ops never fail.
        assert!((0..100).all(|_| b.list("data").is_ok()));
        assert!(FaultPlan::parse("fail=2").is_err());
        // A dropped answer: the put is stored all the same.
        let b = Faults::new(MemBackend::default(), FaultPlan::parse("drop=1").unwrap());
        assert!(b.put("data/y", b"y").is_err());
        assert_eq!(b.inner.get("data/y").unwrap(), b"y");
        assert!(FaultPlan::parse("nonsense").is_err());
    }
}
