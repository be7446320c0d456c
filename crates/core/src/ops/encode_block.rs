//! Encoding the chunks of one block a backup read: each new chunk is stored whole or as an XOR
//! with its tensor base (the same block of the same tensor in an earlier file). The bases a
//! block needs are read together before its chunks are encoded, through the chain-aware planned
//! reads restore uses: a base deep in a chain of sparse links costs one read per step for the
//! whole block rather than one per link and chunk (on S3, a 10-step chain's backup took 82 s
//! instead of ~2 s reading link by link).

use std::collections::HashSet;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::chunker::Span;
use crate::codec::{self, DeltaFormat, Encoding};
use crate::id::Id;
use crate::index::IdMap;
use crate::repo::{Lookup, Repository};

/// One chunk's result: its ID and length, and where its stored bytes are if it is new.
pub(super) struct Encoded {
    pub id: Id,
    pub range: std::ops::Range<usize>,
    /// Element width of the float tensor the chunk is in (0: none).
    pub width: u8,
    /// The chunk of the same block of the same tensor in an earlier file, the base for a delta.
    pub base: Option<Id>,
    /// File offset of the tensor (span) the chunk is in, if any.
    pub tensor: Option<u64>,
    /// `None`: already stored. `Raw`: stored as the plain bytes. Others: in `out`.
    pub encoding: Option<Encoding>,
    pub out: Vec<u8>,
    /// The first new chunk of its tensor in this block (encoded before the others, so that a
    /// tensor found dense spares its other chunks' bases).
    pub first_of_tensor: bool,
}

/// Tensors of a file whose XOR with their base came out dense while dense deltas are off: their
/// other blocks are stored whole without reading a base (full training changes every value;
/// reading and XORing the base only to refuse it halved a step's speed).
#[derive(Default)]
pub(super) struct DenseTensors(Mutex<HashSet<u64>>);

impl DenseTensors {
    fn contains(&self, tensor: Option<u64>) -> bool {
        tensor.is_some_and(|t| self.0.lock().expect("dense tensors").contains(&t))
    }

    fn insert(&self, tensor: Option<u64>) {
        if let Some(t) = tensor {
            self.0.lock().expect("dense tensors").insert(t);
        }
    }
}

/// The start of the span (tensor) of `spans` (sorted, disjoint) that holds file offset `at`.
pub(super) fn tensor_of(spans: &[Span], at: u64) -> Option<u64> {
    let i = spans.partition_point(|s| s.start <= at).checked_sub(1)?;
    (at < spans[i].end).then_some(spans[i].start)
}

/// Hashes the chunks of `data` that `encoded` lists and encodes those the repository lacks,
/// in parallel: first one chunk per tensor, then the rest, each round's bases read together.
pub(super) fn encode_block(
    lookup: &Lookup,
    data: &[u8],
    encoded: &mut [Encoded],
    format: DeltaFormat,
    dense_tensors: &DenseTensors,
) {
    let repo = lookup.repo;
    let ids = repo.ids();
    encoded.par_iter_mut().for_each(|e| {
        e.id = ids.of(&data[e.range.clone()]);
    });
    let mut seen = HashSet::new();
    for e in encoded.iter_mut() {
        e.first_of_tensor = e.tensor.is_none_or(|t| seen.insert(t));
    }
    for first in [true, false] {
        let round: Vec<&mut Encoded> = encoded
            .iter_mut()
            .filter(|e| e.first_of_tensor == first && !lookup.contains(&e.id))
            .collect();
        let choices: Vec<Against> = round
            .iter()
            .map(|e| {
                let base = e.base.filter(|_| !dense_tensors.contains(e.tensor));
                against(repo, base, e.range.len(), format)
            })
            .collect();
        let wanted: Vec<Id> = choices
            .iter()
            .filter_map(|c| match c {
                Against::Blob(b) => Some(*b),
                _ => None,
            })
            .collect();
        let bases = prefetch(lookup, &wanted);
        round.into_par_iter().zip(choices).for_each(|(e, choice)| {
            let base_plain = match choice {
                Against::Blob(b) => bases.lock().expect("bases").remove(&b),
                _ => None,
            };
            let plain = &data[e.range.clone()];
            let stored = encode_chunk(repo, plain, choice, base_plain, e.width, format, &mut e.out);
            if stored.dense {
                dense_tensors.insert(e.tensor);
            }
            e.encoding = Some(stored.encoding);
        });
    }
}

/// The plain bytes of the blobs `ids`: those still in files on disk read there (see
/// `disk_bases.rs`), the others read together from the repository (chains planned once for
/// all; see `Repository::read_blobs_planned`). Without the latter when any cannot be read:
/// each base is then read on its own, and one that cannot be read only costs its delta.
fn prefetch(lookup: &Lookup, ids: &[Id]) -> Mutex<IdMap<Vec<u8>>> {
    let repo = lookup.repo;
    let on_disk = match lookup.disk {
        Some(disk) if !ids.is_empty() => disk.read(repo, ids),
        _ => IdMap::default(),
    };
    let ids: Vec<Id> = ids
        .iter()
        .filter(|id| !on_disk.contains_key(id))
        .copied()
        .collect();
    if ids.is_empty() {
        return Mutex::new(on_disk);
    }
    let from_repo = Mutex::new(IdMap::default());
    let read = repo.read_blobs_planned(&ids, |positions, plain| {
        let mut copy = codec::plain_buffer(plain.len());
        copy.copy_from_slice(plain);
        from_repo
            .lock()
            .expect("bases")
            .insert(ids[positions[0]], copy);
        Ok(())
    });
    let mut bases = on_disk;
    if read.is_ok() {
        bases.extend(from_repo.into_inner().expect("bases"));
    }
    Mutex::new(bases)
}

/// A delta this much smaller than the chunk is kept without trying the chunk's own encoding
/// (float weights never compress 8:1 on their own).
const CLEARLY_SMALLER: usize = 8;

/// A delta at most 9/10 of its chain's keyframe's stored size is kept without encoding the
/// block on its own for comparison.
const KEYFRAME_MARGIN_NUM: usize = 9;
const KEYFRAME_MARGIN_DEN: usize = 10;

/// What a new chunk's delta is taken against, chosen from its tensor base by the index alone.
#[derive(Clone, Copy)]
enum Against {
    /// No base (none found, another length, or the chain at its bound): stored whole.
    Nothing,
    /// The base is a dense link and dense deltas are off: its successor is dense too, stored
    /// whole without reading anything.
    DenseLink,
    /// This blob (the base, or its chain's keyframe when the base is a dense link).
    Blob(Id),
}

fn against(repo: &Repository, base: Option<Id>, plain_len: usize, format: DeltaFormat) -> Against {
    let index = repo.index();
    let max_depth = format.max_depth;
    let Some(parent) = base.filter(|b| {
        let depth = index.delta(b).map_or(0, |d| d.depth);
        index.get(b).map(|l| l.plain_len as usize) == Some(plain_len)
            && depth + codec::SPARSE_DEPTH_COST <= max_depth
    }) else {
        return Against::Nothing;
    };
    // A base that is itself a dense delta would only be refused: its successor is dense too
    // (every value changes each step), so go to the chain's keyframe directly.
    let dense_link = index.delta(&parent).is_some_and(|d| {
        let below = index.delta(&d.base).map_or(0, |b| b.depth);
        d.depth.saturating_sub(below) >= codec::DENSE_DEPTH_COST
    });
    match (dense_link, format.dense) {
        (true, false) => Against::DenseLink,
        (true, true) => Against::Blob(index.keyframe_of(&parent)),
        (false, _) => Against::Blob(parent),
    }
}

/// How [`encode_chunk`] stored a chunk.
struct Stored {
    encoding: Encoding,
    /// Its XOR with its base was dense, and dense deltas are off or the base was a delta: the
    /// tensor's next blocks will be dense too (every value changes: full training).
    dense: bool,
}

/// Encodes a new chunk into `out`: as an XOR with the blob `against` names (whose plain bytes
/// `base_plain` holds when they were read ahead) when that is smaller than the chunk's own
/// encoding, else as [`codec::encode_typed`]. A dense XOR is stored only when `format.dense` allows
/// it, and then against the chain's keyframe, never on top of another delta (see
/// [`codec::encode_delta`]). A base that cannot be read only costs the delta.
fn encode_chunk(
    repo: &Repository,
    plain: &[u8],
    against: Against,
    base_plain: Option<Vec<u8>>,
    width: u8,
    format: DeltaFormat,
    out: &mut Vec<u8>,
) -> Stored {
    let level = repo.config().zstd_level;
    let whole = |out: &mut Vec<u8>, dense| Stored {
        encoding: codec::encode_typed(plain, width, level, out),
        dense,
    };
    let b = match against {
        Against::Nothing => return whole(out, false),
        Against::DenseLink => return whole(out, true),
        Against::Blob(b) => b,
    };
    let index = repo.index();
    let depth = index.delta(&b).map_or(0, |d| d.depth);
    let key = index.keyframe_of(&b);
    let Some(base_plain) = base_plain.or_else(|| repo.read_blob(&b).ok()) else {
        return whole(out, false);
    };
    let delta_on = |base: &[u8], id: &Id, depth, out: &mut Vec<u8>| {
        let base = codec::DeltaBase {
            plain: base,
            id,
            depth,
        };
        codec::encode_delta(plain, base, width, level, format, out)
    };
    let mut result = delta_on(&base_plain, &b, depth, out);
    codec::recycle(base_plain);
    if result == Err(codec::Refused::Dense) && depth > 0 && format.dense {
        // A dense XOR goes against the chain's keyframe, never on top of another delta.
        if let Ok(key_plain) = repo.read_blob(&key) {
            result = delta_on(&key_plain, &key, 0, out);
            codec::recycle(key_plain);
        }
    }
    match result {
        Err(refused) => return whole(out, refused == codec::Refused::Dense),
        Ok(_) if out.len() * CLEARLY_SMALLER <= plain.len() => {}
        Ok(_) => {
            // The same tensor's keyframe stands in for this block's own encoding (same
            // values but for small changes, so about the same size): a delta clearly below
            // it wins without encoding the block a second time (a `fulltrain` step's dense
            // deltas are ~0.84 of their keyframes; encoding both cost ~10 % of the backup).
            let key_len = index.get(&key).map_or(0, |l| l.stored_len as usize);
            if out.len() * KEYFRAME_MARGIN_DEN > key_len * KEYFRAME_MARGIN_NUM {
                let mut own = Vec::new();
                let enc = codec::encode_typed(plain, width, level, &mut own);
                let own_len = if enc == Encoding::Raw {
                    plain.len()
                } else {
                    own.len()
                };
                if out.len() >= own_len {
                    *out = own;
                    return Stored {
                        encoding: enc,
                        dense: false,
                    };
                }
            }
        }
    }
    Stored {
        encoding: Encoding::Delta,
        dense: false,
    }
}
