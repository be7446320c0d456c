//! Delta bases by tensor identity: for each tensor block of a file being backed up, the chunk
//! of the same block of the same tensor (name, dtype, shape, length) wherever the repository
//! holds it, not only in the parent's version of the same path. So a training run that writes
//! each step into a new folder (`checkpoint-500/`, `checkpoint-1000/`, the oldest deleted),
//! renames its files, re-shards a checkpoint, or fine-tunes a base model backed up earlier
//! under other paths still stores its steps as deltas.
//!
//! Where to look: the parent snapshot's files, then those of the [`RECENT`] newest other
//! snapshots (any host and paths). Which base: the same path first, then the same file name,
//! then the newest (the parent before older snapshots, then the latest modification time).
//!
//! Nothing is stored for this: the tensors of a stored file come from its header, parsed again
//! from its stored chunks (see [`super::tensors`]), once per backup run, and only when a new
//! file has tensors its parent version at the same path does not provide. Only files named as
//! model files ([`MODEL_EXTENSIONS`]) are parsed this way, so a tree of many other files costs
//! no reads; the same path is always tried, whatever its name. A base is a chunk ID in the
//! repository's index, as for any delta: restore needs nothing new.
//!
//! Staggered keyframes: a chain of deltas ends at its depth bound (see `codec.rs`), and
//! chains begun in the same backup would all end in the same later backup, which then stores
//! nearly the whole checkpoint again. So each block also starts a new chain (gets no base)
//! when the backup's step in its series (how many snapshots precede it through their
//! `parent`) reaches the block's turn: one step in every chain-bound-plus-one. Turns are the
//! blocks' numbers when the parent's tensors are put in order of name ([`Turns`]), so every
//! step restarts the same number of blocks, give or take one, in whatever folders and shards
//! the tensors lie (hashed turns left a 1 GiB step 15 % over the mean and some small steps
//! none). About one block in that many starts a new chain
//! at each step, a block's first chain is cut short at its turn, and every later chain spans
//! exactly the bound. Chains are never longer than before; the depth bound still holds.

use std::cell::{OnceCell, RefCell};
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use std::rc::Rc;
use std::sync::Arc;

use crate::codec::SPARSE_DEPTH_COST;
use crate::format::{Region, MIN_TENSOR_REGION};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, NodePath};

use super::disk_bases::DiskBases;
use super::tensors::{bases_for, stored_tensors, Bases, StoredTensor};

/// How many snapshots besides the parent are searched for bases (the newest ones).
pub(crate) const RECENT: usize = 8;

/// How many distinct stored files (by content) at most have their headers parsed per run; the
/// newest are parsed first.
const MAX_FILES: usize = 4096;

/// Names of files whose headers are parsed for tensors when they are not at the same path as
/// the new file (lower case; the part after the last dot).
pub(crate) const MODEL_EXTENSIONS: &[&str] = &["safetensors", "gguf", "bin", "pt", "pth", "ckpt"];

/// What identifies a tensor across files: a block of it may be a delta against the same block
/// of another tensor with the same identity.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Identity {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    len: u64,
}

/// One stored tensor with a given identity: in which file it is and its blocks' chunks.
struct Holder {
    path: NodePath,
    /// 0: the parent snapshot; then 1, 2, … from the newest other snapshot.
    rank: usize,
    mtime_ns: i64,
    /// The tensor's offset in the file.
    start: u64,
    blocks: Vec<Option<Id>>,
}

/// Finds bases for the tensor blocks of the files one backup reads.
pub(crate) struct BaseFinder<'a> {
    repo: &'a Repository,
    parent: Option<Id>,
    parent_files: &'a HashMap<NodePath, Node>,
    /// This backup's step in its series, which staggers keyframes (see the module doc).
    step: u64,
    /// The writer's chain bound (see `DeltaFormat::with_max_chain`): the period of turns.
    max_depth: u8,
    /// Every stored tensor of the searched files by identity, built on first need.
    index: OnceCell<HashMap<Identity, Vec<Holder>>>,
    /// Where the chosen bases can be read on disk.
    disk: Arc<DiskBases>,
    /// The first turn of each tensor of the parent's model files (see [`Turns`]).
    turns: OnceCell<Turns>,
    /// The parent's files parsed so far, by path: each header is read from the repository
    /// once per backup, whether for the same path, the turns or the index by identity.
    parsed: RefCell<HashMap<NodePath, Rc<Vec<StoredTensor>>>>,
}

impl<'a> BaseFinder<'a> {
    pub(crate) fn new(
        repo: &'a Repository,
        parent: Option<Id>,
        parent_files: &'a HashMap<NodePath, Node>,
        step: u64,
        max_depth: u8,
        disk: Arc<DiskBases>,
    ) -> BaseFinder<'a> {
        BaseFinder {
            repo,
            parent,
            parent_files,
            step,
            max_depth,
            disk,
            index: OnceCell::new(),
            turns: OnceCell::new(),
            parsed: RefCell::default(),
        }
    }

    /// The stored tensors of the parent's file `node`, parsed on first need.
    fn parent_tensors(&self, node: &Node, block: u32) -> Rc<Vec<StoredTensor>> {
        if let Some(t) = self.parsed.borrow().get(&node.path) {
            return t.clone();
        }
        let t = Rc::new(stored_tensors(self.repo, node, block));
        self.parsed
            .borrow_mut()
            .insert(node.path.clone(), t.clone());
        t
    }

    /// The base of each tensor block of the file at `path` whose tensors are `regions` (see
    /// [`Bases`]), cut into `block`-byte blocks; none for the blocks whose turn it is to start
    /// a new chain.
    pub(crate) fn bases(&self, path: &NodePath, regions: &[Region], block: u32) -> Bases {
        let mut bases = self.find(path, regions, block);
        if bases.is_empty() {
            return bases;
        }
        let turns = self.turns.get_or_init(|| self.turns(block));
        for r in regions {
            let Some(info) = r.tensor() else { continue };
            let mut offset = r.start;
            for k in 0u64.. {
                if offset >= r.end {
                    break;
                }
                if let Some(base) = bases.get(&offset) {
                    if self.keyframe_due(turns.of(&info.name, k), base) {
                        bases.remove(&offset);
                    }
                }
                offset += u64::from(block);
            }
        }
        bases
    }

    /// Whether a block whose turn is `turn` and whose base is `base` starts a new chain at this
    /// step. A chain of links of cost `c` spans at most `max_depth / c` links, so a block
    /// takes its turn once in every that many plus one steps. The cost is the base's own
    /// link's (sparse when the base is a keyframe: a dense chain also ends at its bound).
    fn keyframe_due(&self, turn: u64, base: &Id) -> bool {
        let index = self.repo.index();
        let cost = index.delta(base).map_or(SPARSE_DEPTH_COST, |d| {
            let below = index.delta(&d.base).map_or(0, |b| b.depth);
            d.depth.saturating_sub(below).max(1)
        });
        let period = u64::from(self.max_depth / cost) + 1;
        (self.step + turn % period) % period == 0
    }

    /// [`Self::bases`] before staggering.
    fn find(&self, path: &NodePath, regions: &[Region], block: u32) -> Bases {
        let mut bases = match self.parent_files.get(path) {
            Some(p) if regions.iter().any(|r| r.tensor().is_some()) => {
                bases_for(&self.parent_tensors(p, block), regions, block)
            }
            _ => Bases::new(),
        };
        let unmatched: Vec<&Region> = regions
            .iter()
            .filter(|r| r.tensor().is_some() && !bases.contains_key(&r.start))
            .collect();
        if unmatched.is_empty() {
            return bases;
        }
        let index = self.index.get_or_init(|| self.build(block));
        let name = file_name(path);
        for r in unmatched {
            let info = r.tensor().expect("filtered on tensors");
            let id = Identity {
                name: info.name.clone(),
                dtype: info.dtype.clone(),
                shape: info.shape.clone(),
                len: r.len(),
            };
            let Some(best) = index.get(&id).and_then(|holders| {
                holders.iter().max_by_key(|h| {
                    (
                        h.path == *path,
                        file_name(&h.path) == name,
                        Reverse(h.rank),
                        h.mtime_ns,
                    )
                })
            }) else {
                continue;
            };
            for (k, base) in best.blocks.iter().enumerate() {
                if let Some(base) = base {
                    let at = k as u64 * u64::from(block);
                    bases.entry(r.start + at).or_insert(*base);
                    if best.rank == 0 {
                        self.disk.note(&best.path, best.start + at, *base);
                    }
                }
            }
        }
        bases
    }

    /// Numbers the blocks of the parent's model files' tensors in order of tensor name.
    fn turns(&self, block: u32) -> Turns {
        let mut blocks: HashMap<String, u64> = HashMap::new();
        let mut seen: HashSet<&[Id]> = HashSet::new();
        for node in self.parent_files.values().filter(|n| searched(n)) {
            if seen.insert(node.chunks.as_slice()) {
                for t in self.parent_tensors(node, block).iter() {
                    let n = (t.end - t.start).div_ceil(u64::from(block));
                    blocks.entry(t.info.name.clone()).or_insert(n);
                }
            }
        }
        let mut names: Vec<(String, u64)> = blocks.into_iter().collect();
        names.sort_unstable();
        let mut next = 0u64;
        let first = names
            .into_iter()
            .map(|(name, n)| {
                let at = next;
                next += n;
                (name, at)
            })
            .collect();
        Turns { first }
    }

    /// Parses the tensors of the model files of the parent and the recent snapshots. A snapshot
    /// or file that cannot be read only costs its bases.
    fn build(&self, block: u32) -> HashMap<Identity, Vec<Holder>> {
        let parent = self.parent_files.values().filter(|n| searched(n)).cloned();
        let mut sources: Vec<Vec<Node>> = vec![parent.collect()];
        if let Ok(all) = self.repo.snapshots() {
            let recent = all
                .iter()
                .rev()
                .filter(|(id, _)| Some(*id) != self.parent)
                .take(RECENT);
            for (_, snap) in recent {
                // A snapshot published after this backup read the index has its tree in no
                // index here: skipped (its chunks could not be bases anyway).
                if let Ok(tree) = self.repo.load_tree(&snap.tree) {
                    sources.push(tree.nodes);
                }
            }
        }
        let mut index: HashMap<Identity, Vec<Holder>> = HashMap::new();
        let mut seen: HashSet<Vec<Id>> = HashSet::new();
        for (rank, mut nodes) in sources.into_iter().enumerate() {
            nodes.retain(searched);
            nodes.sort_by_key(|n| Reverse(n.mtime_ns));
            for node in nodes {
                if seen.len() >= MAX_FILES {
                    return index;
                }
                // The same content elsewhere (an unchanged file in an older snapshot) has the
                // same tensors and blocks.
                if !seen.insert(node.chunks.clone()) {
                    continue;
                }
                let tensors = match rank {
                    0 => self.parent_tensors(&node, block),
                    _ => Rc::new(stored_tensors(self.repo, &node, block)),
                };
                for t in tensors.iter() {
                    let id = Identity {
                        len: t.end - t.start,
                        name: t.info.name.clone(),
                        dtype: t.info.dtype.clone(),
                        shape: t.info.shape.clone(),
                    };
                    index.entry(id).or_default().push(Holder {
                        path: node.path.clone(),
                        rank,
                        mtime_ns: node.mtime_ns,
                        start: t.start,
                        blocks: t.blocks.clone(),
                    });
                }
            }
        }
        index
    }
}

/// A file whose header is parsed for tensors.
fn searched(n: &Node) -> bool {
    n.kind == NodeKind::File && n.size >= MIN_TENSOR_REGION && is_model_name(&n.path)
}

/// Turns by block number: the blocks of the parent's tensors, numbered in order of tensor name
/// (the same whatever folder or shard holds a tensor), take consecutive turns, so each step
/// restarts the same number of blocks, floor or ceiling of blocks / period. A tensor the parent
/// lacks (its blocks have no base from the parent) falls back to [`turn`].
struct Turns {
    first: HashMap<String, u64>,
}

impl Turns {
    fn of(&self, name: &str, block: u64) -> u64 {
        match self.first.get(name) {
            Some(first) => first + block,
            None => turn(name, block),
        }
    }
}

/// A block's turn to start a new chain: a hash of its tensor's name (FNV-1a, then a SplitMix64
/// finalizer) plus its index in the tensor (not its file offset, which moves when a header
/// grows), so the blocks of one tensor take consecutive turns.
fn turn(name: &str, block: u64) -> u64 {
    let mut z = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        z = (z ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).wrapping_add(block)
}

/// The last component of a path.
fn file_name(path: &NodePath) -> &[u8] {
    path.0.rsplit(|&b| b == b'/').next().unwrap_or(&path.0)
}

/// Named like a model file (see [`MODEL_EXTENSIONS`]).
fn is_model_name(path: &NodePath) -> bool {
    let name = file_name(path);
    let Some(dot) = name.iter().rposition(|&b| b == b'.') else {
        return false;
    };
    let ext = String::from_utf8_lossy(&name[dot + 1..]).to_ascii_lowercase();
    MODEL_EXTENSIONS.contains(&ext.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_are_recognised_by_their_extension() {
        let p = |s: &str| NodePath(s.as_bytes().to_vec());
        assert!(is_model_name(&p("ckpt/checkpoint-500/model.safetensors")));
        assert!(is_model_name(&p("m/model-00001-of-00003.SafeTensors")));
        assert!(is_model_name(&p("llama.Q4_K.gguf")));
        assert!(is_model_name(&p("optimizer.pt")));
        assert!(!is_model_name(&p("ckpt/model.safetensors.index.json")));
        assert!(!is_model_name(&p("README")));
        assert_eq!(file_name(&p("a/b/c.bin")), b"c.bin");
        assert_eq!(file_name(&p("c.bin")), b"c.bin");
    }

    #[test]
    fn blocks_take_evenly_spread_turns() {
        // 66 tensors of 32 blocks: each of the 33 (version 2) or 65 (version 4) turns of a
        // sparse chain gets a third to twice its share (the goal: no step stores more than
        // twice the mean).
        for format in [crate::codec::DeltaFormat::V2, crate::codec::DeltaFormat::V4] {
            let period = u64::from(format.max_depth / SPARSE_DEPTH_COST) + 1;
            let mut per_turn = vec![0u32; period as usize];
            for t in 0..66 {
                for k in 0..32 {
                    per_turn[(turn(&format!("layers.{t}.mlp.weight"), k) % period) as usize] += 1;
                }
            }
            let share = 66 * 32 / period as u32;
            let (min, max) = (per_turn.iter().min(), per_turn.iter().max());
            assert!(
                *min.unwrap() >= share / 3 && *max.unwrap() <= share * 2,
                "{per_turn:?}"
            );
        }
    }

    #[test]
    fn a_large_tensor_restarts_the_same_number_of_blocks_at_every_step() {
        // Tensors of 200 blocks (100 MiB of 512 KiB blocks, as a 7B model's MLP weights):
        // each turn of the period gets 200 / period of each tensor's blocks, rounded down or
        // up, whatever the hashes of the names.
        for period in [17u64, 33, 65] {
            let mut per_turn = vec![0u64; period as usize];
            for t in 0..12 {
                let name = format!("model.layers.{t}.mlp.down_proj.weight");
                for k in 0..200 {
                    per_turn[(turn(&name, k) % period) as usize] += 1;
                }
            }
            let (lo, hi) = (12 * (200 / period), 12 * 200u64.div_ceil(period));
            assert!(
                per_turn.iter().all(|&n| (lo..=hi).contains(&n)),
                "period {period}: {per_turn:?}"
            );
        }
    }
}
