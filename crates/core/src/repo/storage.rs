//! The typed storage layer: the only door between `Repository` and a [`Backend`]. Objects are
//! addressed by kind and name ([`Handle`]: the hex of an ID for everything tvault writes), and
//! this file alone knows how that maps to a backend key (`data/XX/<id>`, `index/<id>`, …, as
//! `FORMAT.md` specifies). Listings come with sizes; errors keep the backend's classification
//! (not found, transient, permanent: [`crate::error::ErrorClass`]).
//!
//! In an encrypted repository this is also where objects are sealed and opened: index files,
//! snapshot manifests, locks and repair records are sealed whole on `put` and opened on `get`,
//! their associated data binding each to its key (kind and name), so an object moved or
//! swapped under another name does not authenticate. Packs pass through sealed by the pack
//! writer (blob by blob); `config` and key slots stay plain.
//!
//! Reads of several ranges of one object are planned here too ([`plan_reads`]): neighbouring
//! ranges are merged into one ranged read, reading small gaps through, so that restore, prune
//! and repair make one request per stretch of a pack rather than one per chunk.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::backend::Backend;
use super::crypto::Crypto;
use crate::error::{Error, Result};
use crate::id::{Id, Ids};

/// What an object is; each kind has a folder of its own (`config` is a single object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Config,
    /// Key slots of an encrypted repository (`keys/`).
    Key,
    Index,
    Snapshot,
    Pack,
    Lock,
    /// Records of `repair packs`.
    Repair,
}

impl ObjectKind {
    /// The folder (the key, for `Config`) of this kind's objects.
    pub fn folder(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Key => "keys",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Pack => "data",
            ObjectKind::Lock => "locks",
            ObjectKind::Repair => "repair",
        }
    }

    /// Whether objects of this kind are sealed whole in an encrypted repository (packs are
    /// sealed blob by blob by the pack writer; config and key slots stay plain).
    fn sealed_whole(self) -> bool {
        !matches!(
            self,
            ObjectKind::Config | ObjectKind::Key | ObjectKind::Pack
        )
    }

    /// The kind whose folder `key` is in.
    pub(crate) fn of_key(key: &str) -> Option<ObjectKind> {
        let folder = key.split('/').next()?;
        [
            ObjectKind::Config,
            ObjectKind::Key,
            ObjectKind::Index,
            ObjectKind::Snapshot,
            ObjectKind::Pack,
            ObjectKind::Lock,
            ObjectKind::Repair,
        ]
        .into_iter()
        .find(|k| k.folder() == folder)
    }
}

/// One object: its kind and its name in that kind's folder. Objects tvault writes are named by
/// an ID; a listing may also find other names (damage, foreign files), which keep their key so
/// that they can be reported and deleted. Displays as the object's key (`data/ab/ab12…`), the
/// name reports use.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    kind: ObjectKind,
    /// The backend key: the layout of `FORMAT.md` ("Files").
    key: String,
}

impl Handle {
    pub fn new(kind: ObjectKind, id: &Id) -> Handle {
        let hex = id.to_hex();
        let key = match kind {
            ObjectKind::Config => "config".to_string(),
            // Packs are spread over 256 folders by the first two hex digits of their ID.
            ObjectKind::Pack => format!("data/{}/{hex}", &hex[..2]),
            kind => format!("{}/{hex}", kind.folder()),
        };
        Handle { kind, key }
    }

    pub fn pack(id: &Id) -> Handle {
        Handle::new(ObjectKind::Pack, id)
    }

    fn config() -> Handle {
        Handle {
            kind: ObjectKind::Config,
            key: "config".to_string(),
        }
    }

    pub fn kind(&self) -> ObjectKind {
        self.kind
    }

    /// The ID the object is named by, if its name is one.
    pub fn id(&self) -> Option<Id> {
        Id::from_hex(self.key.rsplit('/').next().unwrap_or(&self.key))
    }

    fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// The key of pack `id` (`data/XX/<id>`), as messages and reports name it.
pub fn pack_key(id: &Id) -> String {
    Handle::pack(id).key
}

/// Typed access to a backend: objects by [`Handle`], never by key. Cheap to clone (clones
/// share the backend and the lease).
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    lease: Arc<Lease>,
    /// The master key's crypto, in an encrypted repository.
    crypto: Option<Arc<Crypto>>,
}

/// Associated data of an object sealed whole: its key (kind and name).
pub(crate) fn object_aad(key: &str) -> Vec<u8> {
    format!("tvault object\0{key}").into_bytes()
}

/// Whether this process may still write. Lost when its lock could not be refreshed for so
/// long that another tvault may soon call it stale, when the lock was found removed, or when
/// a write finds that the last refresh that worked is older than the safe window (the process
/// was stopped or the machine suspended, so the refresher did not run) (see `lock.rs`). Once
/// lost, it stays lost, and nothing but lock objects is written or deleted any more.
#[derive(Default)]
pub struct Lease {
    state: std::sync::Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    lost: Option<String>,
    held: Option<Held>,
}

/// A lock this process holds (one object, however many guards hold it).
struct Held {
    key: String,
    guards: usize,
    /// When the last refresh that worked started.
    last_ok: Stamp,
    /// How long the lock may go without a refresh that works.
    window: Duration,
    /// Why the refreshes since then failed, if they did.
    failing: Option<String>,
}

/// A moment on two clocks. `Instant` (CLOCK_MONOTONIC on Linux) does not advance while the
/// machine is suspended; the wall clock does, and it is the clock other hosts judge a lock's
/// `refreshed` time by, but it can be set back. The time since a stamp is the larger of the two,
/// so neither a suspend nor a clock set back hides a gap. (CLOCK_BOOTTIME would count a
/// suspend too, but only on Linux, and says nothing about the clock others judge by.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    mono: Instant,
    wall: SystemTime,
}

impl Stamp {
    pub(crate) fn now() -> Stamp {
        Stamp {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The time from `self` to `later`: the larger of what either clock says.
    pub(crate) fn until(&self, later: &Stamp) -> Duration {
        let mono = later.mono.saturating_duration_since(self.mono);
        let wall = later.wall.duration_since(self.wall).unwrap_or_default();
        mono.max(wall)
    }
}

impl Lease {
    pub fn lose(&self, why: String) {
        self.state.lock().expect("lease").lost.get_or_insert(why);
    }

    /// Lock `lock` is held, refreshed now; the lease is lost once it goes `window` without a
    /// refresh that works ([`Lease::refreshed`]).
    pub(crate) fn hold(&self, lock: &Handle, window: Duration) {
        let mut state = self.state.lock().expect("lease");
        match state.held.as_mut() {
            Some(held) => {
                held.guards += 1;
                held.window = held.window.min(window);
            }
            None => {
                state.held = Some(Held {
                    key: lock.key.clone(),
                    guards: 1,
                    last_ok: Stamp::now(),
                    window,
                    failing: None,
                })
            }
        }
    }

    /// A lock guard let its lock go.
    pub(crate) fn release(&self) {
        let mut state = self.state.lock().expect("lease");
        if let Some(held) = state.held.as_mut() {
            held.guards -= 1;
            if held.guards == 0 {
                state.held = None;
            }
        }
    }

    /// A refresh that started at `at` worked. Too late to keep a lease that has already gone
    /// its window without one: others may have called the lock stale meanwhile.
    pub(crate) fn refreshed(&self, at: Stamp) {
        let mut state = self.state.lock().expect("lease");
        if !state.expired() {
            if let Some(held) = state.held.as_mut() {
                held.last_ok = at;
                held.failing = None;
            }
        }
    }

    /// A refresh failed with `err` (the lease is lost once they fail for the whole window).
    pub(crate) fn refresh_failed(&self, err: &crate::error::Error) {
        let mut state = self.state.lock().expect("lease");
        if let Some(held) = state.held.as_mut() {
            held.failing = Some(err.to_string());
        }
        state.expired();
    }

    /// Whether the lease is lost (checking the time since the last refresh first).
    pub(crate) fn is_lost(&self) -> bool {
        self.state.lock().expect("lease").expired()
    }

    fn check(&self, object: &Handle) -> Result<()> {
        self.check_key(object.key(), object.kind == ObjectKind::Lock)
    }

    /// Whether `key` may be written (or deleted); a process's own lock always may.
    fn check_key(&self, key: &str, own_lock: bool) -> Result<()> {
        let mut state = self.state.lock().expect("lease");
        match state.expired() {
            true if !own_lock => Err(crate::error::Error::Invalid(format!(
                "stopped before writing {key}: {}",
                state.lost.as_deref().unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }
}

impl LeaseState {
    /// Whether the lease is lost; loses it if the last refresh that worked is too old.
    fn expired(&mut self) -> bool {
        if self.lost.is_none() {
            if let Some(held) = &self.held {
                let since = held.last_ok.until(&Stamp::now());
                if since >= held.window {
                    let (key, since) = (&held.key, crate::ops::describe_duration(since));
                    let what = match &held.failing {
                        Some(e) => format!("could not be refreshed for {since} (last error: {e})"),
                        None => format!(
                            "was last refreshed {since} ago, more than the {} it may go \
                             without (was the process stopped, or the machine suspended?)",
                            crate::ops::describe_duration(held.window)
                        ),
                    };
                    self.lost = Some(format!(
                        "this tvault's lock {key} {what}; other tvault processes may soon call \
                         it stale, so nothing more is written: run the command again"
                    ));
                }
            }
        }
        self.lost.is_some()
    }
}

impl Storage {
    pub fn new(backend: Arc<dyn Backend>) -> Storage {
        Storage {
            backend,
            lease: Arc::default(),
            crypto: None,
        }
    }

    /// This storage sealing and opening objects with `crypto`.
    pub fn encrypted(mut self, crypto: Arc<Crypto>) -> Storage {
        self.crypto = Some(crypto);
        self
    }

    /// The same storage (encryption and lease) over another backend (a wrapper of this one).
    pub fn with_backend(&self, backend: Arc<dyn Backend>) -> Storage {
        Storage {
            backend,
            ..self.clone()
        }
    }

    pub fn crypto(&self) -> Option<&Arc<Crypto>> {
        self.crypto.as_ref()
    }

    /// How content is named: keyed BLAKE3 in an encrypted repository, else BLAKE3.
    pub fn ids(&self) -> Ids {
        self.crypto.as_ref().map_or(Ids::PLAIN, |c| c.ids())
    }

    /// The lease every clone of this storage checks before it writes.
    pub fn lease(&self) -> Arc<Lease> {
        self.lease.clone()
    }

    pub fn put(&self, object: &Handle, data: &[u8]) -> Result<()> {
        self.lease.check(object)?;
        match &self.crypto {
            Some(c) if object.kind.sealed_whole() => {
                let sealed = c.seal(&object_aad(object.key()), data);
                self.backend.put(object.key(), &sealed)
            }
            _ => self.backend.put(object.key(), data),
        }
    }

    /// [`Storage::put`] of bytes given away (see [`Backend::put_shared`]); objects sealed whole
    /// go through [`Storage::put`].
    pub fn put_shared(&self, object: &Handle, data: bytes::Bytes) -> Result<()> {
        if self.crypto.is_some() && object.kind.sealed_whole() {
            return self.put(object, &data);
        }
        self.lease.check(object)?;
        self.backend.put_shared(object.key(), data)
    }

    /// An object's (plain) bytes. In an encrypted repository an object that does not
    /// authenticate (damaged, truncated, moved from another name, another repository's) is
    /// [`Error::Corrupt`] naming it.
    pub fn get(&self, object: &Handle) -> Result<Vec<u8>> {
        let bytes = self.backend.get(object.key())?;
        match &self.crypto {
            Some(c) if object.kind.sealed_whole() => {
                c.open(&object_aad(object.key()), &bytes).map_err(|_| {
                    Error::corrupt(
                        object.key(),
                        "it does not authenticate: damaged, truncated, or not this \
                         repository's object under this name",
                    )
                })
            }
            _ => Ok(bytes),
        }
    }

    pub fn get_range(&self, object: &Handle, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.backend.get_range(object.key(), offset, len)
    }

    pub fn delete(&self, object: &Handle) -> Result<()> {
        self.lease.check(object)?;
        self.backend.delete(object.key())
    }

    /// Every object of `kind` with its size, sorted by key.
    pub fn list(&self, kind: ObjectKind) -> Result<Vec<(Handle, u64)>> {
        Ok(self
            .backend
            .list(kind.folder())?
            .into_iter()
            .map(|(key, size)| (Handle { kind, key }, size))
            .collect())
    }

    /// When each object of `kind` was last written, by the store's clock
    /// ([`Backend::list_times`]); `None` where the store keeps no such time.
    pub fn list_times(
        &self,
        kind: ObjectKind,
    ) -> Result<Option<Vec<(Handle, std::time::SystemTime)>>> {
        Ok(self.backend.list_times(kind.folder())?.map(|listed| {
            listed
                .into_iter()
                .map(|(key, time)| (Handle { kind, key }, time))
                .collect()
        }))
    }

    pub fn get_config(&self) -> Result<Vec<u8>> {
        self.get(&Handle::config())
    }

    pub fn put_config(&self, data: &[u8]) -> Result<()> {
        self.put(&Handle::config(), data)
    }

    /// Stores `data` under its own hash (keyed in an encrypted repository: [`Storage::ids`])
    /// as an object of `kind`; its handle.
    pub fn put_hashed(&self, kind: ObjectKind, data: &[u8]) -> Result<Handle> {
        let object = Handle::new(kind, &self.ids().of(data));
        self.put(&object, data)?;
        Ok(object)
    }

    /// Temporary objects that are certainly leftovers of interrupted writes (see
    /// [`Backend::list_leftovers`]), by their backend names.
    pub fn leftovers(&self) -> Result<Vec<String>> {
        self.backend.list_leftovers("")
    }

    /// Deletes a leftover [`Storage::leftovers`] returned (never one, lock or not, once the
    /// lease is lost: it is no lock of this process).
    pub fn delete_leftover(&self, name: &str) -> Result<()> {
        self.lease.check_key(name, false)?;
        self.backend.delete(name)
    }

    /// Where `object` is, for messages (a path for the local backend).
    pub fn describe(&self, object: &Handle) -> String {
        self.backend.describe(object.key())
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

/// Ranges closer than this are read as one, the gap read through: one request costs more than
/// reading this much more (on a disk, and far more so on an object store).
pub const READ_GAP: u64 = 64 << 10;
/// A merged read stops growing at this size, which bounds the memory of the reads in flight
/// and leaves enough reads to spread over every core. A single longer range is read whole.
pub const READ_MAX: u64 = 8 << 20;

/// One ranged read of an object, covering some of the ranges asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRead {
    /// Bytes of the object to read.
    pub span: Range<u64>,
    /// The ranges it serves: (position in the request, range relative to `span.start`).
    pub parts: Vec<(usize, Range<usize>)>,
}

/// Plans the reads of `ranges` of one object: sorted by offset, a range that starts at most
/// `gap` bytes after the previous read's end joins it while the read stays within `max` bytes.
/// Overlapping and repeated ranges are served by the same read.
pub fn plan_reads(ranges: &[Range<u64>], gap: u64, max: u64) -> Vec<PlannedRead> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| (ranges[i].start, ranges[i].end));
    let mut reads: Vec<PlannedRead> = Vec::new();
    for i in order {
        let r = &ranges[i];
        let joins = reads.last().is_some_and(|read| {
            r.start <= read.span.end.saturating_add(gap)
                && r.end.max(read.span.end) - read.span.start <= max
        });
        if !joins {
            reads.push(PlannedRead {
                span: r.clone(),
                parts: Vec::new(),
            });
        }
        let read = reads.last_mut().expect("just pushed");
        read.span.end = read.span.end.max(r.end);
        let at = (r.start - read.span.start) as usize;
        read.parts.push((i, at..at + (r.end - r.start) as usize));
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MemBackend;

    #[test]
    fn keys_follow_the_format() {
        let id = Id::of(b"x");
        let hex = id.to_hex();
        assert_eq!(pack_key(&id), format!("data/{}/{hex}", &hex[..2]));
        let cases = [
            (ObjectKind::Index, "index"),
            (ObjectKind::Snapshot, "snapshots"),
            (ObjectKind::Lock, "locks"),
            (ObjectKind::Repair, "repair"),
            (ObjectKind::Key, "keys"),
        ];
        for (kind, folder) in cases {
            assert_eq!(
                Handle::new(kind, &id).to_string(),
                format!("{folder}/{hex}")
            );
            assert_eq!(ObjectKind::of_key(&format!("{folder}/{hex}")), Some(kind));
        }
        assert_eq!(Handle::config().to_string(), "config");
    }

    #[test]
    fn listings_give_handles_with_sizes_and_keep_foreign_names() {
        let s = Storage::new(Arc::new(MemBackend::default()));
        let pack = s.put_hashed(ObjectKind::Pack, b"pack bytes").unwrap();
        s.backend().put("data/zz/not-an-id", b"???").unwrap();
        let listed = s.list(ObjectKind::Pack).unwrap();
        assert!(listed.contains(&(pack.clone(), 10)));
        let stray = listed.iter().find(|(h, _)| h.id().is_none()).unwrap();
        assert_eq!(stray.0.to_string(), "data/zz/not-an-id");
        assert_eq!(s.get_range(&pack, 5, 5).unwrap(), b"bytes");
        assert!(s
            .get(&Handle::pack(&Id::of(b"no")))
            .unwrap_err()
            .is_not_found());
        s.delete(&pack).unwrap();
        assert_eq!(s.list(ObjectKind::Pack).unwrap().len(), 1);
    }

    /// Issue (review): `delete_leftover` skipped the lease check of every other write, so a
    /// process whose lock others may already call stale still deleted temporary objects.
    /// (A unit test: the binary loses its lease only after 15 minutes without a refresh.)
    #[test]
    fn a_process_whose_lease_is_lost_deletes_no_leftover() {
        let s = Storage::new(Arc::new(MemBackend::default()));
        let leftover = "data/ab/.tmp-1-0-abcd";
        s.backend().put(leftover, b"partial").unwrap();
        s.lease().lose("the lock was lost".into());
        let err = s.delete_leftover(leftover).unwrap_err().to_string();
        assert!(
            err.contains(leftover) && err.contains("the lock was lost"),
            "{err}"
        );
        assert_eq!(s.backend().get(leftover).unwrap(), b"partial");
    }

    /// The lease's clock: a suspend stops the monotonic clock but not the wall clock, and the
    /// wall clock may be set back; the time since a refresh misses neither gap.
    #[test]
    fn the_time_since_a_refresh_counts_a_suspend_and_survives_a_clock_set_back() {
        let then = Stamp::now();
        let mut later = then;
        later.wall += Duration::from_secs(20 * 60);
        assert_eq!(
            then.until(&later),
            Duration::from_secs(20 * 60),
            "suspended"
        );
        let mut later = then;
        later.mono += Duration::from_secs(60);
        later.wall -= Duration::from_secs(3600);
        assert_eq!(
            then.until(&later),
            Duration::from_secs(60),
            "clock set back"
        );
    }

    #[test]
    fn neighbouring_ranges_are_read_together() {
        let k = 1024;
        // Out of order, a small gap, a repeat, a far one, one past the size bound.
        let ranges = [
            10 * k..20 * k,
            0..10 * k,
            30 * k..40 * k,
            0..10 * k,
            500 * k..510 * k,
            510 * k..600 * k,
        ];
        let reads = plan_reads(&ranges, 64 * k, 100 * k);
        let spans: Vec<_> = reads.iter().map(|r| r.span.clone()).collect();
        assert_eq!(spans, [0..40 * k, 500 * k..600 * k]);
        let mut served: Vec<usize> = reads
            .iter()
            .flat_map(|r| r.parts.iter().map(|p| p.0))
            .collect();
        served.sort();
        assert_eq!(served, [0, 1, 2, 3, 4, 5], "every range is served once");
        assert_eq!(
            reads[0].parts.last().unwrap().1,
            (30 * k) as usize..(40 * k) as usize
        );
        // The size bound splits a run; a single long range stays whole.
        let reads = plan_reads(&[0..60 * k, 60 * k..120 * k, 120 * k..400 * k], 0, 100 * k);
        let spans: Vec<_> = reads.iter().map(|r| r.span.clone()).collect();
        assert_eq!(spans, [0..60 * k, 60 * k..120 * k, 120 * k..400 * k]);
        assert!(plan_reads(&[], READ_GAP, READ_MAX).is_empty());
    }
}
