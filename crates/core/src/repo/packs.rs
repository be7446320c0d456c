//! Reading packs, for the commands that work pack by pack: planned reads of many blobs (one
//! ranged read per stretch of neighbouring blobs of a pack, see `storage::plan_reads`; plain
//! with deltas' chains read alongside, see `chains`, or encoded as well for `copy`), the
//! whole-pack check of `verify --read-data` and `repair packs`, the checked copy of blobs into
//! new packs (prune's repack, `repair packs`), and a pack's entries rebuilt from the pack
//! itself (`repair index`). The pack layout stays in `pack.rs`; callers get entries and bytes.

use rayon::prelude::*;

use super::storage::{plan_reads, Handle, ObjectKind, PlannedRead, READ_GAP, READ_MAX};
use super::{PackSink, Repository};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{self, IdMap, IdSet};
use crate::pack::{BlobKind, PackEntry};

/// What reading one whole pack found: whether it hashes to its name, and its damaged blobs.
pub struct PackCheck {
    pub pack: Id,
    pub bytes: u64,
    pub blobs: usize,
    pub hash_ok: bool,
    /// The pack could not be read at all.
    pub unreadable: Option<Error>,
    pub bad_blobs: Vec<(Id, String)>,
    /// Blobs of a sound pack left for [`Repository::check_deltas`] (deltas, their keyframes).
    pub deferred: Vec<Id>,
}

/// What is wrong with a blob that did not decode, in a verify report's words.
fn blob_problem(err: Error) -> String {
    match err {
        Error::CorruptChunk { reason, .. } if reason.contains("does not match") => {
            "content does not match its ID".into()
        }
        Error::CorruptChunk { reason, .. } => format!("cannot be decoded ({reason})"),
        err => format!("cannot be decoded ({err})"),
    }
}

impl Repository {
    /// Every pack in the repository with its size (also those no index lists, and names that
    /// are not pack IDs: [`Handle::id`] tells).
    pub fn list_packs(&self) -> Result<Vec<(Handle, u64)>> {
        self.storage.list(ObjectKind::Pack)
    }

    /// The size a pack has when it holds exactly `entries` (see FORMAT.md, "Packs").
    pub fn expected_pack_size(&self, entries: &[PackEntry]) -> u64 {
        crate::pack::size_for(entries, self.encrypted())
    }

    /// The stored bytes of `entries` (blobs of `pack`), in their order, read with as few
    /// ranged reads as neighbouring blobs allow. Nothing is decoded or checked.
    pub fn read_blobs(&self, pack: &Id, entries: &[PackEntry]) -> Result<Vec<Vec<u8>>> {
        let ranges: Vec<_> = entries.iter().map(blob_range).collect();
        let mut out = vec![Vec::new(); entries.len()];
        for read in plan_reads(&ranges, READ_GAP, READ_MAX) {
            let bytes = self.read_span(pack, &read, |i| entries[i].id)?;
            for (i, r) in read.parts {
                out[i] = bytes[r].to_vec();
            }
        }
        Ok(out)
    }

    /// Reads, decodes and re-hashes the blobs `ids` (repeats allowed) and hands each one's
    /// plain bytes to `each` with every position it has in `ids`. Reads are planned per pack
    /// (neighbouring blobs in one ranged read, in pack order) and run in parallel; memory holds
    /// the reads in flight, a few MiB each. A delta's chain of bases is read in the same
    /// planned reads, a batch of deltas at a time (see `chains`), and held until the batch's
    /// deltas are rebuilt: up to 64 MiB more. Stops at the first error.
    pub fn read_blobs_planned<F>(&self, ids: &[Id], each: F) -> Result<()>
    where
        F: Fn(&[usize], &[u8]) -> Result<()> + Sync,
    {
        // Each distinct blob once, with the positions it fills.
        let mut positions: IdMap<Vec<usize>> = IdMap::default();
        let mut unique: Vec<Id> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            positions
                .entry(*id)
                .or_insert_with(|| {
                    unique.push(*id);
                    Vec::new()
                })
                .push(i);
        }
        self.read_chains_planned(&unique, &positions, &each)
    }

    /// Like [`Repository::read_blobs_planned`] for distinct `ids`, handing `each` a blob's
    /// encoding, its encoded bytes (unsealed, as a [`PackSink`] takes them) and its plain
    /// bytes, decoded and re-hashed (`copy`, which re-seals blobs for another repository).
    pub fn read_blobs_encoded<F>(&self, ids: &[Id], each: F) -> Result<()>
    where
        F: Fn(&Id, crate::codec::Encoding, &[u8], Vec<u8>) -> Result<()> + Sync,
    {
        self.read_stored_planned(ids, |id, pack, loc, stored| {
            let encoded = self.unseal(id, pack, stored)?;
            let plain =
                self.decode_encoded(id, pack, loc.encoding, &encoded, loc.plain_len as usize)?;
            each(id, loc.encoding, &encoded, plain)
        })
    }

    /// The planned, parallel reads of distinct blobs `ids`: `each` gets a blob's ID, pack,
    /// location and stored bytes.
    fn read_stored_planned<F>(&self, unique: &[Id], each: F) -> Result<()>
    where
        F: Fn(&Id, &Id, &index::Location, &[u8]) -> Result<()> + Sync,
    {
        self.read_stored_planned_sparing(unique, each, |_| false)
    }

    /// [`Repository::read_stored_planned`] where a read that fails is no error when every
    /// blob it serves is `spared` (those blobs are left out: `each` never gets them).
    pub(super) fn read_stored_planned_sparing<F, S>(
        &self,
        unique: &[Id],
        each: F,
        spared: S,
    ) -> Result<()>
    where
        F: Fn(&Id, &Id, &index::Location, &[u8]) -> Result<()> + Sync,
        S: Fn(&Id) -> bool + Sync,
    {
        let mut by_pack: IdMap<Vec<(Id, index::Location)>> = IdMap::default();
        for id in unique {
            let loc = *self
                .index
                .get(id)
                .ok_or_else(|| Error::MissingChunk { id: id.to_hex() })?;
            by_pack
                .entry(self.index.pack_id(&loc))
                .or_default()
                .push((*id, loc));
        }
        let mut packs: Vec<(Id, Vec<(Id, index::Location)>)> = by_pack.into_iter().collect();
        packs.sort_by_key(|(pack, _)| *pack);
        let mut reads = Vec::new();
        for (pack, blobs) in &packs {
            let ranges: Vec<_> = blobs
                .iter()
                .map(|(_, l)| l.offset as u64..l.offset as u64 + l.stored_len as u64)
                .collect();
            reads.extend(
                plan_reads(&ranges, READ_GAP, READ_MAX)
                    .into_iter()
                    .map(|read| (pack, blobs, read)),
            );
        }
        self.with_read_slots(|| {
            reads.par_iter().try_for_each(|(pack, blobs, read)| {
                let bytes = match self.read_span(pack, read, |i| blobs[i].0) {
                    Ok(bytes) => bytes,
                    Err(_) if read.parts.iter().all(|(i, _)| spared(&blobs[*i].0)) => return Ok(()),
                    Err(e) => return Err(e),
                };
                // The parts of one read are decoded in parallel too: a read of small deltas
                // holds hundreds of blocks' worth of decoding (each resolves its keyframe),
                // which one thread did alone (a sharded fine-tune restored at 1.2 cores).
                read.parts.par_iter().try_for_each(|(i, r)| {
                    let (id, loc) = &blobs[*i];
                    each(id, pack, loc, &bytes[r.clone()])
                })
            })
        })
    }

    /// One planned read of `pack`. A pack shorter than the read is damage, named by the first
    /// blob the read serves that lies past the pack's end (`blob` gives a part's blob ID) and
    /// its pack: the blobs of the read before it are whole.
    fn read_span(
        &self,
        pack: &Id,
        read: &PlannedRead,
        blob: impl Fn(usize) -> Id,
    ) -> Result<Vec<u8>> {
        let object = Handle::pack(pack);
        let len = (read.span.end - read.span.start) as usize;
        match self.storage.get_range(&object, read.span.start, len) {
            Err(e) if is_short_read(&e) => {}
            other => return other,
        }
        // Which part is cut: the first (parts are in offset order) whose last byte is missing.
        let mut past = read.parts[0].0;
        for (i, r) in &read.parts {
            let Some(last) = (r.end as u64).checked_sub(1) else {
                continue;
            };
            match self.storage.get_range(&object, read.span.start + last, 1) {
                Ok(_) => {}
                Err(e) if is_short_read(&e) => {
                    past = *i;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::CorruptChunk {
            id: blob(past).to_hex(),
            pack: pack.to_hex(),
            reason: "lies beyond the end of its pack (truncated?)".into(),
        })
    }

    /// Copies `entries` of `pack` into `sink`, each decoded and re-hashed first, so that a copy
    /// never launders damage into a fresh pack (a damaged blob is a
    /// [`Error::CorruptChunk`] naming it and the pack). Returns the bytes read.
    pub fn copy_blobs(&self, sink: &mut PackSink, pack: &Id, entries: &[PackEntry]) -> Result<u64> {
        let stored = self.read_blobs(pack, entries)?;
        let mut read = 0;
        for (e, bytes) in entries.iter().zip(&stored) {
            // Opened once: checked, then sealed afresh into the new pack.
            let encoded = self.unseal(&e.id, pack, bytes)?;
            self.decode_encoded(&e.id, pack, e.encoding, &encoded, e.plain_len as usize)?;
            sink.add(e.id, e.kind, e.encoding, &encoded, e.plain_len as usize)?;
            read += bytes.len() as u64;
        }
        Ok(read)
    }

    /// Reads a whole pack, checks that it hashes to its name, and decodes and re-hashes each of
    /// `entries` in it (`verify --read-data`, `repair packs`). Checked data blobs are kept in
    /// the base cache: the next snapshot's deltas may need them.
    pub fn check_pack(&self, pack: &Id, entries: &[PackEntry]) -> PackCheck {
        self.check_pack_with(pack, entries, None)
    }

    /// [`Repository::check_pack`] that leaves the delta blobs of a pack whose hash is right,
    /// and the keyframes in `keyframes` (those deltas build on), to
    /// [`Repository::check_deltas`], listed in [`PackCheck::deferred`]: decoded here, each
    /// delta would resolve its chain from its keyframe again.
    pub fn check_pack_deferring_deltas(
        &self,
        pack: &Id,
        entries: &[PackEntry],
        keyframes: &IdSet,
    ) -> PackCheck {
        self.check_pack_with(pack, entries, Some(keyframes))
    }

    fn check_pack_with(
        &self,
        pack: &Id,
        entries: &[PackEntry],
        defer: Option<&IdSet>,
    ) -> PackCheck {
        let mut r = PackCheck {
            pack: *pack,
            bytes: 0,
            blobs: 0,
            hash_ok: false,
            unreadable: None,
            bad_blobs: Vec::new(),
            deferred: Vec::new(),
        };
        let data = match self.storage.get(&Handle::pack(pack)) {
            Ok(d) => d,
            Err(e) => {
                r.unreadable = Some(e);
                return r;
            }
        };
        r.bytes = data.len() as u64;
        r.hash_ok = Id::of(&data) == *pack;
        // A pack that does not hash to its name has every blob decoded here, so that the
        // damage is named with the pack.
        let defer = defer.filter(|_| r.hash_ok);
        // Blobs are checked in parallel: a pack of small deltas holds hundreds of blocks'
        // worth of decoding (each resolves its chain), which one thread did alone.
        r.blobs = entries.len();
        let checked: Vec<std::result::Result<bool, (Id, String)>> = entries
            .par_iter()
            .map(|e| {
                let Some(stored) = data.get(blob_span(e)) else {
                    return Err((e.id, "lies beyond the end of the pack".into()));
                };
                let deferred = defer.is_some_and(|keyframes| {
                    e.encoding == crate::codec::Encoding::Delta || keyframes.contains(&e.id)
                });
                if deferred {
                    // Opened (authenticated) in the second pass: the pack hashes to its name,
                    // so its bytes are as they were written.
                    return Ok(true);
                }
                match self.decode_blob(&e.id, pack, e.encoding, stored, e.plain_len as usize) {
                    Err(err) => Err((e.id, blob_problem(err))),
                    // Tensor blocks may be the base of the next snapshot's deltas (when
                    // deferring, those are checked with their deltas: nothing else needs them).
                    Ok(plain) if e.kind == BlobKind::Data && defer.is_none() => {
                        self.remember(e.id, std::sync::Arc::new(plain));
                        Ok(false)
                    }
                    Ok(plain) => {
                        crate::codec::recycle(plain);
                        Ok(false)
                    }
                }
            })
            .collect();
        for (e, c) in entries.iter().zip(checked) {
            match c {
                Ok(true) => r.deferred.push(e.id),
                Ok(false) => {}
                Err(bad) => r.bad_blobs.push(bad),
            }
        }
        r
    }

    /// Decodes and re-hashes the blobs `deltas` (deltas and their keyframes, with the pack
    /// each was found in), and returns those that fail with their pack and what is wrong. A
    /// keyframe and its deltas are checked together, from the shallowest up, each kept in the
    /// base cache for the next: each keyframe is decoded once and each link applied once,
    /// where checking deltas pack by pack resolved every delta's chain from its keyframe
    /// again.
    pub fn check_deltas(&self, deltas: &[(Id, Id)]) -> Vec<(Id, Id, String)> {
        let index = self.index();
        let mut chains: IdMap<Vec<(u8, Id, Id)>> = IdMap::default();
        for (id, pack) in deltas {
            let depth = index.delta(id).map_or(0, |d| d.depth);
            chains
                .entry(index.keyframe_of(id))
                .or_default()
                .push((depth, *id, *pack));
        }
        let mut chains: Vec<Vec<(u8, Id, Id)>> = chains.into_values().collect();
        chains.par_iter_mut().for_each(|c| c.sort_unstable());
        self.with_read_slots(|| {
            chains
                .par_iter()
                .flat_map_iter(|chain| self.check_chain(chain))
                .collect()
        })
    }

    /// [`Repository::check_deltas`] of one keyframe's blobs (`chain`: depth, ID, pack; the
    /// shallowest first). A blob that is the base of exactly one other here stays in hand
    /// and that delta is applied onto it in place (a linear chain: no copy out of the base
    /// cache, no fresh buffer per link); a base of several goes into the cache for each.
    fn check_chain(&self, chain: &[(u8, Id, Id)]) -> Vec<(Id, Id, String)> {
        let index = self.index();
        let mut children: IdMap<u32> = IdMap::default();
        for (_, id, _) in chain {
            if let Some(d) = index.delta(id) {
                *children.entry(d.base).or_default() += 1;
            }
        }
        let mut bad = Vec::new();
        let mut top: Option<(Id, Vec<u8>)> = None;
        for (_, id, pack) in chain {
            let base = index.delta(id).map(|d| d.base);
            let plain = match top.take() {
                Some((below, mut plain)) if Some(below) == base => {
                    match self.apply_checked(id, &below, &mut plain) {
                        Ok(()) => Ok(plain),
                        // Named as ever, by the blob-by-blob path.
                        Err(_) => self.read_blob(id),
                    }
                }
                other => {
                    if let Some((below, plain)) = other {
                        self.remember(below, std::sync::Arc::new(plain));
                    }
                    self.read_blob(id)
                }
            };
            match plain {
                Ok(plain) => match children.get(id) {
                    Some(1) => top = Some((*id, plain)),
                    Some(_) => self.remember(*id, std::sync::Arc::new(plain)),
                    None => crate::codec::recycle(plain),
                },
                Err(err) => bad.push((*id, *pack, blob_problem(err))),
            }
        }
        if let Some((_, plain)) = top {
            crate::codec::recycle(plain);
        }
        bad
    }

    /// Applies the delta `id`, whose base is `below`, onto `plain` (the base's plain bytes)
    /// and checks the result's hash. On error `plain` holds anything.
    fn apply_checked(&self, id: &Id, below: &Id, plain: &mut [u8]) -> Result<()> {
        let (loc, pack, stored) = self.read_stored(id)?;
        let encoded = self.unseal(id, &pack, &stored)?;
        let wrong = |what: &str| Error::Invalid(format!("{}: {what}", id.short()));
        if crate::codec::delta_header(&encoded)?.base != *below {
            return Err(wrong("names another base than the index"));
        }
        crate::codec::apply_delta(&encoded, plain, loc.plain_len as usize)?;
        if self.ids().of(plain) != *id {
            return Err(wrong("content does not match its hash"));
        }
        Ok(())
    }

    /// A pack's index entries rebuilt from the pack alone: its trailer, and each delta's base
    /// and depth from the blob's own header (`repair index`).
    pub fn pack_entries(&self, object: &Handle) -> Result<(Vec<PackEntry>, index::Deltas)> {
        let bytes = self.storage.get(object)?;
        let crypto = self.storage.crypto().map(|c| &**c);
        index::entries_of_pack(&object.to_string(), &bytes, crypto)
    }

    /// Deletes objects (packs, index files, snapshots) by their handles, in the order given.
    pub fn delete(&self, objects: &[&Handle]) -> Result<()> {
        for object in objects {
            self.storage.delete(object)?;
        }
        Ok(())
    }
}

/// A ranged read that failed because the object ends before the range does.
fn is_short_read(e: &Error) -> bool {
    matches!(e, Error::Io { err, .. } if err.kind() == std::io::ErrorKind::UnexpectedEof)
}

fn blob_range(e: &PackEntry) -> std::ops::Range<u64> {
    e.offset as u64..e.offset as u64 + e.stored_len as u64
}

fn blob_span(e: &PackEntry) -> std::ops::Range<usize> {
    e.offset as usize..e.offset as usize + e.stored_len as usize
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codec::Encoding;
    use crate::pack::PackWriter;
    use crate::repo::{Backend, MemBackend};

    #[test]
    fn a_truncated_pack_names_the_blob_past_its_end() {
        let backend = Arc::new(MemBackend::default());
        let repo = Repository::init_with(backend.clone(), "mem".into()).unwrap();
        let mut w = PackWriter::new();
        for b in [&b"first blob"[..], b"second blob"] {
            w.add(Id::of(b), BlobKind::Data, Encoding::Raw, b, b.len());
        }
        let (id, bytes, entries) = w.finish();
        let key = Handle::pack(&id).to_string();
        backend.put(&key, &bytes).unwrap();
        let stored = repo.read_blobs(&id, &entries).unwrap();
        assert_eq!(stored, [b"first blob".to_vec(), b"second blob".to_vec()]);

        // Cut inside the first blob, then inside the second (the first whole): both blobs are
        // served by one read, and the blob named is the first one past the end.
        for (cut, past) in [(15, 0), (8 + 10 + 5, 1)] {
            backend.put(&key, &bytes[..cut]).unwrap();
            let err = repo.read_blobs(&id, &entries).unwrap_err();
            assert!(
                matches!(&err, Error::CorruptChunk { id: blob, .. }
                    if *blob == entries[past].id.to_hex()),
                "cut at {cut}: {err}"
            );
            assert!(
                err.to_string().contains("beyond the end of its pack"),
                "{err}"
            );
        }
    }

    /// verify's second pass decodes the deltas the first only authenticated: one that
    /// decodes to other content than its ID (a writer's bug; it seals and hashes fine) is named
    /// with its pack, and a sound one beside it is not.
    #[test]
    fn deferred_deltas_are_decoded_and_a_wrong_one_is_named_with_its_pack() {
        let mut repo =
            Repository::init_with(Arc::new(MemBackend::default()), "mem".into()).unwrap();
        let base: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut good, mut wrong) = (base.clone(), base.clone());
        good[100] ^= 1;
        wrong[200] ^= 1;
        let ids = repo.ids();
        let (base_id, good_id, wrong_id) = (ids.of(&base), ids.of(&good), ids.of(b"other"));
        let mut sink = PackSink::new(&repo);
        sink.add(base_id, BlobKind::Data, Encoding::Raw, &base, base.len())
            .unwrap();
        let mut out = Vec::new();
        for (id, plain) in [(good_id, &good), (wrong_id, &wrong)] {
            crate::codec::encode_delta(
                plain,
                crate::codec::DeltaBase {
                    plain: &base,
                    id: &base_id,
                    depth: 0,
                },
                1,
                1,
                crate::codec::DeltaFormat::V2,
                &mut out,
            )
            .unwrap();
            sink.add(id, BlobKind::Data, Encoding::Delta, &out, plain.len())
                .unwrap();
        }
        let written = sink.finish().unwrap();
        repo.save_index(&written.packs).unwrap();
        repo.refresh_index().unwrap();
        let (pack, entries, _) = &written.packs[0];
        let keyframes: IdSet = [base_id].into_iter().collect();
        let r = repo.check_pack_deferring_deltas(pack, entries, &keyframes);
        assert!(r.hash_ok && r.bad_blobs.is_empty(), "{:?}", r.bad_blobs);
        assert_eq!(r.deferred, [base_id, good_id, wrong_id]);
        let deferred: Vec<(Id, Id)> = r.deferred.iter().map(|id| (*id, *pack)).collect();
        let bad = repo.check_deltas(&deferred);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!((bad[0].0, bad[0].1), (wrong_id, *pack));
        assert!(bad[0].2.contains("does not match"), "{}", bad[0].2);
    }
}
