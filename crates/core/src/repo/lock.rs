//! Repository locks: one small file per holder under `locks/`. Backups take shared locks and
//! run side by side; anything that deletes data takes an exclusive lock and runs alone.
//!
//! A holder rewrites its lock every `REFRESH_EVERY`. A lock is stale when its process is gone
//! (same host: no `/proc/PID`) or it was last refreshed more than `STALE_AFTER` ago (any host).
//! Stale locks are reported and `tvault unlock` removes them, with one exception: a conflicting
//! lock whose holder is *provably* dead (same host, same boot, same PID namespace, and no such
//! process, or the PID now belongs to a process started at another time) is removed by the
//! command that meets it, with a one-line notice. This module also owns the process identity
//! both rules need (boot ID, PID namespace, start times), which the backend uses to tell a
//! temporary file of a dead writer.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::storage::{Handle, ObjectKind, Storage};
use crate::error::{Error, Result};
use crate::id::Id;

pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// How the refresher paces itself; tests shorten it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    /// Between refreshes while they work.
    pub refresh: Duration,
    /// Between attempts after a refresh failed (the store may be back soon).
    pub retry: Duration,
    /// Without a successful refresh for this long, the lock is given up: others may call it
    /// stale at `STALE_AFTER`, so the process stops writing well before.
    pub give_up: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            refresh: REFRESH_EVERY,
            retry: Duration::from_secs(30),
            give_up: STALE_AFTER / 2,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub host: String,
    pub pid: u32,
    pub exclusive: bool,
    pub command: String,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
    /// The holder machine's boot (`/proc/sys/kernel/random/boot_id`). Absent in locks written
    /// by older tvaults or where `/proc` does not tell; so are the next two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The PID namespace the `pid` is numbered in (`/proc/self/ns/pid`, e.g. `pid:[4026531836]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
    /// When the holder started, in clock ticks since boot (field 22 of `/proc/PID/stat`): a
    /// PID reused by another process has another start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

impl LockInfo {
    /// Whether the lock is reported as stale (`tvault unlock` removes those); never a reason
    /// to remove it without being asked (see [`LockInfo::holder_is_provably_dead`]).
    pub fn is_stale(&self) -> bool {
        if self.host == hostname() && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
        {
            return true;
        }
        let age = Utc::now().signed_duration_since(self.refreshed);
        age.to_std().map(|a| a > STALE_AFTER).unwrap_or(false)
    }

    /// True only when the holder is certainly dead: it ran on this host, in this boot, in our
    /// PID namespace, and that process no longer exists. Anything less certain (another host, a
    /// container with its own PIDs, a lock of an older tvault) is false.
    pub fn holder_is_provably_dead(&self) -> bool {
        let here = |theirs: &Option<String>, ours: Option<&String>| {
            theirs.is_some() && theirs.as_ref() == ours
        };
        self.host == hostname()
            && here(&self.boot_id, boot_id())
            && here(&self.pid_ns, pid_namespace())
            && process_is_gone(self.pid, self.pid_start)
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

/// This machine's current boot ID, if `/proc` tells.
pub fn boot_id() -> Option<&'static String> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(id.trim().to_string()).filter(|id| !id.is_empty())
    })
    .as_ref()
}

/// The PID namespace of this process (`pid:[INODE]`), if `/proc` tells, and only when the
/// `/proc` mounted here numbers processes in it (so `/proc/PID` means our PID).
pub fn pid_namespace() -> Option<&'static String> {
    static NS: OnceLock<Option<String>> = OnceLock::new();
    NS.get_or_init(|| {
        let me = std::fs::read_link("/proc/self").ok()?;
        if me.to_str()? != std::process::id().to_string() {
            return None;
        }
        let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        Some(ns.to_str()?.to_string())
    })
    .as_ref()
}

/// When process `pid` (of our PID namespace) started, in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// True only when process `pid` of our PID namespace certainly no longer runs: no
/// `/proc/PID`, a zombie, or (given `started`) a process that started at another time.
pub fn process_is_gone(pid: u32, started: Option<u64>) -> bool {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        // Under `hidepid`, other users' processes look absent too: a missing entry proves
        // nothing unless this process can see PID 1's.
        Err(e) => {
            return e.kind() == std::io::ErrorKind::NotFound
                && std::path::Path::new("/proc/1/stat").exists()
        }
    };
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return false;
    };
    let mut fields = rest.split(' ');
    if fields.next() == Some("Z") {
        return true;
    }
    let now_started = fields.nth(18).and_then(|f| f.parse::<u64>().ok());
    matches!((started, now_started), (Some(a), Some(b)) if a != b)
}

/// A held lock; released (its file deleted) on drop.
pub struct LockGuard {
    storage: Storage,
    object: Handle,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl LockGuard {
    /// Takes the lock; while another process holds a conflicting live lock, retries for up
    /// to `wait` (a stale lock fails at once: waiting cannot help). A conflicting lock whose
    /// holder is provably dead is removed, and `notice` told so in one line.
    pub fn acquire(
        storage: Storage,
        exclusive: bool,
        command: &str,
        wait: Duration,
        notice: &dyn Fn(&str),
    ) -> Result<LockGuard> {
        Self::acquire_with(
            storage,
            exclusive,
            command,
            wait,
            notice,
            Timings::default(),
        )
    }

    pub(crate) fn acquire_with(
        storage: Storage,
        exclusive: bool,
        command: &str,
        wait: Duration,
        notice: &dyn Fn(&str),
        timings: Timings,
    ) -> Result<LockGuard> {
        let started = std::time::Instant::now();
        let now = Utc::now();
        let pid = std::process::id();
        let mut info = LockInfo {
            host: hostname(),
            pid,
            exclusive,
            command: command.to_string(),
            created: now,
            refreshed: now,
            boot_id: boot_id().cloned(),
            pid_ns: pid_namespace().cloned(),
            pid_start: start_time(pid),
        };
        let seed = format!("{}{}{:?}", info.pid, now.to_rfc3339(), started);
        let object = Handle::new(ObjectKind::Lock, &Id::of(seed.as_bytes()));
        let mut vanished = 0;
        loop {
            info.refreshed = Utc::now();
            match storage.put(
                &object,
                &serde_json::to_vec(&info).expect("lock serialises"),
            ) {
                Ok(()) => {}
                // Our temporary file vanished before its rename (an older tvault's prune
                // deletes every temporary file): nothing is wrong with the repository.
                Err(e) if e.is_not_found() && vanished < 10 => {
                    vanished += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Ours is visible first, then we look at the others: two racing writers that
            // conflict both see each other and both back off, never both proceed.
            match check_others(&storage, &object, exclusive, notice) {
                Ok(()) => break,
                Err((e, stale)) => {
                    let _ = storage.delete(&object);
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
            let storage = storage.clone();
            let object = object.clone();
            let lease = storage.lease();
            std::thread::spawn(move || {
                // A refresh that fails is tried again sooner; one that keeps failing until
                // others may soon call the lock stale ends this process's writing.
                let mut last_ok = std::time::Instant::now();
                let mut pause = timings.refresh;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(pause) {
                    info.refreshed = Utc::now();
                    let bytes = serde_json::to_vec(&info).expect("lock serialises");
                    match storage.put(&object, &bytes) {
                        Ok(()) => {
                            last_ok = std::time::Instant::now();
                            pause = timings.refresh;
                        }
                        Err(e) => {
                            pause = timings.retry;
                            if last_ok.elapsed() >= timings.give_up {
                                lease.lose(format!(
                                    "this tvault's lock {object} could not be refreshed for {} \
                                     (last error: {e}); other tvault processes may soon call it \
                                     stale, so nothing more is written: run the command again",
                                    crate::ops::describe_duration(timings.give_up)
                                ));
                            }
                        }
                    }
                }
            })
        };
        Ok(LockGuard {
            storage,
            object,
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
        let _ = self.storage.delete(&self.object);
    }
}

/// The first conflicting lock, and whether it is stale. Conflicting locks of provably dead
/// holders are removed on the way (each told to `notice`).
fn check_others(
    storage: &Storage,
    own: &Handle,
    exclusive: bool,
    notice: &dyn Fn(&str),
) -> std::result::Result<(), (Error, bool)> {
    let listed = storage.list(ObjectKind::Lock).map_err(|e| (e, false))?;
    for (key, _) in listed {
        if key == *own {
            continue;
        }
        let bytes = match storage.get(&key) {
            Ok(b) => b,
            // Sealed with another key, or damaged: as unreadable as bad JSON.
            Err(Error::Corrupt { .. }) => Vec::new(),
            Err(_) => continue, // released while we looked
        };
        let other: LockInfo = match serde_json::from_slice(&bytes) {
            Ok(info) => info,
            Err(_) => {
                return Err((
                    Error::Locked(format!(
                    "the repository has an unreadable lock file {}; if no tvault is running on it, \
                     remove it with `tvault unlock --all`",
                    storage.describe(&key)
                )),
                    true,
                ))
            }
        };
        if !(exclusive || other.exclusive) {
            continue;
        }
        if other.holder_is_provably_dead() && storage.delete(&key).is_ok() {
            notice(&format!(
                "removed the {} ({}): its process is gone",
                other.describe(),
                storage.describe(&key)
            ));
            continue;
        }
        let stale = other.is_stale();
        let msg = if stale {
            format!(
                "the repository is locked by a stale {} ({}); its process is gone or stopped \
                 refreshing it. If no tvault is running on this repository, remove it with \
                 `tvault unlock`",
                other.describe(),
                storage.describe(&key)
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
pub fn unlock(storage: &Storage, all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (key, _) in storage.list(ObjectKind::Lock)? {
        let bytes = match storage.get(&key) {
            Err(e) if e.is_not_found() => continue, // released while we looked
            read => read.ok(),
        };
        let info = bytes.and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok());
        let description = info
            .as_ref()
            .map(|i| i.describe())
            .unwrap_or_else(|| "an unreadable lock".into());
        let stale = info.map(|i| i.is_stale()).unwrap_or(true);
        if all || stale {
            storage.delete(&key)?;
            removed.push(description);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{Backend, MemBackend};
    use std::sync::Arc;

    fn mem() -> (Arc<dyn Backend>, Storage) {
        let b: Arc<dyn Backend> = Arc::new(MemBackend::default());
        (b.clone(), Storage::new(b))
    }

    /// A store that stops taking lock objects once told to (an endpoint that went away).
    #[derive(Default)]
    struct LocksFail {
        inner: MemBackend,
        failing: std::sync::atomic::AtomicBool,
    }

    impl Backend for LocksFail {
        fn put(&self, key: &str, data: &[u8]) -> Result<()> {
            if key.starts_with("locks/") && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::io(key, std::io::ErrorKind::TimedOut.into()));
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
            self.inner.describe(key)
        }
    }

    /// Issue 11.5: the refresher ignored its errors, so a process whose lock others may call
    /// stale went on writing. Past `give_up` without a refresh it writes nothing more.
    #[test]
    fn a_lock_that_cannot_be_refreshed_stops_all_writing_before_others_call_it_stale() {
        let backend = Arc::new(LocksFail::default());
        let storage = Storage::new(backend.clone());
        let timings = Timings {
            refresh: Duration::from_millis(20),
            retry: Duration::from_millis(10),
            give_up: Duration::from_millis(500),
        };
        let guard = LockGuard::acquire_with(
            storage.clone(),
            false,
            "backup",
            Duration::ZERO,
            &|_| {},
            timings,
        )
        .unwrap();
        let pack = Handle::pack(&Id::of(b"a pack"));
        std::thread::sleep(Duration::from_millis(200));
        storage.put(&pack, b"while refreshes work").unwrap();
        backend
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Failing for less than give_up: still writing.
        std::thread::sleep(Duration::from_millis(50));
        storage.put(&pack, b"a short outage").unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        let err = storage.put(&pack, b"too late").unwrap_err().to_string();
        assert!(
            err.contains("could not be refreshed") && err.contains("nothing more is written"),
            "{err}"
        );
        assert!(storage.delete(&pack).is_err(), "deleting is writing too");
        drop(guard);
    }

    /// An exclusive lock of a process that no longer exists on this host.
    fn plant_dead_exclusive_lock(b: &dyn Backend) {
        let dead = LockInfo {
            host: hostname(),
            pid: u32::MAX - 1, // no such process
            exclusive: true,
            command: "prune".into(),
            created: Utc::now(),
            refreshed: Utc::now(),
            boot_id: None,
            pid_ns: None,
            pid_start: None,
        };
        b.put("locks/dead", &serde_json::to_vec(&dead).unwrap())
            .unwrap();
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_ones_do_not() {
        let (b, s) = mem();
        let s1 = LockGuard::acquire(s.clone(), false, "backup", Duration::ZERO, &|_| {}).unwrap();
        let s2 = LockGuard::acquire(s.clone(), false, "backup", Duration::ZERO, &|_| {}).unwrap();
        let err = LockGuard::acquire(s.clone(), true, "prune", Duration::ZERO, &|_| {})
            .err()
            .unwrap();
        assert!(err.to_string().contains("wait for it to finish"), "{err}");
        drop((s1, s2));
        assert!(b.list("locks").unwrap().is_empty());
        let x = LockGuard::acquire(s.clone(), true, "prune", Duration::ZERO, &|_| {}).unwrap();
        assert!(LockGuard::acquire(s.clone(), false, "backup", Duration::ZERO, &|_| {}).is_err());
        drop(x);
        assert!(b.list("locks").unwrap().is_empty());
    }

    #[test]
    fn lock_wait_outlasts_a_live_holder_but_not_a_stale_one() {
        let (b, s) = mem();
        let held = LockGuard::acquire(s.clone(), true, "prune", Duration::ZERO, &|_| {}).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            drop(held);
        });
        let waited =
            LockGuard::acquire(s.clone(), false, "backup", Duration::from_secs(30), &|_| {});
        releaser.join().unwrap();
        assert!(
            waited.is_ok(),
            "the waiter got the lock once it was released"
        );
        drop(waited);

        plant_dead_exclusive_lock(b.as_ref());
        let started = std::time::Instant::now();
        let err = LockGuard::acquire(s.clone(), false, "backup", Duration::from_secs(60), &|_| {});
        assert!(err.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waiting cannot fix a stale lock"
        );
    }

    #[test]
    fn a_dead_process_lock_is_reported_stale_and_unlock_removes_it() {
        let (b, s) = mem();
        plant_dead_exclusive_lock(b.as_ref());
        let err = LockGuard::acquire(s.clone(), false, "backup", Duration::ZERO, &|_| {})
            .err()
            .unwrap();
        assert!(err.to_string().contains("tvault unlock"), "{err}");
        let live = LockGuard::acquire(s.clone(), false, "backup", Duration::ZERO, &|_| {});
        assert!(live.is_err());
        assert_eq!(unlock(&s, false).unwrap().len(), 1);
        assert!(LockGuard::acquire(s.clone(), false, "backup", Duration::ZERO, &|_| {}).is_ok());
    }

    #[test]
    fn a_provably_dead_holder_loses_its_lock_with_a_notice() {
        let (b, s) = mem();
        let mut dead = LockInfo {
            host: hostname(),
            pid: u32::MAX - 1,
            exclusive: true,
            command: "prune".into(),
            created: Utc::now(),
            refreshed: Utc::now(),
            boot_id: boot_id().cloned(),
            pid_ns: pid_namespace().cloned(),
            pid_start: Some(1),
        };
        assert!(dead.holder_is_provably_dead(), "{dead:?}");
        b.put("locks/dead", &serde_json::to_vec(&dead).unwrap())
            .unwrap();
        let notices = std::sync::Mutex::new(Vec::new());
        let got = LockGuard::acquire(s.clone(), false, "backup", Duration::ZERO, &|n| {
            notices.lock().unwrap().push(n.to_string())
        });
        assert!(got.is_ok());
        let notices = notices.into_inner().unwrap();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].contains("lock of `prune`"), "{notices:?}");
        drop(got);
        assert!(b.list("locks").unwrap().is_empty());

        // This very process is alive; with another start time its PID was reused.
        dead.pid = std::process::id();
        dead.pid_start = start_time(dead.pid);
        assert!(dead.pid_start.is_some());
        assert!(!dead.holder_is_provably_dead());
        dead.pid_start = dead.pid_start.map(|t| t + 1);
        assert!(dead.holder_is_provably_dead());
        dead.boot_id = Some("another boot".into());
        assert!(!dead.holder_is_provably_dead());
    }

    #[test]
    fn locks_of_older_tvaults_still_parse() {
        let old = br#"{"host":"h","pid":7,"exclusive":false,"command":"backup",
            "created":"2026-01-01T00:00:00Z","refreshed":"2026-01-01T00:00:00Z"}"#;
        let info: LockInfo = serde_json::from_slice(old).unwrap();
        assert!(info.boot_id.is_none() && info.pid_ns.is_none() && info.pid_start.is_none());
        assert!(!info.holder_is_provably_dead());
    }
}
