//! `backup --from-tar FILE` (or `-` for standard input): imports a tar or tar.gz archive as a
//! snapshot, keeping names, modes and mtimes, so old tarball backups can move into the
//! repository. Content goes through the same chunking, dedup and compression as any backup,
//! model files included: the tensors of a safetensors or GGUF entry are found from the head of
//! its content (a PyTorch zip only when the entry is small enough to hold, see
//! `stream_layout.rs`), so they get byte planes, and deltas against the same tensors in the
//! repository's recent snapshots (by tensor identity, as a backup finds them), so the archive
//! of the next training step stores mostly deltas.
//! An entry with an absolute path or a `..` component, or a damaged archive, stops the import
//! with an error before any snapshot is written (packs already stored stay unreferenced until
//! the next prune).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use chrono::Utc;

use super::backup::{commit, BackupReport};
use super::read_file::{spans, store_stream};
use super::stream_layout::layout_of_stream;
use super::tensor_bases::BaseFinder;
use super::tensors::Bases;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{lock, BlobWriter, Repository};
use crate::snapshot::{Snapshot, SnapshotKind, Summary};
use crate::tree::{Node, NodeKind, NodePath, Tree};

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The archive; `-` reads standard input.
    pub archive: std::path::PathBuf,
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// Bound delta chains to this depth (see `BackupOptions::max_chain`).
    pub max_chain: Option<u8>,
}

/// The archive's bytes, gunzipped when they start with the gzip magic.
fn open(path: &Path) -> Result<Box<dyn Read + Send>> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::Invalid(format!("cannot read archive {}: {e}", path.display())))?;
        Box::new(f)
    };
    let mut buffered = BufReader::with_capacity(1 << 20, raw);
    let gzip = buffered
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .unwrap_or(false);
    Ok(if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    })
}

/// An archive path as a snapshot path: `./` prefixes and trailing slashes dropped; absolute
/// paths and `..` refused. `None` for the archive's root itself.
fn snapshot_path(raw: &[u8], archive: &Path) -> Result<Option<NodePath>> {
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry(raw, archive)),
            p => parts.push(p),
        }
    }
    if raw.starts_with(b"/") {
        return Err(unsafe_entry(raw, archive));
    }
    Ok((!parts.is_empty()).then(|| NodePath(parts.join(&b'/'))))
}

fn unsafe_entry(raw: &[u8], archive: &Path) -> Error {
    Error::Invalid(format!(
        "archive {} has an entry with an absolute path or `..` ({:?}); refusing to import it",
        archive.display(),
        String::from_utf8_lossy(raw)
    ))
}

fn damaged(archive: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "archive {} is not a readable tar archive ({e}); no snapshot was written",
        archive.display()
    ))
}

/// An entry below a symlink or a file of the same archive (`link -> /etc`, then `link/x`) is
/// how a hostile archive writes outside its target when extracted: refused, naming both.
fn refuse_entries_below_non_directories(
    nodes: &BTreeMap<NodePath, Node>,
    archive: &Path,
) -> Result<()> {
    for n in nodes.values() {
        let mut p = n.path.parent();
        while let Some(dir) = p {
            if let Some(up) = nodes.get(&dir).filter(|d| d.kind != NodeKind::Dir) {
                let what = if up.kind == NodeKind::Symlink {
                    "a symlink in the same archive (extracting it would write through the link)"
                } else {
                    "a file in the same archive (a file cannot hold entries)"
                };
                return Err(Error::Invalid(format!(
                    "archive {} has an entry {:?} below {:?}, which is {what}; refusing to import it, no snapshot was written",
                    archive.display(),
                    n.path.display(),
                    up.path.display(),
                )));
            }
            p = dir.parent();
        }
    }
    Ok(())
}

fn node(path: NodePath, kind: NodeKind, h: &tar::Header) -> Node {
    Node {
        path,
        kind,
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        mtime_ns: h.mtime().unwrap_or(0) as i64 * 1_000_000_000,
        ctime_ns: 0,
        inode: 0,
        dev: 0,
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        size: 0,
        chunks: Vec::new(),
        target: None,
    }
}

/// What the archive-reading thread sends: an entry's header, then (for regular files) its
/// content in pieces, then `End`.
enum Msg {
    Entry {
        raw_path: Vec<u8>,
        header: Box<tar::Header>,
        link: Option<Vec<u8>>,
        /// The content's length (a pax record's when there is one).
        size: u64,
    },
    Data(Vec<u8>),
    End,
    Failed(String),
}

/// Reads the archive on its own thread (tar entries borrow the archive and cannot cross
/// threads), so parsing and decompression overlap with chunking and compression.
fn spawn_reader(reader: Box<dyn Read + Send>) -> Receiver<Msg> {
    let (tx, rx) = sync_channel(4);
    std::thread::spawn(move || {
        let fail = |tx: &SyncSender<Msg>, e: std::io::Error| {
            let _ = tx.send(Msg::Failed(e.to_string()));
        };
        let mut archive = tar::Archive::new(reader);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => return fail(&tx, e),
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => return fail(&tx, e),
            };
            let msg = Msg::Entry {
                raw_path: entry.path_bytes().into_owned(),
                header: Box::new(entry.header().clone()),
                link: entry.link_name_bytes().map(|l| l.into_owned()),
                size: entry.size(),
            };
            if tx.send(msg).is_err() {
                return;
            }
            if matches!(
                entry.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            ) {
                loop {
                    let mut buf = vec![0u8; 1 << 20];
                    match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Msg::Data(buf)).is_err() {
                                return;
                            }
                        }
                        Err(e) => return fail(&tx, e),
                    }
                }
                if tx.send(Msg::End).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// One file's content as it arrives from the reading thread.
struct EntryContent<'a> {
    rx: &'a mut Receiver<Msg>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for EntryContent<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(Msg::End) => self.done = true,
                Ok(Msg::Failed(e)) => return Err(std::io::Error::other(e)),
                Ok(Msg::Entry { .. }) | Err(_) => {
                    return Err(std::io::Error::other("the archive ended inside a file"))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// This import's step in the series of imports: how many snapshots the repository holds that
/// were imported from archives. It staggers keyframes as a backup's step in its series does
/// (see `tensor_bases.rs`); an off count only shifts them.
fn import_step(repo: &Repository) -> Result<u64> {
    let imported =
        |s: &Snapshot| !s.paths.is_empty() && s.paths.iter().all(|p| p.starts_with("tar:"));
    Ok(repo
        .snapshots()?
        .iter()
        .filter(|(_, s)| imported(s))
        .count() as u64)
}

pub fn run(
    repo: &mut Repository,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> Result<BackupReport> {
    let started = Instant::now();
    let archive_path = &opts.archive;
    let reader = open(archive_path)?;
    let _lock = repo.lock(false, "backup --from-tar")?;
    let repo: &Repository = repo;

    // Delta bases by tensor identity from the newest snapshots (an import has no parent).
    let no_parent = HashMap::new();
    let mut writer = BlobWriter::new(repo);
    writer.max_chain = opts.max_chain;
    let finder = BaseFinder::new(
        repo,
        None,
        &no_parent,
        import_step(repo)?,
        writer.delta_format().max_depth,
        Default::default(),
    );
    let tensor_block = repo.config().tensor_block;

    let mut rx = spawn_reader(reader);
    let mut nodes: BTreeMap<NodePath, Node> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut summary = Summary::default();
    let mut entries = 0u64;
    loop {
        let (raw, header, link, size) = match rx.recv() {
            Ok(Msg::Entry {
                raw_path,
                header,
                link,
                size,
            }) => {
                entries += 1;
                (raw_path, header, link, size)
            }
            Ok(Msg::Failed(e)) => return Err(damaged(archive_path, e)),
            Ok(Msg::Data(_) | Msg::End) => {
                return Err(damaged(archive_path, "content outside an entry"))
            }
            Err(_) => break, // the reading thread is done
        };
        let regular = matches!(
            header.entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        );
        let path = match snapshot_path(&raw, archive_path)? {
            Some(p) => p,
            None if regular => return Err(damaged(archive_path, "a file entry without a name")),
            None => continue,
        };
        let mut n = match header.entry_type() {
            tar::EntryType::Directory => node(path, NodeKind::Dir, &header),
            tar::EntryType::Symlink => {
                let target =
                    link.ok_or_else(|| damaged(archive_path, "a symlink without a target"))?;
                let mut n = node(path, NodeKind::Symlink, &header);
                n.target = Some(NodePath(target));
                n
            }
            tar::EntryType::Link => {
                // A hard link: the same content as an entry already imported.
                let target = snapshot_path(&link.unwrap_or_default(), archive_path)?;
                let Some(linked) = target
                    .and_then(|t| nodes.get(&t))
                    .filter(|t| t.kind == NodeKind::File)
                else {
                    return Err(damaged(
                        archive_path,
                        format!("hard link {:?} to a missing file", path.display()),
                    ));
                };
                let mut n = node(path, NodeKind::File, &header);
                n.size = linked.size;
                n.chunks = linked.chunks.clone();
                n
            }
            _ if regular => {
                progress.file(&path.display());
                let mut n = node(path, NodeKind::File, &header);
                let mut content = EntryContent {
                    rx: &mut rx,
                    buf: Vec::new(),
                    pos: 0,
                    done: false,
                };
                let in_entry = |e: std::io::Error| {
                    damaged(archive_path, format!("entry {:?}: {e}", n.path.display()))
                };
                // As a backup cuts a file (`read_file::spans_of`), from the head of the entry.
                let (head, spans, bases) = match tensor_block {
                    Some(block) => {
                        let (layout, head) =
                            layout_of_stream(&mut content, size).map_err(in_entry)?;
                        if let Some(w) = &layout.warning {
                            progress.warn(&format!("{}: {w}", n.path.display()));
                        }
                        let bases = finder.bases(&n.path, &layout.regions, block);
                        (head, spans(&layout.regions, block), bases)
                    }
                    None => (Vec::new(), Vec::new(), Bases::new()),
                };
                let reader = Cursor::new(head).chain(content);
                let (chunks, len) = store_stream(reader, &spans, &bases, &mut writer, progress)?
                    .map_err(in_entry)?;
                if len != size {
                    return Err(in_entry(std::io::Error::other(format!(
                        "it holds {len} of its {size} bytes"
                    ))));
                }
                n.size = len;
                n.chunks = chunks;
                summary.bytes_read += len;
                n
            }
            other => {
                let msg = format!(
                    "skipping archive entry {:?} ({other:?}: only files, directories and links are imported)",
                    path.display()
                );
                progress.warn(&msg);
                warnings.push(msg);
                continue;
            }
        };
        // A later entry for the same path replaces an earlier one, as when extracting; said
        // out loud unless both are the same directory.
        match nodes.get(&n.path) {
            Some(old) if old.kind == NodeKind::Dir && n.kind == NodeKind::Dir => {
                n.mtime_ns = n.mtime_ns.max(old.mtime_ns);
            }
            Some(_) => {
                let msg = format!(
                    "archive {} has several entries for {:?}; the last one is imported (as `tar -x` would extract it)",
                    archive_path.display(),
                    n.path.display()
                );
                progress.warn(&msg);
                warnings.push(msg);
            }
            None => {}
        }
        nodes.insert(n.path.clone(), n);
    }
    if entries == 0 {
        // What a failed `ssh host tar -c | tvault backup --from-tar -` produces: not a migration.
        return Err(damaged(archive_path, "it holds no entries (empty input?)"));
    }
    // Archives may omit directories: create the missing parents.
    let mut parents = Vec::new();
    for n in nodes.values() {
        let mut p = n.path.parent();
        while let Some(dir) = p {
            if nodes.contains_key(&dir) {
                break;
            }
            p = dir.parent();
            parents.push(Node {
                mode: 0o755,
                mtime_ns: n.mtime_ns,
                ..node(dir, NodeKind::Dir, &tar::Header::new_gnu())
            });
        }
    }
    for d in parents {
        nodes.entry(d.path.clone()).or_insert(d);
    }
    refuse_entries_below_non_directories(&nodes, archive_path)?;
    let nodes: Vec<Node> = nodes.into_values().collect();
    // Never store a tree that restore would refuse (e.g. a file used as a directory).
    Tree::from_bytes("imported tree", &Tree::new(nodes.clone()).to_bytes())
        .map_err(|e| damaged(archive_path, e))?;
    for n in &nodes {
        match n.kind {
            NodeKind::File => {
                summary.files += 1;
                summary.files_new += 1;
                summary.total_bytes += n.size;
            }
            NodeKind::Dir => summary.dirs += 1,
            NodeKind::Symlink => summary.symlinks += 1,
        }
    }
    let source = if archive_path.as_os_str() == "-" {
        "tar:stdin".to_string()
    } else {
        let abs = std::fs::canonicalize(archive_path).unwrap_or_else(|_| archive_path.clone());
        format!("tar:{}", abs.display())
    };
    let snapshot = Snapshot {
        version: crate::snapshot::SNAPSHOT_VERSION,
        time: Utc::now(),
        host: opts.host.clone().unwrap_or_else(lock::hostname),
        paths: vec![source],
        tags: opts.tags.clone(),
        parent: None,
        kind: SnapshotKind::Full,
        tree: crate::id::Id([0; 32]),
        summary,
        problems: Vec::new(),
        deferred: Vec::new(),
        copied_from: None,
    };
    let (snapshot_id, snapshot) = commit(repo, writer, nodes, snapshot, started)?;
    progress.finish();
    Ok(BackupReport {
        dry_run: false,
        snapshot_id,
        snapshot,
        warnings,
        settling: Vec::new(),
        settling_details: Vec::new(),
        excluded: 0,
        unchanged: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_normalised_or_refused() {
        let a = Path::new("a.tar");
        let p = |raw: &[u8]| snapshot_path(raw, a).map(|p| p.map(|p| p.0));
        assert_eq!(
            p(b"./ckpt/model.bin").unwrap(),
            Some(b"ckpt/model.bin".to_vec())
        );
        assert_eq!(p(b"ckpt/").unwrap(), Some(b"ckpt".to_vec()));
        assert_eq!(p(b"./").unwrap(), None);
        for bad in [&b"/etc/passwd"[..], b"../x", b"ckpt/../../x", b"a/.."] {
            assert!(
                p(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("absolute path or `..`"),
                "{bad:?}"
            );
        }
    }
}
