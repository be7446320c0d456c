//! Pack files: many encoded blobs back to back, followed by a trailer that lists them, so a
//! pack describes itself (an index can be rebuilt from packs alone). Layout in `repo/FORMAT.md`.
//! In an encrypted repository each blob is sealed on its own (so one blob is still read with
//! one ranged read) and so is the trailer; sealing happens in [`PackWriter::finish`], which
//! runs on the thread that stores the pack.

use std::sync::Arc;

use crate::codec::Encoding;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::crypto::{Crypto, NONCE_LEN, OVERHEAD, TAG_LEN};

pub const MAGIC: &[u8; 8] = b"TVPACK01";
/// The magic of a pack of an encrypted repository (sealed blobs and trailer).
pub const SEALED_MAGIC: &[u8; 8] = b"TVPACKS1";
pub const TRAILER_MAGIC: &[u8; 8] = b"TVPKEND1";
const ENTRY_LEN: usize = 32 + 1 + 1 + 2 + 4 + 4;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Option<BlobKind> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// One blob's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub kind: BlobKind,
    pub encoding: Encoding,
    pub offset: u32,
    pub stored_len: u32,
    pub plain_len: u32,
}

/// Associated data of a sealed blob: binds it to its ID (wherever it is copied).
pub fn blob_aad(id: &Id) -> Vec<u8> {
    let mut aad = b"tvault blob\0".to_vec();
    aad.extend_from_slice(&id.0);
    aad
}

/// Associated data of a sealed pack trailer.
const TRAILER_AAD: &[u8] = b"tvault pack trailer";

/// Collects blobs into one pack in memory until it is large enough to store.
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    /// Set in an encrypted repository: blobs and trailer are sealed in `finish`.
    crypto: Option<Arc<Crypto>>,
}

impl Default for PackWriter {
    fn default() -> Self {
        PackWriter::new()
    }
}

impl PackWriter {
    pub fn new() -> PackWriter {
        PackWriter::sealed(None)
    }

    /// A writer whose blobs and trailer are sealed with `crypto` (if any).
    pub fn sealed(crypto: Option<Arc<Crypto>>) -> PackWriter {
        PackWriter::sealed_into(crypto, Vec::new())
    }

    /// Like [`PackWriter::sealed`], filling `buf` (cleared first): a finished pack's buffer
    /// reused, its pages already mapped.
    pub fn sealed_into(crypto: Option<Arc<Crypto>>, mut buf: Vec<u8>) -> PackWriter {
        let magic = if crypto.is_some() {
            SEALED_MAGIC
        } else {
            MAGIC
        };
        buf.clear();
        buf.extend_from_slice(magic);
        PackWriter {
            buf,
            entries: Vec::new(),
            crypto,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(
        &mut self,
        id: Id,
        kind: BlobKind,
        encoding: Encoding,
        stored: &[u8],
        plain_len: usize,
    ) {
        let overhead = if self.crypto.is_some() { OVERHEAD } else { 0 };
        let entry = PackEntry {
            id,
            kind,
            encoding,
            offset: self.buf.len() as u32,
            stored_len: (stored.len() + overhead) as u32,
            plain_len: plain_len as u32,
        };
        if self.crypto.is_some() {
            // Room for the nonce and the tag: the blob is sealed in place by `finish`.
            self.buf.extend_from_slice(&[0; NONCE_LEN]);
            self.buf.extend_from_slice(stored);
            self.buf.extend_from_slice(&[0; TAG_LEN]);
        } else {
            self.buf.extend_from_slice(stored);
        }
        self.entries.push(entry);
    }

    /// Finishes the pack: its bytes (ID = their hash) and the blobs in it. In an encrypted
    /// repository each blob is sealed here (one pass over its bytes), then the trailer.
    pub fn finish(mut self) -> (Id, Vec<u8>, Vec<PackEntry>) {
        let trailer_start = self.buf.len();
        if let Some(c) = &self.crypto {
            for e in &self.entries {
                let span = e.offset as usize..(e.offset + e.stored_len) as usize;
                c.seal_in_place(&blob_aad(&e.id), &mut self.buf[span]);
            }
            let mut trailer = Vec::with_capacity(ENTRY_LEN * self.entries.len());
            for e in &self.entries {
                write_entry(&mut trailer, e);
            }
            let sealed = c.seal(TRAILER_AAD, &trailer);
            self.buf.extend_from_slice(&sealed);
        } else {
            for e in &self.entries {
                write_entry(&mut self.buf, e);
            }
        }
        let trailer_len = (self.buf.len() - trailer_start) as u32;
        self.buf.extend_from_slice(&trailer_len.to_le_bytes());
        self.buf.extend_from_slice(TRAILER_MAGIC);
        (Id::of(&self.buf), self.buf, self.entries)
    }
}

/// The size of a pack holding exactly `entries`: header, blobs, trailer (sealed: `OVERHEAD`
/// bytes more).
pub fn size_for(entries: &[PackEntry], sealed: bool) -> u64 {
    let stored: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
    let seal = if sealed { OVERHEAD as u64 } else { 0 };
    (MAGIC.len() + 12) as u64 + stored + (ENTRY_LEN * entries.len()) as u64 + seal
}

pub(crate) fn write_entry(out: &mut Vec<u8>, e: &PackEntry) {
    out.extend_from_slice(&e.id.0);
    out.push(e.kind as u8);
    out.push(e.encoding as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&e.stored_len.to_le_bytes());
    out.extend_from_slice(&e.plain_len.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Parses a whole pack's trailer (opened with `crypto` in an encrypted repository) and checks
/// that its blobs tile the body exactly.
pub fn read_trailer(name: &str, pack: &[u8], crypto: Option<&Crypto>) -> Result<Vec<PackEntry>> {
    let bad = |reason: &str| Error::corrupt(name, reason.to_string());
    let magic = if crypto.is_some() {
        SEALED_MAGIC
    } else {
        MAGIC
    };
    if pack.len() < MAGIC.len() + 12 || &pack[..8] != magic {
        let other = if crypto.is_some() {
            MAGIC
        } else {
            SEALED_MAGIC
        };
        if pack.len() >= 8 && &pack[..8] == other {
            return Err(bad("a pack of a repository with other encryption settings"));
        }
        return Err(bad("not a tvault pack (bad header)"));
    }
    if &pack[pack.len() - 8..] != TRAILER_MAGIC {
        return Err(bad("truncated or damaged pack (no trailer)"));
    }
    let trailer_len = u32_at(pack, pack.len() - 12) as usize;
    let body_end = pack
        .len()
        .checked_sub(12 + trailer_len)
        .filter(|&end| end >= MAGIC.len())
        .ok_or_else(|| bad("trailer length out of range"))?;
    let sealed = &pack[body_end..body_end + trailer_len];
    let opened;
    let trailer = match crypto {
        Some(c) => {
            opened = c.open(TRAILER_AAD, sealed).map_err(|_| {
                bad("its trailer does not authenticate (damaged, or not this repository's)")
            })?;
            &opened[..]
        }
        None => sealed,
    };
    if trailer.len() % ENTRY_LEN != 0 {
        return Err(bad("trailer length out of range"));
    }
    let mut entries = Vec::with_capacity(trailer.len() / ENTRY_LEN);
    let mut offset = MAGIC.len() as u32;
    for raw in trailer.chunks(ENTRY_LEN) {
        let entry = PackEntry {
            id: Id(raw[..32].try_into().unwrap()),
            kind: BlobKind::from_u8(raw[32]).ok_or_else(|| bad("unknown blob kind"))?,
            encoding: Encoding::from_u8(raw[33]).ok_or_else(|| bad("unknown encoding"))?,
            offset,
            stored_len: u32_at(raw, 36),
            plain_len: u32_at(raw, 40),
        };
        offset = offset
            .checked_add(entry.stored_len)
            .ok_or_else(|| bad("blob lengths overflow"))?;
        entries.push(entry);
    }
    if offset as usize != body_end {
        return Err(bad("blobs do not fill the pack body"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_through_its_trailer() {
        let mut w = PackWriter::new();
        w.add(Id::of(b"a"), BlobKind::Data, Encoding::Raw, b"aaaa", 4);
        w.add(Id::of(b"b"), BlobKind::Tree, Encoding::Zstd, b"zz", 9);
        let (id, bytes, entries) = w.finish();
        assert_eq!(id, Id::of(&bytes));
        assert_eq!(size_for(&entries, false), bytes.len() as u64);
        let parsed = read_trailer("p", &bytes, None).unwrap();
        assert_eq!(parsed, entries);
        assert_eq!(&bytes[parsed[1].offset as usize..][..2], b"zz");
    }

    #[test]
    fn truncated_or_foreign_packs_are_rejected() {
        let mut w = PackWriter::new();
        w.add(Id::of(b"a"), BlobKind::Data, Encoding::Raw, b"aaaa", 4);
        let (_, bytes, _) = w.finish();
        assert!(read_trailer("p", &bytes[..bytes.len() - 1], None).is_err());
        assert!(read_trailer("p", b"hello world, this is not a pack", None).is_err());
        let mut shifted = bytes.clone();
        shifted.insert(10, 0);
        assert!(read_trailer("p", &shifted, None).is_err());
    }

    #[test]
    fn a_sealed_pack_hides_its_blobs_and_trailer_and_detects_tampering() {
        use crate::repo::crypto::MasterKey;
        let c = Arc::new(Crypto::new(&MasterKey::random()));
        let mut w = PackWriter::sealed(Some(c.clone()));
        w.add(
            Id::of(b"a"),
            BlobKind::Data,
            Encoding::Raw,
            b"secret-aaaa",
            11,
        );
        w.add(Id::of(b"b"), BlobKind::Tree, Encoding::Zstd, b"zz", 9);
        let (id, bytes, entries) = w.finish();
        assert_eq!(id, Id::of(&bytes));
        assert_eq!(size_for(&entries, true), bytes.len() as u64);
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        assert!(!bytes.windows(32).any(|w| w == Id::of(b"a").0));
        let parsed = read_trailer("p", &bytes, Some(&c)).unwrap();
        assert_eq!(parsed, entries);
        let blob = &bytes[parsed[0].offset as usize..][..parsed[0].stored_len as usize];
        assert_eq!(
            c.open(&blob_aad(&Id::of(b"a")), blob).unwrap(),
            b"secret-aaaa"
        );
        assert!(c.open(&blob_aad(&Id::of(b"b")), blob).is_err());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(read_trailer("p", &flipped, Some(&c)).is_err());
        assert!(read_trailer("p", &bytes, None).is_err());
        let other = Crypto::new(&MasterKey::random());
        assert!(read_trailer("p", &bytes, Some(&other)).is_err());
    }
}
