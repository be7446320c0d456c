//! The repository: its config and format version, its files, the merged index, snapshots,
//! and reading and writing blobs. Everything reaches storage through the typed layer
//! (`storage`: objects by kind and ID, never by key) over a `backend`; packs are read and
//! written by `packs` and `writer`, so `ops/` never formats a key nor knows a byte layout.
//! The on-disk format is specified in `FORMAT.md` (below).
#![doc = include_str!("FORMAT.md")]

pub mod backend;
pub mod cache;
mod chains;
pub mod crypto;
pub mod faults;
pub mod keys;
pub mod limit;
pub mod location;
pub mod lock;
mod packs;
pub mod retry;
pub mod s3;
pub mod storage;
pub mod testing;
mod upgrade;
mod writer;
pub use upgrade::Upgraded;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use backend::{Backend, LocalBackend, MemBackend};
pub use keys::{KeyInfo, PasswordSource};
pub use packs::PackCheck;
pub use storage::{pack_key, Handle, ObjectKind, Storage};
pub(crate) use writer::Lookup;
pub use writer::{BlobWriter, PackSink, Written};

use crate::chunker::ChunkerParams;
use crate::codec;
use crate::error::{Error, IoContext, Result};
use crate::id::{self, Id, Ids};
use crate::index::{self, Index};
use crate::pack::BlobKind;
use crate::snapshot::Snapshot;
use crate::tree::Tree;

/// The repository format this build writes in new repositories, plaintext or encrypted.
/// Version 2 added model-aware chunking and the byte-planes and delta encodings, version 3
/// encryption at rest, version 4 sparse deltas stored element by element and chains up to
/// depth 64. Older repositories are written in their own version until `upgrade` raises
/// them (see `FORMAT.md`, "Versions").
pub const FORMAT_VERSION: u32 = 4;
/// The repository formats this build opens.
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 1..=4;
/// Fixed block size inside tensors in new repositories.
pub const DEFAULT_TENSOR_BLOCK: u32 = 512 * 1024;
const FORMAT_NAME: &str = "tvault-repository";
/// Pack sizes a config may ask for: a 0 would make one pack per blob, a huge one unbounded
/// memory in the pack writer.
pub const PACK_SIZES: std::ops::RangeInclusive<u32> = (64 << 10)..=(1 << 30);

/// The `config` file: the format version and the parameters every chunk ID depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub format: String,
    pub version: u32,
    pub id: Id,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    /// Packs are stored once they reach this many bytes.
    pub pack_size: u32,
    /// `"none"`, or (version 3) `"xchacha20poly1305"`: encrypted at rest (`crypto`).
    pub encryption: String,
    /// Version 2: tensors of recognised model files are cut into blocks of this many bytes
    /// from each tensor's start. Absent in version 1 (every file chunked by content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_block: Option<u32>,
}

impl Config {
    fn new(encrypted: bool) -> Config {
        let now = Utc::now();
        let seed = format!(
            "{}{}{:?}",
            std::process::id(),
            now.to_rfc3339(),
            std::thread::current().id()
        );
        let encryption = if encrypted { crypto::ALGORITHM } else { "none" };
        Config {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            id: if encrypted {
                Id(crypto::random_bytes())
            } else {
                Id::of(seed.as_bytes())
            },
            created: now,
            chunker: ChunkerParams::default(),
            zstd_level: 1,
            pack_size: 32 * 1024 * 1024,
            encryption: encryption.to_string(),
            tensor_block: Some(DEFAULT_TENSOR_BLOCK),
        }
    }

    /// True when this repository uses the version-2 model-aware chunking and encodings.
    pub fn model_aware(&self) -> bool {
        self.version >= 2
    }

    /// The delta methods and chain depth this repository's version lets a writer use.
    pub fn delta_format(&self) -> codec::DeltaFormat {
        if self.version >= 4 {
            codec::DeltaFormat::V4
        } else {
            codec::DeltaFormat::V2
        }
    }

    /// True when the repository is encrypted at rest.
    pub fn encrypted(&self) -> bool {
        self.encryption != "none"
    }

    /// Checks what every chunk ID depends on, so a bad config is an error and not a panic.
    fn validate(&self) -> std::result::Result<(), String> {
        self.chunker.validate()?;
        match (self.version, self.encryption.as_str()) {
            (_, "none") => {}
            (3.., crypto::ALGORITHM) => {}
            (_, other) => {
                return Err(format!(
                    "it uses encryption {other:?}, which this tvault does not support in a \
                     version {} repository",
                    self.version
                ))
            }
        }
        if !PACK_SIZES.contains(&self.pack_size) {
            return Err(format!(
                "unsupported pack_size {} (from {} to {} bytes)",
                self.pack_size,
                PACK_SIZES.start(),
                PACK_SIZES.end()
            ));
        }
        if !zstd::compression_level_range().contains(&self.zstd_level) {
            return Err(format!("unsupported zstd_level {}", self.zstd_level));
        }
        match (self.version, self.tensor_block) {
            (1, None) => Ok(()),
            (1, Some(_)) => Err("a version 1 config with a tensor_block".into()),
            (_, Some(b)) if b >= 4096 && b % 64 == 0 && b <= self.chunker.max_size => Ok(()),
            (_, b) => Err(format!(
                "unsupported tensor_block {b:?} (a multiple of 64 from 4096 to max_size)"
            )),
        }
    }
}

pub struct Repository {
    storage: Storage,
    location: PathBuf,
    config: Config,
    index: Index,
    index_files: Vec<Handle>,
    index_problems: Vec<Error>,
    lock_wait: std::time::Duration,
    /// Where one-line notices go (a lock of a dead process removed); nowhere by default.
    notice: Arc<dyn Fn(&str) + Send + Sync>,
    /// Recently checked plain blobs that deltas may need as bases.
    cache: std::sync::Mutex<BaseCache>,
    /// On a network repository: index files, manifests and trees kept on local disk.
    disk_cache: Option<cache::Cache>,
    /// Packs a writer stores at once (1 on a local disk; more where each put waits on a network).
    upload_slots: usize,
    /// On a network repository: a pool with more threads than cores for reads that wait on
    /// the network (restore, verify); the global pool otherwise.
    read_pool: Option<Arc<rayon::ThreadPool>>,
    /// In an encrypted repository: the master key and the key slot that opened it.
    master: Option<(crypto::MasterKey, Id)>,
}

/// Plain bytes of recently read blobs, up to a byte budget, oldest dropped first: a chain of
/// deltas then decodes each base once (restore, verify and backup share it).
#[derive(Default)]
struct BaseCache {
    blobs: index::IdMap<Arc<Vec<u8>>>,
    order: std::collections::VecDeque<Id>,
    bytes: usize,
}

/// Bytes of plain blobs the base cache keeps.
const BASE_CACHE_BYTES: usize = 64 << 20;

impl BaseCache {
    fn insert(&mut self, id: Id, plain: Arc<Vec<u8>>) {
        if self.blobs.contains_key(&id) || plain.len() > BASE_CACHE_BYTES / 4 {
            return;
        }
        self.bytes += plain.len();
        self.blobs.insert(id, plain);
        self.order.push_back(id);
        while self.bytes > BASE_CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(p) = self.blobs.remove(&old) {
                self.bytes -= p.len();
            }
        }
    }
}

/// One index file as read from the repository, or why it could not be read.
pub struct IndexFile {
    pub object: Handle,
    /// Its size in bytes.
    pub size: u64,
    pub packs: Result<Vec<(Id, Vec<crate::pack::PackEntry>)>>,
    /// Per pack, the base and depth of its delta blobs.
    pub deltas: index::IdMap<index::Deltas>,
}

impl Repository {
    /// Creates a plaintext repository in `path`, which must be missing or an empty directory.
    pub fn init(path: &Path) -> Result<Repository> {
        Self::init_local(path, None)
    }

    /// Creates a repository in `path` (missing or an empty directory): encrypted, with one key
    /// opened by `password`, when one is given; else plaintext.
    pub fn init_local(path: &Path, password: Option<&[u8]>) -> Result<Repository> {
        if path.join(ObjectKind::Config.folder()).exists() {
            return Err(Error::Invalid(format!(
                "{} is already a tvault repository",
                path.display()
            )));
        }
        if path.exists() {
            let (mut others, mut leftovers) = dir_entries(path)?;
            // An interrupted encrypted `init` leaves its key slot and no config: redone anew.
            if let [keys] = &others[..] {
                if let Some(slots) = init_leftover_keys(keys)? {
                    leftovers.extend(slots);
                    leftovers.push(keys.clone());
                    others.clear();
                }
            }
            if !others.is_empty() {
                return Err(Error::NotARepository {
                    path: path.to_path_buf(),
                    reason: "the directory is not empty; choose a new or empty directory".into(),
                });
            }
            // What an interrupted `init` left behind.
            for tmp in leftovers {
                if tmp.is_dir() {
                    std::fs::remove_dir(&tmp).at(&tmp)?;
                } else {
                    std::fs::remove_file(&tmp).at(&tmp)?;
                }
            }
        }
        if !path.exists() {
            // A new repository directory is private whatever the umask; one that exists keeps
            // the group access its owner gave it (see `backend::Modes`).
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(path).at(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).at(path)?;
        }
        Self::init_backend(local_backend(path), path.to_path_buf(), password)
    }

    /// Creates a plaintext repository on any backend.
    pub fn init_with(backend: Arc<dyn Backend>, location: PathBuf) -> Result<Repository> {
        Self::init_backend(backend, location, None)
    }

    /// Creates a repository on any backend: encrypted (version 3) with one key opened by
    /// `password` when one is given. The key slot is written before `config`, which is what
    /// makes the location a repository.
    pub fn init_backend(
        backend: Arc<dyn Backend>,
        location: PathBuf,
        password: Option<&[u8]>,
    ) -> Result<Repository> {
        let config = Config::new(password.is_some());
        let bytes = serde_json::to_vec_pretty(&config).expect("config serialises");
        let mut repo = Repository::with_config(backend, location, config);
        if let Some(password) = password {
            let key = crypto::MasterKey::random();
            let slot = keys::write_slot(&repo.storage, &key, &repo.config.id, password)?;
            repo.storage = repo
                .storage
                .clone()
                .encrypted(Arc::new(crypto::Crypto::new(&key)));
            repo.master = Some((key, slot));
        }
        repo.storage.put_config(&bytes)?;
        Ok(repo)
    }

    /// A repository handle with an empty index (not loaded yet).
    fn with_config(backend: Arc<dyn Backend>, location: PathBuf, config: Config) -> Repository {
        Repository {
            storage: Storage::new(backend),
            location,
            config,
            index: Index::default(),
            index_files: Vec::new(),
            index_problems: Vec::new(),
            lock_wait: std::time::Duration::ZERO,
            notice: Arc::new(|_: &str| {}),
            cache: Default::default(),
            disk_cache: None,
            upload_slots: 1,
            read_pool: None,
            master: None,
        }
    }

    /// Opens an existing plaintext repository in a local directory and loads its index (an
    /// encrypted one is [`Error::PasswordNeeded`]).
    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_local(path, None)
    }

    /// Opens an existing repository in a local directory and loads its index; `password` is
    /// asked for only if it is encrypted.
    pub fn open_local(path: &Path, password: Option<PasswordSource>) -> Result<Repository> {
        if !path.join(ObjectKind::Config.folder()).exists() {
            let has_files = path.is_dir() && !dir_entries(path)?.0.is_empty();
            if has_files {
                return Err(Error::NotARepository {
                    path: path.to_path_buf(),
                    reason: "it has files but no tvault `config`".into(),
                });
            }
            return Err(Error::NoRepository {
                path: path.to_path_buf(),
            });
        }
        Self::open_cached(local_backend(path), path.to_path_buf(), None, password)
    }

    pub fn open_with(backend: Arc<dyn Backend>, location: PathBuf) -> Result<Repository> {
        Self::open_cached(backend, location, None, None)
    }

    /// Opens a repository whose index files, snapshot manifests and trees are read through a
    /// local cache below `cache_root` (see [`cache`]): for repositories on a network.
    /// An encrypted repository is unlocked with `password` (see [`keys`]) before anything
    /// else is read: a wrong one is [`Error::WrongPassword`], and nothing is written.
    pub fn open_cached(
        backend: Arc<dyn Backend>,
        location: PathBuf,
        cache_root: Option<&Path>,
        password: Option<PasswordSource>,
    ) -> Result<Repository> {
        let storage = Storage::new(backend);
        let raw = storage.get_config()?;
        let not_repo = |reason: String| Error::NotARepository {
            path: location.clone(),
            reason,
        };
        let value: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| not_repo(format!("its config does not parse: {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(not_repo("its config is not a tvault config".into()));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Error::UnsupportedVersion {
                path: location,
                found: version,
                supported: format!(
                    "{}..={}",
                    SUPPORTED_VERSIONS.start(),
                    SUPPORTED_VERSIONS.end()
                ),
            });
        }
        let config: Config = serde_json::from_value(value)
            .map_err(|e| not_repo(format!("its config is damaged: {e}")))?;
        config.validate().map_err(not_repo)?;
        let master = if config.encrypted() {
            // Key slots are read through the cache too (a network repository).
            let slots = match cache_root {
                Some(root) => storage.with_backend(Arc::new(cache::Cached::new(
                    storage.backend().clone(),
                    cache::Cache::new(root, &config.id),
                ))),
                None => storage.clone(),
            };
            Some(keys::unlock(&slots, &config, &location, password)?)
        } else {
            // A plaintext config beside key slots was altered (a downgrade): writing plain
            // data into an encrypted repository is refused.
            if !storage.list(ObjectKind::Key)?.is_empty() {
                return Err(not_repo(
                    "its config says it is not encrypted, yet it has key slots (keys/): the \
                     config was altered; refusing to read or write it"
                        .into(),
                ));
            }
            None
        };
        let mut backend = storage.backend().clone();
        let crypto = master
            .as_ref()
            .map(|(key, _)| Arc::new(crypto::Crypto::new(key)));
        let disk_cache = cache_root.map(|root| {
            let c = cache::Cache::new(root, &config.id);
            match &crypto {
                Some(crypto) => c.encrypted(crypto.clone()),
                None => c,
            }
        });
        if let Some(c) = &disk_cache {
            backend = Arc::new(cache::Cached::new(backend, c.clone()));
        }
        let mut repo = Repository::with_config(backend, location, config);
        if let (Some(crypto), Some(master)) = (crypto, master) {
            repo.storage = repo.storage.clone().encrypted(crypto);
            repo.master = Some(master);
        }
        repo.disk_cache = disk_cache;
        repo.load_index()?;
        Ok(repo)
    }

    /// Caps the average upload rate of this handle (`--limit-upload`); the lease (and any lock
    /// held) carries over.
    pub fn limit_uploads(&mut self, bytes_per_sec: u64) {
        let limited = limit::UploadLimit::new(self.storage.backend().clone(), bytes_per_sec);
        self.storage = self.storage.with_backend(Arc::new(limited));
    }

    /// How many packs a backup, prune or repair stores at once (default 1); each one in flight
    /// holds a pack in memory (`pack_size`, 32 MiB by default).
    pub fn set_upload_slots(&mut self, n: usize) {
        self.upload_slots = n.max(1);
    }

    pub fn upload_slots(&self) -> usize {
        self.upload_slots
    }

    /// How many reads restore and verify keep in flight (default: one per core). More than the
    /// cores pays where each read waits on a network; each holds up to one pack in memory.
    pub fn set_read_slots(&mut self, n: usize) -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .thread_name(|i| format!("tvault-read-{i}"))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start {n} reader threads: {e}")))?;
        self.read_pool = Some(Arc::new(pool));
        Ok(())
    }

    /// Runs `work` (parallel reads) in the read pool of [`Self::set_read_slots`], if any.
    pub fn with_read_slots<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.read_pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    /// How long `lock` waits for a conflicting live lock to go away (default: not at all).
    pub fn set_lock_wait(&mut self, wait: std::time::Duration) {
        self.lock_wait = wait;
    }

    /// Where one-line notices of the engine go (the CLI prints them on stderr).
    pub fn set_notice(&mut self, notice: impl Fn(&str) + Send + Sync + 'static) {
        self.notice = Arc::new(notice);
    }

    pub fn location(&self) -> &Path {
        &self.location
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Typed access to the repository's objects (by kind and ID; see [`Storage`]).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// How this repository names chunks, trees and snapshots (keyed BLAKE3 when encrypted).
    pub fn ids(&self) -> Ids {
        self.storage.ids()
    }

    /// True when the repository is encrypted at rest.
    pub fn encrypted(&self) -> bool {
        self.storage.crypto().is_some()
    }

    /// The in-memory index, to make it read other copies of some blobs (`repair packs`: only
    /// sound ones). Index files are not changed.
    pub(crate) fn index_mut(&mut self) -> &mut Index {
        &mut self.index
    }

    /// Reads every index file into the merged in-memory index. A damaged index file does not
    /// stop the repository from opening: it is recorded in `index_problems` (verify reports
    /// it; blobs only it knew are treated as missing, so a backup stores them again).
    pub fn load_index(&mut self) -> Result<()> {
        let mut index = Index::default();
        let mut problems = Vec::new();
        let mut keys = Vec::new();
        for file in self.read_index_files()? {
            keys.push(file.object.clone());
            match file.packs {
                Ok(packs) => {
                    for (pack, entries) in packs {
                        let deltas = file.deltas.get(&pack).cloned().unwrap_or_default();
                        index.add_pack_with(pack, &entries, &deltas);
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        self.index = index;
        self.index_files = keys;
        self.index_problems = problems;
        Ok(())
    }

    /// Reloads the index if index files were added or removed since it was loaded. Commands
    /// call it once they hold their lock, so they never trust what another process changed.
    pub fn refresh_index(&mut self) -> Result<()> {
        let listed = self.storage.list(ObjectKind::Index)?;
        if !listed.iter().map(|(h, _)| h).eq(self.index_files.iter()) {
            self.load_index()?;
        }
        Ok(())
    }

    /// The index files the index was loaded from, sorted.
    pub fn index_files(&self) -> &[Handle] {
        &self.index_files
    }

    /// Index files that could not be read when the index was loaded.
    pub fn index_problems(&self) -> &[Error] {
        &self.index_problems
    }

    /// Every index file, parsed separately (for verify and prune, which need per-file detail).
    pub fn read_index_files(&self) -> Result<Vec<IndexFile>> {
        let mut out = Vec::new();
        for (object, size) in self.storage.list(ObjectKind::Index)? {
            let mut deltas = index::IdMap::default();
            let key = object.to_string();
            let packs = key_id(&object)
                .and_then(|id| {
                    let bytes = self.storage.get(&object)?;
                    index::decode_file(&key, id, &bytes, self.ids())
                })
                .map(|list| {
                    list.into_iter()
                        .map(|(pack, entries, d)| {
                            if !d.is_empty() {
                                deltas.insert(pack, d);
                            }
                            (pack, entries)
                        })
                        .collect()
                });
            out.push(IndexFile {
                object,
                size,
                packs,
                deltas,
            });
        }
        Ok(out)
    }

    /// Writes one index file listing `packs` (which must all be durable) and returns it and
    /// its size. Index files are named by their hash: writing the same list twice writes the
    /// same file.
    pub fn save_index(&self, packs: &index::PackList) -> Result<(Handle, u64)> {
        let bytes = index::encode_file(packs);
        let object = self.storage.put_hashed(ObjectKind::Index, &bytes)?;
        Ok((object, bytes.len() as u64))
    }

    /// Reads, decodes and re-hashes one blob. A delta blob (encoding 3) is resolved through its
    /// chain of bases, each read once (and not at all when the base cache has it).
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let (loc, pack, stored) = self.read_stored(id)?;
        self.decode_blob(id, &pack, loc.encoding, &stored, loc.plain_len as usize)
    }

    /// One blob's stored bytes (still sealed), with where the index puts it and its pack.
    pub(crate) fn read_stored(&self, id: &Id) -> Result<(index::Location, Id, Vec<u8>)> {
        let loc = *self
            .index
            .get(id)
            .ok_or_else(|| Error::MissingChunk { id: id.to_hex() })?;
        let pack = self.index.pack_id(&loc);
        let stored = self.storage.get_range(
            &Handle::pack(&pack),
            loc.offset as u64,
            loc.stored_len as usize,
        )?;
        Ok((loc, pack, stored))
    }

    /// A blob's encoded bytes from its stored bytes: in an encrypted repository they are
    /// opened, and a blob that does not authenticate (damaged, truncated, another blob's bytes,
    /// another repository's) is [`Error::CorruptChunk`] naming it and its pack.
    pub fn unseal<'a>(&self, id: &Id, pack: &Id, stored: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        match self.storage.crypto() {
            None => Ok(Cow::Borrowed(stored)),
            Some(c) => c
                .open(&crate::pack::blob_aad(id), stored)
                .map(Cow::Owned)
                .map_err(|_| Error::CorruptChunk {
                    id: id.to_hex(),
                    pack: pack.to_hex(),
                    reason: AUTH_FAILED.into(),
                }),
        }
    }

    /// Decodes and re-hashes a blob's stored bytes (read from `pack`); a delta's bases come from
    /// the repository. A lost or damaged base makes the delta damaged, naming the base.
    pub fn decode_blob(
        &self,
        id: &Id,
        pack: &Id,
        encoding: codec::Encoding,
        stored: &[u8],
        plain_len: usize,
    ) -> Result<Vec<u8>> {
        let encoded = self.unseal(id, pack, stored)?;
        self.decode_encoded(id, pack, encoding, &encoded, plain_len)
    }

    /// [`Repository::decode_blob`] of bytes already unsealed.
    pub fn decode_encoded(
        &self,
        id: &Id,
        pack: &Id,
        encoding: codec::Encoding,
        stored: &[u8],
        plain_len: usize,
    ) -> Result<Vec<u8>> {
        let damaged = |reason: String| Error::CorruptChunk {
            id: id.to_hex(),
            pack: pack.to_hex(),
            reason,
        };
        let plain = if encoding == codec::Encoding::Delta {
            self.resolve_delta(stored, plain_len)
                .map_err(|e| damaged(e.to_string()))?
        } else {
            codec::decode(encoding, stored, plain_len).map_err(|e| damaged(e.to_string()))?
        };
        if self.ids().of(&plain) != *id {
            return Err(damaged("content does not match its hash".into()));
        }
        Ok(plain)
    }

    /// Plain bytes of a delta blob: its chain of bases is followed down to a keyframe (or a
    /// cached blob), then the deltas are applied upwards in one buffer. Only the top is
    /// re-hashed (by the caller): a damaged link anywhere changes the result. When that check
    /// fails, [`Repository::read_blob`] on the base names the damaged link.
    fn resolve_delta(&self, stored: &[u8], plain_len: usize) -> Result<Vec<u8>> {
        let mut chain: Vec<Vec<u8>> = Vec::new();
        let mut header = codec::delta_header(stored)?;
        let mut plain = loop {
            if chain.len() >= codec::MAX_READ_CHAIN {
                return Err(Error::Invalid(format!(
                    "xor-delta chain longer than {} (damaged)",
                    codec::MAX_READ_CHAIN
                )));
            }
            let base = header.base;
            if let Some(hit) = self.cache.lock().expect("cache").blobs.get(&base) {
                let mut plain = codec::plain_buffer(hit.len());
                plain.copy_from_slice(hit);
                break plain;
            }
            let Some(loc) = self.index.get(&base).copied() else {
                return Err(Error::Invalid(format!(
                    "its base {} is in no index (lost)",
                    base.short()
                )));
            };
            let bpack = self.index.pack_id(&loc);
            let bstored = self.storage.get_range(
                &Handle::pack(&bpack),
                loc.offset as u64,
                loc.stored_len as usize,
            )?;
            let bstored = self.unseal(&base, &bpack, &bstored)?.into_owned();
            if loc.encoding != codec::Encoding::Delta {
                // Not re-hashed here: the caller hashes the top, which no damaged link passes
                // (hashing the keyframe too cost a second BLAKE3 pass per block of a restore).
                let plain = codec::decode(loc.encoding, &bstored, loc.plain_len as usize)
                    .map_err(|e| Error::Invalid(format!("its base {}: {e}", base.short())))?;
                break plain;
            }
            header = codec::delta_header(&bstored)?;
            chain.push(bstored);
        };
        for link in chain.iter().rev() {
            let len = plain.len();
            codec::apply_delta(link, &mut plain, len)?;
        }
        codec::apply_delta(stored, &mut plain, plain_len)?;
        Ok(plain)
    }

    /// Keeps a checked blob's plain bytes for deltas that will need it as their base.
    pub fn remember(&self, id: Id, plain: Arc<Vec<u8>>) {
        self.cache.lock().expect("cache").insert(id, plain);
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        if self.index.get(id).map(|l| l.kind) != Some(BlobKind::Tree) {
            return Err(Error::MissingChunk { id: id.to_hex() });
        }
        let name = format!("tree {}", id.short());
        if let Some(plain) = self.disk_cache.as_ref().and_then(|c| c.tree(id)) {
            return Tree::from_bytes(&name, &plain);
        }
        let plain = self.read_blob(id)?;
        if let Some(c) = &self.disk_cache {
            c.keep_tree(id, &plain);
        }
        Tree::from_bytes(&name, &plain)
    }

    pub fn snapshot_ids(&self) -> Result<Vec<Id>> {
        self.storage
            .list(ObjectKind::Snapshot)?
            .iter()
            .map(|(h, _)| key_id(h))
            .collect()
    }

    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let object = Handle::new(ObjectKind::Snapshot, id);
        Snapshot::from_bytes(
            &object.to_string(),
            *id,
            &self.storage.get(&object)?,
            self.ids(),
        )
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut all = Vec::new();
        for id in self.snapshot_ids()? {
            all.push((id, self.load_snapshot(&id)?));
        }
        all.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(all)
    }

    /// The snapshot a full ID or a unique prefix names. Never guesses.
    pub fn resolve_snapshot(&self, prefix: &str) -> Result<Id> {
        let prefix_lc = prefix.to_ascii_lowercase();
        if prefix_lc.len() < id::MIN_PREFIX_LEN || !prefix_lc.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(Error::BadSnapshotId {
                prefix: prefix.to_string(),
                min: id::MIN_PREFIX_LEN,
            });
        }
        let matches: Vec<Id> = self
            .snapshot_ids()?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&prefix_lc))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::SnapshotNotFound {
                prefix: prefix.to_string(),
            }),
            many => Err(Error::AmbiguousSnapshot {
                prefix: prefix.to_string(),
                candidates: many.iter().map(|id| id.to_hex()).collect(),
            }),
        }
    }

    /// Writes a snapshot manifest: the commit point of a backup.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let bytes = snap.to_bytes();
        let object = self.storage.put_hashed(ObjectKind::Snapshot, &bytes)?;
        Ok(object.id().expect("named by its hash"))
    }

    /// Deletes a snapshot manifest (its data stays until a prune finds it unused).
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.storage.delete(&Handle::new(ObjectKind::Snapshot, id))
    }

    /// Stores a record of `repair packs` (JSON, see FORMAT.md "Repair").
    pub fn save_repair_record(&self, json: &[u8]) -> Result<Handle> {
        self.storage.put_hashed(ObjectKind::Repair, json)
    }
}

/// Why a sealed blob is damaged.
pub(crate) const AUTH_FAILED: &str =
    "it does not authenticate (damaged, truncated, or not this repository's blob under this ID)";

/// A directory's entries, split into temporary files of interrupted writes and the rest.
fn dir_entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut others = Vec::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let is_tmp = entry
            .file_name()
            .to_string_lossy()
            .starts_with(backend::TMP_PREFIX)
            && entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_tmp {
            leftovers.push(entry.path());
        } else {
            others.push(entry.path());
        }
    }
    Ok((others, leftovers))
}

/// The files of `dir` if it is the `keys` folder an interrupted `init` left (key slots and
/// temporary files only, no config beside it); `None` for anything else.
fn init_leftover_keys(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    if dir.file_name() != Some(std::ffi::OsStr::new(ObjectKind::Key.folder())) || !dir.is_dir() {
        return Ok(None);
    }
    let (slots, tmps) = dir_entries(dir)?;
    let ours = slots.iter().all(|p| {
        p.is_file()
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| Id::from_hex(n).is_some())
    });
    Ok(ours.then(|| slots.into_iter().chain(tmps).collect()))
}

/// The ID a content-addressed object is named by.
fn key_id(object: &Handle) -> Result<Id> {
    object
        .id()
        .ok_or_else(|| Error::corrupt(object.to_string(), "file name is not an ID"))
}

/// The backend of a repository in the local directory `path`, with the test hooks the
/// environment asks for (see `testing`).
fn local_backend(path: &Path) -> Arc<dyn Backend> {
    testing::with_hooks(LocalBackend::new(path))
}

impl Repository {
    /// Takes the repository lock: shared for writers that only add (backup), exclusive for
    /// anything that deletes. Held until the guard is dropped. The index is re-read once the
    /// lock is held: what was loaded before may be stale (a prune may have run in between).
    /// A conflicting lock of a provably dead process is removed, told to the notice sink.
    pub fn lock(&mut self, exclusive: bool, command: &str) -> Result<lock::LockGuard> {
        let guard = lock::LockGuard::acquire(
            self.storage.clone(),
            exclusive,
            command,
            self.lock_wait,
            &*self.notice,
        )?;
        self.refresh_index()?;
        testing::pause("locked");
        Ok(guard)
    }

    /// Removes stale locks (every lock with `all`); describes what was removed.
    pub fn unlock(&self, all: bool) -> Result<Vec<String>> {
        lock::unlock(&self.storage, all)
    }
}
