//! Adds blobs to a repository: fills packs, stores each full pack, and at the end writes one
//! index file naming every pack written. Nothing refers to a pack before its index is durable,
//! and nothing refers to the index before the snapshot that needs it is written.
//!
//! A full pack is finished (trailer, hash) and stored on a background thread while the next one
//! fills, so the pack's hashing and its fsync overlap the backup's reading and compressing. At
//! most one pack is being stored at a time: the next flush waits for it, and so does `finish`
//! before it writes the index, so a pack is durable before any index names it.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::{pack_key, Backend, Repository};
use crate::codec::Encoding;
use crate::error::Result;
use crate::id::Id;
use crate::index::{self, IdSet};
use crate::pack::{BlobKind, PackEntry, PackWriter};

/// What storing one pack gives back: its ID, its size, and its blobs.
type Stored = Result<(Id, u64, Vec<PackEntry>)>;

pub struct BlobWriter<'r> {
    repo: &'r Repository,
    pack: PackWriter,
    /// The pack being stored in the background, if any.
    storing: Option<JoinHandle<Stored>>,
    /// Blobs added in this session (in the open pack or in packs already stored).
    added: IdSet,
    stored_packs: Vec<(Id, Vec<PackEntry>)>,
    pub bytes_added: u64,
    pub blobs_added: u64,
    /// File content offered to this writer, by how it was stored.
    pub stored_by: crate::snapshot::StoredBy,
    /// Base and depth of each delta blob added (for the index file).
    deltas: index::Deltas,
    /// A dry run (`backup --dry-run`): packs are counted, never stored.
    dry: bool,
}

impl<'r> BlobWriter<'r> {
    pub fn new(repo: &'r Repository) -> BlobWriter<'r> {
        BlobWriter {
            repo,
            pack: PackWriter::new(),
            storing: None,
            added: IdSet::default(),
            stored_packs: Vec::new(),
            bytes_added: 0,
            blobs_added: 0,
            stored_by: Default::default(),
            deltas: Default::default(),
            dry: false,
        }
    }

    /// A writer that encodes and counts what it would add but stores nothing: `bytes_added`
    /// is then the packs' size without their trailers and index.
    pub fn dry(repo: &'r Repository) -> BlobWriter<'r> {
        let mut w = BlobWriter::new(repo);
        w.dry = true;
        w
    }

    pub fn is_dry(&self) -> bool {
        self.dry
    }

    /// True when the blob is already in the repository or in this session.
    pub fn contains(&self, id: &Id) -> bool {
        self.repo.index().contains(id) || self.added.contains(id)
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
        if encoding == Encoding::Delta {
            let h = crate::codec::delta_header(stored)?;
            let d = index::DeltaRef {
                base: h.base,
                depth: h.depth,
            };
            self.deltas.insert(id, d);
        }
        self.pack.add(id, kind, encoding, stored, plain_len);
        self.added.insert(id);
        self.blobs_added += 1;
        if self.pack.len() >= self.repo.config().pack_size as usize {
            self.flush()?;
        }
        Ok(())
    }

    /// Starts storing the open pack, if it holds anything, once the previous one is stored.
    pub fn flush(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        self.wait()?;
        let pack = std::mem::take(&mut self.pack);
        if self.dry {
            self.bytes_added += pack.len() as u64;
            return Ok(());
        }
        let backend: Arc<dyn Backend> = self.repo.backend.clone();
        let store = move || -> Stored {
            let (id, bytes, entries) = pack.finish();
            backend.put(&pack_key(&id), &bytes)?;
            Ok((id, bytes.len() as u64, entries))
        };
        self.storing = Some(std::thread::spawn(store));
        Ok(())
    }

    /// Waits for the pack being stored, if any.
    fn wait(&mut self) -> Result<()> {
        match self.storing.take() {
            Some(handle) => {
                let stored = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                self.record(stored)
            }
            None => Ok(()),
        }
    }

    fn record(&mut self, stored: Stored) -> Result<()> {
        let (id, len, entries) = stored?;
        self.bytes_added += len;
        self.stored_packs.push((id, entries));
        Ok(())
    }

    /// Stores the last pack and the index file for every pack of this session.
    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        self.wait()?;
        if !self.stored_packs.is_empty() {
            let packs: index::PackList = std::mem::take(&mut self.stored_packs)
                .into_iter()
                .map(|(pack, entries)| {
                    let deltas = entries
                        .iter()
                        .filter_map(|e| Some((e.id, *self.deltas.get(&e.id)?)))
                        .collect();
                    (pack, entries, deltas)
                })
                .collect();
            let key = self.repo.save_index(&packs)?;
            self.bytes_added += self.repo.backend().size(&key)?.unwrap_or(0);
        }
        Ok(self.bytes_added)
    }
}

impl Drop for BlobWriter<'_> {
    /// A writer dropped without `finish` (a failed backup) still waits for its pack: the caller
    /// may release the repository lock right after.
    fn drop(&mut self) {
        if let Some(handle) = self.storing.take() {
            let _ = handle.join();
        }
    }
}

impl<'r> BlobWriter<'r> {
    pub fn config(&self) -> &super::Config {
        self.repo.config()
    }

    pub fn repo(&self) -> &'r Repository {
        self.repo
    }
}
