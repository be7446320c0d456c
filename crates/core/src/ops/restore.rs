//! `restore ID TARGET`: recreate a snapshot's files byte for byte, re-hashing every chunk
//! before it is written. A file whose chunks fail is reported and not left behind looking
//! complete: files are written into a staging folder in TARGET and renamed into place only
//! when whole, so a killed restore leaves partial files only there.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::content::Content;
use crate::error::{Error, IoContext, Result};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, NodePath};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub snapshot: String,
    pub target: PathBuf,
    /// Restore only these paths (as `snapshots`/the tree names them) and what is below them.
    pub include: Vec<String>,
    /// Allow a non-empty target; files in the way are replaced, others left alone.
    pub overwrite: bool,
}

impl RestoreOptions {
    pub fn new(snapshot: &str, target: impl Into<PathBuf>) -> RestoreOptions {
        RestoreOptions {
            snapshot: snapshot.to_string(),
            target: target.into(),
            ..RestoreOptions::default()
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// The snapshot restored (JSON: also under its deprecated name `snapshot_id`).
    pub id: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes_written: u64,
    /// Files that could not be restored, each with the reason.
    pub failed: Vec<String>,
    pub duration_ms: u64,
}

pub(crate) fn select(nodes: Vec<Node>, include: &[String], snapshot: &str) -> Result<Vec<Node>> {
    if include.is_empty() {
        return Ok(nodes);
    }
    let wanted: Vec<NodePath> = include
        .iter()
        .map(|p| NodePath(p.trim_matches('/').as_bytes().to_vec()))
        .collect();
    for w in &wanted {
        if !nodes.iter().any(|n| n.path.starts_with(w)) {
            return Err(Error::Invalid(format!(
                "--include {:?} matches nothing in snapshot {snapshot}; paths start with the \
                 backed-up directory's name, e.g. {:?}",
                w.display(),
                nodes.first().map(|n| n.path.display()).unwrap_or_default()
            )));
        }
    }
    // Keep what was asked for and the directories above it.
    Ok(nodes
        .into_iter()
        .filter(|n| {
            wanted.iter().any(|w| {
                n.path.starts_with(w) || (n.kind == NodeKind::Dir && w.starts_with(&n.path))
            })
        })
        .collect())
}

fn check_target(target: &Path, overwrite: bool) -> Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(target).at(target),
        Err(e) => Err(Error::io(target, e)),
        Ok(m) if !m.is_dir() => Err(Error::Invalid(format!(
            "restore target {} exists and is not a directory",
            target.display()
        ))),
        Ok(_) => {
            let empty = fs::read_dir(target).at(target)?.next().is_none();
            if empty || overwrite {
                Ok(())
            } else {
                Err(Error::TargetNotEmpty {
                    path: target.to_path_buf(),
                })
            }
        }
    }
}

fn to_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Makes `path` a real directory (replacing a file or symlink in the way), so nothing restored
/// below it can be redirected outside the target.
fn make_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(path).at(path)?,
        Err(_) => {}
    }
    fs::create_dir(path).at(path)
}

pub fn run(
    repo: &mut Repository,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let id = repo.resolve_snapshot(&opts.snapshot)?;
    let _lock = repo.lock(false, "restore")?;
    let repo: &Repository = repo;
    let snapshot = repo.load_snapshot(&id)?;
    let tree = repo.load_tree(&snapshot.tree)?;
    let nodes = select(tree.nodes, &opts.include, &id.short())?;
    check_target(&opts.target, opts.overwrite)?;
    let staging = staging_dir(&opts.target, &id, &nodes)?;

    let mut report = RestoreReport {
        id: id.to_hex(),
        ..RestoreReport::default()
    };
    let files: Vec<&Node> = nodes.iter().filter(|n| n.kind == NodeKind::File).collect();
    progress.start(files.len() as u64, files.iter().map(|n| n.size).sum());

    for dir in nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
        make_dir(&opts.target.join(dir.path.to_path_buf()))?;
        report.dirs += 1;
    }
    for (i, file) in files.into_iter().enumerate() {
        progress.file(&file.path.display());
        let dest = opts.target.join(file.path.to_path_buf());
        match restore_file(repo, file, &dest, &staging.join(i.to_string()), progress) {
            Ok(()) => {
                report.files += 1;
                report.bytes_written += file.size;
            }
            Err(e) => {
                let msg = format!("{}: {e}", file.path.display());
                progress.warn(&format!("failed to restore {msg}"));
                report.failed.push(msg);
            }
        }
    }
    fs::remove_dir_all(&staging).at(&staging)?;
    for link in nodes.iter().filter(|n| n.kind == NodeKind::Symlink) {
        let dest = opts.target.join(link.path.to_path_buf());
        if fs::symlink_metadata(&dest).is_ok() {
            fs::remove_file(&dest).at(&dest)?;
        }
        let target = link.target.as_ref().expect("validated tree").to_path_buf();
        std::os::unix::fs::symlink(target, &dest).at(&dest)?;
        report.symlinks += 1;
    }
    // Directory metadata last, deepest first: writing inside a directory changes its mtime,
    // and a read-only mode would stop the writes.
    for dir in nodes.iter().rev().filter(|n| n.kind == NodeKind::Dir) {
        let path = opts.target.join(dir.path.to_path_buf());
        // Times first: a mode without read permission would stop the open.
        let times = FileTimes::new().set_modified(to_system_time(dir.mtime_ns));
        File::open(&path)
            .and_then(|f| f.set_times(times))
            .at(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(dir.mode)).at(&path)?;
    }
    progress.finish();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The staging folder for this snapshot's files: `TARGET/.tvault-restore-<ID>`, a name no
/// top-level entry of the snapshot has. A leftover from a killed restore is cleared first.
fn staging_dir(target: &Path, id: &Id, nodes: &[Node]) -> Result<PathBuf> {
    let taken = |name: &str| nodes.iter().any(|n| n.path.0 == name.as_bytes());
    let mut name = format!(".tvault-restore-{}", id.short());
    while taken(&name) {
        name.push('_');
    }
    let dir = target.join(name);
    if fs::symlink_metadata(&dir).is_ok() {
        fs::remove_dir_all(&dir).at(&dir)?;
    }
    fs::create_dir(&dir).at(&dir)?;
    Ok(dir)
}

fn restore_file(
    repo: &Repository,
    node: &Node,
    dest: &Path,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    if fs::symlink_metadata(dest)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(Error::Invalid(format!(
            "{} is a directory in the target; not replacing it with a file",
            dest.display()
        )));
    }
    if let Err(e) = write_content(repo, node, tmp, progress) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    fs::rename(tmp, dest).at(dest)
}

/// Writes a file's content into the new file `tmp`: chunks are read per pack (neighbouring
/// chunks of a pack in one ranged read, see `Repository::read_blobs_planned`), decoded and
/// re-hashed in parallel, and each is written at its own offsets (a chunk the file repeats is
/// read once) as soon as it is checked, so memory holds only the reads in flight. All-zero chunks are not written: the file is new, so they stay
/// holes (sparse) and read back as zeros.
fn write_content(
    repo: &Repository,
    node: &Node,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    // Sizes are checked before anything is read or written (the same check as every reader).
    let content = Content::of_file(repo, node)?;
    let starts = content.chunk_starts();
    let out = File::create(tmp).at(tmp)?;
    repo.read_blobs_planned(&node.chunks, |positions, plain| {
        if !is_zero(plain) {
            for &i in positions {
                out.write_all_at(plain, starts[i]).at(tmp)?;
            }
        }
        progress.bytes((plain.len() * positions.len()) as u64);
        Ok(())
    })?;
    // The size, including any hole at the end.
    out.set_len(node.size).at(tmp)?;
    out.set_permissions(fs::Permissions::from_mode(node.mode))
        .at(tmp)?;
    out.set_times(FileTimes::new().set_modified(to_system_time(node.mtime_ns)))
        .at(tmp)?;
    Ok(())
}

/// True when every byte is zero (a vectorisable OR, then one test per 4 KiB).
fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::ops::backup::{self, BackupOptions};
    use crate::progress::NoProgress;
    use crate::repo::{Backend, MemBackend};

    /// A backend that counts ranged reads.
    #[derive(Default)]
    struct CountingReads {
        inner: MemBackend,
        ranged: AtomicUsize,
    }

    impl Backend for CountingReads {
        fn put(&self, key: &str, data: &[u8]) -> Result<()> {
            self.inner.put(key, data)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
            self.ranged.fetch_add(1, Ordering::SeqCst);
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
    fn restore_reads_neighbouring_chunks_of_a_pack_in_one_request() {
        let src = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 << 20];
        tvault_workload::Rng::new(7).fill_bytes(&mut data);
        // The same content twice in one file: its chunks are read once, written twice.
        data.extend_from_within(..);
        fs::write(src.path().join("weights.bin"), &data).unwrap();
        let backend = Arc::new(CountingReads::default());
        let mut repo = Repository::init_with(backend.clone(), "mem".into()).unwrap();
        let opts = BackupOptions::new(vec![src.path().to_path_buf()]);
        let backup = backup::run(&mut repo, &opts, &NoProgress).unwrap();
        repo.load_index().unwrap();
        let tree = repo.load_tree(&backup.snapshot.tree).unwrap();
        let chunks = tree.nodes.iter().map(|n| n.chunks.len()).sum::<usize>();
        assert!(chunks >= 8, "{chunks} chunks");

        backend.ranged.store(0, Ordering::SeqCst);
        let target = tempfile::tempdir().unwrap();
        let id = backup.snapshot_id.to_hex();
        run(
            &mut repo,
            &RestoreOptions::new(&id, target.path()),
            &NoProgress,
        )
        .unwrap();
        let name = src.path().file_name().unwrap();
        assert_eq!(
            fs::read(target.path().join(name).join("weights.bin")).unwrap(),
            data
        );
        // One read for the tree, one for the file's 4 MiB of distinct chunks (one pack).
        assert_eq!(backend.ranged.load(Ordering::SeqCst), 2);
    }
}
