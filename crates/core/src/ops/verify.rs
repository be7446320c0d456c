//! `verify`: is every snapshot restorable? Always a structure check (index files parse, every
//! indexed pack exists with the size its index implies, every snapshot's tree decodes, every
//! chunk a tree references is indexed). With `--read-data` (or a subset of it) packs are read
//! and every chunk in them decoded and re-hashed, in parallel. Each problem names its file in
//! the repository and, for lost data, every snapshot and path that needs it.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::content::Content;
use super::prune::{mark_bases, mark_tree, serves};
use crate::error::Result;
use crate::id::Id;
use crate::index::{IdMap, IdSet};
use crate::pack::PackEntry;
use crate::progress::Progress;
use crate::repo::{Handle, ObjectKind, PackCheck, Repository};
use crate::tree::NodeKind;

/// How much pack data to read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    All,
    /// The `n`-th (1-based) of `m` deterministic slices of the packs: m runs cover everything.
    Slice {
        n: u32,
        m: u32,
    },
    /// A random sample of this percentage of the packs.
    Percent(f64),
}

impl ReadData {
    /// Parses `n/m` or `P%`.
    pub fn parse_subset(spec: &str) -> std::result::Result<ReadData, String> {
        let bad = || {
            format!(
                "invalid subset {spec:?}: use n/m (e.g. 3/7, the 3rd of 7 slices) or P% (e.g. 10%)"
            )
        };
        if let Some(p) = spec.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(ReadData::Percent(p));
        }
        let (n, m) = spec.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || m == 0 || n > m {
            return Err(bad());
        }
        Ok(ReadData::Slice { n, m })
    }

    fn describe(&self) -> String {
        match self {
            ReadData::None => "none".into(),
            ReadData::All => "all".into(),
            ReadData::Slice { n, m } => format!("{n}/{m}"),
            ReadData::Percent(p) => format!("{p}%"),
        }
    }

    fn selects(&self, pack: &Id, sample: &IdSet) -> bool {
        match self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Slice { n, m } => {
                let x = u64::from_be_bytes(pack.0[..8].try_into().unwrap());
                x % u64::from(*m) == u64::from(n - 1)
            }
            ReadData::Percent(_) => sample.contains(pack),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    CorruptIndex,
    MissingPack,
    DamagedPack,
    DamagedChunk,
    MissingChunks,
    CorruptSnapshot,
    CorruptTree,
}

/// A snapshot and a path in it that a problem makes unrestorable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Affected {
    /// The snapshot (JSON: also under its deprecated name `snapshot`).
    pub id: String,
    pub path: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The repository file the problem is in (`data/…`, `index/…`, `snapshots/…`).
    pub file: String,
    pub message: String,
    pub affected: Vec<Affected>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub clean: bool,
    pub read_data: String,
    pub snapshots: u64,
    pub index_files: u64,
    pub packs: u64,
    pub packs_read: u64,
    pub blobs_read: u64,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
    /// Packs no snapshot needs (left by crashes or forgotten snapshots): `prune` frees them.
    pub reclaimable_packs: u64,
    pub reclaimable_bytes: u64,
    /// Each snapshot that cannot be restored whole, and what would heal it (absent when clean).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broken_snapshots: Vec<BrokenSnapshot>,
    pub duration_ms: u64,
}

/// A snapshot some of whose files (or its whole tree) cannot be restored now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokenSnapshot {
    pub id: String,
    /// Paths that cannot be restored (the whole snapshot counts as one).
    pub files: u64,
    pub heal: Heal,
}

/// What heals a broken snapshot, the first step first (ordered: the later step wins). verify cannot see the backed-up sources: a snapshot heals only
/// if a backup stores the same content again; data that exists nowhere any more stays lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Heal {
    /// Its missing chunks are in no index (e.g. dropped by `repair packs`): the next backup
    /// that stores the same content heals it.
    Backup,
    /// Some of its chunks are damaged and still indexed, so backups skip them:
    /// `tvault repair packs`, then a backup of the same data.
    RepairPacks,
    /// Some of its chunks may be in packs that no index lists: `tvault repair index`.
    RepairIndex,
    /// Its tree or manifest is damaged: nothing tvault can do heals it.
    Never,
}

struct Checker<'a> {
    repo: &'a Repository,
    problems: Vec<Problem>,
    /// Blobs lost or damaged → the problem that explains it.
    damaged: IdMap<usize>,
}

impl Checker<'_> {
    fn problem(&mut self, kind: ProblemKind, file: String, message: String) -> usize {
        self.problems.push(Problem {
            kind,
            file,
            message,
            affected: Vec::new(),
        });
        self.problems.len() - 1
    }
}

pub fn run(
    repo: &mut Repository,
    read_data: ReadData,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let _lock = repo.lock(false, "verify")?;
    // Snapshots first, then the index and the packs: a backup (it may run beside us) writes
    // packs, then its index file, then its snapshot. So every snapshot listed here is checked
    // against an index that has it; one published later is left for the next run.
    let snapshot_keys: Vec<Handle> = repo
        .storage()
        .list(ObjectKind::Snapshot)?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    repo.refresh_index()?;
    crate::repo::testing::pause("verify");
    let repo: &Repository = repo;
    let mut report = VerifyReport {
        read_data: read_data.describe(),
        ..VerifyReport::default()
    };
    let mut c = Checker {
        repo,
        problems: Vec::new(),
        damaged: IdMap::default(),
    };

    // Index files, and the packs they describe.
    let mut packs: IdMap<Vec<PackEntry>> = IdMap::default();
    for file in repo.read_index_files()? {
        // Only those the index was loaded from: a newer one is of a backup not yet published.
        if repo.index_files().binary_search(&file.object).is_err() {
            continue;
        }
        report.index_files += 1;
        match file.packs {
            Ok(list) => {
                for (pack, entries) in list {
                    packs.entry(pack).or_insert(entries);
                }
            }
            Err(e) => {
                c.problem(
                    ProblemKind::CorruptIndex,
                    file.object.to_string(),
                    e.to_string(),
                );
            }
        }
    }
    report.packs = packs.len() as u64;

    // Packs on disk against what the index says.
    let mut on_disk: IdMap<u64> = IdMap::default();
    for (object, size) in repo.list_packs()? {
        if let Some(id) = object.id() {
            on_disk.insert(id, size);
        }
    }
    let mut pack_ids: Vec<&Id> = packs.keys().collect();
    pack_ids.sort();
    for pack in &pack_ids {
        let entries = &packs[*pack];
        let expected = repo.expected_pack_size(entries);
        match on_disk.get(*pack) {
            None => {
                let p = c.problem(
                    ProblemKind::MissingPack,
                    Handle::pack(pack).to_string(),
                    format!("pack is missing; {} chunks in it are lost", entries.len()),
                );
                for e in entries {
                    c.damaged.entry(e.id).or_insert(p);
                }
            }
            Some(&size) if size != expected => {
                let p = c.problem(
                    ProblemKind::DamagedPack,
                    Handle::pack(pack).to_string(),
                    format!("pack has {size} bytes but its index implies {expected} (truncated or damaged)"),
                );
                for e in entries
                    .iter()
                    .filter(|e| e.offset as u64 + e.stored_len as u64 > size)
                {
                    c.damaged.entry(e.id).or_insert(p);
                }
            }
            Some(_) => {}
        }
    }

    // Read the selected packs in parallel and check every chunk in them.
    let sample = sample_packs(&pack_ids, read_data);
    let selected: Vec<&Id> = pack_ids
        .iter()
        .copied()
        .filter(|p| on_disk.contains_key(*p) && read_data.selects(p, &sample))
        .collect();
    progress.start(
        selected.len() as u64,
        selected.iter().map(|p| on_disk[*p]).sum(),
    );
    // Keyframes that deltas build on are checked with their deltas (`check_deltas`).
    let keyframes: IdSet = {
        let index = repo.index();
        index
            .deltas()
            .map(|(id, _)| index.keyframe_of(id))
            .collect()
    };
    let results: Vec<PackCheck> = repo.with_read_slots(|| {
        selected
            .par_iter()
            .map(|pack| {
                let r = repo.check_pack_deferring_deltas(pack, &packs[*pack], &keyframes);
                progress.bytes(r.bytes);
                r
            })
            .collect()
    });
    let mut deferred = Vec::new();
    for r in results {
        deferred.extend(r.deferred.iter().map(|id| (*id, r.pack)));
        report.packs_read += 1;
        report.bytes_read += r.bytes;
        report.blobs_read += r.blobs as u64;
        let key = Handle::pack(&r.pack).to_string();
        if let Some(err) = r.unreadable {
            let p = c.problem(
                ProblemKind::DamagedPack,
                key.clone(),
                format!("cannot read pack: {err}"),
            );
            for e in &packs[&r.pack] {
                c.damaged.entry(e.id).or_insert(p);
            }
            continue;
        }
        for (blob, reason) in &r.bad_blobs {
            let p = c.problem(
                ProblemKind::DamagedChunk,
                key.clone(),
                format!("chunk {blob}: {reason}"),
            );
            c.damaged.insert(*blob, p);
        }
        if !r.hash_ok && r.bad_blobs.is_empty() {
            c.problem(
                ProblemKind::DamagedPack,
                key,
                "pack content does not match its name (damage outside its chunks, e.g. in the trailer)".into(),
            );
        }
    }

    // The deltas of sound packs, chain by chain (see `Repository::check_deltas`).
    for (blob, pack, reason) in repo.check_deltas(&deferred) {
        let p = c.problem(
            ProblemKind::DamagedChunk,
            Handle::pack(&pack).to_string(),
            format!("chunk {blob}: {reason}"),
        );
        c.damaged.insert(blob, p);
    }

    // A delta is lost with its base (and with a base no index lists), transitively.
    propagate_to_deltas(&mut c);

    // Snapshots and their trees: what is referenced, and what is lost for whom.
    let mut referenced = check_snapshots(&mut c, &mut report, snapshot_keys)?;
    mark_bases(repo.index(), &mut referenced, &IdSet::default());
    for pack in &pack_ids {
        if let Some(size) = on_disk.get(*pack) {
            if !packs[*pack]
                .iter()
                .any(|e| serves(repo.index(), &referenced, pack, e))
            {
                report.reclaimable_packs += 1;
                report.reclaimable_bytes += size;
            }
        }
    }
    let unindexed: Vec<u64> = on_disk
        .iter()
        .filter(|(pack, _)| !packs.contains_key(*pack))
        .map(|(_, size)| *size)
        .collect();
    // Packs describe themselves: unindexed ones may hold exactly what snapshots need and no
    // index lists (file chunks or whole trees), so they are not reclaimable then.
    let needed_unindexed = referenced.iter().any(|id| !repo.index().contains(id));
    if needed_unindexed && !unindexed.is_empty() {
        let note = format!(
            "; {} pack(s) on disk are in no index file and may hold them (prune will not delete \
             them; `tvault repair index` reads them)",
            unindexed.len()
        );
        let lost = c.problems.iter_mut().filter(|p| {
            p.kind == ProblemKind::MissingChunks
                || (p.kind == ProblemKind::CorruptTree && p.message.starts_with(TREE_LOST))
        });
        for p in lost {
            p.message.push_str(&note);
        }
    } else {
        report.reclaimable_packs += unindexed.len() as u64;
        report.reclaimable_bytes += unindexed.iter().sum::<u64>();
    }
    progress.finish();
    let unindexed_data = !unindexed.is_empty() || !repo.index_problems().is_empty();
    report.broken_snapshots = broken_snapshots(&c.problems, unindexed_data);
    report.problems = c.problems;
    report.clean = report.problems.is_empty();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Sums up the problems per snapshot: how many of its paths are lost, and what heals it.
fn broken_snapshots(problems: &[Problem], unindexed_data: bool) -> Vec<BrokenSnapshot> {
    let mut by_snap: std::collections::BTreeMap<&str, (BTreeSet<&str>, Heal)> = Default::default();
    for p in problems {
        let heal = match p.kind {
            ProblemKind::MissingChunks if unindexed_data => Heal::RepairIndex,
            ProblemKind::MissingChunks => Heal::Backup,
            ProblemKind::DamagedChunk | ProblemKind::DamagedPack | ProblemKind::MissingPack => {
                Heal::RepairPacks
            }
            ProblemKind::CorruptTree if p.message.starts_with(TREE_LOST) && unindexed_data => {
                Heal::RepairIndex
            }
            ProblemKind::CorruptTree if p.message.starts_with(TREE_LOST) => Heal::Backup,
            _ => Heal::Never,
        };
        for a in &p.affected {
            let entry = by_snap
                .entry(a.id.as_str())
                .or_insert((BTreeSet::new(), heal));
            entry.0.insert(a.path.as_str());
            // The first step to take wins: unindexed packs may hold what seems lost, damage
            // must be dropped before a backup stores the chunks again; a bad tree never heals.
            entry.1 = entry.1.max(heal);
        }
    }
    by_snap
        .into_iter()
        .map(|(snap, (paths, heal))| BrokenSnapshot {
            id: snap.to_string(),
            files: paths.len() as u64,
            heal,
        })
        .collect()
}

/// Marks every delta whose chain reaches a damaged or unindexed blob as damaged, by the same
/// problem (or a new one for a base that no index lists).
fn propagate_to_deltas(c: &mut Checker) {
    let index = c.repo.index();
    let deltas: Vec<(Id, Id)> = index.deltas().map(|(id, d)| (*id, d.base)).collect();
    loop {
        let mut changed = false;
        for (id, base) in &deltas {
            if c.damaged.contains_key(id) {
                continue;
            }
            let p = match c.damaged.get(base) {
                Some(&p) => p,
                None if !index.contains(base) => c.problem(
                    ProblemKind::DamagedChunk,
                    "index".into(),
                    format!(
                        "chunk {} is a delta of {}, which no index file lists",
                        id.short(),
                        base.short()
                    ),
                ),
                None => continue,
            };
            c.damaged.insert(*id, p);
            changed = true;
        }
        if !changed {
            break;
        }
    }
}

fn sample_packs(packs: &[&Id], read_data: ReadData) -> IdSet {
    let ReadData::Percent(p) = read_data else {
        return IdSet::default();
    };
    let want = ((packs.len() as f64 * p / 100.0).ceil() as usize).min(packs.len());
    // Rank packs by a hash keyed with the current time: a different sample each run.
    let key = Id::of(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    let mut ranked: Vec<(Id, Id)> = packs
        .iter()
        .map(|p| {
            let mut both = key.0.to_vec();
            both.extend_from_slice(&p.0);
            (Id::of(&both), **p)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().take(want).map(|(_, p)| p).collect()
}

/// How a `corrupt_tree` message starts when the tree blob is in no index (not damaged).
const TREE_LOST: &str = "the tree is in no index file (tree";

/// Checks every snapshot (listed before the index was loaded) and its tree; records who is
/// affected by each damaged blob. Returns the set of referenced blobs.
fn check_snapshots(
    c: &mut Checker,
    report: &mut VerifyReport,
    snapshot_keys: Vec<Handle>,
) -> Result<IdSet> {
    let mut referenced = IdSet::default();
    let mut missing = Vec::new();
    let repo = c.repo;
    for object in snapshot_keys {
        report.snapshots += 1;
        let key = object.to_string();
        let Some(id) = object.id() else {
            c.problem(
                ProblemKind::CorruptSnapshot,
                key,
                "file name is not a snapshot ID".into(),
            );
            continue;
        };
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                c.problem(ProblemKind::CorruptSnapshot, key, e.to_string());
                continue;
            }
        };
        let full = id.to_hex();
        referenced.insert(snap.tree);
        let tree = match repo.load_tree(&snap.tree) {
            Ok(t) => t,
            Err(e) => {
                let whole = Affected {
                    id: full.clone(),
                    path: "(the whole snapshot: its tree is lost)".into(),
                };
                if let Some(&p) = c.damaged.get(&snap.tree) {
                    c.problems[p].affected.push(whole.clone());
                }
                let message = if repo.index().contains(&snap.tree) {
                    format!("tree {} cannot be read: {e}", snap.tree.short())
                } else {
                    format!("{TREE_LOST} {}): {e}", snap.tree.short())
                };
                let p = c.problem(ProblemKind::CorruptTree, key, message);
                c.problems[p].affected.push(whole);
                continue;
            }
        };
        mark_tree(&mut referenced, snap.tree, &tree);
        for node in tree.nodes.iter().filter(|n| n.kind == NodeKind::File) {
            let path = node.path.display();
            let mut seen_problem: HashMap<usize, ()> = HashMap::new();
            let mut file_missing = false;
            for chunk in &node.chunks {
                if !repo.index().contains(chunk) {
                    file_missing = true;
                } else if let Some(&p) = c.damaged.get(chunk) {
                    if seen_problem.insert(p, ()).is_none() {
                        c.problems[p].affected.push(Affected {
                            id: full.clone(),
                            path: path.clone(),
                        });
                    }
                }
            }
            if file_missing {
                missing.push(Affected {
                    id: full.clone(),
                    path,
                });
            } else if let Err(e) = Content::of_file(repo, node) {
                // The same size check every reader makes.
                let p = c.problem(
                    ProblemKind::CorruptTree,
                    key.clone(),
                    format!("tree {}: {e}", snap.tree.short()),
                );
                c.problems[p].affected.push(Affected {
                    id: full.clone(),
                    path,
                });
            }
        }
    }
    if !missing.is_empty() {
        let p = c.problem(
            ProblemKind::MissingChunks,
            "index".into(),
            format!(
                "{} file(s) reference chunks that no readable index file lists",
                missing.len()
            ),
        );
        c.problems[p].affected = missing;
    }
    Ok(referenced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_specs_parse_or_explain() {
        assert_eq!(
            ReadData::parse_subset("3/7").unwrap(),
            ReadData::Slice { n: 3, m: 7 }
        );
        assert_eq!(
            ReadData::parse_subset("12.5%").unwrap(),
            ReadData::Percent(12.5)
        );
        for bad in ["0/7", "8/7", "1/0", "x/2", "0%", "101%", "abc", "3"] {
            assert!(
                ReadData::parse_subset(bad)
                    .unwrap_err()
                    .contains("invalid subset"),
                "{bad}"
            );
        }
    }

    #[test]
    fn slices_partition_the_packs() {
        let packs: Vec<Id> = (0..200u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        let none = IdSet::default();
        let mut covered = 0;
        for n in 1..=7 {
            let slice = ReadData::Slice { n, m: 7 };
            let picked = packs.iter().filter(|p| slice.selects(p, &none)).count();
            assert!(picked > 10, "slice {n}/7 picked only {picked}");
            covered += picked;
        }
        assert_eq!(covered, packs.len(), "every pack is in exactly one slice");
    }

    #[test]
    fn a_percentage_samples_that_share_of_packs() {
        let packs: Vec<Id> = (0..200u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        let refs: Vec<&Id> = packs.iter().collect();
        assert_eq!(sample_packs(&refs, ReadData::Percent(10.0)).len(), 20);
        assert_eq!(sample_packs(&refs, ReadData::Percent(100.0)).len(), 200);
        assert_eq!(sample_packs(&refs, ReadData::Percent(0.1)).len(), 1);
    }
}
