//! Adds blobs to a repository: fills packs, stores each full pack, and at the end writes one
//! index file naming every pack written. Nothing refers to a pack before its index is durable,
//! and nothing refers to the index before the snapshot that needs it is written.

use super::{pack_key, Repository};
use crate::codec::Encoding;
use crate::error::Result;
use crate::id::Id;
use crate::index::{self, IdSet};
use crate::pack::{BlobKind, PackEntry, PackWriter};

pub struct BlobWriter<'r> {
    repo: &'r Repository,
    pack: PackWriter,
    /// Blobs added in this session (in the open pack or in packs already stored).
    added: IdSet,
    stored_packs: Vec<(Id, Vec<PackEntry>)>,
    pub bytes_added: u64,
    pub blobs_added: u64,
}

impl<'r> BlobWriter<'r> {
    pub fn new(repo: &'r Repository) -> BlobWriter<'r> {
        BlobWriter {
            repo,
            pack: PackWriter::new(),
            added: IdSet::default(),
            stored_packs: Vec::new(),
            bytes_added: 0,
            blobs_added: 0,
        }
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
            return Ok(());
        }
        self.pack.add(id, kind, encoding, stored, plain_len);
        self.added.insert(id);
        self.blobs_added += 1;
        if self.pack.len() >= self.repo.config().pack_size as usize {
            self.flush()?;
        }
        Ok(())
    }

    /// Stores the open pack, if it holds anything.
    pub fn flush(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let (id, bytes, entries) = std::mem::take(&mut self.pack).finish();
        self.repo.backend().put(&pack_key(&id), &bytes)?;
        self.bytes_added += bytes.len() as u64;
        self.stored_packs.push((id, entries));
        Ok(())
    }

    /// Stores the last pack and the index file for every pack of this session.
    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        if !self.stored_packs.is_empty() {
            let bytes = index::encode_file(&self.stored_packs);
            let key = format!("index/{}", Id::of(&bytes).to_hex());
            self.repo.backend().put(&key, &bytes)?;
            self.bytes_added += bytes.len() as u64;
        }
        Ok(self.bytes_added)
    }
}

impl BlobWriter<'_> {
    pub fn config(&self) -> &super::Config {
        self.repo.config()
    }
}
