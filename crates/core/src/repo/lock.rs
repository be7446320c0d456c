//! Repository locks: one small file per holder under `locks/`. Backups take shared locks and
//! run side by side; anything that deletes data takes an exclusive lock and runs alone.
//!
//! A holder rewrites its lock every `REFRESH_EVERY`. A lock is stale when its holder is
//! *provably* dead (same host, same boot, same PID namespace, and no such process, or the PID
//! now belongs to a process started at another time) or it was last refreshed more than
//! `STALE_AFTER` ago; a lock of another boot or PID namespace, or without them (older tvaults),
//! is judged by its age alone. Ages go by the store's clock where it keeps object times (S3's
//! `Last-Modified`, a file's mtime): the time since the store last wrote the lock, against the
//! time it gives an object we just wrote, so a host with a wrong clock can neither make a live
//! lock look old nor keep a dead one fresh. Only a store without times falls back to the
//! lock's `refreshed` field and our clock. Stale locks are reported and `tvault unlock` removes them; a
//! conflicting lock of a provably dead holder is also removed by the command that meets it,
//! with a one-line notice. A lock that cannot be read (other than gone) stops the command: it
//! may conflict. This module also owns the process identity these rules need (boot ID, PID
//! namespace, start times), which the backend uses to tell a temporary file of a dead writer.
//!
//! The holder's writing depends on its refreshes (the [`Lease`](super::storage::Lease)): it
//! stops once its lock went `give_up` without a refresh that worked (refreshes failed, or the
//! process was stopped or the machine suspended) or once its lock was found removed by another
//! process, which a refresh never writes again.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::storage::{Handle, ObjectKind, Stamp, Storage};
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
    /// stale at `STALE_AFTER`, so the process stops writing well before. Checked before every
    /// write too, so a process that was stopped (or a machine that slept) that long writes
    /// nothing more even though its refresher never ran to fail.
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
    /// A lock of this process, created and refreshed `now`.
    fn ours(exclusive: bool, command: &str, now: DateTime<Utc>) -> LockInfo {
        let pid = std::process::id();
        LockInfo {
            host: hostname(),
            pid,
            exclusive,
            command: command.to_string(),
            created: now,
            refreshed: now,
            boot_id: boot_id().cloned(),
            pid_ns: pid_namespace().cloned(),
            pid_start: start_time(pid),
        }
    }

    /// Whether the lock is reported as stale (`tvault unlock` removes those): its holder is
    /// provably dead, or it was not refreshed for `STALE_AFTER`. Its PID is judged only when
    /// host, boot and PID namespace are this process's (see
    /// [`LockInfo::holder_is_provably_dead`]): elsewhere the number means another process or
    /// none, so such a lock (and one of an older tvault, which records neither) goes by its age.
    ///
    /// Its age is `stored_age` where the store tells it (the time since the store last wrote
    /// the lock, by the store's own clock: see [`lock_ages`]), so that no host's wrong clock
    /// makes a live lock look old; else the time since its `refreshed` by our clock.
    pub fn is_stale(&self, stored_age: Option<Duration>) -> bool {
        if self.holder_is_provably_dead() {
            return true;
        }
        match stored_age {
            Some(age) => age > STALE_AFTER,
            None => {
                let age = Utc::now().signed_duration_since(self.refreshed);
                age.to_std().map(|a| a > STALE_AFTER).unwrap_or(false)
            }
        }
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
    process_is_gone_in(std::path::Path::new("/proc"), pid, started)
}

/// [`process_is_gone`], looking in `proc` for what `/proc` tells (tests give a folder of
/// their own).
fn process_is_gone_in(proc: &std::path::Path, pid: u32, started: Option<u64>) -> bool {
    let stat = match std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) {
        Ok(stat) => stat,
        // Under `hidepid`, other users' processes look absent too: a missing entry proves
        // nothing unless this process can see PID 1's.
        Err(e) => {
            return e.kind() == std::io::ErrorKind::NotFound && proc.join("1").join("stat").exists()
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
        let mut info = LockInfo::ours(exclusive, command, now);
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
            lease.hold(&object, timings.give_up);
            std::thread::spawn(move || {
                // A refresh that fails is tried again sooner; one that keeps failing until
                // others may soon call the lock stale ends this process's writing.
                let mut pause = timings.refresh;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(pause) {
                    // Too late to refresh (the process was stopped, the machine slept): a
                    // refresh now would not make the lease good again.
                    if lease.is_lost() {
                        break;
                    }
                    let at = Stamp::now();
                    // Our lock must still be there. If another process removed it (as stale,
                    // or `tvault unlock --all`), it may act on that: writing it again would
                    // hide that. (Removed between this read and the write, it is written
                    // again; only a conditional write could close that gap.)
                    let refreshed = match storage.get(&object) {
                        Err(e) if e.is_not_found() => {
                            lease.lose(format!(
                                "this tvault's lock {object} was removed by another process \
                                 (`tvault unlock`, or a tvault that judged it stale), so \
                                 nothing more is written: run the command again"
                            ));
                            break;
                        }
                        Err(e) => Err(e),
                        Ok(_) => {
                            info.refreshed = Utc::now();
                            let bytes = serde_json::to_vec(&info).expect("lock serialises");
                            storage.put(&object, &bytes)
                        }
                    };
                    match refreshed {
                        Ok(()) => {
                            lease.refreshed(at);
                            pause = timings.refresh;
                        }
                        Err(e) => {
                            pause = timings.retry;
                            lease.refresh_failed(&e);
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
        self.storage.lease().release();
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
    let ages = lock_ages(storage, own).map_err(|e| (e, false))?;
    for (key, _) in listed {
        if key == *own {
            continue;
        }
        let bytes = match storage.get(&key) {
            Ok(bytes) => bytes,
            // Sealed with another key, or damaged: as unreadable as bad JSON (below).
            Err(Error::Corrupt { .. }) => Vec::new(),
            Err(e) if e.is_not_found() => continue, // released while we looked
            // It may conflict: nobody goes ahead beside a lock it cannot read. Waiting may
            // help only when the error may pass.
            Err(e) => return Err((unreadable_lock(storage, &key, &e), !e.is_transient())),
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
        let stale = other.is_stale(ages.as_ref().map(|a| a.of(&key)));
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

/// How long ago the store last wrote each lock, by the store's own clock: its time for
/// `reference`, an object of ours written just before, is "now". `None` only where the store
/// keeps no times (then ages go by the locks' `refreshed` and our clock). A store with times
/// that does not list `reference` yet (a listing that lags behind writes) is asked again, and
/// then it is an error: falling back to our clock is what this rule exists to avoid.
pub fn lock_ages(storage: &Storage, reference: &Handle) -> Result<Option<LockAges>> {
    for attempt in 0..5 {
        let Some(times) = storage.list_times(ObjectKind::Lock)? else {
            return Ok(None);
        };
        if let Some(now) = times.iter().find(|(k, _)| k == reference).map(|(_, t)| *t) {
            let ages = times
                .into_iter()
                .map(|(k, t)| (k, now.duration_since(t).unwrap_or_default()))
                .collect();
            return Ok(Some(LockAges(ages)));
        }
        std::thread::sleep(Duration::from_millis(200 << attempt));
    }
    Err(Error::Locked(format!(
        "the repository's listing of locks/ does not show the lock {} this process just wrote, \
         so lock ages cannot be judged by the store's clock; run the command again",
        storage.describe(reference)
    )))
}

/// Lock ages by the store's clock (see [`lock_ages`]).
pub struct LockAges(std::collections::BTreeMap<Handle, Duration>);

impl LockAges {
    /// The age of `lock`; one the listing did not show yet was written after it: age zero.
    pub fn of(&self, lock: &Handle) -> Duration {
        self.0.get(lock).copied().unwrap_or_default()
    }
}

/// The error for another process's lock that could not be read (`err`, other than not found).
fn unreadable_lock(storage: &Storage, key: &Handle, err: &Error) -> Error {
    let why = match err {
        Error::Io { err, .. } => err.to_string(),
        Error::Storage { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Error::Locked(format!(
        "cannot read the lock {} of another tvault process ({why}), so cannot tell whether it \
         conflicts: fix access to it and run the command again (if no tvault is running on \
         this repository, `tvault unlock --all` removes it)",
        storage.describe(key)
    ))
}

/// Removes stale locks (every lock with `all`); returns what was removed. Without `all`, a
/// lock that cannot be read (other than gone) is an error, and nothing is removed.
pub fn unlock(storage: &Storage, all: bool) -> Result<Vec<String>> {
    // The store's "now": the time it gives a lock object of ours, shared (so it conflicts with
    // nobody) and removed again at once.
    let now = Utc::now();
    let probe_info = LockInfo::ours(false, "unlock (reading the store's clock)", now);
    let probe = Handle::new(
        ObjectKind::Lock,
        &Id::of(format!("unlock {} {now:?}", std::process::id()).as_bytes()),
    );
    storage.put(
        &probe,
        &serde_json::to_vec(&probe_info).expect("lock serialises"),
    )?;
    let ages = lock_ages(storage, &probe);
    let _ = storage.delete(&probe);
    let ages = ages?;
    let mut found = Vec::new();
    for (key, _) in storage.list(ObjectKind::Lock)? {
        if key == probe {
            continue;
        }
        let info = match storage.get(&key) {
            Ok(bytes) => serde_json::from_slice::<LockInfo>(&bytes).ok(),
            Err(e) if e.is_not_found() => continue, // released while we looked
            Err(_) if all => None,
            Err(e) => return Err(unreadable_lock(storage, &key, &e)),
        };
        found.push((key, info));
    }
    let mut removed = Vec::new();
    for (key, info) in found {
        let description = info
            .as_ref()
            .map(|i| i.describe())
            .unwrap_or_else(|| "an unreadable lock".into());
        let age = ages.as_ref().map(|a| a.of(&key));
        let stale = info.map(|i| i.is_stale(age)).unwrap_or(true);
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

    /// Issue (review): a process stopped (SIGSTOP, a suspended laptop) for longer than others
    /// wait before calling its lock stale went on writing once it ran again: its refresher had
    /// not run, so no refresh had failed. Every write checks the time since the last refresh
    /// that worked, and a refresh that works again later does not give the lease back.
    #[test]
    fn a_lock_not_refreshed_in_time_stops_all_writing_without_a_failed_refresh() {
        let (_, s) = mem();
        // The refresher does not run within `give_up`, as in a stopped process.
        let timings = Timings {
            refresh: Duration::from_millis(1500),
            retry: Duration::from_millis(1500),
            give_up: Duration::from_millis(500),
        };
        let guard =
            LockGuard::acquire_with(s.clone(), false, "backup", Duration::ZERO, &|_| {}, timings)
                .unwrap();
        let pack = Handle::pack(&Id::of(b"a pack"));
        s.put(&pack, b"in time").unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let err = s.put(&pack, b"too late").unwrap_err().to_string();
        assert!(
            err.contains("last refreshed") && err.contains("nothing more is written"),
            "{err}"
        );
        // Past the refresher's first run, which finds the lease lost and does not refresh.
        std::thread::sleep(Duration::from_millis(1000));
        assert!(s.put(&pack, b"after a refresh").is_err());
        assert!(s.delete(&pack).is_err(), "deleting is writing too");
        drop(guard);
    }

    /// Issue (review): when its lock was gone at refresh time (another process removed it as
    /// stale, or `tvault unlock --all`), the refresher wrote it again and the process went on
    /// writing beside whoever removed it. The lease is lost at once; the lock stays gone.
    #[test]
    fn a_lock_removed_by_another_process_is_not_written_again_and_stops_writing() {
        let (b, s) = mem();
        let timings = Timings {
            refresh: Duration::from_millis(20),
            retry: Duration::from_millis(20),
            give_up: Duration::from_secs(60),
        };
        let guard =
            LockGuard::acquire_with(s.clone(), false, "backup", Duration::ZERO, &|_| {}, timings)
                .unwrap();
        let ours = b.list("locks").unwrap();
        assert_eq!(ours.len(), 1);
        b.delete(&ours[0].0).unwrap();
        // The next refresh (within 20 ms, or later on a busy machine) finds it gone.
        let pack = Handle::pack(&Id::of(b"a pack"));
        let started = std::time::Instant::now();
        let err = loop {
            std::thread::sleep(Duration::from_millis(20));
            match s.put(&pack, b"x") {
                Err(e) => break e.to_string(),
                Ok(()) => assert!(started.elapsed() < Duration::from_secs(10), "still writing"),
            }
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            b.list("locks").unwrap().is_empty(),
            "the removed lock was written again"
        );
        assert!(err.contains("removed") && err.contains(&ours[0].0), "{err}");
        drop(guard);
    }

    /// Issue (review): `is_stale` judged every lock of this host name by its PID, also one of
    /// another boot or PID namespace (a container with the same host name), where the PID
    /// means nothing here, and one of an older tvault that did not record them.
    #[test]
    fn only_a_lock_of_this_host_boot_and_pid_namespace_is_judged_by_its_pid() {
        let now = Utc::now();
        let dead = LockInfo {
            host: hostname(),
            pid: u32::MAX - 1,
            exclusive: true,
            command: "prune".into(),
            created: now,
            refreshed: now,
            boot_id: boot_id().cloned(),
            pid_ns: pid_namespace().cloned(),
            pid_start: None,
        };
        if dead.boot_id.is_some() && dead.pid_ns.is_some() {
            assert!(dead.is_stale(None), "{dead:?}");
        }
        let edits: [fn(&mut LockInfo); 5] = [
            |i| i.host = "elsewhere".into(),
            |i| i.boot_id = Some("another boot".into()),
            |i| i.pid_ns = Some("pid:[1]".into()),
            |i| i.boot_id = None,
            |i| i.pid_ns = None,
        ];
        for edit in edits {
            let mut other = dead.clone();
            edit(&mut other);
            assert!(
                !other.is_stale(None),
                "judged by a PID of elsewhere: {other:?}"
            );
            other.refreshed = now - chrono::Duration::minutes(31);
            assert!(
                other.is_stale(None),
                "not refreshed for 31 minutes: {other:?}"
            );
        }
    }

    /// An exclusive lock of a process that no longer exists on this host, not refreshed for
    /// longer than the stale timeout (without boot and PID namespace, its PID proves nothing).
    fn plant_dead_exclusive_lock(b: &dyn Backend) {
        let then = Utc::now() - chrono::Duration::minutes(40);
        let dead = LockInfo {
            host: hostname(),
            pid: u32::MAX - 1, // no such process
            exclusive: true,
            command: "prune".into(),
            created: then,
            refreshed: then,
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

    /// Regression test of 02c48ae: under `hidepid`, other users' processes are missing from
    /// `/proc`, and such a live process was judged dead (its lock removed, its packs pruned).
    /// A missing entry proves death only when PID 1's is visible.
    #[test]
    fn a_process_missing_from_a_proc_that_hides_pid_1_is_not_judged_dead() {
        let proc = tempfile::tempdir().unwrap();
        let stat = |pid: u32, state: &str, started: u64| {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let middle = vec!["0"; 18].join(" ");
            let line = format!("{pid} (a (b) c) {state} {middle} {started} 0 0\n");
            std::fs::write(dir.join("stat"), line).unwrap();
        };
        let gone = |pid, started| process_is_gone_in(proc.path(), pid, started);
        // hidepid: neither PID 1 nor 42 visible, so 42's absence proves nothing.
        assert!(!gone(42, None));
        assert!(!gone(42, Some(7)));
        stat(1, "S", 1);
        assert!(gone(42, None), "PID 1 is visible: 42 is gone");
        stat(42, "S", 100);
        assert!(!gone(42, None) && !gone(42, Some(100)));
        assert!(gone(42, Some(101)), "another process under a reused PID");
        stat(42, "Z", 100);
        assert!(gone(42, Some(100)), "a zombie");
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
