//! The plan of a prune or a forget: which snapshots stay and why, what the kept ones need
//! (delta bases included), the fate of every pack, the leftovers to delete and the bytes this
//! frees. Planning reads the repository and writes nothing but its lock, which the plan holds
//! until it is dropped or executed: a plan is only valid under that lock.

use std::collections::BTreeMap;
use std::time::Instant;

use super::SnapshotDecision;
use super::{decide, mark_bases, mark_tree, serves, PackFate, PruneOptions, PruneReport};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{self, IdMap, IdSet};
use crate::pack::PackEntry;
use crate::progress::Progress;
use crate::repo::lock::LockGuard;
use crate::repo::{Handle, Repository};

/// A pack as the plan found it in the index, and what becomes of it.
pub(super) struct PlannedPack {
    pub(super) fate: PackFate,
    /// Its size on disk; `None`: the index lists it, but it is missing (and nothing in it is
    /// in use, or there would be no plan).
    pub(super) size: Option<u64>,
    pub(super) entries: Vec<PackEntry>,
    pub(super) deltas: index::Deltas,
}

/// What a prune (or forget) will do, decided under the lock it holds. Print it with
/// [`PrunePlan::report`]; carry it out with [`super::execute`] (which a plan made for a dry run
/// refuses: it holds only a shared lock). Dropping it releases the lock.
pub struct PrunePlan {
    pub(super) started: Instant,
    pub(super) _lock: LockGuard,
    pub(super) dry_run: bool,
    /// `forget`: only manifests go; no pack was looked at.
    pub(super) snapshots_only: bool,
    /// Every snapshot, oldest first: its ID, its tree, and the decision for it.
    pub(super) snapshots: Vec<(Id, Id, SnapshotDecision)>,
    /// A dry run of a plan a real run refuses (it removes every snapshot): why.
    pub(super) refused: Option<String>,
    /// What the kept snapshots need: their trees, chunks and the bases of deltas among them.
    pub(super) live: IdSet,
    /// Kept deltas to store as keyframes, and the bytes left as bases (see `rebase`).
    pub(super) rebase: super::rebase::Rebase,
    pub(super) packs: BTreeMap<Id, PlannedPack>,
    /// Packs no index lists: leftovers of interrupted runs.
    pub(super) unindexed: Vec<Handle>,
    /// Temporary files of interrupted writes (by their backend names).
    pub(super) temporaries: Vec<String>,
    pub(super) old_index_files: Vec<Handle>,
    pub(super) bytes_before: u64,
    pub(super) bytes_to_free: u64,
}

impl PrunePlan {
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Every snapshot, oldest first: kept or removed, and why.
    pub fn snapshots(&self) -> impl Iterator<Item = &SnapshotDecision> {
        self.snapshots.iter().map(|(_, _, d)| d)
    }

    /// The fate of every pack an index file lists.
    pub fn packs(&self) -> impl Iterator<Item = (Id, PackFate)> + '_ {
        self.packs.iter().map(|(id, p)| (*id, p.fate))
    }

    /// The leftover files the execution deletes: temporary files, then packs no index lists.
    pub fn leftovers(&self) -> Vec<String> {
        let packs = self.unindexed.iter().map(|h| h.to_string());
        self.temporaries.iter().cloned().chain(packs).collect()
    }

    /// Pack and index bytes the execution frees (about: repacking writes new trailers).
    pub fn bytes_to_free(&self) -> u64 {
        self.bytes_to_free
    }

    /// The plan as a report: what `--dry-run` prints (and what an execution starts from).
    pub fn report(&self) -> PruneReport {
        let count = |fate: PackFate| {
            self.packs
                .values()
                .filter(|p| p.fate == fate && p.size.is_some())
                .count() as u64
        };
        PruneReport {
            dry_run: self.dry_run,
            snapshots: self.snapshots().cloned().collect(),
            snapshots_removed: self.snapshots().filter(|d| !d.keep).count() as u64,
            packs_deleted: count(PackFate::Delete),
            packs_repacked: count(PackFate::Repack),
            packs_written: 0,
            chunks_rewritten: self.rebase.rewrite.len() as u64,
            bytes_kept_as_bases: self.rebase.kept_as_bases,
            leftovers_deleted: (self.temporaries.len() + self.unindexed.len()) as u64,
            bytes_before: self.bytes_before,
            bytes_freed: self.bytes_to_free,
            duration_ms: self.started.elapsed().as_millis() as u64,
            refused: self.refused.clone(),
            snapshots_only: self.snapshots_only,
        }
    }
}

/// Plans a prune: takes the lock (exclusive, shared for a dry run) and decides everything the
/// execution does. Fails, deleting nothing, while it cannot tell what is in use (a damaged
/// index file, an unreadable tree, a needed chunk no index lists, a needed pack missing).
pub fn plan(
    repo: &mut Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PrunePlan> {
    let mut plan = plan_snapshots(repo, opts, false)?;
    if plan.refused.is_some() {
        return Ok(plan);
    }
    let repo: &Repository = repo;

    // What the kept snapshots need (delta bases included).
    progress.phase("reading the trees of the kept snapshots");
    for (_, tree_id, decision) in plan.snapshots.iter().filter(|(_, _, d)| d.keep) {
        let tree = repo.load_tree(tree_id).map_err(|e| {
            Error::Invalid(format!(
                "the tree of snapshot {} cannot be read ({e}); prune deletes nothing while it cannot \
                 tell what is in use: run `tvault verify`",
                decision.short_id
            ))
        })?;
        mark_tree(&mut plan.live, *tree_id, &tree);
    }
    plan.rebase = super::rebase::choose(repo.index(), &plan.live);
    mark_bases(repo.index(), &mut plan.live, &plan.rebase.rewrite);
    let unindexed = plan
        .live
        .iter()
        .filter(|id| !repo.index().contains(id))
        .count();
    if unindexed > 0 {
        return Err(Error::Invalid(format!(
            "{unindexed} chunk(s) that kept snapshots need are in no index file (a lost or damaged \
             index?); prune deletes nothing while packs it cannot account for may hold them: run \
             `tvault verify`"
        )));
    }

    // The fate of every pack.
    progress.phase("deciding the fate of every pack");
    let mut listed: BTreeMap<Id, (Vec<PackEntry>, index::Deltas)> = BTreeMap::new();
    for file in repo.read_index_files()? {
        for (pack, entries) in file.packs? {
            let deltas = file.deltas.get(&pack).cloned().unwrap_or_default();
            listed.entry(pack).or_insert((entries, deltas));
        }
        plan.bytes_before += file.size;
        plan.old_index_files.push(file.object);
    }
    let mut on_disk: IdMap<u64> = IdMap::default();
    // Temporary files only once nobody may be writing them: not locks being taken beside us,
    // not a write in flight (see `Backend::list_leftovers`).
    plan.temporaries = repo.storage().leftovers()?;
    for (object, size) in repo.list_packs()? {
        plan.bytes_before += size;
        match object.id() {
            Some(id) if listed.contains_key(&id) => {
                on_disk.insert(id, size);
            }
            _ => {
                plan.unindexed.push(object);
                plan.bytes_to_free += size;
            }
        }
    }
    for (pack, (entries, deltas)) in listed {
        let is_live = |e: &&PackEntry| serves(repo.index(), &plan.live, &pack, e);
        let total: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
        let live_bytes: u64 = entries
            .iter()
            .filter(is_live)
            .map(|e| e.stored_len as u64)
            .sum();
        // A pack kept as it is keeps every blob it holds in the index: other copies of live
        // chunks and dead chunks too. Each delta among them must keep its base, or a later
        // index (or backup deduplicating against it) reads a delta that cannot be decoded.
        let orphan = entries.iter().any(|e| {
            deltas
                .get(&e.id)
                .is_some_and(|d| !plan.live.contains(&d.base))
        });
        // A delta stored again as a keyframe leaves its pack with the new copy.
        let rewrites = entries
            .iter()
            .any(|e| plan.rebase.rewrite.contains(&e.id) && is_live(&e));
        let size = on_disk.get(&pack).copied();
        let fate = match size {
            None if live_bytes > 0 => {
                return Err(Error::Invalid(format!(
                    "pack {} holds chunks that kept snapshots need, and it is missing; prune deletes \
                     nothing until this is resolved: run `tvault verify`",
                    Handle::pack(&pack)
                )));
            }
            None => PackFate::Delete,
            Some(size) if live_bytes == 0 => {
                plan.bytes_to_free += size;
                PackFate::Delete
            }
            Some(_)
                if orphan
                    || rewrites
                    || (total - live_bytes) as f64 > total as f64 * opts.max_unused / 100.0 =>
            {
                plan.bytes_to_free += total - live_bytes;
                PackFate::Repack
            }
            Some(_) => PackFate::Keep,
        };
        plan.packs.insert(
            pack,
            PlannedPack {
                fate,
                size,
                entries,
                deltas,
            },
        );
    }
    Ok(plan)
}

/// Plans a forget: takes the lock (exclusive, shared for a dry run) and decides which snapshot
/// manifests go. No tree, index or pack is read: forgetting needs none of them.
pub fn plan_forget(repo: &mut Repository, opts: &PruneOptions) -> Result<PrunePlan> {
    plan_snapshots(repo, opts, true)
}

/// Takes the lock and decides which snapshots stay; refuses (or, for a dry run, records the
/// refusal of) a plan that removes every snapshot without `allow_remove_all`. A prune (not
/// `snapshots_only`) refuses first while an index file is damaged.
fn plan_snapshots(
    repo: &mut Repository,
    opts: &PruneOptions,
    snapshots_only: bool,
) -> Result<PrunePlan> {
    let started = Instant::now();
    let command = if snapshots_only { "forget" } else { "prune" };
    let lock = repo.lock(!opts.dry_run, command)?;
    if let Some(e) = repo.index_problems().first().filter(|_| !snapshots_only) {
        return Err(Error::Invalid(format!(
            "prune deletes nothing while an index file is damaged ({e}); run `tvault verify` to see what is affected"
        )));
    }
    let snaps = repo.snapshots()?;
    let decisions = decide(repo, &snaps, opts)?;
    let kept = decisions.iter().filter(|d| d.keep).count();
    let mut refused = None;
    if kept == 0 && !snaps.is_empty() && !opts.allow_remove_all {
        let why = format!(
            "this would remove every snapshot ({}); if that is what you want, add --allow-remove-all",
            snaps.len()
        );
        if !opts.dry_run {
            return Err(Error::Invalid(why));
        }
        // The plan is what the user asked to see; the refusal is part of it.
        refused = Some(why);
    }
    Ok(PrunePlan {
        started,
        _lock: lock,
        dry_run: opts.dry_run,
        snapshots_only,
        snapshots: snaps
            .into_iter()
            .zip(decisions)
            .map(|((id, snap), d)| (id, snap.tree, d))
            .collect(),
        refused,
        live: IdSet::default(),
        rebase: Default::default(),
        packs: BTreeMap::new(),
        unindexed: Vec::new(),
        temporaries: Vec::new(),
        old_index_files: Vec::new(),
        bytes_before: 0,
        bytes_to_free: 0,
    })
}
