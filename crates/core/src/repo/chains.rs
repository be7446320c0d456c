//! Planned reads of blobs whose deltas form chains (restore, `drill`): the blobs a batch of
//! delta targets needs (each target's chain of bases down to its keyframe, as the index knows
//! it) are read together with the targets, in the planned ranged reads of `packs` — the links
//! of neighbouring blocks of one step sit side by side in that step's pack, so a batch costs
//! about one read per step, not one read per link per block — and each target is then
//! rebuilt from its keyframe up, in parallel, while the next batch is read. Anything
//! unexpected (a blob whose header names another base than the index, a base the index lost,
//! a link that does not open or decode, a result that does not hash to its ID) sends that
//! target down the blob-by-blob path of [`Repository::decode_encoded`], which names what is
//! wrong exactly as it always has.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::Repository;
use crate::codec;
use crate::error::Result;
use crate::id::Id;
use crate::index::IdMap;

/// Stored bytes of the delta targets and chain members a batch keeps (unsealed) until its
/// chains are rebuilt; two batches are held at once (one rebuilt while the next is read).
/// Blobs that are no deltas' are decoded as their reads arrive and not counted.
const BATCH_BYTES: u64 = 32 << 20;

/// The unsealed bytes of a batch's chained targets and members, by ID.
type Held = IdMap<Vec<u8>>;

/// What a blob read in a batch is for.
#[derive(Clone, Copy, Default)]
struct Role {
    /// A target decoded as its read arrives: no delta, or a delta whose chain the index
    /// does not know whole (resolved blob by blob, as before).
    direct: bool,
    /// A delta target rebuilt from its chain once the batch's reads end.
    chained: bool,
    /// A base some chained target of the batch needs.
    member: bool,
}

/// One batch: targets and their chains, read together.
#[derive(Default)]
struct Batch {
    roles: IdMap<Role>,
    /// The blobs to read, in the order first asked for.
    read: Vec<Id>,
    /// Delta targets and their bases, the nearest first, ending in the keyframe (or a blob of
    /// the base cache, in `cached`).
    chains: Vec<(Id, Vec<Id>)>,
    /// Plain bytes of chain ends found in the base cache (not read).
    cached: IdMap<Arc<Vec<u8>>>,
    /// Stored bytes of the delta targets and members to read.
    bytes: u64,
}

impl Batch {
    fn role(&mut self, id: Id) -> &mut Role {
        let read = &mut self.read;
        self.roles.entry(id).or_insert_with(|| {
            read.push(id);
            Role::default()
        })
    }
}

impl Repository {
    /// [`Repository::read_blobs_planned`] for `unique` (distinct) blobs, each handed to
    /// `each` with its `positions`: in batches of [`BATCH_BYTES`], each target with its chain.
    pub(super) fn read_chains_planned<F>(
        &self,
        unique: &[Id],
        positions: &IdMap<Vec<usize>>,
        each: &F,
    ) -> Result<()>
    where
        F: Fn(&[usize], &[u8]) -> Result<()> + Sync,
    {
        // The chains of one batch are rebuilt while the next batch is read.
        let batches = self.plan_batches(unique);
        let mut read: Option<(&Batch, Held)> = None;
        for batch in &batches {
            let done = read.take();
            let (rebuilt, held) = rayon::join(
                || done.map_or(Ok(()), |(b, held)| self.rebuild(b, &held, positions, each)),
                || self.read_batch(batch, positions, each),
            );
            rebuilt?;
            read = Some((batch, held?));
        }
        match read {
            Some((b, held)) => self.rebuild(b, &held, positions, each),
            None => Ok(()),
        }
    }

    /// Groups `unique` (in their order) into batches whose delta targets and chain members
    /// hold at most [`BATCH_BYTES`] stored bytes (at least one target each).
    fn plan_batches(&self, unique: &[Id]) -> Vec<Batch> {
        let cache = self.cache.lock().expect("cache");
        let stored = |id: &Id| self.index.get(id).map_or(0, |l| l.stored_len as u64);
        let mut batches = vec![Batch::default()];
        for id in unique {
            let chain = self.index.delta(id).and_then(|d| {
                // Down to the keyframe (or a cached blob) through the index; a base it lost
                // or a chain past the readers' bound: the blob-by-blob path names it.
                let mut chain = Vec::new();
                let mut at = d.base;
                while chain.len() < codec::MAX_READ_CHAIN {
                    chain.push(at);
                    if cache.blobs.contains_key(&at) {
                        return Some(chain);
                    }
                    let loc = self.index.get(&at)?;
                    match self.index.delta(&at) {
                        Some(d) => at = d.base,
                        None if loc.encoding == codec::Encoding::Delta => return None,
                        None => return Some(chain),
                    }
                }
                None
            });
            let Some(chain) = chain else {
                let batch = batches.last_mut().expect("one batch");
                batch.role(*id).direct = true;
                continue;
            };
            let new_bytes = |b: &Batch| {
                std::iter::once(id)
                    .chain(&chain)
                    .filter(|m| !b.roles.get(*m).is_some_and(|r| r.chained || r.member))
                    .filter(|m| !cache.blobs.contains_key(*m))
                    .map(stored)
                    .sum::<u64>()
            };
            let full = batches
                .last()
                .is_some_and(|b| !b.chains.is_empty() && b.bytes + new_bytes(b) > BATCH_BYTES);
            if full {
                batches.push(Batch::default());
            }
            let batch = batches.last_mut().expect("one batch");
            batch.bytes += new_bytes(batch);
            batch.role(*id).chained = true;
            for m in &chain {
                match cache.blobs.get(m) {
                    Some(plain) => {
                        batch.cached.insert(*m, plain.clone());
                    }
                    None => batch.role(*m).member = true,
                }
            }
            batch.chains.push((*id, chain));
        }
        batches
    }

    /// Reads one batch: direct targets are decoded and handed on as their reads arrive;
    /// chained targets and members are kept (unsealed), returned for [`Self::rebuild`].
    fn read_batch<F>(&self, batch: &Batch, positions: &IdMap<Vec<usize>>, each: &F) -> Result<Held>
    where
        F: Fn(&[usize], &[u8]) -> Result<()> + Sync,
    {
        let held: Mutex<Held> = Mutex::default();
        // A failed read of members alone is no error here: the targets that need them take
        // the blob-by-blob path, which names the damage with the target.
        let member_only = |id: &Id| {
            batch
                .roles
                .get(id)
                .is_some_and(|r| !(r.direct || r.chained))
        };
        self.read_stored_planned_sparing(
            &batch.read,
            |id, pack, loc, stored| {
                let role = batch.roles[id];
                if !(role.chained || role.member) {
                    let plain =
                        self.decode_blob(id, pack, loc.encoding, stored, loc.plain_len as usize)?;
                    each(&positions[id], &plain)?;
                    codec::recycle(plain);
                    return Ok(());
                }
                let encoded = match self.unseal(id, pack, stored) {
                    Ok(encoded) => encoded,
                    Err(_) if member_only(id) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if role.direct {
                    let plain = self.decode_encoded(
                        id,
                        pack,
                        loc.encoding,
                        &encoded,
                        loc.plain_len as usize,
                    )?;
                    each(&positions[id], &plain)?;
                    codec::recycle(plain);
                }
                held.lock().expect("held").insert(*id, encoded.into_owned());
                Ok(())
            },
            member_only,
        )?;
        Ok(held.into_inner().expect("held"))
    }

    /// Rebuilds the chained targets of a batch whose reads are `held`, in parallel, and hands
    /// each to `each`.
    fn rebuild<F>(
        &self,
        batch: &Batch,
        held: &Held,
        positions: &IdMap<Vec<usize>>,
        each: &F,
    ) -> Result<()>
    where
        F: Fn(&[usize], &[u8]) -> Result<()> + Sync,
    {
        batch.chains.par_iter().try_for_each(|(id, chain)| {
            let plain = match self.apply_chain(id, chain, held, &batch.cached) {
                Some(plain) => plain,
                None => self.decode_alone(id, held.get(id))?,
            };
            each(&positions[id], &plain)?;
            codec::recycle(plain);
            Ok(())
        })
    }

    /// A delta target's plain bytes from its chain (`chain`: its bases, the nearest first)
    /// and the blobs `held` (unsealed) or `cached` (plain): the keyframe decoded, then each
    /// link applied upwards, the top re-hashed. `None` when anything is not as the index
    /// says, or fails.
    fn apply_chain(
        &self,
        id: &Id,
        chain: &[Id],
        held: &Held,
        cached: &IdMap<Arc<Vec<u8>>>,
    ) -> Option<Vec<u8>> {
        let bottom = chain.last()?;
        let mut plain = match cached.get(bottom) {
            Some(hit) => {
                let mut plain = codec::plain_buffer(hit.len());
                plain.copy_from_slice(hit);
                plain
            }
            None => {
                // Not re-hashed (as in `resolve_delta`): no damaged link passes the top's hash.
                let loc = self.index.get(bottom)?;
                codec::decode(loc.encoding, held.get(bottom)?, loc.plain_len as usize).ok()?
            }
        };
        let plain_len = self.index.get(id)?.plain_len as usize;
        let mut below = *bottom;
        let ok = chain[..chain.len() - 1]
            .iter()
            .rev()
            .chain(std::iter::once(id))
            .all(|link| {
                let Some(encoded) = held.get(link) else {
                    return false;
                };
                let names_below = codec::delta_header(encoded).is_ok_and(|h| h.base == below);
                let len = if link == id { plain_len } else { plain.len() };
                below = *link;
                names_below && codec::apply_delta(encoded, &mut plain, len).is_ok()
            });
        if ok && self.ids().of(&plain) == *id {
            Some(plain)
        } else {
            codec::recycle(plain);
            None
        }
    }

    /// A delta target decoded blob by blob (its chain read link by link): what it always was,
    /// for a chain not as the index says; its error names the damage.
    fn decode_alone(&self, id: &Id, encoded: Option<&Vec<u8>>) -> Result<Vec<u8>> {
        let (Some(encoded), Some(loc)) = (encoded, self.index.get(id)) else {
            return self.read_blob(id);
        };
        let pack = self.index.pack_id(loc);
        self.decode_encoded(id, &pack, loc.encoding, encoded, loc.plain_len as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codec::Encoding;
    use crate::index::DeltaRef;
    use crate::pack::BlobKind;
    use crate::repo::{MemBackend, PackSink};

    /// Blocks `plain` of one chain: the first stored whole, each next one as a delta on the
    /// one before (`wrong_base`: the index is told another base for one of them).
    fn store_chain(repo: &mut Repository, plain: &[Vec<u8>], wrong_base: Option<(usize, Id)>) {
        let ids: Vec<Id> = plain.iter().map(|p| repo.ids().of(p)).collect();
        let mut sink = PackSink::new(repo);
        sink.add(
            ids[0],
            BlobKind::Data,
            Encoding::Raw,
            &plain[0],
            plain[0].len(),
        )
        .unwrap();
        let mut out = Vec::new();
        for i in 1..plain.len() {
            let depth = i as u8 - 1;
            let base = codec::DeltaBase {
                plain: &plain[i - 1],
                id: &ids[i - 1],
                depth,
            };
            codec::encode_delta(&plain[i], base, 1, 1, codec::DeltaFormat::V4, &mut out).unwrap();
            sink.add(
                ids[i],
                BlobKind::Data,
                Encoding::Delta,
                &out,
                plain[i].len(),
            )
            .unwrap();
        }
        let mut written = sink.finish().unwrap();
        if let Some((i, base)) = wrong_base {
            for (_, _, deltas) in &mut written.packs {
                if let Some(d) = deltas.get_mut(&ids[i]) {
                    *d = DeltaRef {
                        base,
                        depth: d.depth,
                    };
                }
            }
        }
        repo.save_index(&written.packs).unwrap();
        repo.refresh_index().unwrap();
    }

    fn steps(n: usize, seed: u8) -> Vec<Vec<u8>> {
        let mut block: Vec<u8> = (0..16 * 1024u32)
            .map(|i| (i * 7 % 251) as u8 ^ seed)
            .collect();
        let mut out = vec![block.clone()];
        for s in 1..n {
            block[s * 100] ^= 1;
            out.push(block.clone());
        }
        out
    }

    fn read_all(repo: &Repository, ids: &[Id]) -> Vec<Vec<u8>> {
        let out = Mutex::new(vec![Vec::new(); ids.len()]);
        repo.read_blobs_planned(ids, |positions, plain| {
            for &p in positions {
                out.lock().unwrap()[p] = plain.to_vec();
            }
            Ok(())
        })
        .unwrap();
        out.into_inner().unwrap()
    }

    /// Every step of a chain asked for at once (targets that are members of each other's
    /// chains, a keyframe among them), and repeats: each gets its own bytes.
    #[test]
    fn steps_of_one_chain_read_together_each_get_their_bytes() {
        let mut repo =
            Repository::init_with(Arc::new(MemBackend::default()), "mem".into()).unwrap();
        let plain = steps(5, 0);
        store_chain(&mut repo, &plain, None);
        let ids: Vec<Id> = plain.iter().map(|p| repo.ids().of(p)).collect();
        let asked = [ids[4], ids[2], ids[0], ids[4], ids[3], ids[1]];
        let expected: Vec<Vec<u8>> = [4, 2, 0, 4, 3, 1]
            .iter()
            .map(|&i| plain[i].clone())
            .collect();
        assert_eq!(read_all(&repo, &asked), expected);
    }

    /// An index whose base for a delta is not the one the blob's header names (a damaged or
    /// forged index file): the chain is rebuilt from the header's base, as before.
    #[test]
    fn a_delta_whose_header_names_another_base_than_the_index_is_read_by_its_header() {
        let mut repo =
            Repository::init_with(Arc::new(MemBackend::default()), "mem".into()).unwrap();
        let other = steps(1, 9);
        store_chain(&mut repo, &other, None);
        let other_id = repo.ids().of(&other[0]);
        let plain = steps(4, 0);
        store_chain(&mut repo, &plain, Some((2, other_id)));
        let ids: Vec<Id> = plain.iter().map(|p| repo.ids().of(p)).collect();
        assert_eq!(repo.index().delta(&ids[2]).unwrap().base, other_id);
        assert_eq!(read_all(&repo, &ids[3..]), [plain[3].clone()]);
        assert_eq!(read_all(&repo, &ids), plain);
    }

    /// `verify`'s check of chains: a linear chain is applied link by link in place, a base
    /// of two deltas serves both, and a link that does not hash to its ID is named alone
    /// (the in-place path gives it back to the blob-by-blob one, which names it).
    #[test]
    fn check_deltas_passes_a_chain_and_its_branch_and_names_a_link_that_does_not_hash() {
        let mut repo =
            Repository::init_with(Arc::new(MemBackend::default()), "mem".into()).unwrap();
        let plain = steps(5, 0);
        store_chain(&mut repo, &plain, None);
        let ids: Vec<Id> = plain.iter().map(|p| repo.ids().of(p)).collect();
        // A second delta on step 2, and on top of step 4 a delta stored under another ID.
        let mut branch = plain[2].clone();
        branch[7] ^= 0x40;
        let branch_id = repo.ids().of(&branch);
        let mut wrong = plain[4].clone();
        wrong[9] ^= 0x20;
        let wrong_id = Id::of(b"not the hash of these bytes");
        let mut sink = PackSink::new(&repo);
        let mut out = Vec::new();
        for (target, id, below, depth) in [(&branch, branch_id, 2, 2), (&wrong, wrong_id, 4, 4)] {
            let base = codec::DeltaBase {
                plain: &plain[below],
                id: &ids[below],
                depth,
            };
            codec::encode_delta(target, base, 1, 1, codec::DeltaFormat::V4, &mut out).unwrap();
            sink.add(id, BlobKind::Data, Encoding::Delta, &out, target.len())
                .unwrap();
        }
        let written = sink.finish().unwrap();
        repo.save_index(&written.packs).unwrap();
        repo.refresh_index().unwrap();

        let index = repo.index();
        let all: Vec<(Id, Id)> = ids
            .iter()
            .chain([&branch_id, &wrong_id])
            .map(|id| (*id, index.pack_id(index.get(id).unwrap())))
            .collect();
        let bad = repo.check_deltas(&all);
        let named: Vec<Id> = bad.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(named, [wrong_id], "{bad:?}");
        assert!(bad[0].2.contains("does not match"), "{bad:?}");
        assert_eq!(bad[0].1, all[6].1, "named with its pack");
    }
}
