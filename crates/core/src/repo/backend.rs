//! Where repository objects live, below the typed layer (`storage`): opaque objects under
//! `/`-separated keys, with object-store semantics (whole-object put, ranged get, list with
//! sizes, delete; errors classified by [`crate::error::ErrorClass`]). Only `repo/` sees keys.
//!
//! The local directory backend makes each put atomic and durable: the object is written to a
//! temporary file, fsynced, renamed into place, and its folder fsynced ([`StagedPut`] exposes
//! the two halves, so that the crash-test wrapper in `testing` can stop a run between them; the
//! production `put` has no test code). A temporary file's name says who writes it, so that only
//! leftovers of writers that are gone (or old ones) are ever taken for garbage, never a write
//! in flight.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use super::lock;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;

/// Storage for repository objects, addressed by `/`-separated keys such as `data/ab/abcd…`
/// (which `storage` alone formats). Errors say whether the object was not found, whether a
/// retry may help, or neither ([`Error::class`]).
pub trait Backend: Send + Sync {
    /// Stores `data` under `key` as one durable, atomic write (replacing any old object).
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// [`Backend::put`] of bytes the caller gives away (a pack): an object store sends them
    /// without a copy, and a retry shares them, so a pack in flight is in memory once.
    fn put_shared(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        self.put(key, &data)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Exactly `len` bytes from `offset`; a range past the end is an error.
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Keys directly or indirectly below `prefix` (a folder such as `snapshots`) with their
    /// sizes in bytes, sorted by key. Names beginning with `.` (temporary files) are left out.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// Deletes `key`; deleting an object that does not exist is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Temporary objects below `prefix` that are certainly leftovers of interrupted writes,
    /// never one another process may still be writing (only backends that have them).
    fn list_leftovers(&self, _prefix: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Keys below `prefix` with when each was last written by the store's own clock (an object
    /// store's `Last-Modified`, a file's mtime, which a file server sets), sorted by key; `None`
    /// where the store keeps no such time. Lock staleness goes by these, so that a host whose
    /// clock is wrong never makes another's lock look old (see `lock`).
    fn list_times(&self, _prefix: &str) -> Result<Option<Vec<(String, SystemTime)>>> {
        Ok(None)
    }
    /// A human-readable location of `key`, for messages.
    fn describe(&self, key: &str) -> String;
}

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
    modes: Modes,
}

/// Permission bits of what the local backend creates. Private (0700 folders, 0600 files)
/// whatever the umask; group access only where the repository's own directory grants it (its
/// owner shared it with a group on purpose). Others never get access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
}

impl Modes {
    /// The modes for a repository whose root directory has permission bits `root_mode`.
    pub fn for_root(root_mode: u32) -> Modes {
        let group = root_mode & 0o070;
        // With group access, set-group-ID folders keep handing their group to new files.
        let setgid = if group != 0 { root_mode & 0o2000 } else { 0 };
        Modes {
            dir: 0o700 | group | setgid,
            file: 0o600 | (group & 0o060),
        }
    }
}

impl LocalBackend {
    /// A backend for the directory `root`; the group bits of `root` (when it exists) decide
    /// whether what it creates is group-accessible (see [`Modes`]).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        use std::os::unix::fs::PermissionsExt;
        let root = root.into();
        let root_mode = fs::metadata(&root)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o700);
        LocalBackend {
            root,
            modes: Modes::for_root(root_mode),
        }
    }

    pub fn modes(&self) -> Modes {
        self.modes
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The files below `prefix` (temporary files left out) with their metadata, sorted by key.
    fn walk(&self, prefix: &str) -> Result<Vec<(String, fs::Metadata)>> {
        let dir = self.path(prefix);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).min_depth(1) {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&dir).to_path_buf();
                Error::io(path, e.into())
            })?;
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file() && !name.starts_with('.') {
                let rel = entry.path().strip_prefix(&self.root).expect("below root");
                // A file deleted since the directory was read is not listed.
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e)
                        if e.io_error().map(|e| e.kind()) == Some(std::io::ErrorKind::NotFound) =>
                    {
                        continue
                    }
                    Err(e) => return Err(Error::io(entry.path(), e.into())),
                };
                out.push((rel.to_string_lossy().into_owned(), meta));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Temporary files of writes in progress (or interrupted) start with this.
pub const TMP_PREFIX: &str = ".tmp-";

/// A temporary file not modified for this long is a leftover, whoever wrote it: a put writes
/// its temporary file in one go and renames it, long before that.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Names this machine's boot and our PID namespace in temporary file names, so that one of a
/// process that is gone can be told from one being written (see `tmp_name`). None when `/proc`
/// does not tell both.
fn writer_origin() -> Option<&'static str> {
    static ORIGIN: OnceLock<Option<String>> = OnceLock::new();
    ORIGIN
        .get_or_init(|| {
            let (boot, ns) = (lock::boot_id()?, lock::pid_namespace()?);
            let seed = format!("{}\n{boot}\n{ns}", lock::hostname());
            Some(Id::of(seed.as_bytes()).to_hex()[..16].to_string())
        })
        .as_deref()
}

/// `.tmp-PID@ORIGIN-N-NAME` (`.tmp-PID-N-NAME` where the origin is unknown, as older tvaults
/// named them all): PID and origin tell who is writing it.
fn tmp_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let writer = match writer_origin() {
        Some(origin) => format!("{}@{origin}", std::process::id()),
        None => std::process::id().to_string(),
    };
    path.with_file_name(format!("{TMP_PREFIX}{writer}-{n}-{name}"))
}

/// Whether the temporary file `name`, last written at `modified`, is certainly not being
/// written: older than [`LEFTOVER_AGE`], or written by a process of this machine, boot and PID
/// namespace that is gone. Another host's, or one of an unknown writer, waits for its age.
fn is_leftover(name: &str, modified: std::time::SystemTime) -> bool {
    let old = std::time::SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age > LEFTOVER_AGE);
    let writer_gone = || {
        let writer = name.strip_prefix(TMP_PREFIX)?.split('-').next()?;
        let (pid, origin) = writer.split_once('@')?;
        let pid: u32 = pid.parse().ok()?;
        Some(Some(origin) == writer_origin() && lock::process_is_gone(pid, None))
    };
    old || writer_gone() == Some(true)
}

impl LocalBackend {
    /// Creates `dir` and its missing parents below the root with the repository's folder mode.
    fn create_dirs(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mut missing = Vec::new();
        let mut at = dir;
        while !at.is_dir() && at != self.root {
            missing.push(at);
            match at.parent() {
                Some(p) => at = p,
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            match fs::DirBuilder::new().mode(self.modes.dir).create(d) {
                Ok(()) => {
                    fs::set_permissions(d, fs::Permissions::from_mode(self.modes.dir)).at(d)?
                }
                // Another writer made it first.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(d, e)),
            }
        }
        Ok(())
    }
}

/// A put in two steps, for backends where an object becomes visible in a step of its own:
/// [`StagedPut::stage`] makes it durable under a temporary name, [`StagedPut::publish`] makes it
/// visible under its key. `put` is both, back to back; the crash-test wrapper
/// (`testing::CrashAfter`) counts each as a write step and may stop the process between them.
pub trait StagedPut: Backend {
    type Staged;
    fn stage(&self, key: &str, data: &[u8]) -> Result<Self::Staged>;
    fn publish(&self, staged: Self::Staged) -> Result<()>;
}

/// A local object written and fsynced under its temporary name, not yet renamed.
pub struct StagedFile {
    tmp: PathBuf,
    path: PathBuf,
}

impl StagedPut for LocalBackend {
    type Staged = StagedFile;

    fn stage(&self, key: &str, data: &[u8]) -> Result<StagedFile> {
        let path = self.path(key);
        let dir = path.parent().expect("keys have a folder");
        if !dir.is_dir() {
            self.create_dirs(dir)?;
            sync_dir(dir.parent().unwrap_or(dir))?;
        }
        let tmp = tmp_name(&path);
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(self.modes.file)
                .open(&tmp)?;
            // The umask may have taken bits the repository grants; set them exactly.
            f.set_permissions(fs::Permissions::from_mode(self.modes.file))?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        Ok(StagedFile { tmp, path })
    }

    fn publish(&self, staged: StagedFile) -> Result<()> {
        let StagedFile { tmp, path } = staged;
        fs::rename(&tmp, &path).at(&path)?;
        sync_dir(path.parent().expect("keys have a folder"))
    }
}

impl Backend for LocalBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let staged = self.stage(key, data)?;
        self.publish(staged)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        fs::read(&path).at(&path)
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path(key);
        let f = File::open(&path).at(&path)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).at(&path)?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .walk(prefix)?
            .into_iter()
            .map(|(key, meta)| (key, meta.len()))
            .collect())
    }

    fn list_times(&self, prefix: &str) -> Result<Option<Vec<(String, SystemTime)>>> {
        let mut out = Vec::new();
        for (key, meta) in self.walk(prefix)? {
            out.push((key.clone(), meta.modified().at(self.path(&key))?));
        }
        Ok(Some(out))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("keys have a folder")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn list_leftovers(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.path(prefix);
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&dir)
            .min_depth(1)
            .into_iter()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy();
            if !entry.file_type().is_file() || !name.starts_with(TMP_PREFIX) {
                continue;
            }
            // A file renamed or deleted meanwhile has no metadata: not ours to delete.
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            if modified.is_some_and(|m| is_leftover(&name, m)) {
                let rel = entry.path().strip_prefix(&self.root).expect("below root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
}

/// An in-memory backend for tests.
#[derive(Default)]
pub struct MemBackend {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Backend for MemBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), data.to_vec());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::io(key, std::io::Error::from(std::io::ErrorKind::NotFound)))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let all = self.get(key)?;
        let mut cursor = std::io::Cursor::new(all);
        cursor.seek(SeekFrom::Start(offset)).at(key)?;
        let mut buf = vec![0u8; len];
        cursor.read_exact(&mut buf).at(key)?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = format!("{prefix}/");
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    fn describe(&self, key: &str) -> String {
        format!("mem:{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(b: &dyn Backend) {
        b.put("data/ab/x", b"hello world").unwrap();
        b.put("snapshots/s1", b"{}").unwrap();
        assert_eq!(b.get("data/ab/x").unwrap(), b"hello world");
        assert_eq!(b.get_range("data/ab/x", 6, 5).unwrap(), b"world");
        assert!(b.get_range("data/ab/x", 8, 5).is_err());
        assert_eq!(b.list("data").unwrap(), vec![("data/ab/x".to_string(), 11)]);
        assert!(b.get("data/ab/y").unwrap_err().is_not_found());
        b.delete("data/ab/x").unwrap();
        assert!(b.get("data/ab/x").unwrap_err().is_not_found());
        b.delete("data/ab/x").unwrap();
        assert!(b.list("data").unwrap().is_empty());
    }

    #[test]
    fn local_backend_behaves_like_an_object_store() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        exercise(&b);
        // No temporary files are left behind by a successful put.
        let leftovers: Vec<_> = walkdir::WalkDir::new(dir.path())
            .min_depth(1)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn mem_backend_behaves_like_an_object_store() {
        exercise(&MemBackend::default());
    }
}
