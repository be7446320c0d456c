//! `stats [ID]`: sizes from the index, nothing decoded. For a snapshot: its files, restore size,
//! the distinct chunks of its files with their plain and stored bytes, the dedup ratio, and a
//! breakdown by encoding. For the whole repository: snapshots, packs and their bytes on disk,
//! every distinct file-content chunk, and the dedup ratio over every snapshot's restore size.

use std::collections::BTreeMap;

use serde::Serialize;

use super::select::Latest;
use crate::codec::Encoding;
use crate::error::Result;
use crate::id::Id;
use crate::index::IdSet;
use crate::pack::BlobKind;
use crate::repo::Repository;
use crate::tree::NodeKind;

/// Chunks, their plain bytes and their stored bytes.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ChunkBytes {
    pub chunks: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
}

impl ChunkBytes {
    fn add(&mut self, plain: u64, stored: u64) {
        self.chunks += 1;
        self.plain_bytes += plain;
        self.stored_bytes += stored;
    }
}

/// Distinct chunks by encoding (`raw`, `zstd`, `byte-planes`, `xor-delta`), and in total.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ChunkTotals {
    /// Distinct chunks of file content.
    pub chunks: u64,
    /// Their plain bytes: what is left of the restore size after deduplication.
    pub plain_bytes: u64,
    /// Their bytes in packs, after compression and deltas.
    pub stored_bytes: u64,
    pub by_encoding: BTreeMap<&'static str, ChunkBytes>,
}

impl ChunkTotals {
    fn add(&mut self, encoding: Encoding, plain: u64, stored: u64) {
        self.chunks += 1;
        self.plain_bytes += plain;
        self.stored_bytes += stored;
        self.by_encoding
            .entry(encoding.name())
            .or_default()
            .add(plain, stored);
    }
}

/// `stats ID`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SnapshotStats {
    pub id: String,
    /// Set when the snapshot was given as `latest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<Latest>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes a restore writes: the sum of the files' sizes.
    pub restore_size: u64,
    #[serde(flatten)]
    pub chunks: ChunkTotals,
    /// `restore_size / plain_bytes` (1.0 for an empty snapshot).
    pub dedup_ratio: f64,
    /// Chunks no index lists (a damaged repository; `tvault verify` names them).
    pub missing_chunks: u64,
    /// What restoring it costs beyond its own chunks: the delta chains they end.
    pub chains: Chains,
}

/// The delta chains a snapshot's chunks end, from the index alone: what `backup --max-chain`
/// bounds, and what a restore reads.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Chains {
    /// The deepest chain's depth (links after its keyframe; a dense link counts 4), as its
    /// deltas recorded it when written: after prune stored a chain's lowest kept link again
    /// as a keyframe, the links above still count the ones that went.
    pub deepest: u8,
    /// Blobs a restore reads only as bases of the snapshot's chunks (earlier steps' blocks).
    pub bases: u64,
    /// Stored bytes a restore reads: the chunks and every base of their chains, each once.
    pub read_bytes: u64,
}

/// `stats` without an ID.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RepoStats {
    pub snapshots: u64,
    /// Pack files on disk and their bytes.
    pub packs: u64,
    pub pack_bytes: u64,
    /// Sum of every snapshot's restore size.
    pub restore_size: u64,
    #[serde(flatten)]
    pub chunks: ChunkTotals,
    /// `restore_size / plain_bytes` over every snapshot.
    pub dedup_ratio: f64,
}

fn ratio(restore: u64, plain: u64) -> f64 {
    if plain == 0 {
        1.0
    } else {
        restore as f64 / plain as f64
    }
}

pub fn snapshot(repo: &mut Repository, id: &Id) -> Result<SnapshotStats> {
    let _lock = repo.lock(false, "stats")?;
    let repo: &Repository = repo;
    let tree = repo.load_tree(&repo.load_snapshot(id)?.tree)?;
    let mut s = SnapshotStats {
        id: id.to_hex(),
        latest: None,
        files: 0,
        dirs: 0,
        symlinks: 0,
        restore_size: 0,
        chunks: ChunkTotals::default(),
        dedup_ratio: 1.0,
        missing_chunks: 0,
        chains: Chains::default(),
    };
    let mut seen = IdSet::default();
    for node in &tree.nodes {
        match node.kind {
            NodeKind::Dir => s.dirs += 1,
            NodeKind::Symlink => s.symlinks += 1,
            NodeKind::File => {
                s.files += 1;
                s.restore_size += node.size;
            }
        }
        for c in &node.chunks {
            if !seen.insert(*c) {
                continue;
            }
            match repo.index().get(c) {
                Some(loc) => {
                    s.chunks
                        .add(loc.encoding, loc.plain_len as u64, loc.stored_len as u64)
                }
                None => s.missing_chunks += 1,
            }
        }
    }
    s.dedup_ratio = ratio(s.restore_size, s.chunks.plain_bytes);
    s.chains = chains(repo, &seen);
    Ok(s)
}

/// The chains `chunks` end (see [`Chains`]); a walk is bounded like decoding, so a damaged
/// index with a cycle cannot loop forever.
fn chains(repo: &Repository, chunks: &IdSet) -> Chains {
    let index = repo.index();
    let mut c = Chains::default();
    let mut read = chunks.clone();
    for id in chunks {
        let Some(first) = index.delta(id) else {
            continue;
        };
        c.deepest = c.deepest.max(first.depth);
        let mut at = first.base;
        for _ in 0..crate::codec::MAX_READ_CHAIN {
            if !read.insert(at) {
                break;
            }
            c.bases += 1;
            match index.delta(&at) {
                Some(d) => at = d.base,
                None => break,
            }
        }
    }
    c.read_bytes = read
        .iter()
        .filter_map(|id| index.get(id))
        .map(|l| l.stored_len as u64)
        .sum();
    c
}

pub fn repository(repo: &mut Repository) -> Result<RepoStats> {
    let _lock = repo.lock(false, "stats")?;
    let repo: &Repository = repo;
    let snapshots = repo.snapshots()?;
    let mut s = RepoStats {
        snapshots: snapshots.len() as u64,
        packs: 0,
        pack_bytes: 0,
        restore_size: snapshots.iter().map(|(_, s)| s.summary.total_bytes).sum(),
        chunks: ChunkTotals::default(),
        dedup_ratio: 1.0,
    };
    for (_, size) in repo.list_packs()? {
        s.packs += 1;
        s.pack_bytes += size;
    }
    let mut seen = IdSet::default();
    for file in repo.read_index_files()? {
        // A damaged index file is `verify`'s to report; its chunks are not counted.
        let Ok(packs) = file.packs else { continue };
        for e in packs.iter().flat_map(|(_, entries)| entries) {
            if e.kind == BlobKind::Data && seen.insert(e.id) {
                s.chunks
                    .add(e.encoding, e.plain_len as u64, e.stored_len as u64);
            }
        }
    }
    s.dedup_ratio = ratio(s.restore_size, s.chunks.plain_bytes);
    Ok(s)
}
