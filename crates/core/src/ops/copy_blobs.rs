//! The blobs of `copy`: which destination ID each source chunk has, and sending the blobs the
//! destination lacks.
//!
//! IDs are keyed in encrypted repositories, so between repositories with different ID keys a
//! chunk's destination ID needs its plain bytes. A copy keeps chunk boundaries, so the trees of
//! a source snapshot and of its earlier copy, walked side by side, map source chunk IDs to
//! destination IDs one to one: that map is built first, from the index and trees alone, and
//! only the chunks it does not cover are read (planned ranged reads in the source's read pool).
//! Between repositories with the same ID key (plaintext ↔ plaintext) IDs are equal and only
//! what the destination's index lacks is read.
//!
//! A blob is sent as it is stored: its encoded bytes, opened with the source's key and sealed
//! again with the destination's by the pack writer. A delta (encoding 3) goes with its base:
//! bases are sent before the deltas that need them, and the delta's header is rewritten to
//! name its base's destination ID (and the depth of the chain it joins there). So a fine-tuning
//! series that is small in the source is as small in the copy. When the chain would grow past
//! the depth bound there (or the destination is a version-1 repository, which has no deltas
//! nor byte planes), the block is stored whole instead.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use crate::codec::{self, Encoding};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{IdMap, IdSet};
use crate::pack::BlobKind;
use crate::progress::Progress;
use crate::repo::{testing, BlobWriter, Repository};
use crate::snapshot::Snapshot;
use crate::tree::Tree;

/// Plain bytes read from the source per batch (each blob is held encoded and plain).
const BATCH_BYTES: u64 = 32 << 20;

/// A blob read from the source: its encoding, encoded bytes and plain bytes.
type ReadBlob = (Encoding, Vec<u8>, Vec<u8>);

/// What copying one snapshot sent and read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub chunks: u64,
    pub bytes: u64,
    pub chunks_read: u64,
    pub bytes_read: u64,
}

pub struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    writer: BlobWriter<'a>,
    /// Source chunk ID → destination ID, where known (unused when the IDs are equal).
    map: IdMap<Id>,
    same_ids: bool,
    /// Chain depth of each delta sent in this run, by destination ID.
    depths: IdMap<u8>,
    /// Bytes a sealed blob takes beyond its encoded bytes in the destination.
    seal: u64,
    progress: &'a dyn Progress,
}

impl<'a> Copier<'a> {
    pub fn new(
        src: &'a Repository,
        dst: &'a Repository,
        dry_run: bool,
        progress: &'a dyn Progress,
    ) -> Copier<'a> {
        Copier {
            src,
            dst,
            writer: match dry_run {
                true => BlobWriter::dry(dst),
                false => BlobWriter::new(dst),
            },
            map: IdMap::default(),
            same_ids: src.ids() == dst.ids(),
            depths: IdMap::default(),
            seal: match dst.encrypted() {
                true => crate::repo::crypto::OVERHEAD as u64,
                false => 0,
            },
            progress,
        }
    }

    /// Maps source chunks to destination chunks from the destination's earlier copies of
    /// snapshots the source still holds: their trees, walked side by side. A pair whose trees
    /// do not line up (not a copy made by `copy`) is passed over.
    pub fn map_earlier_copies(&mut self, dst_snaps: &[(Id, Snapshot)]) -> Result<()> {
        if self.same_ids {
            return Ok(());
        }
        let in_source: IdSet = self.src.snapshot_ids()?.into_iter().collect();
        let mut conflicts = IdSet::default();
        for (_, copy) in dst_snaps {
            let Some(from) = copy.copied_from.filter(|f| in_source.contains(f)) else {
                continue;
            };
            // An unreadable earlier pair only costs reading its chunks again.
            let Ok(original) = self.src.load_snapshot(&from) else {
                continue;
            };
            let (Ok(a), Ok(b)) = (
                self.src.load_tree(&original.tree),
                self.dst.load_tree(&copy.tree),
            ) else {
                continue;
            };
            let lined_up = a.nodes.len() == b.nodes.len()
                && a.nodes.iter().zip(&b.nodes).all(|(x, y)| {
                    x.path == y.path && x.size == y.size && x.chunks.len() == y.chunks.len()
                });
            if !lined_up {
                continue;
            }
            // Each pair must also agree on its length in both indexes; a chunk two copies
            // map differently is dropped (read again), never trusted.
            let plain = |r: &Repository, id: &Id| r.index().get(id).map(|l| l.plain_len);
            for (x, y) in a.nodes.iter().zip(&b.nodes) {
                for (c, d) in x.chunks.iter().zip(&y.chunks) {
                    if plain(self.src, c).is_none() || plain(self.src, c) != plain(self.dst, d) {
                        conflicts.insert(*c);
                        continue;
                    }
                    if self.map.insert(*c, *d).is_some_and(|old| old != *d) {
                        conflicts.insert(*c);
                    }
                }
            }
        }
        for c in &conflicts {
            self.map.remove(c);
        }
        Ok(())
    }

    /// The destination ID of source chunk `id`, if known without reading it.
    fn dest_id(&self, id: &Id) -> Option<Id> {
        match self.same_ids {
            true => Some(*id),
            false => self.map.get(id).copied(),
        }
    }

    /// Whether chunk `id` must be read: its destination ID is unknown, or the destination
    /// lacks it.
    fn needs(&self, id: &Id) -> bool {
        self.dest_id(id).is_none_or(|d| !self.writer.contains(&d))
    }

    /// Tells the progress what is ahead: the plain bytes of the chunks to read (an upper
    /// bound: chunks found in the destination once read are not sent).
    pub fn start(&self, todo: &[&(Id, Snapshot)]) -> Result<()> {
        let mut seen = IdSet::default();
        let mut bytes = 0;
        for (_, snap) in todo {
            for node in self.src.load_tree(&snap.tree)?.nodes {
                for c in node.chunks {
                    if self.needs(&c) && seen.insert(c) {
                        bytes += self.src.index().get(&c).map_or(0, |l| l.plain_len as u64);
                    }
                }
            }
        }
        self.progress.start(todo.len() as u64, bytes);
        Ok(())
    }

    /// Sends what the destination lacks of `snap`'s chunks and its tree, rewritten with
    /// destination IDs, then writes the index naming every pack stored: the tree's
    /// destination ID, to be named by the snapshot manifest once this returns.
    pub fn snapshot(&mut self, snap: &Snapshot) -> Result<(Id, Sent)> {
        let mut sent = Sent::default();
        let tree = self.src.load_tree(&snap.tree)?;
        let order = self.plan(tree.nodes.iter().flat_map(|n| &n.chunks));
        for batch in batches(self.src, &order) {
            self.send_batch(batch, &mut sent)?;
        }
        let mut nodes = tree.nodes;
        for node in &mut nodes {
            for c in &mut node.chunks {
                *c = self.dest_id(c).ok_or_else(|| {
                    Error::Invalid(format!(
                        "chunk {} was not copied (internal error)",
                        c.short()
                    ))
                })?;
            }
        }
        let bytes = Tree {
            version: tree.version,
            nodes,
        }
        .to_bytes();
        let id = self.dst.ids().of(&bytes);
        if !self.writer.contains(&id) {
            let (encoding, stored) = codec::encode(&bytes, self.dst.config().zstd_level);
            self.writer
                .add(id, BlobKind::Tree, encoding, &stored, bytes.len())?;
            sent.chunks += 1;
            sent.bytes += stored.len() as u64 + self.seal;
        }
        self.writer.save_index_so_far(true)?;
        self.progress.added(self.writer.bytes_added());
        Ok((id, sent))
    }

    /// The chunks to read, each after the delta bases it needs that must be read too.
    fn plan<'c>(&self, chunks: impl Iterator<Item = &'c Id>) -> Vec<Id> {
        let mut order = Vec::new();
        let mut seen = IdSet::default();
        for c in chunks {
            let mut chain = Vec::new();
            let mut next = Some(*c);
            while let Some(id) = next {
                if chain.len() > codec::MAX_READ_CHAIN || !self.needs(&id) || !seen.insert(id) {
                    break;
                }
                chain.push(id);
                next = self.src.index().delta(&id).map(|d| d.base);
            }
            order.extend(chain.into_iter().rev());
        }
        order
    }

    /// Reads `batch` from the source (in parallel, in pack order) and sends each blob the
    /// destination lacks, in the order given (bases first).
    fn send_batch(&mut self, batch: &[Id], sent: &mut Sent) -> Result<()> {
        let read: Mutex<IdMap<ReadBlob>> = Mutex::default();
        self.src
            .read_blobs_encoded(batch, |id, encoding, encoded, plain| {
                self.progress.bytes(plain.len() as u64);
                let blob = (encoding, encoded.to_vec(), plain);
                read.lock().expect("read").insert(*id, blob);
                Ok(())
            })?;
        let mut read = read.into_inner().expect("read");
        for id in batch {
            let (encoding, encoded, plain) = read.remove(id).expect("every blob read");
            sent.chunks_read += 1;
            sent.bytes_read += plain.len() as u64;
            let dest = match self.same_ids {
                true => *id,
                false => self.dst.ids().of(&plain),
            };
            self.map.insert(*id, dest);
            if !self.writer.contains(&dest) {
                let (encoding, stored) = self.translate(dest, encoding, &encoded, &plain)?;
                self.writer
                    .add(dest, BlobKind::Data, encoding, &stored, plain.len())?;
                sent.chunks += 1;
                sent.bytes += stored.len() as u64 + self.seal;
                if self.writer.save_index_so_far(false)? > 0 {
                    self.progress.added(self.writer.bytes_added());
                    testing::pause("copy-indexed");
                }
            }
            // Later deltas of the series decode from it without reading it again.
            self.src.remember(*id, Arc::new(plain));
        }
        Ok(())
    }

    /// How the destination stores a blob the source stores as `encoded`: as it is, a delta
    /// naming its base's destination ID, or (no base, chain too deep, a version-1
    /// destination) encoded anew from `plain`.
    fn translate<'b>(
        &mut self,
        dest: Id,
        encoding: Encoding,
        encoded: &'b [u8],
        plain: &[u8],
    ) -> Result<(Encoding, Cow<'b, [u8]>)> {
        let model_aware = self.dst.config().model_aware();
        match encoding {
            Encoding::Delta if model_aware => {
                let h = codec::delta_header(encoded)?;
                let format = self.dst.config().delta_format();
                // Sparse elements exist only in version 4: another destination gets a keyframe.
                let readable = h.method != codec::SPARSE_ELEMENTS || format.sparse_elements;
                let base = self
                    .dest_id(&h.base)
                    .filter(|b| readable && self.writer.contains(b));
                if let Some(base) = base {
                    let base_depth =
                        self.depths.get(&base).copied().unwrap_or_else(|| {
                            self.dst.index().delta(&base).map_or(0, |d| d.depth)
                        });
                    let depth = base_depth.saturating_add(h.cost());
                    // A dense link only directly on a keyframe (FORMAT.md, "Encoding 3"): at
                    // most one dense decode beyond it, in the destination as in backups.
                    let dense_on_delta = h.cost() == codec::DENSE_DEPTH_COST && base_depth > 0;
                    if depth <= format.max_depth && !dense_on_delta {
                        let mut out = encoded.to_vec();
                        out[..32].copy_from_slice(&base.0);
                        out[32] = depth;
                        self.depths.insert(dest, depth);
                        return Ok((Encoding::Delta, Cow::Owned(out)));
                    }
                }
            }
            Encoding::Delta | Encoding::Planes if !model_aware => {}
            _ => return Ok((encoding, Cow::Borrowed(encoded))),
        }
        let level = self.dst.config().zstd_level;
        if !model_aware {
            let (encoding, stored) = codec::encode(plain, level);
            return Ok((encoding, Cow::Owned(stored)));
        }
        let mut out = Vec::new();
        let encoding = codec::encode_typed(plain, float_width(encoding, encoded), level, &mut out);
        if encoding == Encoding::Raw {
            out = plain.to_vec();
        }
        Ok((encoding, Cow::Owned(out)))
    }

    /// Stores the last pack and index (nothing is left by then); the bytes written to the
    /// destination in all.
    pub fn finish(self) -> Result<u64> {
        self.writer.finish()
    }
}

/// The float width a blob's encoding records (byte planes, or a dense delta stored as planes
/// start with it), so a block stored whole again keeps its byte planes; 0 when unknown.
fn float_width(encoding: Encoding, encoded: &[u8]) -> u8 {
    let at = match encoding {
        Encoding::Planes => 0,
        Encoding::Delta => match codec::delta_header(encoded) {
            Ok(h) if h.method == Encoding::Planes as u8 => codec::DELTA_HEADER,
            _ => return 0,
        },
        _ => return 0,
    };
    encoded
        .get(at)
        .copied()
        .filter(|w| matches!(w, 2 | 4 | 8))
        .unwrap_or(0)
}

/// `order` cut into runs of about [`BATCH_BYTES`] plain bytes.
fn batches<'o>(src: &Repository, order: &'o [Id]) -> Vec<&'o [Id]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, id) in order.iter().enumerate() {
        bytes += src.index().get(id).map_or(0, |l| l.plain_len as u64);
        if bytes >= BATCH_BYTES {
            out.push(&order[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < order.len() {
        out.push(&order[start..]);
    }
    out
}
