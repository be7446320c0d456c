//! The chunk index: chunk ID → where its blob lives. Stored as immutable index files (one per
//! backup), merged in memory at open. Layout in `repo/FORMAT.md`.
//!
//! A chunk may be stored more than once (two backups that ran at once each store what neither
//! found indexed, one as a delta, the other whole). The merged index reads one copy, the same
//! whatever order the files are read in: the shortest chain (a keyframe first), then the
//! smallest pack ID and offset. Reading a delta's bases through that rule ends: a delta's depth
//! exceeds the depth its base had when it was written, which is at least the depth of the
//! base's preferred copy now (prune keeps the preferred copy of every chunk it keeps; should
//! repair drop a damaged one, readers still refuse a chain longer than 64 links).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::codec::Encoding;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::{BlobKind, PackEntry};

pub const MAGIC: &[u8; 8] = b"TVINDX01";

/// IDs are already uniform hashes: their first 8 bytes are a perfect hash key.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `Id` hashes as its byte array: a length prefix, then the 32 bytes.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

pub type IdMap<V> = HashMap<Id, V, BuildHasherDefault<IdHasher>>;
pub type IdSet = HashSet<Id, BuildHasherDefault<IdHasher>>;

/// Where one blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Position of the pack in `Index::packs`.
    pub pack: u32,
    pub kind: BlobKind,
    pub encoding: Encoding,
    pub offset: u32,
    pub stored_len: u32,
    pub plain_len: u32,
}

/// A delta blob's base and chain depth (encoding 3; see `repo/FORMAT.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaRef {
    pub base: Id,
    pub depth: u8,
}

/// The deltas among one pack's blobs, by blob ID.
pub type Deltas = IdMap<DeltaRef>;

/// One pack as an index file lists it: its ID, its blobs, and the bases of its delta blobs.
pub type PackList = Vec<(Id, Vec<PackEntry>, Deltas)>;

/// All index files of a repository, merged.
#[derive(Default)]
pub struct Index {
    pub packs: Vec<Id>,
    pack_pos: IdMap<u32>,
    blobs: IdMap<Location>,
    /// Base and depth of every delta blob, for the copy `blobs` names.
    deltas: IdMap<DeltaRef>,
}

/// How much a copy of a blob is preferred: the smallest wins (see the module docs).
fn rank(pack: &Id, offset: u32, delta: Option<&DeltaRef>) -> (u8, Id, u32) {
    (delta.map_or(0, |d| d.depth), *pack, offset)
}

impl Index {
    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn pack_id(&self, loc: &Location) -> Id {
        self.packs[loc.pack as usize]
    }

    /// The base and depth of a delta blob; `None` for any other blob.
    pub fn delta(&self, id: &Id) -> Option<DeltaRef> {
        self.deltas.get(id).copied()
    }

    /// The keyframe a delta's chain ends in (the blob itself when it is no delta). Bounded like
    /// decoding, so a damaged index with a cycle cannot loop forever.
    pub fn keyframe_of(&self, id: &Id) -> Id {
        let mut at = *id;
        for _ in 0..=crate::codec::MAX_READ_CHAIN {
            match self.delta(&at) {
                Some(d) => at = d.base,
                None => break,
            }
        }
        at
    }

    /// Every delta blob and its base.
    pub fn deltas(&self) -> impl Iterator<Item = (&Id, &DeltaRef)> {
        self.deltas.iter()
    }

    /// Forgets the copy of `id` the index reads (`repair packs`, before adding sound copies
    /// back with [`Index::add_pack_with`]).
    pub fn remove(&mut self, id: &Id) {
        self.blobs.remove(id);
        self.deltas.remove(id);
    }

    pub fn add_pack(&mut self, pack: Id, entries: &[PackEntry]) {
        self.add_pack_with(pack, entries, &Deltas::default())
    }

    /// Adds a pack's blobs; `deltas` gives the base of each delta blob among them. A blob
    /// already indexed keeps the copy of the smaller [`rank`] (a keyframe over a delta, a short
    /// chain over a long one), so the copy read does not depend on the order packs are added.
    pub fn add_pack_with(&mut self, pack: Id, entries: &[PackEntry], deltas: &Deltas) {
        let pos = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        });
        for e in entries {
            let delta = deltas.get(&e.id);
            if let Some(have) = self.blobs.get(&e.id) {
                let had = rank(
                    &self.packs[have.pack as usize],
                    have.offset,
                    self.deltas.get(&e.id),
                );
                if had <= rank(&pack, e.offset, delta) {
                    continue;
                }
            }
            self.blobs.insert(
                e.id,
                Location {
                    pack: pos,
                    kind: e.kind,
                    encoding: e.encoding,
                    offset: e.offset,
                    stored_len: e.stored_len,
                    plain_len: e.plain_len,
                },
            );
            match delta {
                Some(d) => self.deltas.insert(e.id, *d),
                None => self.deltas.remove(&e.id),
            };
        }
    }
}

/// A pack's index entries rebuilt from the pack alone (a pack describes itself): its trailer,
/// and for each delta blob the base and depth its own header holds.
/// In an encrypted repository (`crypto`) the trailer and each delta blob are opened.
pub fn entries_of_pack(
    name: &str,
    pack: &[u8],
    crypto: Option<&crate::repo::crypto::Crypto>,
) -> Result<(Vec<PackEntry>, Deltas)> {
    let entries = crate::pack::read_trailer(name, pack, crypto)?;
    let mut deltas = Deltas::default();
    for e in entries.iter().filter(|e| e.encoding == Encoding::Delta) {
        let sealed = &pack[e.offset as usize..(e.offset + e.stored_len) as usize];
        let opened;
        let stored = match crypto {
            Some(c) => {
                opened = c.open(&crate::pack::blob_aad(&e.id), sealed).map_err(|_| {
                    Error::corrupt(
                        name,
                        format!("delta blob {} does not authenticate", e.id.short()),
                    )
                })?;
                &opened[..]
            }
            None => sealed,
        };
        let h = crate::codec::delta_header(stored)
            .map_err(|err| Error::corrupt(name, format!("delta blob {}: {err}", e.id.short())))?;
        if h.depth == 0 {
            return Err(Error::corrupt(
                name,
                format!("delta blob {} of depth 0", e.id.short()),
            ));
        }
        deltas.insert(
            e.id,
            DeltaRef {
                base: h.base,
                depth: h.depth,
            },
        );
    }
    Ok((entries, deltas))
}

/// Serialises one index file: the packs written by one backup, their blobs, and for each delta
/// blob (encoding 3) its depth (in the entry's first reserved byte) and base (after the entry).
/// Every delta blob must have its base in `deltas`.
pub fn encode_file(packs: &[(Id, Vec<PackEntry>, Deltas)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (pack, entries, deltas) in packs {
        out.extend_from_slice(&pack.0);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            let at = out.len();
            crate::pack::write_entry(&mut out, e);
            out.extend_from_slice(&e.offset.to_le_bytes());
            if e.encoding == Encoding::Delta {
                let d = deltas.get(&e.id).expect("every delta blob has its base");
                out[at + 34] = d.depth;
                out.extend_from_slice(&d.base.0);
            }
        }
    }
    out
}

/// Parses an index file, checking that its name is the hash of its content (`ids`: keyed in
/// an encrypted repository).
pub fn decode_file(
    name: &str,
    expected: Id,
    bytes: &[u8],
    ids: crate::id::Ids,
) -> Result<PackList> {
    let bad = |reason: &str| Error::corrupt(name, reason.to_string());
    if ids.of(bytes) != expected {
        return Err(bad("content does not match its name (damaged)"));
    }
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(bad("not a tvault index file"));
    }
    let mut r = Reader { bytes, at: 8 };
    let count = r.u32().ok_or_else(|| bad("truncated"))?;
    let mut packs = Vec::new();
    for _ in 0..count {
        let pack = r.id().ok_or_else(|| bad("truncated"))?;
        let n = r.u32().ok_or_else(|| bad("truncated"))?;
        let mut entries = Vec::new();
        let mut deltas = Deltas::default();
        for _ in 0..n {
            let id = r.id().ok_or_else(|| bad("truncated"))?;
            let head = r.take(4).ok_or_else(|| bad("truncated"))?;
            let kind = BlobKind::from_u8(head[0]).ok_or_else(|| bad("unknown blob kind"))?;
            let encoding = Encoding::from_u8(head[1]).ok_or_else(|| bad("unknown encoding"))?;
            let stored_len = r.u32().ok_or_else(|| bad("truncated"))?;
            let plain_len = r.u32().ok_or_else(|| bad("truncated"))?;
            let offset = r.u32().ok_or_else(|| bad("truncated"))?;
            if encoding == Encoding::Delta {
                let base = r.id().ok_or_else(|| bad("truncated"))?;
                if head[2] == 0 {
                    return Err(bad("delta entry of depth 0"));
                }
                deltas.insert(
                    id,
                    DeltaRef {
                        base,
                        depth: head[2],
                    },
                );
            }
            entries.push(PackEntry {
                id,
                kind,
                encoding,
                offset,
                stored_len,
                plain_len,
            });
        }
        packs.push((pack, entries, deltas));
    }
    if r.at != bytes.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(packs)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn id(&mut self) -> Option<Id> {
        Some(Id(self.take(32)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, offset: u32) -> PackEntry {
        PackEntry {
            id: Id::of(&[n]),
            kind: BlobKind::Data,
            encoding: Encoding::Zstd,
            offset,
            stored_len: 10 + n as u32,
            plain_len: 100,
        }
    }

    #[test]
    fn index_file_round_trips_and_detects_damage() {
        let mut delta = entry(4, 30);
        delta.encoding = Encoding::Delta;
        let mut deltas = Deltas::default();
        deltas.insert(
            delta.id,
            DeltaRef {
                base: Id::of(&[1]),
                depth: 5,
            },
        );
        let packs = vec![
            (
                Id::of(b"p1"),
                vec![entry(1, 8), entry(2, 19)],
                Deltas::default(),
            ),
            (Id::of(b"p2"), vec![entry(3, 8), delta], deltas),
        ];
        let bytes = encode_file(&packs);
        let id = Id::of(&bytes);
        assert_eq!(
            decode_file("i", id, &bytes, crate::id::Ids::PLAIN).unwrap(),
            packs
        );

        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(decode_file("i", id, &flipped, crate::id::Ids::PLAIN).is_err());
        let cut = &bytes[..bytes.len() - 3];
        assert!(decode_file("i", Id::of(cut), cut, crate::id::Ids::PLAIN).is_err());
    }

    #[test]
    fn merged_index_finds_blobs_in_their_packs() {
        let mut index = Index::default();
        index.add_pack(Id::of(b"p1"), &[entry(1, 8), entry(2, 19)]);
        index.add_pack(Id::of(b"p2"), &[entry(3, 8), entry(1, 50)]);
        assert_eq!(index.len(), 3);
        let loc = index.get(&Id::of(&[3])).unwrap();
        assert_eq!(index.pack_id(loc), Id::of(b"p2"));
        assert!(!index.contains(&Id::of(&[9])));
    }

    /// A pack holding blob 1 as a delta of `depth` against blob 9 (at offset 8).
    fn delta_pack(name: &[u8], depth: u8) -> (Id, Vec<PackEntry>, Deltas) {
        let mut e = entry(1, 8);
        e.encoding = Encoding::Delta;
        let mut deltas = Deltas::default();
        let base = Id::of(&[9]);
        deltas.insert(e.id, DeltaRef { base, depth });
        (Id::of(name), vec![e], deltas)
    }

    #[test]
    fn the_copy_read_is_the_shortest_chain_whatever_the_order_of_the_files() {
        let whole = (Id::of(b"whole"), vec![entry(1, 8)], Deltas::default());
        let copies = [
            delta_pack(b"deep", 5),
            whole.clone(),
            delta_pack(b"shallow", 1),
        ];
        // Every order of the three copies gives the whole one; of the two deltas, the shallow.
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let mut index = Index::default();
            for i in order {
                let (pack, entries, deltas) = &copies[i];
                index.add_pack_with(*pack, entries, deltas);
            }
            let loc = index.get(&Id::of(&[1])).unwrap();
            assert_eq!(index.pack_id(loc), whole.0, "order {order:?}");
            assert_eq!(loc.encoding, Encoding::Zstd);
            assert_eq!(index.delta(&Id::of(&[1])), None, "order {order:?}");
            let mut deltas_only = Index::default();
            for i in order.into_iter().filter(|&i| i != 1) {
                let (pack, entries, deltas) = &copies[i];
                deltas_only.add_pack_with(*pack, entries, deltas);
            }
            assert_eq!(deltas_only.delta(&Id::of(&[1])).unwrap().depth, 1);
        }
        // Two keyframes: the smaller pack ID, in either order.
        let (a, b) = (Id::of(b"p1"), Id::of(b"p2"));
        let first = a.min(b);
        for (x, y) in [(a, b), (b, a)] {
            let mut index = Index::default();
            index.add_pack(x, &[entry(1, 8)]);
            index.add_pack(y, &[entry(1, 50)]);
            assert_eq!(index.pack_id(index.get(&Id::of(&[1])).unwrap()), first);
        }
    }
}
