//! A local cache of what a remote repository holds that is small, immutable and read by every
//! command: index files and snapshot manifests (objects named by the BLAKE3 of their bytes) and
//! trees (blobs named by the BLAKE3 of their plain bytes). `snapshots`, an incremental backup,
//! `diff` and `show` then download nothing they already have; key slots of an encrypted
//! repository too (checked to parse; only a slot's password opens it). Every entry is checked
//! against its name each time it is used: a damaged or foreign entry is fetched again, never
//! trusted.
//!
//! One folder per repository ID below `$XDG_CACHE_HOME/tvault` (else `~/.cache/tvault`),
//! private (0700 folders, 0600 files); deleting it is always safe. The cache of an encrypted
//! repository holds only sealed bytes: index files and manifests as the repository holds them,
//! trees sealed with the repository's key; an entry is used only once it authenticates and
//! re-hashes (keyed) to its name. Writing to the cache is best
//! effort: a full or read-only cache disk never fails a command.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::crypto::Crypto;
use super::storage::object_aad;
use super::Backend;
use crate::error::Result;
use crate::id::Id;

/// The default cache root: `$XDG_CACHE_HOME/tvault`, else `~/.cache/tvault`.
pub fn default_root() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tvault"))
}

/// The cache of one repository.
#[derive(Clone)]
pub struct Cache {
    dir: PathBuf,
    /// Set for an encrypted repository: entries are sealed.
    crypto: Option<Arc<Crypto>>,
}

/// What the cache holds: folder names below the repository's cache folder.
const INDEX: &str = "index";
const SNAPSHOTS: &str = "snapshots";
const TREES: &str = "trees";
/// Key slots of an encrypted repository: plain JSON, each opened only by its password (a
/// damaged one fails that), read at every open. Only slots the repository still lists are
/// read, so a removed key is not used from the cache.
const KEYS: &str = "keys";

impl Cache {
    /// The cache of the repository `id` below `root`.
    pub fn new(root: &Path, id: &Id) -> Cache {
        Cache {
            dir: root.join(id.to_hex()),
            crypto: None,
        }
    }

    /// The cache of an encrypted repository: it keeps and accepts sealed entries only.
    pub fn encrypted(mut self, crypto: Arc<Crypto>) -> Cache {
        self.crypto = Some(crypto);
        self
    }

    /// Whether `bytes` are a sound entry named `id` (for trees: their plain bytes, if so).
    fn check(&self, kind: &str, id: &Id, bytes: &[u8]) -> Option<Vec<u8>> {
        if kind == KEYS {
            let slot = super::crypto::KeySlot::from_bytes(KEYS, bytes);
            return slot.is_ok().then(|| bytes.to_vec());
        }
        let Some(c) = &self.crypto else {
            return (Id::of(bytes) == *id).then(|| bytes.to_vec());
        };
        let plain = c.open(&entry_aad(kind, id), bytes).ok()?;
        (c.ids().of(&plain) == *id).then_some(plain)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, kind: &str, id: &Id) -> PathBuf {
        self.dir.join(kind).join(id.to_hex())
    }

    /// The cached bytes named `id`, if present and their hash is `id`; a damaged entry is
    /// removed.
    fn get(&self, kind: &str, id: &Id) -> Option<Vec<u8>> {
        let path = self.path(kind, id);
        let bytes = fs::read(&path).ok()?;
        if self.check(kind, id, &bytes).is_some() {
            return Some(bytes);
        }
        let _ = fs::remove_file(&path);
        None
    }

    /// Keeps `bytes` under `id` (only when they are a sound entry: [`Cache::check`]). Best
    /// effort.
    fn put(&self, kind: &str, id: &Id, bytes: &[u8]) {
        if self.check(kind, id, bytes).is_none() {
            return;
        }
        let path = self.path(kind, id);
        let Some(dir) = path.parent() else { return };
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), id.to_hex()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes));
        if written.is_ok() && fs::rename(&tmp, &path).is_ok() {
            return;
        }
        let _ = fs::remove_file(&tmp);
    }

    fn remove(&self, kind: &str, id: &Id) {
        let _ = fs::remove_file(self.path(kind, id));
    }

    /// A tree's plain bytes, if cached and sound.
    pub fn tree(&self, id: &Id) -> Option<Vec<u8>> {
        let bytes = self.get(TREES, id)?;
        self.check(TREES, id, &bytes)
    }

    pub fn keep_tree(&self, id: &Id, plain: &[u8]) {
        match &self.crypto {
            Some(c) => self.put(TREES, id, &c.seal(&entry_aad(TREES, id), plain)),
            None => self.put(TREES, id, plain),
        }
    }
}

/// Associated data of a sealed entry: that of the repository object it copies (index files,
/// manifests), or for a tree its own.
fn entry_aad(kind: &str, id: &Id) -> Vec<u8> {
    match kind {
        TREES => format!("tvault cached tree\0{id}").into_bytes(),
        folder => object_aad(&format!("{folder}/{id}")),
    }
}

/// Which cached kind an object key belongs to, and the ID its name gives.
fn cached(key: &str) -> Option<(&'static str, Id)> {
    let (folder, name) = key.split_once('/')?;
    let kind = match folder {
        "index" => INDEX,
        "snapshots" => SNAPSHOTS,
        "keys" => KEYS,
        _ => return None,
    };
    Some((kind, Id::from_hex(name)?))
}

/// A backend whose index files, snapshot manifests and key slots are read through a [`Cache`].
pub struct Cached {
    inner: Arc<dyn Backend>,
    cache: Cache,
}

impl Cached {
    pub fn new(inner: Arc<dyn Backend>, cache: Cache) -> Cached {
        Cached { inner, cache }
    }
}

impl Backend for Cached {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.put(key, data)?;
        if let Some((kind, id)) = cached(key) {
            self.cache.put(kind, &id, data);
        }
        Ok(())
    }

    fn put_shared(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        if cached(key).is_some() {
            return self.put(key, &data);
        }
        self.inner.put_shared(key, data)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        if let Some((kind, id)) = cached(key) {
            if let Some(bytes) = self.cache.get(kind, &id) {
                return Ok(bytes);
            }
            let bytes = self.inner.get(key)?;
            self.cache.put(kind, &id, &bytes);
            return Ok(bytes);
        }
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)?;
        if let Some((kind, id)) = cached(key) {
            self.cache.remove(kind, &id);
        }
        Ok(())
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
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::ops::backup::{self, BackupOptions};
    use crate::progress::NoProgress;
    use crate::repo::{MemBackend, Repository};

    /// Counts the reads of each folder that reach the "network".
    #[derive(Default)]
    struct Counting {
        inner: MemBackend,
        gets: Mutex<BTreeMap<String, u64>>,
    }

    impl Counting {
        fn gets(&self, folder: &str) -> u64 {
            self.gets.lock().unwrap().get(folder).copied().unwrap_or(0)
        }
    }

    impl Backend for Counting {
        fn put(&self, key: &str, data: &[u8]) -> Result<()> {
            self.inner.put(key, data)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            let folder = key.split('/').next().unwrap_or_default().to_string();
            *self.gets.lock().unwrap().entry(folder).or_default() += 1;
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
            let folder = key.split('/').next().unwrap_or_default().to_string();
            *self.gets.lock().unwrap().entry(folder).or_default() += 1;
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

    /// Issue 11.4: listing snapshots and reading their trees a second time downloads nothing;
    /// a damaged cache entry is fetched again, never used.
    #[test]
    fn a_second_look_at_the_snapshots_downloads_nothing_and_damage_is_refetched() {
        second_look(None);
    }

    /// The same with encryption, and the cache holds no plain byte of what it caches.
    #[test]
    fn an_encrypted_repository_is_cached_sealed() {
        std::env::set_var(crate::repo::crypto::FAST_KDF_ENV, "1");
        let (cache, _root) = second_look(Some(b"pw"));
        for entry in walkdir::WalkDir::new(cache.dir()) {
            let entry = entry.unwrap();
            if entry.file_type().is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                for needle in [&b"layers"[..], b"config.json", b"weights.bin"] {
                    let found = bytes.windows(needle.len()).any(|w| w == needle);
                    assert!(!found, "{} holds {needle:?}", entry.path().display());
                }
            }
        }
    }

    /// The cache, and its root (removed when dropped).
    fn second_look(password: Option<&'static [u8]>) -> (Cache, tempfile::TempDir) {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("config.json"), b"{\"layers\": 2}").unwrap();
        std::fs::write(src.path().join("weights.bin"), vec![7u8; 300_000]).unwrap();
        let cache_root = tempfile::tempdir().unwrap();
        let net = Arc::new(Counting::default());
        let mut repo = Repository::init_backend(net.clone(), "mem".into(), password).unwrap();
        let pw = move || Ok(password.unwrap_or_default().to_vec());
        let opts = BackupOptions::new(vec![src.path().to_path_buf()]);
        backup::run(&mut repo, &opts, &NoProgress).unwrap();

        let look = || {
            let repo = Repository::open_cached(
                net.clone(),
                "mem".into(),
                Some(cache_root.path()),
                Some(&pw),
            )
            .unwrap();
            for (_, snap) in repo.snapshots().unwrap() {
                repo.load_tree(&snap.tree).unwrap();
            }
            repo
        };
        let repo = look();
        let first = (net.gets("index"), net.gets("snapshots"), net.gets("data"));
        assert!(first.0 > 0 && first.1 > 0 && first.2 > 0, "{first:?}");
        look();
        let second = (net.gets("index"), net.gets("snapshots"), net.gets("data"));
        assert_eq!(first, second, "the second look downloaded again");

        // A damaged entry is not trusted: it is fetched again and replaced.
        let cache = repo.disk_cache.clone().unwrap();
        let snapshots = cache.dir().join(SNAPSHOTS);
        for entry in std::fs::read_dir(&snapshots).unwrap() {
            std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
        }
        look();
        assert_eq!(net.gets("snapshots"), second.1 + 1);
        look();
        assert_eq!(
            net.gets("snapshots"),
            second.1 + 1,
            "the good copy is cached again"
        );
        // Private, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&snapshots).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let trees = cache.dir().join(TREES);
        assert_eq!(
            std::fs::read_dir(trees).unwrap().count(),
            1,
            "the tree is cached"
        );
        (cache, cache_root)
    }
}
