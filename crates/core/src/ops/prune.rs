//! `prune`: apply a retention policy, forget the snapshots it does not keep, then collect
//! garbage: packs without a live chunk are deleted, packs with more than `max_unused` percent
//! dead bytes are repacked. The order keeps every kept snapshot restorable at every instant:
//! forgotten manifests → new packs → new index → old index files deleted → old packs deleted.
//! Prune holds the exclusive lock, so no backup can be adding references meanwhile.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::retention::{self, Candidate, KeepPolicy};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{self, IdMap, IdSet};
use crate::pack::{PackEntry, PackWriter};
use crate::progress::Progress;
use crate::repo::{pack_key, Repository};
use crate::tree::{NodeKind, Tree};

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
    /// Packs no index lists and temporary files: leftovers of interrupted runs.
    pub leftovers_deleted: u64,
    /// Pack and index bytes before, and what this run frees (or would free, with --dry-run).
    pub bytes_before: u64,
    pub bytes_freed: u64,
    pub duration_ms: u64,
    /// `--dry-run` of a plan a real run would refuse (it removes every snapshot): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

enum PackFate {
    Keep,
    Delete,
    Repack,
}

pub fn run(
    repo: &mut Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    let started = Instant::now();
    let _lock = repo.lock(!opts.dry_run, "prune")?;
    if let Some(e) = repo.index_problems().first() {
        return Err(Error::Invalid(format!(
            "prune deletes nothing while an index file is damaged ({e}); run `tvault verify` to see what is affected"
        )));
    }
    let repo: &Repository = repo;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };

    // 1. Which snapshots stay.
    let snaps = repo.snapshots()?;
    report.snapshots = decide(repo, &snaps, opts)?;
    let kept: Vec<&(Id, crate::snapshot::Snapshot)> = snaps
        .iter()
        .zip(&report.snapshots)
        .filter(|(_, d)| d.keep)
        .map(|(s, _)| s)
        .collect();
    report.snapshots_removed = (snaps.len() - kept.len()) as u64;
    if kept.is_empty() && !snaps.is_empty() && !opts.allow_remove_all {
        let why = format!(
            "this would remove every snapshot ({}); if that is what you want, add --allow-remove-all",
            snaps.len()
        );
        if opts.dry_run {
            // The plan is what the user asked to see; the refusal is part of it.
            report.refused = Some(why);
            report.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
        return Err(Error::Invalid(why));
    }

    // 2. What they need (delta bases included).
    let mut live = IdSet::default();
    for (id, snap) in &kept {
        let tree = repo.load_tree(&snap.tree).map_err(|e| {
            Error::Invalid(format!(
                "the tree of snapshot {} cannot be read ({e}); prune deletes nothing while it cannot \
                 tell what is in use: run `tvault verify`",
                id.short()
            ))
        })?;
        mark_tree(&mut live, snap.tree, &tree);
    }
    mark_bases(repo.index(), &mut live);

    let unindexed = live.iter().filter(|id| !repo.index().contains(id)).count();
    if unindexed > 0 {
        return Err(Error::Invalid(format!(
            "{unindexed} chunk(s) that kept snapshots need are in no index file (a lost or damaged \
             index?); prune deletes nothing while packs it cannot account for may hold them: run \
             `tvault verify`"
        )));
    }

    // 3. The fate of every pack.
    let index_files = repo.read_index_files()?;
    let mut packs: BTreeMap<Id, Vec<PackEntry>> = BTreeMap::new();
    let mut pack_deltas: IdMap<index::Deltas> = IdMap::default();
    let mut old_index_keys = Vec::new();
    for file in index_files {
        for (pack, entries) in file.packs? {
            let deltas = file.deltas.get(&pack).cloned().unwrap_or_default();
            packs.entry(pack).or_insert(entries);
            pack_deltas.entry(pack).or_insert(deltas);
        }
        report.bytes_before += repo.backend().size(&file.key)?.unwrap_or(0);
        old_index_keys.push(file.key);
    }
    let mut on_disk: IdMap<u64> = IdMap::default();
    // Temporary files only once nobody may be writing them: not locks being taken beside us,
    // not a write in flight (see `Backend::list_leftovers`).
    let mut leftovers = repo.backend().list_leftovers("")?;
    for key in repo.backend().list("data")? {
        let size = repo.backend().size(&key)?.unwrap_or(0);
        report.bytes_before += size;
        match key.rsplit('/').next().and_then(Id::from_hex) {
            Some(id) if packs.contains_key(&id) => {
                on_disk.insert(id, size);
            }
            _ => {
                leftovers.push(key);
                report.bytes_freed += size;
            }
        }
    }
    let mut fates = BTreeMap::new();
    for (pack, entries) in &packs {
        let is_live = |e: &&PackEntry| serves(repo.index(), &live, pack, e);
        let total: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
        let live_bytes: u64 = entries
            .iter()
            .filter(is_live)
            .map(|e| e.stored_len as u64)
            .sum();
        let Some(&size) = on_disk.get(pack) else {
            if live_bytes > 0 {
                return Err(Error::Invalid(format!(
                    "pack {} holds chunks that kept snapshots need, and it is missing; prune deletes \
                     nothing until this is resolved: run `tvault verify`",
                    pack_key(pack)
                )));
            }
            fates.insert(*pack, PackFate::Delete);
            continue;
        };
        let fate = if live_bytes == 0 {
            report.packs_deleted += 1;
            report.bytes_freed += size;
            PackFate::Delete
        } else if (total - live_bytes) as f64 > total as f64 * opts.max_unused / 100.0 {
            report.packs_repacked += 1;
            report.bytes_freed += total - live_bytes;
            PackFate::Repack
        } else {
            PackFate::Keep
        };
        fates.insert(*pack, fate);
    }
    report.leftovers_deleted = leftovers.len() as u64;
    if opts.dry_run {
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    // 4. Execute, in the order that keeps every kept snapshot restorable: new packs (checking
    // every chunk copied, so damage stops prune before it deletes anything), the new index,
    // then deletions: forgotten manifests, old index files, dead packs, leftovers. Nothing that
    // this run wrote or that the new index names is ever deleted, whatever its name collides
    // with (a crashed earlier prune may have left byte-identical files under the same names).
    let mut keep_keys: std::collections::HashSet<String> = std::collections::HashSet::new();
    let changes_packs = fates.values().any(|f| !matches!(f, PackFate::Keep));
    if changes_packs {
        let mut new_index: index::PackList = Vec::new();
        let mut writer = PackWriter::new();
        let pack_size = repo.config().pack_size as usize;
        let store =
            |writer: PackWriter, new_index: &mut Vec<_>, report: &mut PruneReport| -> Result<()> {
                let (id, bytes, entries) = writer.finish();
                repo.backend().put(&pack_key(&id), &bytes)?;
                report.packs_written += 1;
                // Copied blobs are the copies the index names: so are their bases.
                let deltas = entries
                    .iter()
                    .filter_map(|e| Some((e.id, repo.index().delta(&e.id)?)))
                    .collect();
                new_index.push((id, entries, deltas));
                Ok(())
            };
        for (pack, fate) in &fates {
            match fate {
                PackFate::Keep => new_index.push((
                    *pack,
                    packs[pack].clone(),
                    pack_deltas.get(pack).cloned().unwrap_or_default(),
                )),
                PackFate::Delete => {}
                PackFate::Repack => {
                    let data = repo.backend().get(&pack_key(pack))?;
                    progress.bytes(data.len() as u64);
                    for e in &packs[pack] {
                        let used_here =
                            repo.index().get(&e.id).map(|l| repo.index().pack_id(l)) == Some(*pack);
                        if !live.contains(&e.id) || !used_here {
                            continue;
                        }
                        let stored = checked_blob(repo, &data, pack, e)?;
                        writer.add(e.id, e.kind, e.encoding, stored, e.plain_len as usize);
                        if writer.len() >= pack_size {
                            store(std::mem::take(&mut writer), &mut new_index, &mut report)?;
                        }
                    }
                }
            }
        }
        if !writer.is_empty() {
            store(writer, &mut new_index, &mut report)?;
        }
        keep_keys.extend(new_index.iter().map(|(id, _, _)| pack_key(id)));
        if !new_index.is_empty() {
            let bytes = index::encode_file(&new_index);
            let key = format!("index/{}", Id::of(&bytes).to_hex());
            repo.backend().put(&key, &bytes)?;
            keep_keys.insert(key);
        }
    }
    for (snap, decision) in snaps.iter().zip(&report.snapshots) {
        if !decision.keep {
            repo.backend()
                .delete(&format!("snapshots/{}", snap.0.to_hex()))?;
        }
    }
    if changes_packs {
        let dead_packs = fates
            .iter()
            .filter(|(_, fate)| !matches!(fate, PackFate::Keep))
            .map(|(pack, _)| pack_key(pack));
        for key in old_index_keys.into_iter().chain(dead_packs) {
            if !keep_keys.contains(&key) {
                repo.backend().delete(&key)?;
            }
        }
    }
    for key in leftovers.iter().filter(|k| !keep_keys.contains(*k)) {
        repo.backend().delete(key)?;
    }
    report.bytes_freed = report.bytes_before.saturating_sub(stored_bytes(repo)?);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
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

/// Adds the bases of every delta in `live`, transitively (the index names each delta's base).
pub(crate) fn mark_bases(index: &index::Index, live: &mut IdSet) {
    let mut todo: Vec<Id> = live
        .iter()
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

/// Bytes of packs and index files now.
fn stored_bytes(repo: &Repository) -> Result<u64> {
    let mut total = 0;
    for key in repo
        .backend()
        .list("data")?
        .into_iter()
        .chain(repo.backend().list("index")?)
    {
        total += repo.backend().size(&key)?.unwrap_or(0);
    }
    Ok(total)
}

/// A live blob's stored bytes from a pack being repacked, checked before it is copied, so that
/// repacking never launders damage into a fresh pack.
fn checked_blob<'a>(
    repo: &Repository,
    data: &'a [u8],
    pack: &Id,
    e: &PackEntry,
) -> Result<&'a [u8]> {
    let damaged = |reason: &str| Error::CorruptChunk {
        id: e.id.to_hex(),
        pack: pack.to_hex(),
        reason: format!("{reason}; prune stopped before deleting anything, run `tvault verify`"),
    };
    let stored = data
        .get(e.offset as usize..e.offset as usize + e.stored_len as usize)
        .ok_or_else(|| damaged("lies beyond the end of its pack"))?;
    repo.decode_blob(&e.id, pack, e.encoding, stored, e.plain_len as usize)
        .map_err(|err| match err {
            Error::CorruptChunk { reason, .. } => damaged(&reason),
            other => damaged(&other.to_string()),
        })?;
    Ok(stored)
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
