//! `prune` and `forget`: apply a retention policy and forget the snapshots it does not keep;
//! prune then collects garbage: packs without a live chunk are deleted, packs with more than
//! `max_unused` percent dead bytes are repacked, and so are packs holding a delta whose base
//! prune does not keep (a dead chunk, or another copy of a live one): after prune, every blob
//! the index lists can be decoded. A kept delta whose bases only forgotten snapshots used is
//! stored again as a keyframe when that frees more than it costs (`rebase.rs`).
//!
//! Each is a plan ([`plan()`], [`plan_forget`]: which snapshots stay and why, what
//! the kept ones need, the fate of every pack; it writes nothing but its lock), which
//! a dry run prints, then its execution ([`execute()`]), in the order that keeps every
//! kept snapshot restorable at every instant: new packs → new index → forgotten manifests →
//! old index files → dead packs → leftovers. The plan holds the exclusive lock from planning
//! through execution, so no backup can be adding references meanwhile.

mod execute;
mod plan;
mod rebase;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::retention::{self, Candidate, KeepPolicy};
use crate::error::Result;
use crate::id::Id;
use crate::index::{self, IdSet};
use crate::pack::PackEntry;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::tree::{NodeKind, Tree};

pub use execute::execute;
pub use plan::{plan, plan_forget, PrunePlan};

/// Default `--max-unused`: repack a pack when more than this percentage of it is dead.
pub const DEFAULT_MAX_UNUSED: f64 = 5.0;

#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub policy: KeepPolicy,
    /// Apply the policy only to snapshots with one of these tags (`--tag`); others are kept.
    pub only_tags: Vec<String>,
    /// Snapshots (IDs or prefixes) to remove whatever the policy says.
    pub forget: Vec<String>,
    pub dry_run: bool,
    pub max_unused: f64,
    /// Allow a policy that removes every snapshot.
    pub allow_remove_all: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            policy: KeepPolicy::default(),
            only_tags: Vec::new(),
            forget: Vec::new(),
            dry_run: false,
            max_unused: DEFAULT_MAX_UNUSED,
            allow_remove_all: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotDecision {
    pub id: String,
    pub short_id: String,
    pub time: DateTime<Utc>,
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub keep: bool,
    /// Which rules keep it; for a removed snapshot, why it goes.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: Vec<SnapshotDecision>,
    pub snapshots_removed: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    /// Kept deltas stored again as keyframes, so that the bases only forgotten snapshots used
    /// could go.
    pub chunks_rewritten: u64,
    /// Stored bytes kept only as bases of kept deltas (where rewriting would cost more).
    pub bytes_kept_as_bases: u64,
    /// Packs no index lists and temporary files: leftovers of interrupted runs.
    pub leftovers_deleted: u64,
    /// Pack and index bytes before, and what this run frees (or would free, with --dry-run).
    pub bytes_before: u64,
    pub bytes_freed: u64,
    pub duration_ms: u64,
    /// `--dry-run` of a plan a real run would refuse (it removes every snapshot): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// `forget`: only snapshot manifests were (or would be) removed; no pack was looked at.
    #[serde(skip)]
    pub snapshots_only: bool,
}

/// What a plan does with a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackFate {
    /// It stays as it is (and in the new index).
    Keep,
    /// No chunk in it is in use: it goes.
    Delete,
    /// More than `max_unused` percent of it is dead, or a delta in it has a base that is not
    /// kept: its live chunks (the copies the index reads) are copied into new packs, then it goes.
    Repack,
}

/// `prune`: plans, then executes the plan (a dry run only plans). The lock taken by planning
/// is held until the execution ends.
pub fn run(
    repo: &mut Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let plan = plan(repo, opts, progress)?;
    if plan.is_dry_run() {
        return Ok(plan.report());
    }
    execute(repo, plan, progress)
}

/// `forget`: removes the snapshot manifests the policy does not keep, nothing else (no pack is
/// read, written or deleted; `prune` collects their data later). A dry run only plans.
pub fn forget(
    repo: &mut Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let plan = plan_forget(repo, opts)?;
    if plan.is_dry_run() {
        return Ok(plan.report());
    }
    execute(repo, plan, progress)
}

/// Marks what a snapshot's tree needs: the tree blob and every file's chunks. With
/// [`mark_bases`] and [`serves`], the one definition of "in use" that prune (what it keeps)
/// and verify (what it calls reclaimable) share.
pub(crate) fn mark_tree(live: &mut IdSet, tree_id: Id, tree: &Tree) {
    live.insert(tree_id);
    for node in tree.nodes.iter().filter(|n| n.kind == NodeKind::File) {
        live.extend(node.chunks.iter().copied());
    }
}

/// Adds the bases of every delta in `live`, transitively (the index names each delta's base),
/// but not of the deltas in `rewritten` (stored again as keyframes by this prune).
pub(crate) fn mark_bases(index: &index::Index, live: &mut IdSet, rewritten: &IdSet) {
    let mut todo: Vec<Id> = live
        .iter()
        .filter(|id| !rewritten.contains(*id))
        .filter_map(|id| index.delta(id).map(|d| d.base))
        .collect();
    while let Some(base) = todo.pop() {
        if live.insert(base) {
            todo.extend(index.delta(&base).map(|d| d.base));
        }
    }
}

/// True when `e` (a blob of `pack`) is in use and is the copy the index reads: a pack with no
/// such blob is dead, whatever duplicates it holds.
pub(crate) fn serves(index: &index::Index, live: &IdSet, pack: &Id, e: &PackEntry) -> bool {
    live.contains(&e.id) && index.get(&e.id).map(|l| index.pack_id(l)) == Some(*pack)
}

/// Applies the policy per group of host and paths, then `--forget`.
fn decide(
    repo: &Repository,
    snaps: &[(Id, crate::snapshot::Snapshot)],
    opts: &PruneOptions,
) -> Result<Vec<SnapshotDecision>> {
    let mut decisions: Vec<SnapshotDecision> = snaps
        .iter()
        .map(|(id, s)| SnapshotDecision {
            id: id.to_hex(),
            short_id: id.short(),
            time: s.time,
            host: s.host.clone(),
            paths: s.paths.clone(),
            tags: s.tags.clone(),
            keep: true,
            reasons: vec!["not selected by --tag".to_string()],
        })
        .collect();
    let mut groups: BTreeMap<(String, Vec<String>), Vec<usize>> = BTreeMap::new();
    for (i, (_, s)) in snaps.iter().enumerate() {
        let in_scope =
            opts.only_tags.is_empty() || s.tags.iter().any(|t| opts.only_tags.contains(t));
        if in_scope {
            groups
                .entry((s.host.clone(), s.paths.clone()))
                .or_default()
                .push(i);
        }
    }
    for members in groups.values() {
        let candidates: Vec<Candidate> = members
            .iter()
            .map(|&i| Candidate {
                time: snaps[i].1.time,
                tags: snaps[i].1.tags.clone(),
                tiebreak: snaps[i].0.to_hex(),
            })
            .collect();
        for (&i, reasons) in members
            .iter()
            .zip(retention::apply(&opts.policy, &candidates))
        {
            decisions[i].keep = !reasons.is_empty();
            decisions[i].reasons = if reasons.is_empty() {
                vec!["no rule keeps it".to_string()]
            } else {
                reasons
            };
        }
    }
    for prefix in &opts.forget {
        let id = repo.resolve_snapshot(prefix)?.to_hex();
        let d = decisions
            .iter_mut()
            .find(|d| d.id == id)
            .expect("resolved IDs exist");
        d.keep = false;
        d.reasons = vec!["--forget".to_string()];
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ops::backup::{self, BackupOptions};
    use crate::progress::NoProgress;
    use crate::repo::{Backend, MemBackend};

    /// The keys below `dir`.
    fn keys(b: &MemBackend, dir: &str) -> Vec<String> {
        b.list(dir).unwrap().into_iter().map(|(k, _)| k).collect()
    }

    /// Every object of the repository but its locks: key → bytes.
    fn contents(b: &MemBackend) -> BTreeMap<String, Vec<u8>> {
        ["data", "index", "snapshots", "keys"]
            .iter()
            .flat_map(|dir| keys(b, dir))
            .chain(["config".to_string()])
            .filter_map(|k| Some((k.clone(), b.get(&k).ok()?)))
            .collect()
    }

    /// Backs up `bytes` as `dir/weights.bin`; the IDs of the packs this added.
    fn backup_version(
        repo: &mut Repository,
        b: &MemBackend,
        dir: &std::path::Path,
        bytes: &[u8],
    ) -> Vec<String> {
        let before = keys(b, "data");
        std::fs::write(dir.join("weights.bin"), bytes).unwrap();
        let opts = BackupOptions::new(vec![dir.to_path_buf()]);
        backup::run(repo, &opts, &NoProgress).unwrap();
        let mut added = keys(b, "data");
        added.retain(|k| !before.contains(k));
        assert!(!added.is_empty());
        added
    }

    #[test]
    fn plan_decides_without_writing_and_execute_does_exactly_that() {
        let src = tempfile::tempdir().unwrap();
        let backend = Arc::new(MemBackend::default());
        let mut repo = Repository::init_with(backend.clone(), "mem".into()).unwrap();
        let mut rng = tvault_workload::Rng::new(10);
        let mut version = || {
            let mut data = vec![0u8; 256 << 10];
            rng.fill_bytes(&mut data);
            data
        };
        let old_packs = backup_version(&mut repo, &backend, src.path(), &version());
        let new_packs = backup_version(&mut repo, &backend, src.path(), &version());
        let before = contents(&backend);

        let opts = PruneOptions {
            policy: KeepPolicy {
                last: 1,
                ..KeepPolicy::default()
            },
            ..PruneOptions::default()
        };
        let plan = plan(&mut repo, &opts, &NoProgress).unwrap();
        assert!(!plan.is_dry_run());
        let keep: Vec<bool> = plan.snapshots().map(|d| d.keep).collect();
        assert_eq!(keep, [false, true], "the older snapshot goes");
        let fates: BTreeMap<String, PackFate> = plan
            .packs()
            .map(|(id, fate)| (crate::repo::pack_key(&id), fate))
            .collect();
        for key in &old_packs {
            assert_eq!(
                fates[key],
                PackFate::Delete,
                "{key}: only the old version used it"
            );
        }
        for key in &new_packs {
            assert_eq!(fates[key], PackFate::Keep, "{key}: all of it is in use");
        }
        let old_bytes: u64 = old_packs.iter().map(|k| before[k].len() as u64).sum();
        assert_eq!(plan.bytes_to_free(), old_bytes);
        assert!(plan.leftovers().is_empty());
        let planned = plan.report();
        assert_eq!(
            (
                planned.snapshots_removed,
                planned.packs_deleted,
                planned.packs_repacked
            ),
            (1, old_packs.len() as u64, 0)
        );
        // Planning wrote nothing but its lock, which it holds until executed (or dropped).
        assert_eq!(
            contents(&backend),
            before,
            "planning changed the repository"
        );
        assert_eq!(backend.list("locks").unwrap().len(), 1);

        let report = execute(&repo, plan, &NoProgress).unwrap();
        assert!(
            backend.list("locks").unwrap().is_empty(),
            "the lock is released"
        );
        assert_eq!(report.packs_deleted, planned.packs_deleted);
        assert_eq!(report.snapshots_removed, 1);
        let mut data = keys(&backend, "data");
        data.sort();
        let mut want = new_packs.clone();
        want.sort();
        assert_eq!(data, want, "exactly the planned packs are left");
        assert_eq!(backend.list("snapshots").unwrap().len(), 1);

        // A dry-run plan is shown, never executed.
        let dry = PruneOptions {
            dry_run: true,
            ..opts
        };
        let plan = plan_forget(&mut repo, &dry).unwrap();
        assert!(execute(&repo, plan, &NoProgress).is_err());
    }
}
