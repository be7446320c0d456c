//! Writes blobs into packs, and packs into the repository. [`PackSink`] is the one pack
//! writer: backup (through [`BlobWriter`]), prune's repack and `repair packs` all add blobs to
//! one, which fills a pack, stores each full one, and hands back what it stored so that the
//! caller writes the index file naming those packs (`Repository::save_index`): backup one at
//! its end, `copy` one as packs complete (`BlobWriter::save_index_so_far`), so that a crash
//! loses only the packs in flight. Nothing refers to a pack before its index is durable, and
//! nothing refers to the index before the snapshot that needs it is written.
//!
//! A full pack is finished (trailer, hash) and stored on a background thread while the next one
//! fills, so the pack's hashing and its upload or fsync overlap the reading and compressing. At
//! most `Repository::upload_slots` packs are being stored at a time (1 on a local disk, so
//! writes happen in a fixed order; more on a network, where each put mostly waits): a flush
//! waits for the oldest when all slots are busy, and `finish` waits for all, so a pack is
//! durable before any index names it. Memory: one pack filling plus one per slot; a stored
//! pack's buffer is handed back for the next one (fresh 32 MiB buffers cost a page fault per
//! 4 KiB, ~10 % of a first backup's CPU).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::storage::{Handle, Storage};
use super::Repository;
use crate::codec::Encoding;
use crate::error::Result;
use crate::id::Id;
use crate::index::{self, IdSet};
use crate::pack::{BlobKind, PackEntry, PackWriter};

/// What storing one pack gives back: its ID, its size, and its blobs.
type Stored = Result<(Id, u64, Vec<PackEntry>)>;

/// Fills packs with blobs and stores them (see the module doc). Dropped without
/// [`PackSink::finish`], it still waits for the pack being stored.
pub struct PackSink {
    storage: Storage,
    pack_size: usize,
    pack: PackWriter,
    /// The pack being stored in the background, if any.
    storing: std::collections::VecDeque<JoinHandle<Stored>>,
    /// Packs stored at once, at most (each holds a pack in memory until it is stored).
    uploads: usize,
    stored: Vec<(Id, Vec<PackEntry>)>,
    /// Base and depth of each delta blob added (for the index file).
    deltas: index::Deltas,
    /// Bytes of the packs stored (or, dry, that would have been).
    bytes: u64,
    /// A dry run: packs are counted (without their trailers), never stored.
    dry: bool,
    /// Buffers of stored packs, for the next packs to fill.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Stored packs' buffers kept for reuse, at most.
const SPARE_PACKS: usize = 2;

/// A buffer for a pack of `pack_size` bytes and the blob that ends it (at most a few MiB).
fn pack_buffer(pack_size: usize) -> Vec<u8> {
    Vec::with_capacity(pack_size + (4 << 20))
}

/// What a [`PackSink`] stored.
pub struct Written {
    /// Every pack stored, with its blobs and deltas: what the index file naming them lists.
    pub packs: index::PackList,
    /// Their bytes (dry: the bytes of their blobs).
    pub bytes: u64,
}

impl PackSink {
    pub fn new(repo: &Repository) -> PackSink {
        PackSink {
            storage: repo.storage().clone(),
            pack_size: repo.config().pack_size as usize,
            pack: PackWriter::sealed_into(
                repo.storage().crypto().cloned(),
                pack_buffer(repo.config().pack_size as usize),
            ),
            storing: Default::default(),
            uploads: repo.upload_slots(),
            stored: Vec::new(),
            deltas: Default::default(),
            bytes: 0,
            dry: false,
            spare: Default::default(),
        }
    }

    /// Adds an encoded blob (whatever is already stored: deduplicating is the caller's). A
    /// delta's base and depth are taken from its header, for the index. `stored` is the
    /// encoded blob, never sealed: in an encrypted repository the pack writer seals it.
    pub fn add(
        &mut self,
        id: Id,
        kind: BlobKind,
        encoding: Encoding,
        stored: &[u8],
        plain_len: usize,
    ) -> Result<()> {
        if encoding == Encoding::Delta {
            let h = crate::codec::delta_header(stored)?;
            let d = index::DeltaRef {
                base: h.base,
                depth: h.depth,
            };
            self.deltas.insert(id, d);
        }
        self.pack.add(id, kind, encoding, stored, plain_len);
        if self.pack.len() >= self.pack_size {
            self.flush()?;
        }
        Ok(())
    }

    /// Starts storing the open pack, if it holds anything, once the previous one is stored.
    pub fn flush(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        while self.storing.len() >= self.uploads {
            self.wait_oldest()?;
        }
        let buf = self.spare.lock().expect("spare packs").pop();
        let buf = buf.unwrap_or_else(|| pack_buffer(self.pack_size));
        let next = PackWriter::sealed_into(self.storage.crypto().cloned(), buf);
        let pack = std::mem::replace(&mut self.pack, next);
        if self.dry {
            self.bytes += pack.len() as u64;
            return Ok(());
        }
        let storage = self.storage.clone();
        let spare = self.spare.clone();
        let store = move || -> Stored {
            let (id, bytes, entries) = pack.finish();
            let len = bytes.len() as u64;
            let bytes = bytes::Bytes::from(bytes);
            storage.put_shared(&Handle::pack(&id), bytes.clone())?;
            // Unique once the backend let go of it (an upload's retries hold a copy only
            // while they run).
            if let Ok(buf) = bytes.try_into_mut() {
                let mut spare = spare.lock().expect("spare packs");
                if spare.len() < SPARE_PACKS {
                    spare.push(buf.into());
                }
            }
            Ok((id, len, entries))
        };
        self.storing.push_back(std::thread::spawn(store));
        Ok(())
    }

    /// Waits for every pack being stored.
    fn wait(&mut self) -> Result<()> {
        while !self.storing.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    /// Waits for the pack that started storing first.
    fn wait_oldest(&mut self) -> Result<()> {
        let Some(handle) = self.storing.pop_front() else {
            return Ok(());
        };
        let (id, len, entries) = handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        self.bytes += len;
        self.stored.push((id, entries));
        Ok(())
    }

    /// Bytes of the packs stored so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Stores the open pack and waits until every pack is stored.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.wait()
    }

    /// The packs stored (durable) since the last call, oldest first, with their blobs and
    /// deltas: what an index file naming them lists. Packs still being stored are not among
    /// them (those whose store has finished are collected first).
    pub fn take_stored(&mut self) -> Result<index::PackList> {
        while self.storing.front().is_some_and(|h| h.is_finished()) {
            self.wait_oldest()?;
        }
        Ok(std::mem::take(&mut self.stored)
            .into_iter()
            .map(|(pack, entries)| {
                let d = entries
                    .iter()
                    .filter_map(|e| Some((e.id, self.deltas.remove(&e.id)?)))
                    .collect();
                (pack, entries, d)
            })
            .collect())
    }

    /// Stores the last pack; what was stored (since the last [`PackSink::take_stored`]).
    pub fn finish(mut self) -> Result<Written> {
        self.sync()?;
        let packs = self.take_stored()?;
        Ok(Written {
            packs,
            bytes: self.bytes,
        })
    }
}

impl Drop for PackSink {
    /// A sink dropped without `finish` (a failed backup) still waits for its pack: the caller
    /// may release the repository lock right after.
    fn drop(&mut self) {
        for handle in self.storing.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Backup's writer: adds each blob the repository (and this session) lacks to a [`PackSink`],
/// counts what it stored and how, and at the end writes one index file naming every pack.
pub struct BlobWriter<'r> {
    repo: &'r Repository,
    sink: PackSink,
    /// Blobs added in this session (in the open pack or in packs already stored).
    added: IdSet,
    pub blobs_added: u64,
    /// File content offered to this writer, by how it was stored.
    pub stored_by: crate::snapshot::StoredBy,
    /// Bytes of the index files [`BlobWriter::save_index_so_far`] wrote.
    index_bytes: u64,
    /// Store a tensor block that changed everywhere as a dense XOR with its chain's keyframe
    /// when that is smaller (full training: ~20 % smaller steps). Off by default: such a
    /// block then restores from one blob instead of two (restore speed first).
    pub dense_deltas: bool,
    /// Bound on the chains this writer grows (see
    /// [`crate::codec::DeltaFormat::with_max_chain`]); the format's bound when `None`.
    pub max_chain: Option<u8>,
    /// Bases whose plain bytes can be read from files on disk (see `ops/disk_bases.rs`).
    pub(crate) disk_bases: Option<std::sync::Arc<crate::ops::disk_bases::DiskBases>>,
}

impl<'r> BlobWriter<'r> {
    pub fn new(repo: &'r Repository) -> BlobWriter<'r> {
        BlobWriter {
            repo,
            sink: PackSink::new(repo),
            added: IdSet::default(),
            blobs_added: 0,
            stored_by: Default::default(),
            index_bytes: 0,
            dense_deltas: false,
            max_chain: None,
            disk_bases: None,
        }
    }

    /// A writer that encodes and counts what it would add but stores nothing: the bytes added
    /// are then the packs' size without their trailers and index.
    pub fn dry(repo: &'r Repository) -> BlobWriter<'r> {
        let mut w = BlobWriter::new(repo);
        w.sink.dry = true;
        w
    }

    pub fn is_dry(&self) -> bool {
        self.sink.dry
    }

    /// Bytes of the packs stored so far, and of the index files written.
    pub fn bytes_added(&self) -> u64 {
        self.sink.bytes_written() + self.index_bytes
    }

    /// True when the blob is already in the repository or in this session.
    pub fn contains(&self, id: &Id) -> bool {
        self.repo.index().contains(id) || self.added.contains(id)
    }

    /// Claims a blob for this session: false when it is already stored (counted as
    /// deduplicated), else it is counted as added and the caller must hand its bytes to the
    /// sink from [`BlobWriter::split`]. Lets backup decide serially what to store while the
    /// copying into the pack overlaps the next block's encoding.
    pub(crate) fn claim(
        &mut self,
        id: Id,
        encoding: Encoding,
        stored_len: usize,
        plain_len: usize,
    ) -> bool {
        if self.contains(&id) {
            self.stored_by.deduplicated += plain_len as u64;
            return false;
        }
        self.stored_by
            .add(encoding, plain_len as u64, stored_len as u64);
        self.added.insert(id);
        self.blobs_added += 1;
        true
    }

    /// What encoding may look at (the repository and the blobs claimed so far) beside the
    /// sink that claimed blobs go into, borrowed apart so both can be used at once.
    pub(crate) fn split(&mut self) -> (Lookup<'_>, &mut PackSink) {
        let lookup = Lookup {
            repo: self.repo,
            added: &self.added,
            disk: self.disk_bases.as_deref(),
        };
        (lookup, &mut self.sink)
    }

    /// Adds an encoded blob unless it is already stored.
    pub fn add(
        &mut self,
        id: Id,
        kind: BlobKind,
        encoding: Encoding,
        stored: &[u8],
        plain_len: usize,
    ) -> Result<()> {
        if self.contains(&id) {
            if kind == BlobKind::Data {
                self.stored_by.deduplicated += plain_len as u64;
            }
            return Ok(());
        }
        if kind == BlobKind::Data {
            self.stored_by
                .add(encoding, plain_len as u64, stored.len() as u64);
        }
        self.sink.add(id, kind, encoding, stored, plain_len)?;
        self.added.insert(id);
        self.blobs_added += 1;
        Ok(())
    }

    /// Writes an index file naming the packs stored since the last one (with `all`, after
    /// storing the open pack and waiting for every pack): what a writer that must not lose
    /// its progress to a crash calls as packs complete (`copy`). Then only the packs in flight
    /// are lost. Returns the bytes of the index file, 0 when there was nothing to name.
    pub fn save_index_so_far(&mut self, all: bool) -> Result<u64> {
        if all {
            self.sink.sync()?;
        }
        let packs = self.sink.take_stored()?;
        if self.sink.dry || packs.is_empty() {
            return Ok(0);
        }
        let bytes = self.repo.save_index(&packs)?.1;
        self.index_bytes += bytes;
        Ok(bytes)
    }

    /// Stores the last pack and the index file for every pack of this session not yet named
    /// by one; the bytes added (packs and index files).
    pub fn finish(self) -> Result<u64> {
        let BlobWriter {
            repo,
            sink,
            index_bytes,
            ..
        } = self;
        let dry = sink.dry;
        let written = sink.finish()?;
        let mut bytes = written.bytes + index_bytes;
        if !dry && !written.packs.is_empty() {
            bytes += repo.save_index(&written.packs)?.1;
        }
        Ok(bytes)
    }

    pub fn config(&self) -> &super::Config {
        self.repo.config()
    }

    /// The deltas this writer may store: the repository format's, with its chain bound and
    /// dense-delta choice. A bound below one dense link's cost rules dense deltas out, so a
    /// tensor found dense is known as such (and its other blocks spared their bases) instead of
    /// each block being refused for depth after its XOR was taken.
    pub fn delta_format(&self) -> crate::codec::DeltaFormat {
        let format = self.config().delta_format().with_max_chain(self.max_chain);
        crate::codec::DeltaFormat {
            dense: self.dense_deltas && format.max_depth >= crate::codec::DENSE_DEPTH_COST,
            ..format
        }
    }

    pub fn repo(&self) -> &'r Repository {
        self.repo
    }
}

/// Read-only view of a [`BlobWriter`]: whether a blob is stored or claimed.
#[derive(Clone, Copy)]
pub(crate) struct Lookup<'a> {
    pub repo: &'a Repository,
    added: &'a IdSet,
    /// Where some bases can be read from disk instead of rebuilt from the repository.
    pub disk: Option<&'a crate::ops::disk_bases::DiskBases>,
}

impl Lookup<'_> {
    pub fn contains(&self, id: &Id) -> bool {
        self.repo.index().contains(id) || self.added.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repo::{Backend, MemBackend};

    /// With several packs stored at once, every pack is stored, and the index names exactly
    /// the packs stored, each with its blobs.
    #[test]
    fn parallel_uploads_store_every_pack_and_index_exactly_those() {
        for slots in [1, 3] {
            let backend = Arc::new(MemBackend::default());
            let mut repo = Repository::init_with(backend.clone(), "mem".into()).unwrap();
            repo.set_upload_slots(slots);
            let mut sink = PackSink::new(&repo);
            sink.pack_size = 64 << 10;
            let mut ids = Vec::new();
            for i in 0u32..40 {
                let blob = vec![i as u8; 10_000 + i as usize];
                let id = Id::of(&blob);
                ids.push(id);
                sink.add(id, BlobKind::Data, Encoding::Raw, &blob, blob.len())
                    .unwrap();
            }
            let written = sink.finish().unwrap();
            let on_disk = backend.list("data").unwrap();
            assert_eq!(written.packs.len(), on_disk.len(), "slots {slots}");
            assert!(written.packs.len() >= 5, "slots {slots}");
            let total: u64 = on_disk.iter().map(|(_, n)| n).sum();
            assert_eq!(written.bytes, total, "slots {slots}");
            let mut indexed: Vec<Id> = written
                .packs
                .iter()
                .flat_map(|(_, entries, _)| entries.iter().map(|e| e.id))
                .collect();
            indexed.sort();
            ids.sort();
            assert_eq!(indexed, ids, "slots {slots}");
        }
    }

    /// Index files written as packs complete name every pack once, each as soon as it is
    /// stored, and the last one (at `finish`) only what was left.
    #[test]
    fn index_files_written_as_packs_complete_name_every_pack_once() {
        let backend = Arc::new(MemBackend::default());
        let mut repo = Repository::init_with(backend.clone(), "mem".into()).unwrap();
        repo.set_upload_slots(2);
        let mut w = BlobWriter::new(&repo);
        w.sink.pack_size = 64 << 10;
        let mut saved = 0;
        for i in 0u32..30 {
            let blob = vec![i as u8; 20_000];
            w.add(
                Id::of(&blob),
                BlobKind::Data,
                Encoding::Raw,
                &blob,
                blob.len(),
            )
            .unwrap();
            if w.save_index_so_far(false).unwrap() > 0 {
                saved += 1;
            }
        }
        assert!(saved >= 2, "only {saved} index files while adding");
        w.finish().unwrap();
        let mut named = Vec::new();
        for file in repo.read_index_files().unwrap() {
            named.extend(file.packs.unwrap().into_iter().map(|(pack, _)| pack));
        }
        let on_disk = backend.list("data").unwrap();
        assert_eq!(named.len(), on_disk.len(), "every pack named once");
        named.sort();
        named.dedup();
        assert_eq!(named.len(), on_disk.len(), "no pack named twice");
    }
}
