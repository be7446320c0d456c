//! The chunk index: chunk ID → where its blob lives. Stored as immutable index files (one per
//! backup), merged in memory at open. Layout in `repo/FORMAT.md`.

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

/// All index files of a repository, merged.
#[derive(Default)]
pub struct Index {
    pub packs: Vec<Id>,
    pack_pos: IdMap<u32>,
    blobs: IdMap<Location>,
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

    pub fn add_pack(&mut self, pack: Id, entries: &[PackEntry]) {
        let pos = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        });
        for e in entries {
            self.blobs.entry(e.id).or_insert(Location {
                pack: pos,
                kind: e.kind,
                encoding: e.encoding,
                offset: e.offset,
                stored_len: e.stored_len,
                plain_len: e.plain_len,
            });
        }
    }
}

/// Serialises one index file: the packs written by one backup and their blobs.
pub fn encode_file(packs: &[(Id, Vec<PackEntry>)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (pack, entries) in packs {
        out.extend_from_slice(&pack.0);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in entries {
            crate::pack::write_entry(&mut out, e);
            out.extend_from_slice(&e.offset.to_le_bytes());
        }
    }
    out
}

/// Parses an index file, checking that its name is the hash of its content.
pub fn decode_file(name: &str, expected: Id, bytes: &[u8]) -> Result<Vec<(Id, Vec<PackEntry>)>> {
    let bad = |reason: &str| Error::corrupt(name, reason.to_string());
    if Id::of(bytes) != expected {
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
        for _ in 0..n {
            let id = r.id().ok_or_else(|| bad("truncated"))?;
            let head = r.take(4).ok_or_else(|| bad("truncated"))?;
            let kind = BlobKind::from_u8(head[0]).ok_or_else(|| bad("unknown blob kind"))?;
            let encoding = Encoding::from_u8(head[1]).ok_or_else(|| bad("unknown encoding"))?;
            let stored_len = r.u32().ok_or_else(|| bad("truncated"))?;
            let plain_len = r.u32().ok_or_else(|| bad("truncated"))?;
            let offset = r.u32().ok_or_else(|| bad("truncated"))?;
            entries.push(PackEntry {
                id,
                kind,
                encoding,
                offset,
                stored_len,
                plain_len,
            });
        }
        packs.push((pack, entries));
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
        let packs = vec![
            (Id::of(b"p1"), vec![entry(1, 8), entry(2, 19)]),
            (Id::of(b"p2"), vec![entry(3, 8)]),
        ];
        let bytes = encode_file(&packs);
        let id = Id::of(&bytes);
        assert_eq!(decode_file("i", id, &bytes).unwrap(), packs);

        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert!(decode_file("i", id, &flipped).is_err());
        let cut = &bytes[..bytes.len() - 3];
        assert!(decode_file("i", Id::of(cut), cut).is_err());
    }

    #[test]
    fn merged_index_finds_blobs_in_their_packs() {
        let mut index = Index::default();
        index.add_pack(Id::of(b"p1"), &[entry(1, 8), entry(2, 19)]);
        index.add_pack(Id::of(b"p2"), &[entry(3, 8), entry(1, 50)]);
        assert_eq!(index.len(), 3);
        let loc = index.get(&Id::of(&[3])).unwrap();
        assert_eq!(index.pack_id(loc), Id::of(b"p2"));
        // The first place a blob was recorded wins; a duplicate elsewhere is harmless.
        let loc = index.get(&Id::of(&[1])).unwrap();
        assert_eq!((index.pack_id(loc), loc.offset), (Id::of(b"p1"), 8));
        assert!(!index.contains(&Id::of(&[9])));
    }
}
