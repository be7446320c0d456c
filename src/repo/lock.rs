//! Repository locks: one small file per holder under `locks/`. Backups take shared locks and
//! run side by side; anything that deletes data takes an exclusive lock and runs alone.
//!
//! A holder rewrites its lock every `REFRESH_EVERY`. A lock is stale when its process is gone
//! (same host: no `/proc/PID`) or it was last refreshed more than `STALE_AFTER` ago (any host).
//! Stale locks are reported, never silently broken: `tvault unlock` removes them.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Backend;
use crate::error::{Error, Result};
use crate::id::Id;

pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub host: String,
    pub pid: u32,
    pub exclusive: bool,
    pub command: String,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
}

impl LockInfo {
    pub fn is_stale(&self) -> bool {
        if self.host == hostname() && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
        {
            return true;
        }
        let age = Utc::now().signed_duration_since(self.refreshed);
        age.to_std().map(|a| a > STALE_AFTER).unwrap_or(false)
    }

    fn describe(&self) -> String {
        format!(
            "{} lock of `{}` (pid {} on host {}, since {})",
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.command,
            self.pid,
            self.host,
            self.created.format("%Y-%m-%d %H:%M:%S UTC"),
        )
    }
}

/// This machine's host name, as recorded in snapshots and locks.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A held lock; released (its file deleted) on drop.
pub struct LockGuard {
    backend: Arc<dyn Backend>,
    key: String,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Takes the lock; while another process holds a conflicting live lock, retries for up
    /// to `wait` (a stale lock fails at once: waiting cannot help).
    pub fn acquire(
        backend: Arc<dyn Backend>,
        exclusive: bool,
        command: &str,
        wait: Duration,
    ) -> Result<LockGuard> {
        let started = std::time::Instant::now();
        let now = Utc::now();
        let mut info = LockInfo {
            host: hostname(),
            pid: std::process::id(),
            exclusive,
            command: command.to_string(),
            created: now,
            refreshed: now,
        };
        let seed = format!("{}{}{:?}", info.pid, now.to_rfc3339(), started);
        let key = format!("locks/{}", Id::of(seed.as_bytes()).to_hex());
        loop {
            info.refreshed = Utc::now();
            backend.put(&key, &serde_json::to_vec(&info).expect("lock serialises"))?;
            // Ours is visible first, then we look at the others: two racing writers that
            // conflict both see each other and both back off, never both proceed.
            match check_others(backend.as_ref(), &key, exclusive) {
                Ok(()) => break,
                Err((e, stale)) => {
                    let _ = backend.delete(&key);
                    if stale || started.elapsed() >= wait {
                        return Err(e);
                    }
                    // Jittered, so two waiters that keep colliding drift apart.
                    let jitter = Id::of(format!("{:?}", std::time::Instant::now()).as_bytes()).0[0];
                    std::thread::sleep(Duration::from_millis(500 + 2 * jitter as u64));
                }
            }
        }

        let (tx, rx) = mpsc::channel::<()>();
        let refresher = {
            let backend = backend.clone();
            let key = key.clone();
            std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
                    info.refreshed = Utc::now();
                    let _ = backend.put(&key, &serde_json::to_vec(&info).expect("lock serialises"));
                }
            })
        };
        Ok(LockGuard {
            backend,
            key,
            stop: Some(tx),
            refresher: Some(refresher),
        })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let _ = self.backend.delete(&self.key);
    }
}

/// The first conflicting lock, and whether it is stale.
fn check_others(
    backend: &dyn Backend,
    own: &str,
    exclusive: bool,
) -> std::result::Result<(), (Error, bool)> {
    let listed = backend.list("locks").map_err(|e| (e, false))?;
    for key in listed {
        if key == own {
            continue;
        }
        let Ok(bytes) = backend.get(&key) else {
            continue; // released while we looked
        };
        let other: LockInfo = match serde_json::from_slice(&bytes) {
            Ok(info) => info,
            Err(_) => {
                return Err((
                    Error::Locked(format!(
                    "the repository has an unreadable lock file {}; if no tvault is running on it, \
                     remove it with `tvault unlock --all`",
                    backend.describe(&key)
                )),
                    true,
                ))
            }
        };
        if !(exclusive || other.exclusive) {
            continue;
        }
        let stale = other.is_stale();
        let msg = if stale {
            format!(
                "the repository is locked by a stale {} ({}); its process is gone or stopped \
                 refreshing it. If no tvault is running on this repository, remove it with \
                 `tvault unlock`",
                other.describe(),
                backend.describe(&key)
            )
        } else {
            format!(
                "the repository is locked ({}); wait for it to finish and try again, or let \
                 tvault wait with --lock-wait DURATION",
                other.describe()
            )
        };
        return Err((Error::Locked(msg), stale));
    }
    Ok(())
}

/// Removes stale locks (every lock with `all`); returns what was removed.
pub fn unlock(backend: &dyn Backend, all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for key in backend.list("locks")? {
        let info = backend
            .get(&key)
            .ok()
            .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok());
        let description = info
            .as_ref()
            .map(|i| i.describe())
            .unwrap_or_else(|| "an unreadable lock".into());
        let stale = info.map(|i| i.is_stale()).unwrap_or(true);
        if all || stale {
            backend.delete(&key)?;
            removed.push(description);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemBackend;

    /// An exclusive lock of a process that no longer exists on this host.
    fn plant_dead_exclusive_lock(b: &dyn Backend) {
        let dead = LockInfo {
            host: hostname(),
            pid: u32::MAX - 1, // no such process
            exclusive: true,
            command: "prune".into(),
            created: Utc::now(),
            refreshed: Utc::now(),
        };
        b.put("locks/dead", &serde_json::to_vec(&dead).unwrap())
            .unwrap();
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_ones_do_not() {
        let b: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let s1 = LockGuard::acquire(b.clone(), false, "backup", Duration::ZERO).unwrap();
        let s2 = LockGuard::acquire(b.clone(), false, "backup", Duration::ZERO).unwrap();
        let err = LockGuard::acquire(b.clone(), true, "prune", Duration::ZERO)
            .err()
            .unwrap();
        assert!(err.to_string().contains("wait for it to finish"), "{err}");
        drop((s1, s2));
        assert!(b.list("locks").unwrap().is_empty());
        let x = LockGuard::acquire(b.clone(), true, "prune", Duration::ZERO).unwrap();
        assert!(LockGuard::acquire(b.clone(), false, "backup", Duration::ZERO).is_err());
        drop(x);
        assert!(b.list("locks").unwrap().is_empty());
    }

    #[test]
    fn lock_wait_outlasts_a_live_holder_but_not_a_stale_one() {
        let b: Arc<dyn Backend> = Arc::new(MemBackend::default());
        let held = LockGuard::acquire(b.clone(), true, "prune", Duration::ZERO).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            drop(held);
        });
        let waited = LockGuard::acquire(b.clone(), false, "backup", Duration::from_secs(30));
        releaser.join().unwrap();
        assert!(
            waited.is_ok(),
            "the waiter got the lock once it was released"
        );
        drop(waited);

        plant_dead_exclusive_lock(b.as_ref());
        let started = std::time::Instant::now();
        let err = LockGuard::acquire(b.clone(), false, "backup", Duration::from_secs(60));
        assert!(err.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waiting cannot fix a stale lock"
        );
    }

    #[test]
    fn a_dead_process_lock_is_reported_stale_and_unlock_removes_it() {
        let b: Arc<dyn Backend> = Arc::new(MemBackend::default());
        plant_dead_exclusive_lock(b.as_ref());
        let err = LockGuard::acquire(b.clone(), false, "backup", Duration::ZERO)
            .err()
            .unwrap();
        assert!(err.to_string().contains("tvault unlock"), "{err}");
        let live = LockGuard::acquire(b.clone(), false, "backup", Duration::ZERO);
        assert!(live.is_err());
        assert_eq!(unlock(b.as_ref(), false).unwrap().len(), 1);
        assert!(LockGuard::acquire(b.clone(), false, "backup", Duration::ZERO).is_ok());
    }
}
