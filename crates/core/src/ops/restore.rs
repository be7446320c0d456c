//! `restore ID TARGET`: recreate a snapshot's files byte for byte, re-hashing every chunk
//! before it is written. A file whose chunks fail is reported and not left behind looking
//! complete: files are written into a staging folder in TARGET and renamed into place only
//! when whole, so a killed restore leaves partial files only there. Run again with
//! `--overwrite`, a restore keeps the files already in place whose bytes hash, chunk by chunk,
//! to the snapshot's chunk IDs, and restores the rest; a file the killed run had partly
//! written in its staging folder is completed there, reading only the chunks it lacks.
//! Nothing is trusted without its hash: a chunk on disk that does not hash to its ID is read
//! from the repository again.
//!
//! The pipeline ([`execute`]) is shared with `drill`: what happens to the checked chunks is a
//! [`Sink`]'s business ([`Disk`] here; a hashing sink for a drill without a target).

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::Serialize;

use super::content::Content;
use crate::error::{Error, IoContext, Result};
use crate::id::{Id, Ids};
use crate::progress::Progress;
use crate::repo::{testing, Repository};
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
    /// Files written by this run and their bytes (the kept ones not counted).
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes_written: u64,
    /// Files already in place and identical to the snapshot's (checked chunk by chunk against
    /// its chunk IDs), kept as they were; only their metadata was applied.
    pub files_kept: u64,
    pub bytes_kept: u64,
    /// Of `bytes_written`: bytes a killed restore had already written into the staging folder
    /// that hashed right (chunk by chunk) and were not read again.
    pub bytes_resumed: u64,
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
    run_to_disk(repo, opts, progress).map(|(report, _)| report)
}

/// [`run`], also returning each failed file's path and error (in the order of `failed`).
pub(crate) fn run_to_disk(
    repo: &mut Repository,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<(RestoreReport, Vec<(String, Error)>)> {
    let started = Instant::now();
    let id = repo.resolve_snapshot(&opts.snapshot)?;
    let _lock = repo.lock(false, "restore")?;
    let repo: &Repository = repo;
    let nodes = load_nodes(repo, &id, &opts.include)?;
    check_target(&opts.target, opts.overwrite)?;
    let staging = staging_dir(&opts.target, &id, &nodes)?;
    let disk = Disk {
        ids: repo.ids(),
        target: &opts.target,
        staging: &staging,
    };
    let result = execute(repo, &id, &nodes, &disk, progress);
    // Also when the restore stopped: nothing is left in the staging folder.
    let cleaned = fs::remove_dir_all(&staging).at(&staging);
    let (mut report, errors) = result?;
    cleaned?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok((report, errors))
}

/// The snapshot's tree entries that a restore of `include` (everything when empty) recreates.
pub(crate) fn load_nodes(repo: &Repository, id: &Id, include: &[String]) -> Result<Vec<Node>> {
    let snapshot = repo.load_snapshot(id)?;
    let tree = repo.load_tree(&snapshot.tree)?;
    select(tree.nodes, include, &id.short())
}

/// Where the restore pipeline puts what it reads: [`Disk`] recreates the files in the target
/// directory; `drill` without a target passes a sink that only re-hashes each chunk (no disk
/// writes). The pipeline ([`execute`]) reads, decodes and re-hashes the chunks and hands each
/// checked chunk to the sink; the sink decides where its bytes go.
pub(crate) trait Sink: Sync {
    /// One file being restored.
    type File: Sync;
    /// A directory of the snapshot, before anything below it (parents first).
    fn dir(&self, node: &Node) -> Result<()>;
    /// Starts file number `index` of the snapshot, whose chunk `i` begins at `starts[i]`.
    fn open(&self, node: &Node, index: usize, starts: &[u64]) -> Result<Opened<Self::File>>;
    /// A checked chunk's plain bytes, filling the chunk positions `positions` of the file.
    fn write(
        &self,
        file: &Self::File,
        positions: &[usize],
        starts: &[u64],
        plain: &[u8],
    ) -> Result<()>;
    /// Every chunk of the file is written: make it whole (size, metadata, final name).
    fn finish(&self, node: &Node, file: Self::File) -> Result<()>;
    /// The file failed: drop what was written of it.
    fn abandon(&self, file: Self::File);
    fn symlink(&self, node: &Node) -> Result<()>;
    /// Everything is in place: directory metadata (`dirs` deepest first).
    fn close(&self, dirs: &[&Node]) -> Result<()>;
}

/// What [`Sink::open`] found.
pub(crate) enum Opened<F> {
    /// Already in place and whole: nothing is read for it.
    Kept,
    /// To be written; `have[i]` is true where chunk `i` is already written and checked (a
    /// file resumed), and those chunks are not read (empty: none is).
    Write { file: F, have: Vec<bool> },
}

/// The restore pipeline: directories, then each file's chunks read per pack (neighbouring
/// chunks of a pack in one ranged read, see `Repository::read_blobs_planned`), decoded and
/// re-hashed in parallel, each handed to `sink` as soon as it is checked (a chunk the file
/// repeats is read once), so memory holds only the reads in flight; then symlinks and
/// directory metadata. A file that fails is reported in `failed` and the restore goes on; the
/// paths and errors are also returned as they were, in the same order, for callers that tell
/// damage from other failures.
pub(crate) fn execute<S: Sink>(
    repo: &Repository,
    id: &Id,
    nodes: &[Node],
    sink: &S,
    progress: &dyn Progress,
) -> Result<(RestoreReport, Vec<(String, Error)>)> {
    let started = Instant::now();
    let mut report = RestoreReport {
        id: id.to_hex(),
        ..RestoreReport::default()
    };
    let mut errors = Vec::new();
    let files: Vec<&Node> = nodes.iter().filter(|n| n.kind == NodeKind::File).collect();
    progress.start(files.len() as u64, files.iter().map(|n| n.size).sum());

    for dir in nodes.iter().filter(|n| n.kind == NodeKind::Dir) {
        sink.dir(dir)?;
        report.dirs += 1;
    }
    for (i, file) in files.into_iter().enumerate() {
        progress.file(&file.path.display());
        match restore_file(repo, file, i, sink, progress) {
            Ok(Some(resumed)) => {
                report.files += 1;
                report.bytes_written += file.size;
                report.bytes_resumed += resumed;
            }
            Ok(None) => {
                report.files_kept += 1;
                report.bytes_kept += file.size;
            }
            Err(e) => {
                let msg = format!("{}: {e}", file.path.display());
                progress.warn(&format!("failed to restore {msg}"));
                report.failed.push(msg);
                errors.push((file.path.display(), e));
            }
        }
        testing::pause("restore-file");
    }
    for link in nodes.iter().filter(|n| n.kind == NodeKind::Symlink) {
        sink.symlink(link)?;
        report.symlinks += 1;
    }
    let dirs: Vec<&Node> = nodes
        .iter()
        .rev()
        .filter(|n| n.kind == NodeKind::Dir)
        .collect();
    sink.close(&dirs)?;
    progress.finish();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok((report, errors))
}

/// Restores one file through `sink`: `Some(bytes it already had)` when written, `None` when
/// kept as it was.
fn restore_file<S: Sink>(
    repo: &Repository,
    node: &Node,
    index: usize,
    sink: &S,
    progress: &dyn Progress,
) -> Result<Option<u64>> {
    // Sizes are checked before anything is read or written (the same check as every reader).
    let content = Content::of_file(repo, node)?;
    let starts = content.chunk_starts();
    let (file, have) = match sink.open(node, index, starts)? {
        Opened::Kept => {
            progress.bytes(node.size);
            return Ok(None);
        }
        Opened::Write { file, have } => (file, have),
    };
    // The chunks still to read, and where each sits in the file.
    let (mut wanted, mut at) = (Vec::new(), Vec::new());
    let mut resumed = 0;
    for (i, id) in node.chunks.iter().enumerate() {
        if have.get(i).copied().unwrap_or(false) {
            resumed += chunk_end(starts, i, node.size) - starts[i];
        } else {
            wanted.push(*id);
            at.push(i);
        }
    }
    progress.bytes(resumed);
    let written = repo.read_blobs_planned(&wanted, |positions, plain| {
        let positions: Vec<usize> = positions.iter().map(|&p| at[p]).collect();
        sink.write(&file, &positions, starts, plain)?;
        progress.bytes((plain.len() * positions.len()) as u64);
        testing::pause("restore-chunk");
        Ok(())
    });
    match written {
        Ok(()) => sink.finish(node, file).map(|()| Some(resumed)),
        Err(e) => {
            sink.abandon(file);
            Err(e)
        }
    }
}

/// The staging folder for this snapshot's files: `TARGET/.tvault-restore-<ID>`, a name no
/// top-level entry of the snapshot has. A killed restore of this snapshot left its partly
/// written files there: the folder is kept for [`Disk::open`] to resume them (it is removed
/// at the end). Leftovers of other snapshots' restores (`.tvault-restore-` and 8 hex digits,
/// not an entry of the snapshot) are removed.
fn staging_dir(target: &Path, id: &Id, nodes: &[Node]) -> Result<PathBuf> {
    let taken = |name: &str| nodes.iter().any(|n| n.path.0 == name.as_bytes());
    let mut ours = format!(".tvault-restore-{}", id.short());
    while taken(&ours) {
        ours.push('_');
    }
    for entry in fs::read_dir(target).at(target)? {
        let entry = entry.at(target)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_staging_name(&name) || taken(&name) {
            continue;
        }
        let path = entry.path();
        let is_dir = fs::symlink_metadata(&path).at(&path)?.is_dir();
        if name != ours || !is_dir {
            if is_dir {
                fs::remove_dir_all(&path).at(&path)?
            } else {
                fs::remove_file(&path).at(&path)?
            }
        }
    }
    let dir = target.join(ours);
    if !dir.is_dir() {
        fs::create_dir(&dir).at(&dir)?;
    }
    Ok(dir)
}

/// `.tvault-restore-` and 8 hex digits, then any underscores: a staging folder's name.
fn is_staging_name(name: &str) -> bool {
    name.strip_prefix(".tvault-restore-").is_some_and(|rest| {
        let hex = rest.trim_end_matches('_');
        hex.len() == crate::id::SHORT_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The sink of `restore ID TARGET`: each file is written into the staging folder and renamed
/// into place when whole. A file already in place whose content matches the snapshot chunk for
/// chunk is kept (only its metadata is applied), so a restore run again with `--overwrite`
/// after an interruption restores only the rest.
pub(crate) struct Disk<'a> {
    pub ids: Ids,
    pub target: &'a Path,
    pub staging: &'a Path,
}

pub(crate) struct DiskFile {
    out: File,
    tmp: PathBuf,
    dest: PathBuf,
    /// Created empty by this run: an all-zero chunk can stay a hole. A resumed file may hold
    /// other bytes there, so its zeros are written.
    fresh: bool,
}

impl Sink for Disk<'_> {
    type File = DiskFile;

    fn dir(&self, node: &Node) -> Result<()> {
        make_dir(&self.target.join(node.path.to_path_buf()))
    }

    fn open(&self, node: &Node, index: usize, starts: &[u64]) -> Result<Opened<DiskFile>> {
        let dest = self.target.join(node.path.to_path_buf());
        if let Ok(m) = fs::symlink_metadata(&dest) {
            if m.is_dir() {
                return Err(Error::Invalid(format!(
                    "{} is a directory in the target; not replacing it with a file",
                    dest.display()
                )));
            }
            // Only a plain file of its own (not a hard link to a file elsewhere, whose
            // metadata would change) is worth reading; anything else is replaced.
            if m.is_file()
                && m.len() == node.size
                && m.nlink() == 1
                && self.keep(&dest, node, starts)
            {
                return Ok(Opened::Kept);
            }
        }
        let tmp = self.staging.join(index.to_string());
        let have = self.resumable(&tmp, node, starts);
        let resumed = match have.iter().any(|&h| h) {
            true => fs::OpenOptions::new().write(true).open(&tmp).ok(),
            false => None,
        };
        let (out, fresh, have) = match resumed {
            Some(out) => (out, false, have),
            None => {
                // A leftover of no use (or that may not be written: its mode already set).
                let _ = fs::remove_file(&tmp);
                (File::create(&tmp).at(&tmp)?, true, Vec::new())
            }
        };
        let file = DiskFile {
            out,
            tmp,
            dest,
            fresh,
        };
        Ok(Opened::Write { file, have })
    }

    /// All-zero chunks are not written into a new file: they stay holes (sparse) and read
    /// back as zeros.
    fn write(&self, f: &DiskFile, positions: &[usize], starts: &[u64], plain: &[u8]) -> Result<()> {
        if !(f.fresh && is_zero(plain)) {
            for &i in positions {
                f.out.write_all_at(plain, starts[i]).at(&f.tmp)?;
            }
        }
        Ok(())
    }

    fn finish(&self, node: &Node, f: DiskFile) -> Result<()> {
        let done = (|| {
            // The size, including any hole at the end.
            f.out.set_len(node.size).at(&f.tmp)?;
            f.out
                .set_permissions(fs::Permissions::from_mode(node.mode))
                .at(&f.tmp)?;
            f.out
                .set_times(FileTimes::new().set_modified(to_system_time(node.mtime_ns)))
                .at(&f.tmp)?;
            fs::rename(&f.tmp, &f.dest).at(&f.dest)
        })();
        if done.is_err() {
            let _ = fs::remove_file(&f.tmp);
        }
        done
    }

    fn abandon(&self, f: DiskFile) {
        let _ = fs::remove_file(&f.tmp);
    }

    fn symlink(&self, link: &Node) -> Result<()> {
        let dest = self.target.join(link.path.to_path_buf());
        if fs::symlink_metadata(&dest).is_ok() {
            fs::remove_file(&dest).at(&dest)?;
        }
        let target = link.target.as_ref().expect("validated tree").to_path_buf();
        std::os::unix::fs::symlink(target, &dest).at(&dest)
    }

    /// Directory metadata last, deepest first: writing inside a directory changes its mtime,
    /// and a read-only mode would stop the writes.
    fn close(&self, dirs: &[&Node]) -> Result<()> {
        for dir in dirs {
            let path = self.target.join(dir.path.to_path_buf());
            // Times first: a mode without read permission would stop the open.
            let times = FileTimes::new().set_modified(to_system_time(dir.mtime_ns));
            File::open(&path)
                .and_then(|f| f.set_times(times))
                .at(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(dir.mode)).at(&path)?;
        }
        Ok(())
    }
}

impl Disk<'_> {
    /// Whether the file at `dest` holds exactly the snapshot's chunks; if so it is kept and
    /// gets the snapshot's mtime and mode. Anything that stops the check (a file it may not
    /// read) means it is restored anew.
    fn keep(&self, dest: &Path, node: &Node, starts: &[u64]) -> bool {
        let Ok(f) = File::open(dest) else {
            return false;
        };
        if first_mismatch(&f, self.ids, &node.chunks, starts, node.size).is_some() {
            return false;
        }
        let times = FileTimes::new().set_modified(to_system_time(node.mtime_ns));
        f.set_times(times).is_ok()
            && f.set_permissions(fs::Permissions::from_mode(node.mode))
                .is_ok()
    }
}

impl Disk<'_> {
    /// Which chunks a file partly written by a killed restore (`tmp`, in the staging folder)
    /// already holds: those whose bytes hash to their IDs (empty when there is no such file).
    fn resumable(&self, tmp: &Path, node: &Node, starts: &[u64]) -> Vec<bool> {
        let plain_file = fs::symlink_metadata(tmp).is_ok_and(|m| m.is_file());
        let Some(f) = plain_file.then(|| File::open(tmp).ok()).flatten() else {
            return Vec::new();
        };
        let len = f.metadata().map_or(0, |m| m.len());
        (0..node.chunks.len())
            .into_par_iter()
            .map(|i| {
                chunk_end(starts, i, node.size) <= len
                    && chunk_matches(&f, self.ids, &node.chunks, starts, node.size, i)
            })
            .collect()
    }
}

/// Where chunk `i` of a file of `size` bytes ends.
fn chunk_end(starts: &[u64], i: usize, size: u64) -> u64 {
    starts.get(i + 1).copied().unwrap_or(size)
}

/// Whether chunk `i` of `file` can be read and hashes to its ID.
fn chunk_matches(
    file: &File,
    ids: Ids,
    chunks: &[Id],
    starts: &[u64],
    size: u64,
    i: usize,
) -> bool {
    let mut buf = vec![0u8; (chunk_end(starts, i, size) - starts[i]) as usize];
    file.read_exact_at(&mut buf, starts[i]).is_ok() && ids.of(&buf) == chunks[i]
}

/// The first chunk of `file` (as `chunks` and their `starts` cut a file of `size` bytes) whose
/// bytes do not hash to its ID in this repository (`ids`: keyed in an encrypted one), or that
/// cannot be read; `None` when every chunk matches. Chunks are read and hashed in parallel, one
/// chunk's bytes in memory per worker; the first mismatch stops the rest.
pub(crate) fn first_mismatch(
    file: &File,
    ids: Ids,
    chunks: &[Id],
    starts: &[u64],
    size: u64,
) -> Option<usize> {
    (0..chunks.len())
        .into_par_iter()
        .find_first(|&i| !chunk_matches(file, ids, chunks, starts, size, i))
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

    /// A backend that counts ranged reads and the bytes they return.
    #[derive(Default)]
    struct CountingReads {
        inner: MemBackend,
        ranged: AtomicUsize,
        bytes: AtomicUsize,
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
            self.bytes.fetch_add(len, Ordering::SeqCst);
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

    /// A repository of hundreds of small tensor blocks (4 KiB) and `steps` steps of a 1 MiB
    /// fine-tune in `dir`: the backend, the repository, the checkpoint folder, the last backup.
    fn finetune_chain(
        steps: u32,
    ) -> (
        Arc<CountingReads>,
        Repository,
        std::path::PathBuf,
        backup::BackupReport,
    ) {
        let backend = Arc::new(CountingReads::default());
        let mut repo = small_blocks(backend.clone());
        let src = tempfile::tempdir().unwrap().keep();
        let dir = src.join("ckpt");
        let mut last = None;
        for step in 0..steps {
            last = Some(finetune_step(&mut repo, &dir, step));
        }
        (backend, repo, dir, last.unwrap())
    }

    /// A repository in `backend` whose tensor blocks are 4 KiB (many blocks in a small file).
    fn small_blocks(backend: Arc<CountingReads>) -> Repository {
        Repository::init_with(backend.clone(), "mem".into()).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_slice(&backend.get("config").unwrap()).unwrap();
        config["tensor_block"] = 4096.into();
        backend
            .put("config", &serde_json::to_vec(&config).unwrap())
            .unwrap();
        Repository::open_with(backend, "mem".into()).unwrap()
    }

    /// A trainer keeps the previous checkpoint folder beside the new one: the bases of the new
    /// step's deltas are read from that folder's file (unchanged since the parent stored it;
    /// each block hash-checked), not rebuilt from the repository's chains. Once the file's
    /// metadata changes, they come from the repository again. Both steps restore exactly.
    #[test]
    fn a_backup_reads_bases_from_the_previous_checkpoint_folder_still_on_disk() {
        let backend = Arc::new(CountingReads::default());
        let mut repo = small_blocks(backend.clone());
        let src = tempfile::tempdir().unwrap();
        let ckpt = src.path().join("checkpoints");
        let mut step = |k: u32| {
            tvault_workload::generate(tvault_workload::Scenario::Rolling, &ckpt, 1 << 20, 7, k)
                .unwrap();
            backend.bytes.store(0, Ordering::SeqCst);
            let opts = BackupOptions::new(vec![ckpt.clone()]);
            let report = backup::run(&mut repo, &opts, &NoProgress).unwrap();
            let delta = report.snapshot.summary.stored.delta;
            assert!(
                k == 0 || delta > 1 << 19,
                "step {k}: {delta} bytes as deltas"
            );
            (report, backend.bytes.load(Ordering::SeqCst))
        };
        for k in 0..4 {
            step(k);
        }
        let (on_disk, read_on_disk) = step(4);
        // Step 4's previous folder, touched: same bytes, other metadata.
        let previous = ckpt.join("checkpoint-2500/model.safetensors");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&previous)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let (from_repo, read_from_repo) = step(5);
        // The chains' keyframes alone are ~0.67 of the 1 MiB model.
        assert!(
            read_from_repo > 512 << 10 && read_on_disk * 8 < read_from_repo,
            "{read_on_disk} bytes read with the bases on disk, {read_from_repo} without"
        );
        for (report, folder) in [(on_disk, "checkpoint-2500"), (from_repo, "checkpoint-3000")] {
            let target = tempfile::tempdir().unwrap();
            let id = report.snapshot_id.to_hex();
            run(
                &mut repo,
                &RestoreOptions::new(&id, target.path()),
                &NoProgress,
            )
            .unwrap();
            let name = format!("checkpoints/{folder}/model.safetensors");
            let restored = fs::read(target.path().join(&name)).unwrap();
            assert!(restored == fs::read(ckpt.join(folder).join("model.safetensors")).unwrap());
        }
    }

    fn finetune_step(
        repo: &mut Repository,
        dir: &std::path::Path,
        step: u32,
    ) -> backup::BackupReport {
        if dir.exists() {
            fs::remove_dir_all(dir).unwrap();
        }
        tvault_workload::generate(tvault_workload::Scenario::Finetune, dir, 1 << 20, 7, step)
            .unwrap();
        let opts = BackupOptions::new(vec![dir.to_path_buf()]);
        backup::run(repo, &opts, &NoProgress).unwrap()
    }

    /// A backup reads the bases of a block's new chunks together, chains planned once for all
    /// of them: one read per step's pack, not one per link per chunk (on S3, a 10-step chain's
    /// backup took 82 s, one GET after another).
    #[test]
    fn a_backup_reads_the_bases_of_a_chain_together_not_link_by_link() {
        let steps = 6;
        let (backend, mut repo, dir, _) = finetune_chain(steps);
        backend.ranged.store(0, Ordering::SeqCst);
        let next = finetune_step(&mut repo, &dir, steps);
        assert!(
            next.snapshot.summary.stored.delta > 1 << 19,
            "{:?}",
            next.snapshot.summary
        );
        // Two rounds of encoding (one chunk per tensor, then the rest), each reading about one
        // range per step's pack, and the parent's tree.
        let reads = backend.ranged.load(Ordering::SeqCst);
        assert!(
            reads <= 2 * (steps as usize + 2) + 2,
            "{reads} reads for {steps} steps"
        );
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    /// The blocks of a fine-tune step are deltas on the previous step's: restoring the last
    /// step of a chain reads each step's links of many blocks together (neighbours in that
    /// step's pack), not one read per link per block (which was blocks x steps requests, each
    /// waited for in turn: one GET per link on S3).
    #[test]
    fn restore_of_a_chain_reads_each_steps_links_together_not_per_block() {
        let steps = 6;
        let (backend, mut repo, dir, last) = finetune_chain(steps);
        let deltas = last.snapshot.summary.stored.delta;
        assert!(
            deltas > 1 << 19,
            "step {steps} stored {deltas} bytes as deltas"
        );
        repo.load_index().unwrap();
        let blocks = repo.index().deltas().count();
        assert!(blocks > 500, "{blocks} delta blocks");

        backend.ranged.store(0, Ordering::SeqCst);
        let target = tempfile::tempdir().unwrap();
        let id = last.snapshot_id.to_hex();
        run(
            &mut repo,
            &RestoreOptions::new(&id, target.path()),
            &NoProgress,
        )
        .unwrap();
        let model = fs::read(target.path().join("ckpt/model.safetensors")).unwrap();
        assert!(model == fs::read(dir.join("model.safetensors")).unwrap());
        // The tree, then about one read per step's pack (each step's links of all the blocks
        // sit side by side there).
        let reads = backend.ranged.load(Ordering::SeqCst);
        assert!(
            reads <= steps as usize + 3,
            "{reads} reads for {steps} steps"
        );
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
