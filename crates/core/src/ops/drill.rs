//! `drill [ID] [--target DIR]`: a rehearsal of the whole restore path, measured. The snapshot
//! is restored by the restore pipeline itself (`restore::execute`): with a target, by `restore`
//! into a scratch folder inside it (removed afterwards, also when the drill fails), then every
//! file is read back and each chunk's bytes re-hashed against the snapshot's chunk IDs (keyed in
//! an encrypted repository); without one, into [`HashSink`], which re-hashes each chunk the
//! pipeline delivers at its place in its file and writes nothing (the time then leaves out the
//! disk writes). The report gives the restore time (this snapshot's RTO) and throughput, and
//! the age of the newest complete snapshot (the RPO). Damage (a chunk, pack or tree that
//! cannot be read back whole) names the file, chunk and pack; a drill that could not check
//! (the target not writable, say) says so apart from damage.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::content::Content;
use super::restore::{self, first_mismatch, Opened, RestoreOptions, RestoreReport, Sink};
use super::select::{self, SnapshotFilter};
use crate::error::{Error, IoContext, Result};
use crate::id::{Id, Ids};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// The snapshot to restore (resolved by the caller, e.g. from `latest`).
    pub snapshot: Id,
    /// Restore to disk in a scratch folder created inside this directory; `None`: through the
    /// hashing sink, no disk writes.
    pub target: Option<PathBuf>,
    /// The snapshots the RPO is about: the newest complete one matching this filter.
    pub filter: SnapshotFilter,
}

/// The newest complete snapshot: how much work a disaster now would lose.
#[derive(Clone, Debug, Serialize)]
pub struct Rpo {
    pub id: String,
    pub time: DateTime<Utc>,
    pub age_seconds: f64,
}

/// What a drill measured and found (JSON: `tvault --json drill`).
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    /// The snapshot restored.
    pub id: String,
    pub time: DateTime<Utc>,
    /// True when the drill restored to disk (`--target`); false: through the hashing sink, and
    /// `restore_seconds` leaves out the disk writes.
    pub disk_writes: bool,
    /// The scratch folder it restored into (removed again), with `--target`.
    pub scratch: Option<PathBuf>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file content restored.
    pub bytes: u64,
    /// Files and bytes whose every chunk was re-hashed after the restore and matched.
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// The measured restore time (the RTO of this snapshot): from opening the snapshot (its
    /// lock held) to the last file and metadata in place; the reading back is not part of it.
    pub restore_seconds: f64,
    /// Bytes of file content restored per second of `restore_seconds`.
    pub throughput_bytes_per_second: f64,
    /// The time spent reading the restored files back (with `--target`).
    pub check_seconds: f64,
    /// The newest complete snapshot (matching the filter); `None` when there is none.
    pub rpo: Option<Rpo>,
    /// Files that could not be restored whole from the repository, or read back different
    /// bytes: each names the file and the chunk and pack (`path: reason`).
    pub damaged: Vec<String>,
    /// Problems that stopped a file from being checked that are not damage in the
    /// repository (the target not writable, a full disk).
    pub errors: Vec<String>,
    pub duration_ms: u64,
}

impl DrillReport {
    pub fn clean(&self) -> bool {
        self.damaged.is_empty() && self.errors.is_empty()
    }
}

pub fn run(
    repo: &mut Repository,
    opts: &DrillOptions,
    progress: &dyn Progress,
) -> Result<DrillReport> {
    let started = Instant::now();
    let snapshot = repo.load_snapshot(&opts.snapshot)?;
    let rpo = select::matching(repo, &opts.filter)?
        .into_iter()
        .rev()
        .find(|(_, s)| s.is_complete())
        .map(|(id, s)| Rpo {
            id: id.to_hex(),
            time: s.time,
            age_seconds: (Utc::now() - s.time)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
        });
    let mut report = DrillReport {
        id: opts.snapshot.to_hex(),
        time: snapshot.time,
        disk_writes: opts.target.is_some(),
        scratch: None,
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        files_checked: 0,
        bytes_checked: 0,
        restore_seconds: 0.0,
        throughput_bytes_per_second: 0.0,
        check_seconds: 0.0,
        rpo,
        damaged: Vec::new(),
        errors: Vec::new(),
        duration_ms: 0,
    };
    match &opts.target {
        Some(dir) => to_disk(repo, opts.snapshot, dir, &mut report, progress)?,
        None => to_sink(repo, opts.snapshot, &mut report, progress)?,
    }
    if report.restore_seconds > 0.0 {
        report.throughput_bytes_per_second = report.bytes as f64 / report.restore_seconds;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Restores through the pipeline into [`HashSink`].
fn to_sink(
    repo: &mut Repository,
    id: Id,
    report: &mut DrillReport,
    progress: &dyn Progress,
) -> Result<()> {
    let _lock = repo.lock(false, "drill")?;
    // Waiting for a lock (--lock-wait) is not restore time.
    let started = Instant::now();
    let repo: &Repository = repo;
    let nodes = match restore::load_nodes(repo, &id, &[]) {
        Ok(nodes) => nodes,
        Err(e) if is_damage(&e, None) => {
            report.damaged.push(format!("snapshot {}: {e}", id.short()));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let sink = HashSink {
        ids: repo.ids(),
        hashed: AtomicU64::new(0),
    };
    let (restored, errors) = restore::execute(repo, &id, &nodes, &sink, progress)?;
    report.restore_seconds = started.elapsed().as_secs_f64();
    take_counts(report, &restored, &errors, None);
    report.files_checked = restored.files;
    report.bytes_checked = sink.hashed.load(Ordering::SeqCst);
    Ok(())
}

/// Restores with `restore` into a scratch folder inside `dir`, reads every file back, and
/// removes the folder.
fn to_disk(
    repo: &mut Repository,
    id: Id,
    dir: &Path,
    report: &mut DrillReport,
    progress: &dyn Progress,
) -> Result<()> {
    if !fs::metadata(dir).at(dir)?.is_dir() {
        return Err(Error::Invalid(format!(
            "drill --target {}: not a directory; give a directory to restore into (the drill \
             makes a scratch folder inside it and removes it afterwards)",
            dir.display()
        )));
    }
    // Held while restore takes its own (shared) lock at once: waiting for a lock
    // (--lock-wait) is not restore time.
    let _lock = repo.lock(false, "drill")?;
    let scratch = Scratch::create(dir, &id)?;
    report.scratch = Some(scratch.path.clone());
    let started = Instant::now();
    let opts = RestoreOptions::new(&id.to_hex(), &scratch.path);
    let (restored, errors) = match restore::run_to_disk(repo, &opts, progress) {
        Ok(r) => r,
        Err(e) if is_damage(&e, Some(&scratch.path)) => {
            report.damaged.push(format!("snapshot {}: {e}", id.short()));
            return scratch.remove();
        }
        Err(e) => return Err(e),
    };
    report.restore_seconds = started.elapsed().as_secs_f64();
    take_counts(report, &restored, &errors, Some(&scratch.path));
    let failed: HashSet<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    let nodes = restore::load_nodes(repo, &id, &[])?;

    let checking = Instant::now();
    let ids = repo.ids();
    for node in nodes.iter().filter(|n| n.kind == NodeKind::File) {
        let path = node.path.display();
        if failed.contains(path.as_str()) {
            continue;
        }
        match read_back(repo, ids, node, &scratch.path) {
            Ok(None) => {
                report.files_checked += 1;
                report.bytes_checked += node.size;
            }
            Ok(Some(problem)) => report.damaged.push(format!("{path}: {problem}")),
            Err(e) => report.errors.push(format!("{path}: {e}")),
        }
    }
    report.check_seconds = checking.elapsed().as_secs_f64();
    scratch.remove()
}

/// Reads a restored file back: `Some(problem)` when its size or a chunk's bytes differ from
/// the snapshot's.
fn read_back(repo: &Repository, ids: Ids, node: &Node, root: &Path) -> Result<Option<String>> {
    let path = root.join(node.path.to_path_buf());
    let content = Content::of_file(repo, node)?;
    let file = File::open(&path).at(&path)?;
    let len = file.metadata().at(&path)?.len();
    if len != node.size {
        return Ok(Some(format!(
            "reads back {len} bytes, the snapshot has {}",
            node.size
        )));
    }
    let starts = content.chunk_starts();
    Ok(
        first_mismatch(&file, ids, &node.chunks, starts, node.size).map(|i| {
            format!(
                "chunk {i} ({}) at offset {} reads back different bytes than were restored",
                node.chunks[i].short(),
                starts[i]
            )
        }),
    )
}

/// Whether an error means the repository cannot give the data back whole (a damaged or lost
/// chunk, pack or tree), as opposed to a failure of the drill's own writes (inside `scratch`).
fn is_damage(e: &Error, scratch: Option<&Path>) -> bool {
    match e {
        Error::CorruptChunk { .. } | Error::MissingChunk { .. } | Error::Corrupt { .. } => true,
        Error::Io { path, err } => {
            err.kind() == std::io::ErrorKind::NotFound
                && !scratch.is_some_and(|s| path.starts_with(s))
        }
        Error::Storage { .. } => e.is_not_found(),
        _ => false,
    }
}

fn take_counts(
    report: &mut DrillReport,
    restored: &RestoreReport,
    errors: &[(String, Error)],
    scratch: Option<&Path>,
) {
    report.files = restored.files;
    report.dirs = restored.dirs;
    report.symlinks = restored.symlinks;
    report.bytes = restored.bytes_written;
    for (msg, (_, e)) in restored.failed.iter().zip(errors) {
        if is_damage(e, scratch) {
            report.damaged.push(msg.clone());
        } else {
            report.errors.push(msg.clone());
        }
    }
}

/// The sink of a drill without a target: each chunk the pipeline delivers is hashed again with
/// the repository's IDs and must be the chunk the snapshot has at each position it fills; a
/// file is whole when every position was filled. Nothing is written.
struct HashSink {
    ids: Ids,
    hashed: AtomicU64,
}

struct HashFile {
    path: String,
    chunks: Vec<Id>,
    filled: Vec<AtomicBool>,
}

impl Sink for HashSink {
    type File = HashFile;

    fn dir(&self, _node: &Node) -> Result<()> {
        Ok(())
    }

    fn open(&self, node: &Node, _index: usize, _starts: &[u64]) -> Result<Opened<HashFile>> {
        let file = HashFile {
            path: node.path.display(),
            chunks: node.chunks.clone(),
            filled: node.chunks.iter().map(|_| AtomicBool::new(false)).collect(),
        };
        Ok(Opened::Write {
            file,
            have: Vec::new(),
        })
    }

    fn write(&self, f: &HashFile, positions: &[usize], starts: &[u64], plain: &[u8]) -> Result<()> {
        let got = self.ids.of(plain);
        for &i in positions {
            if f.chunks[i] != got {
                return Err(Error::corrupt(
                    format!("restored file {}", f.path),
                    format!(
                        "chunk {i} at offset {} should be {} but the restore delivered {}",
                        starts[i],
                        f.chunks[i].short(),
                        got.short()
                    ),
                ));
            }
            f.filled[i].store(true, Ordering::SeqCst);
            self.hashed.fetch_add(plain.len() as u64, Ordering::SeqCst);
        }
        Ok(())
    }

    fn finish(&self, _node: &Node, f: HashFile) -> Result<()> {
        match f.filled.iter().position(|d| !d.load(Ordering::SeqCst)) {
            None => Ok(()),
            Some(i) => Err(Error::corrupt(
                format!("restored file {}", f.path),
                format!("chunk {i} ({}) was never delivered", f.chunks[i].short()),
            )),
        }
    }

    fn abandon(&self, _f: HashFile) {}

    fn symlink(&self, _node: &Node) -> Result<()> {
        Ok(())
    }

    fn close(&self, _dirs: &[&Node]) -> Result<()> {
        Ok(())
    }
}

/// The drill's scratch folder, `DIR/tvault-drill-<snapshot>-<pid>`: removed by
/// [`Scratch::remove`], or when dropped (the drill stopped early), whatever modes the restored
/// directories have.
struct Scratch {
    path: PathBuf,
    removed: bool,
}

impl Scratch {
    fn create(dir: &Path, id: &Id) -> Result<Scratch> {
        let path = dir.join(format!(
            "tvault-drill-{}-{}",
            id.short(),
            std::process::id()
        ));
        fs::create_dir(&path).at(&path)?;
        Ok(Scratch {
            path,
            removed: false,
        })
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_tree(&self.path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes a restored tree, first giving its directories the write permission a restored
/// read-only mode may have taken away.
fn remove_tree(path: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
        }
    }
    fs::remove_dir_all(path).at(path)
}
