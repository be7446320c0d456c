//! `backup`: walk the sources, reuse the parent snapshot's chunk lists for files whose
//! metadata has not changed, read and store the rest, then write the tree, the index and,
//! last, the snapshot manifest (the commit point). With `--settle`, files still being written
//! keep the parent's entry (see `settle.rs`): those the walk finds modified within the settle
//! time, changed model files not complete yet, and those found changed since the walk when
//! opened or once read (what was read of them is not stored; the decision is then taken again
//! with them).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};

use super::disk_bases::DiskBases;
use super::read_file::{store_file, FindBases, ReadOutcome};
use super::settle::{self, human, Settled, SettlingFile};
use super::tensor_bases::BaseFinder;
use super::throttle::Throttled;
use super::walk::{node_from, resolve_sources, walk, Excludes, WalkOptions, WalkResult, Walked};
use crate::codec;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::BlobKind;
use crate::progress::Progress;
use crate::repo::{lock, BlobWriter, Repository};
use crate::snapshot::{Snapshot, SnapshotKind, Summary};
use crate::tree::{Node, NodeKind, NodePath, Tree};

#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    /// Read every file, even those unchanged since the parent.
    pub full: bool,
    /// The parent snapshot (ID or prefix); by default the latest with the same host and paths.
    pub parent: Option<String>,
    /// Recorded host name; this machine's by default.
    pub host: Option<String>,
    /// Exclusion patterns (see [`Excludes`]).
    pub excludes: Vec<String>,
    /// Files modified less than this long ago are still being written: they keep the parent
    /// snapshot's version (or wait, when it has none) and are listed.
    pub settle: Option<Duration>,
    /// A file deferred by `settle` for longer than this makes the snapshot incomplete
    /// (default: 4 × `settle`).
    pub settle_max: Option<Duration>,
    /// Cap on the average read rate, in bytes per second.
    pub read_limit: Option<u64>,
    /// Read, chunk and encode what a backup would, but store nothing and write no snapshot.
    pub dry_run: bool,
    /// Write no snapshot when it would hold exactly what the parent holds (same tree, tags,
    /// problems and deferrals): the report says `unchanged` and names the parent (`watch`).
    pub skip_if_unchanged: bool,
    /// Store tensor blocks that changed everywhere as dense XORs with their keyframes when
    /// smaller (see `BlobWriter::dense_deltas`).
    pub dense_deltas: bool,
    /// Bound delta chains to this depth, below the format's (see
    /// `DeltaFormat::with_max_chain`): faster restores of late steps, larger steps.
    pub max_chain: Option<u8>,
}

impl BackupOptions {
    pub fn new(paths: Vec<PathBuf>) -> BackupOptions {
        BackupOptions {
            paths,
            ..BackupOptions::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct BackupReport {
    /// `--dry-run`: nothing was stored; `snapshot_id` is all zeros and `bytes_added` is what
    /// the packs would have added.
    pub dry_run: bool,
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// Non-fatal warnings that do not make the snapshot incomplete (skipped special files).
    pub warnings: Vec<String>,
    /// Absolute paths of the files whose current version this snapshot does not hold because
    /// they (or their checkpoint folder) were still being written (`--settle`).
    pub settling: Vec<String>,
    /// The same files, with how long each has been deferred and what the snapshot holds.
    pub settling_details: Vec<SettlingFile>,
    /// Files and directories left out by `--exclude` patterns.
    pub excluded: u64,
    /// `skip_if_unchanged`: nothing changed, no snapshot was written; `snapshot_id` and
    /// `snapshot` are the parent's.
    pub unchanged: bool,
}

/// Same content as the parent's entry, judged from metadata only (no read).
pub(super) fn unchanged(parent: &Node, now: &Node) -> bool {
    parent.kind == NodeKind::File
        && parent.size == now.size
        && parent.mtime_ns == now.mtime_ns
        && parent.ctime_ns == now.ctime_ns
        && parent.inode == now.inode
}

/// The latest snapshot of the same host and paths, or the one the user named, and this
/// backup's step in its series (see [`series_step`]).
fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    host: &str,
    paths: &[String],
) -> Result<(Option<(Id, Snapshot)>, u64)> {
    if let Some(prefix) = &opts.parent {
        let id = repo.resolve_snapshot(prefix)?;
        let snap = repo.load_snapshot(&id)?;
        let step = series_step(&snap, |id| repo.load_snapshot(id).ok().map(|s| s.parent));
        return Ok((Some((id, snap)), step));
    }
    let all = repo.snapshots()?;
    let parents: HashMap<Id, Option<Id>> = all.iter().map(|(id, s)| (*id, s.parent)).collect();
    let parent = all
        .into_iter()
        .rev()
        .find(|(_, s)| s.host == host && s.paths == paths);
    let step = parent.as_ref().map_or(0, |(_, snap)| {
        series_step(snap, |id| parents.get(id).copied())
    });
    Ok((parent, step))
}

/// How many snapshots precede a backup whose parent is `parent`: the parent, its parent, and
/// so on while `parent_of` finds them (a forgotten one ends the count). Keyframes are
/// staggered by this step (see `tensor_bases.rs`); an off count only shifts them.
fn series_step(parent: &Snapshot, parent_of: impl Fn(&Id) -> Option<Option<Id>>) -> u64 {
    let mut step = 1;
    let mut next = parent.parent;
    while let Some(id) = next {
        // IDs are content hashes, so the line has no cycle; the bound only guards damage.
        if step > 1 << 24 {
            break;
        }
        match parent_of(&id) {
            Some(p) => {
                step += 1;
                next = p;
            }
            None => break,
        }
    }
    step
}

pub fn run(
    repo: &mut Repository,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    let throttled;
    let progress: &dyn Progress = match opts.read_limit {
        Some(rate) => {
            throttled = Throttled::new(progress, rate);
            &throttled
        }
        None => progress,
    };
    let sources = resolve_sources(&opts.paths)?;
    let settle_max = opts.settle.map(|s| opts.settle_max.unwrap_or(s * 4));
    if let (Some(settle), Some(max)) = (opts.settle, settle_max) {
        if max < settle {
            return Err(Error::Invalid(format!(
                "--settle-max {} is shorter than --settle {}: a file would raise the alarm before it could settle; give a --settle-max of at least {}",
                human(max.as_secs()),
                human(settle.as_secs()),
                human(settle.as_secs())
            )));
        }
    }
    let excludes = Excludes::new(&opts.excludes)?;
    let _lock = repo.lock(false, "backup")?;
    let host = opts.host.clone().unwrap_or_else(lock::hostname);
    let mut paths: Vec<String> = sources
        .iter()
        .map(|s| s.abs.display().to_string())
        .collect();
    paths.sort();

    // Snapshots first, then the index: a parent another backup published after `lock` read
    // the index has its tree in the index read now.
    let (parent, step) = find_parent(repo, opts, &host, &paths)?;
    repo.refresh_index()?;
    let repo: &Repository = repo;
    let parent_files: HashMap<NodePath, Node> = match &parent {
        Some((_, snap)) => repo
            .load_tree(&snap.tree)?
            .nodes
            .into_iter()
            .filter(|n| n.kind == NodeKind::File)
            .map(|n| (n.path.clone(), n))
            .collect(),
        None => HashMap::new(),
    };

    // Backing up a folder that holds the repository must not back up the repository itself.
    let repo_dir = fs::canonicalize(repo.location()).ok();
    let now = SystemTime::now();
    let walk_opts = WalkOptions {
        skip: repo_dir.as_deref(),
        excludes: &excludes,
        settle: opts.settle,
        now,
    };
    let WalkResult {
        entries: walked,
        mut problems,
        warnings,
        excluded,
    } = walk(&sources, &walk_opts, progress)?;
    let restorable = |n: &Node| n.chunks.iter().all(|c| repo.index().contains(c));
    let parent_deferred = parent.as_ref().map_or(&[][..], |(_, s)| &s.deferred);
    // What the snapshot holds for files still being written, decided again when reading finds
    // more of them (`late`).
    let incomplete = match opts.settle {
        Some(_) => settle::incomplete_files(&walked, &parent_files),
        None => HashMap::new(),
    };
    let decide = |late: &HashSet<NodePath>| match (opts.settle, settle_max) {
        (Some(settle), Some(max)) => settle::resolve(
            &walked,
            &settle::Rules {
                settle,
                max,
                now: DateTime::<Utc>::from(now),
                parent_files: &parent_files,
                parent_deferred,
                restorable: &restorable,
                late,
                incomplete: &incomplete,
            },
        ),
        _ => Settled::none(walked.len()),
    };
    let mut late = HashSet::new();
    let settled = decide(&late);
    // Delta bases by tensor identity, from the parent and recent snapshots; those in the
    // parent's files still on disk as it stored them are read there.
    let on_disk: HashMap<NodePath, PathBuf> = walked
        .iter()
        .filter(|w| {
            parent_files
                .get(&w.node.path)
                .is_some_and(|p| unchanged(p, &w.node))
        })
        .map(|w| (w.node.path.clone(), w.abs.clone()))
        .collect();
    let disk_bases = Arc::new(DiskBases::new(on_disk));
    let mut writer = if opts.dry_run {
        BlobWriter::dry(repo)
    } else {
        BlobWriter::new(repo)
    };
    writer.dense_deltas = opts.dense_deltas;
    writer.max_chain = opts.max_chain;
    writer.disk_bases = Some(disk_bases.clone());
    let finder = BaseFinder::new(
        repo,
        parent.as_ref().map(|(id, _)| *id),
        &parent_files,
        step,
        writer.delta_format().max_depth,
        disk_bases,
    );

    // A file stored as usual is read unless the parent's entry matches it (`reusable`).
    let reusable = |node: &Node| {
        parent_files.get(&node.path).filter(|p| {
            !opts.full && unchanged(p, node) && p.chunks.iter().all(|c| repo.index().contains(c))
        })
    };
    let to_read: Vec<usize> = (0..walked.len())
        .filter(|&i| settled.as_usual[i] && walked[i].node.kind == NodeKind::File)
        .filter(|&i| reusable(&walked[i].node).is_none())
        .collect();

    let mut summary = Summary::default();
    let read_bytes: u64 = to_read.iter().map(|&i| walked[i].node.size).sum();
    progress.start(to_read.len() as u64, read_bytes);
    // Each file read: its entry, or the problem that leaves it out.
    let mut read: HashMap<usize, std::result::Result<Node, String>> = HashMap::new();
    for i in to_read {
        if progress.abandoned() {
            return Err(Error::Abandoned);
        }
        let w = &walked[i];
        progress.file(&w.node.path.display());
        let find_bases =
            |regions: &[crate::format::Region], block| finder.bases(&w.node.path, regions, block);
        let outcome = read_with_retry(
            w,
            opts.settle,
            &mut writer,
            progress,
            &mut summary,
            &find_bases,
        )?;
        progress.added(writer.bytes_added());
        match outcome {
            FileRead::Stored(node) => {
                read.insert(i, Ok(node));
            }
            FileRead::Problem(problem) => {
                progress.warn(&problem);
                read.insert(i, Err(problem));
            }
            FileRead::Settling => {
                late.insert(w.node.path.clone());
            }
        }
    }
    // Files found being written while read are settling; their checkpoint folders with them.
    // This only defers more files, each of which was read or reused above.
    let settled = match late.is_empty() {
        true => settled,
        false => decide(&late),
    };
    for warning in &settled.warnings {
        progress.warn(warning);
    }
    problems.extend(settled.problems);

    let mut nodes = Vec::with_capacity(walked.len());
    let mut dir_abs = HashMap::new();
    for (i, Walked { mut node, abs, .. }) in walked.into_iter().enumerate() {
        if !settled.as_usual[i] {
            continue;
        }
        match node.kind {
            NodeKind::Dir => {
                summary.dirs += 1;
                dir_abs.insert(node.path.clone(), abs);
            }
            NodeKind::Symlink => summary.symlinks += 1,
            NodeKind::File => {
                match parent_files.get(&node.path) {
                    None => summary.files_new += 1,
                    Some(p) if unchanged(p, &node) => summary.files_unchanged += 1,
                    Some(_) => summary.files_changed += 1,
                }
                match read.remove(&i) {
                    Some(Ok(stored)) => node = stored,
                    Some(Err(problem)) => {
                        problems.push(problem);
                        continue;
                    }
                    None => {
                        let p = parent_files.get(&node.path).expect(
                            "a file stored as usual and not read has a reusable parent entry",
                        );
                        node.chunks = p.chunks.clone();
                    }
                }
            }
        }
        nodes.push(node);
    }
    // Files still being written: the parent's entries, exactly as they were.
    nodes.extend(settled.kept);
    let waiting: Vec<&Path> = settled
        .files
        .iter()
        .filter(|f| !f.kept_from_parent)
        .map(|f| Path::new(&f.path))
        .collect();
    summary.dirs -= drop_folders_still_being_filled(&mut nodes, &dir_abs, &waiting);
    for n in nodes.iter().filter(|n| n.kind == NodeKind::File) {
        summary.files += 1;
        summary.total_bytes += n.size;
    }

    let snapshot = Snapshot {
        version: crate::snapshot::SNAPSHOT_VERSION,
        time: Utc::now(),
        host,
        paths,
        tags: opts.tags.clone(),
        parent: parent.as_ref().map(|(id, _)| *id),
        kind: if opts.full || parent.is_none() {
            SnapshotKind::Full
        } else {
            SnapshotKind::Incremental
        },
        tree: Id([0; 32]),
        summary,
        problems,
        deferred: settled.deferred,
        copied_from: None,
    };
    if progress.abandoned() {
        return Err(Error::Abandoned);
    }
    if opts.skip_if_unchanged && !opts.dry_run && writer.blobs_added == 0 {
        if let Some((parent_id, p)) = &parent {
            let tree = Tree::new(nodes.clone()).to_bytes();
            let same = repo.ids().of(&tree) == p.tree
                && (&snapshot.tags, &snapshot.problems, &snapshot.deferred)
                    == (&p.tags, &p.problems, &p.deferred);
            if same {
                progress.finish();
                return Ok(BackupReport {
                    dry_run: false,
                    snapshot_id: *parent_id,
                    snapshot: p.clone(),
                    warnings,
                    settling: settled.files.iter().map(|f| f.path.clone()).collect(),
                    settling_details: settled.files,
                    excluded,
                    unchanged: true,
                });
            }
        }
    }
    progress.phase("writing the last pack, the tree, the index and the snapshot");
    let (snapshot_id, snapshot) = commit(repo, writer, nodes, snapshot, started)?;
    progress.finish();
    Ok(BackupReport {
        dry_run: opts.dry_run,
        snapshot_id,
        snapshot,
        warnings,
        settling: settled.files.iter().map(|f| f.path.clone()).collect(),
        settling_details: settled.files,
        excluded,
        unchanged: false,
    })
}

/// Drops the folders that hold nothing but files still being written for the first time (a
/// training step's `checkpoint-1000/` while the trainer writes it): restored empty, such a
/// folder would look like the newest checkpoint to a trainer that resumes from the newest
/// folder. The backed-up paths themselves stay. Returns how many folders were dropped.
fn drop_folders_still_being_filled(
    nodes: &mut Vec<Node>,
    dir_abs: &HashMap<NodePath, PathBuf>,
    waiting: &[&Path],
) -> u64 {
    let mut candidates: Vec<NodePath> = dir_abs
        .iter()
        .filter(|(path, abs)| {
            path.0.contains(&b'/') && waiting.iter().any(|w| w.starts_with(abs.as_path()))
        })
        .map(|(path, _)| path.clone())
        .collect();
    // Deepest first: a folder emptied this way may empty its parent.
    candidates.sort_by_key(|p| std::cmp::Reverse(p.0.iter().filter(|&&b| b == b'/').count()));
    let mut dropped = 0;
    for dir in candidates {
        let holds_something = nodes
            .iter()
            .any(|n| n.path != dir && n.path.starts_with(&dir));
        if !holds_something {
            nodes.retain(|n| n.path != dir);
            dropped += 1;
        }
    }
    dropped
}

/// Stores the tree, the last pack and the index, then the manifest: the commit point. The
/// snapshot's `tree`, `chunks_added`, `bytes_added` and `duration_ms` are filled in here.
pub(crate) fn commit(
    repo: &Repository,
    mut writer: BlobWriter,
    nodes: Vec<Node>,
    mut snapshot: Snapshot,
    started: Instant,
) -> Result<(Id, Snapshot)> {
    let tree_bytes = Tree::new(nodes).to_bytes();
    let tree_id = repo.ids().of(&tree_bytes);
    let (encoding, stored) = codec::encode(&tree_bytes, repo.config().zstd_level);
    writer.add(tree_id, BlobKind::Tree, encoding, &stored, tree_bytes.len())?;
    snapshot.tree = tree_id;
    snapshot.summary.chunks_added = writer.blobs_added;
    snapshot.summary.stored = writer.stored_by;
    let dry = writer.is_dry();
    snapshot.summary.bytes_added = writer.finish()?;
    snapshot.summary.duration_ms = started.elapsed().as_millis() as u64;
    if dry {
        // Nothing was stored: there is no snapshot, and so no ID.
        return Ok((Id([0; 32]), snapshot));
    }
    Ok((repo.save_snapshot(&snapshot)?, snapshot))
}

/// What reading one file came to.
enum FileRead {
    /// Its entry, with the chunks stored.
    Stored(Node),
    /// A problem with the file (reported, and the file left out of the snapshot).
    Problem(String),
    /// `--settle`: it is being written (see [`read_with_retry`]); what was read is not stored.
    Settling,
}

/// Reads the walked file `w`; once more if it changed while being read. With `--settle`, a
/// file that changed since the walk (size, times, inode) just before it is opened, when
/// opened or while read, that is modified less than `settle` ago, or that is gone, is being
/// written: it comes back as [`FileRead::Settling`] at once, and what was read of it is not
/// stored. `Err` is fatal.
fn read_with_retry(
    w: &Walked,
    settle: Option<Duration>,
    writer: &mut BlobWriter,
    progress: &dyn Progress,
    summary: &mut Summary,
    find_bases: FindBases,
) -> Result<FileRead> {
    let abs = w.abs.as_path();
    // The file, as `meta` shows it, is no longer the settled one the walk found.
    let moved_on = |meta: &fs::Metadata, settle: Duration| {
        let mut now = node_from(w.node.path.clone(), NodeKind::File, meta);
        now.size = meta.len();
        !unchanged(&w.node, &now) || settle::modified_within(meta, settle, SystemTime::now())
    };
    if let Some(settle) = settle {
        // Checked before reading, so a file being written is not read (nor stored) for nothing.
        match fs::symlink_metadata(abs) {
            Ok(m) if moved_on(&m, settle) => return Ok(FileRead::Settling),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(FileRead::Settling),
            _ => {}
        }
    }
    crate::repo::testing::pause("backup-open");
    for _attempt in 0..2 {
        match store_file(abs, writer, progress, find_bases)? {
            ReadOutcome::Stored {
                chunks,
                meta,
                bytes_read,
            } => {
                summary.bytes_read += bytes_read;
                // `meta` is the file's state both when opened and once read (`store_file`
                // compares the two): it may have changed between the check above and the open.
                if settle.is_some_and(|settle| moved_on(&meta, settle)) {
                    return Ok(FileRead::Settling);
                }
                let mut node = node_from(w.node.path.clone(), NodeKind::File, &meta);
                node.size = meta.len();
                node.chunks = chunks;
                return Ok(FileRead::Stored(node));
            }
            ReadOutcome::Unreadable(msg) => {
                let gone =
                    fs::symlink_metadata(abs).is_err_and(|e| e.kind() == ErrorKind::NotFound);
                if settle.is_some() && gone {
                    return Ok(FileRead::Settling);
                }
                return Ok(FileRead::Problem(format!(
                    "cannot read {msg}; not in this snapshot"
                )));
            }
            ReadOutcome::Changed { bytes_read } => {
                summary.bytes_read += bytes_read;
                if settle.is_some() {
                    return Ok(FileRead::Settling);
                }
            }
        }
    }
    Ok(FileRead::Problem(format!(
        "{} changed while it was read (twice); not in this snapshot, back it up again once it is complete",
        abs.display()
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::error::Error;
    use crate::progress::NoProgress;
    use crate::repo::{Backend, MemBackend, ObjectKind};

    /// A backend whose disk fills up after `room` bytes of repository data.
    struct FillingDisk {
        inner: MemBackend,
        room: AtomicUsize,
    }

    impl Backend for FillingDisk {
        fn put(&self, key: &str, data: &[u8]) -> Result<()> {
            if ObjectKind::of_key(key) != Some(ObjectKind::Lock) {
                let left = self.room.load(Ordering::SeqCst);
                if data.len() > left {
                    let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
                    return Err(Error::io(key, enospc));
                }
                self.room.store(left - data.len(), Ordering::SeqCst);
            }
            self.inner.put(key, data)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
            self.inner.get_range(key, offset, len)
        }
        fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
        fn describe(&self, key: &str) -> String {
            self.inner.describe(key)
        }
    }

    #[test]
    fn full_disk_fails_the_backup_clearly_and_leaves_no_snapshot() {
        let src = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 3 << 20];
        tvault_workload::Rng::new(3).fill_bytes(&mut data);
        fs::write(src.path().join("weights.bin"), &data).unwrap();

        let disk = Arc::new(FillingDisk {
            inner: MemBackend::default(),
            room: AtomicUsize::new(1 << 20),
        });
        let mut repo = Repository::init_with(disk.clone(), "mem".into()).unwrap();
        let opts = BackupOptions::new(vec![src.path().to_path_buf()]);
        let err = run(&mut repo, &opts, &NoProgress).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("No space left") && msg.contains("free some space"),
            "{msg}"
        );
        assert!(repo.snapshot_ids().unwrap().is_empty());
        assert!(
            disk.list("locks").unwrap().is_empty(),
            "the lock is released"
        );

        // With room again, the next backup works and restores what was backed up.
        disk.room.store(usize::MAX, Ordering::SeqCst);
        let report = run(&mut repo, &opts, &NoProgress).unwrap();
        assert!(report.snapshot.is_complete());
        let mut repo = Repository::open_with(disk, "mem".into()).unwrap();
        repo.load_index().unwrap();
        let tree = repo.load_tree(&report.snapshot.tree).unwrap();
        let file = tree
            .nodes
            .iter()
            .find(|n| n.kind == NodeKind::File)
            .unwrap();
        let restored: Vec<u8> = file
            .chunks
            .iter()
            .flat_map(|c| repo.read_blob(c).unwrap())
            .collect();
        assert_eq!(restored, data);
    }
}
