//! Deltas whose bases only forgotten snapshots used: which ones prune rewrites as keyframes.
//!
//! A kept snapshot's delta keeps its whole chain of bases alive, down to a keyframe, even when
//! no kept snapshot has those bases in its files. Such *base-only* chunks cost space for
//! nothing but decoding. Rewriting the lowest kept delta of a chain as a keyframe (same chunk
//! ID, another encoding; the deltas above it stay deltas on it) frees the base-only chunks
//! below it, at the price of the keyframe's size. Chains that share base-only chunks are
//! decided together: a group is rewritten when the bytes it frees exceed what the keyframes
//! are expected to cost (each estimated by the stored size of the keyframe its chain ends in).

use std::collections::HashMap;

use crate::id::Id;
use crate::index::{IdSet, Index};

/// What [`choose`] decided.
#[derive(Default)]
pub(super) struct Rebase {
    /// Kept deltas to store as keyframes.
    pub rewrite: IdSet,
    /// Stored bytes of the base-only chunks prune keeps (their chains were not worth cutting).
    pub kept_as_bases: u64,
}

/// Decides which deltas in `in_trees` (the chunks kept snapshots' files hold) to rewrite.
pub(super) fn choose(index: &Index, in_trees: &IdSet) -> Rebase {
    // Cut points: kept deltas whose base no kept file holds.
    let mut cuts: Vec<Id> = in_trees
        .iter()
        .filter(|id| index.delta(id).is_some_and(|d| !in_trees.contains(&d.base)))
        .copied()
        .collect();
    cuts.sort();
    // Group cut points sharing base-only chunks (union-find over group numbers).
    let mut group_of: HashMap<Id, usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    fn root(parent: &mut [usize], mut g: usize) -> usize {
        while parent[g] != g {
            parent[g] = parent[parent[g]];
            g = parent[g];
        }
        g
    }
    let mut cut_group = Vec::with_capacity(cuts.len());
    for cut in &cuts {
        let g = parent.len();
        parent.push(g);
        let mut at = index.delta(cut).map(|d| d.base);
        while let Some(id) = at.filter(|id| !in_trees.contains(id)) {
            match group_of.get(&id) {
                Some(&other) => {
                    let (a, b) = (root(&mut parent, other), root(&mut parent, g));
                    parent[a] = b;
                    break; // the rest of this chain is in that group already
                }
                None => {
                    group_of.insert(id, g);
                }
            }
            at = index.delta(&id).map(|d| d.base);
        }
        cut_group.push(g);
    }
    let stored = |id: &Id| index.get(id).map_or(0, |l| l.stored_len as u64);
    let mut freed: HashMap<usize, u64> = HashMap::new();
    for (id, &g) in &group_of {
        *freed.entry(root(&mut parent, g)).or_default() += stored(id);
    }
    let mut cost: HashMap<usize, u64> = HashMap::new();
    for (cut, &g) in cuts.iter().zip(&cut_group) {
        let keyframe = stored(&index.keyframe_of(cut));
        *cost.entry(root(&mut parent, g)).or_default() += keyframe.saturating_sub(stored(cut));
    }
    let mut out = Rebase::default();
    for (cut, &g) in cuts.iter().zip(&cut_group) {
        let g = root(&mut parent, g);
        if freed.get(&g).copied().unwrap_or(0) > cost.get(&g).copied().unwrap_or(0) {
            out.rewrite.insert(*cut);
        }
    }
    for (id, &g) in &group_of {
        let g = root(&mut parent, g);
        if freed.get(&g).copied().unwrap_or(0) <= cost.get(&g).copied().unwrap_or(0) {
            out.kept_as_bases += stored(id);
        }
    }
    out
}
