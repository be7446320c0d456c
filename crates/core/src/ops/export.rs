//! `restore ID --tar FILE`: a snapshot (or the parts `--include` names) as a tar archive,
//! gzip-compressed when FILE ends in `.tar.gz` or `.tgz`, or on standard output with `-`.
//! Every chunk is re-hashed as it is streamed; damage stops the export with an error naming the
//! file, and a FILE is written under a temporary name and renamed only when complete.
//! A file whose chunks are not all indexed or do not add up to its recorded size is found
//! before its entry is written (a tar header holds the size first): it is left out of the
//! archive and named in `failed`, as restore to a directory does.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use super::content::Content;
use super::restore::select;
use crate::error::{Error, IoContext, Result};
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

#[derive(Clone, Debug, Default, Serialize)]
pub struct ExportReport {
    /// The snapshot written (JSON: also under its deprecated name `snapshot_id`).
    pub id: String,
    pub entries: u64,
    pub bytes: u64,
    /// Files left out of the archive, each with the reason (exit code 4).
    pub failed: Vec<String>,
}

/// Where the archive goes.
pub enum TarTarget<'a> {
    Stdout,
    File(&'a Path),
}

pub fn run(
    repo: &mut Repository,
    snapshot: &str,
    include: &[String],
    target: TarTarget,
    overwrite: bool,
) -> Result<ExportReport> {
    let id = repo.resolve_snapshot(snapshot)?;
    let _lock = repo.lock(false, "restore")?;
    let repo: &Repository = repo;
    let tree = repo.load_tree(&repo.load_snapshot(&id)?.tree)?;
    let nodes = select(tree.nodes, include, &id.short())?;
    let mut report = ExportReport {
        id: id.to_hex(),
        ..ExportReport::default()
    };
    match target {
        TarTarget::Stdout => {
            let out = io::stdout().lock();
            write_tar(repo, &nodes, BufWriter::new(out), false, &mut report)?
                .flush()
                .at("standard output")?;
        }
        TarTarget::File(path) => {
            if path.exists() && !overwrite {
                return Err(Error::Invalid(format!(
                    "{} exists: choose another name or pass --overwrite",
                    path.display()
                )));
            }
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let gzip = name.ends_with(".tar.gz") || name.ends_with(".tgz");
            let tmp = path.with_file_name(format!(".{name}.tvault-tmp"));
            let result = File::create(&tmp)
                .at(&tmp)
                .and_then(|f| write_tar(repo, &nodes, BufWriter::new(f), gzip, &mut report))
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()).at(&tmp))
                .and_then(|f| f.sync_all().at(&tmp))
                .and_then(|_| std::fs::rename(&tmp, path).at(path));
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result?;
        }
    }
    Ok(report)
}

/// Writes the archive; returns the underlying writer (to sync a file).
fn write_tar<W: Write>(
    repo: &Repository,
    nodes: &[Node],
    out: W,
    gzip: bool,
    report: &mut ExportReport,
) -> Result<W> {
    if gzip {
        let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        let gz = append_all(repo, nodes, gz, report)?;
        gz.finish()
            .map_err(|e| Error::Invalid(format!("cannot finish the archive: {e}")))
    } else {
        append_all(repo, nodes, out, report)
    }
}

fn append_all<W: Write>(
    repo: &Repository,
    nodes: &[Node],
    out: W,
    report: &mut ExportReport,
) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for n in nodes {
        let path = n.path.to_path_buf();
        let failed = |e: io::Error| {
            // A reader that stops early (`restore ID --tar - | head`) is its choice: the
            // caller sees the pipe error as such.
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Error::io("the archive's output", e);
            }
            Error::Invalid(format!("cannot archive {}: {e}", n.path.display()))
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.mode);
        h.set_mtime(n.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        h.set_uid(n.uid as u64);
        h.set_gid(n.gid as u64);
        match n.kind {
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &path, io::empty())
                    .map_err(failed)?;
            }
            NodeKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = n.target.as_ref().expect("validated tree");
                // The link name verbatim (`append_link` would normalise `a//b` to `a/b`); only
                // targets too long for the header go through its GNU long-name extension.
                if target.0.len() <= 100 {
                    h.set_link_name_literal(&target.0).map_err(failed)?;
                    tar.append_data(&mut h, &path, io::empty())
                        .map_err(failed)?;
                } else {
                    tar.append_link(&mut h, &path, target.to_path_buf())
                        .map_err(failed)?;
                }
            }
            NodeKind::File => {
                let content = match Content::of_file(repo, n) {
                    Ok(c) => c,
                    Err(e @ (Error::Corrupt { .. } | Error::MissingChunk { .. })) => {
                        report.failed.push(format!("{}: {e}", n.path.display()));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(n.size);
                tar.append_data(&mut h, &path, content.reader())
                    .map_err(failed)?;
                report.bytes += n.size;
            }
        }
        report.entries += 1;
    }
    tar.into_inner()
        .map_err(|e| Error::Invalid(format!("cannot finish the archive: {e}")))
}
