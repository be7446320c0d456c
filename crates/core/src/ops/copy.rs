//! `copy`: replicates snapshots into another repository (local or S3, plaintext or encrypted,
//! any key), sending only the blobs the destination lacks. Each copy keeps its snapshot's
//! time, host, paths, tags, problems and deferrals, points at the copy of its parent, and
//! records the source snapshot's ID (`copied_from`), by which a later run skips it.
//!
//! Per snapshot: its chunks are translated to destination IDs (`copy_blobs.rs`: known from
//! earlier copies without reading anything, else read from the source), the blobs the
//! destination lacks are written through the backup writer, the tree is rewritten with the
//! destination's IDs, then the snapshot manifest is written, last. Index files are written as
//! packs complete, so a run killed at any instant leaves no snapshot that cannot be restored,
//! and the next run sends again only what was in flight. The source is held under a shared
//! lock; the destination under the shared lock backup takes (none in a dry run, which writes
//! nothing at all).

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::copy_blobs::{Copier, Sent};
use super::select::{self, SnapshotFilter};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::Snapshot;

#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Snapshots to copy (IDs, unique prefixes or `latest`); none: every snapshot.
    pub snapshots: Vec<String>,
    /// Only snapshots that match (and it chooses `latest`).
    pub filter: SnapshotFilter,
    /// Work out what would be sent; write nothing to the destination.
    pub dry_run: bool,
}

/// What happened to one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyStatus {
    Copied,
    /// Already in the destination (the same ID, or a copy recording it as `copied_from`).
    Skipped,
    /// `--dry-run`: would be copied.
    WouldCopy,
}

/// One snapshot of a copy (an element of the `--json` report's `snapshots`).
#[derive(Clone, Debug, Serialize)]
pub struct CopiedSnapshot {
    /// The snapshot in the source repository.
    pub source_id: String,
    pub source_short_id: String,
    pub status: CopyStatus,
    /// Its copy in the destination: the new one, or for a skipped snapshot the one already
    /// there; `null` in a dry run.
    pub id: Option<String>,
    pub short_id: Option<String>,
    pub time: DateTime<Utc>,
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    /// Blobs (file chunks and the tree) written to the destination for this snapshot, and
    /// their bytes in its packs (sealed, in an encrypted destination).
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    /// Chunks read from the source (those no earlier copy told the destination ID of), and
    /// their plain bytes.
    pub chunks_read: u64,
    pub bytes_read: u64,
}

/// What `copy` did (its `--json` report).
#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    pub dry_run: bool,
    pub source: String,
    pub destination: String,
    pub copied: u64,
    pub skipped: u64,
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    /// Bytes written to the destination: packs and index files (dry run: the packs' blobs).
    pub bytes_written: u64,
    pub chunks_read: u64,
    pub bytes_read: u64,
    pub duration_ms: u64,
    pub snapshots: Vec<CopiedSnapshot>,
}

/// Copies the snapshots `opts` selects from `src` into `dst`, oldest first.
pub fn run(
    src: &mut Repository,
    dst: &mut Repository,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let started = Instant::now();
    if src.location() == dst.location() {
        return Err(Error::Invalid(format!(
            "the destination {} is the source repository itself; give another --to",
            dst.location().display()
        )));
    }
    // Which of the two repositories is locked, and how to unlock it.
    let named = |which: &str, repo: &Repository, e: Error| match e {
        Error::Locked(why) => Error::Locked(format!(
            "the {which} repository {} (`tvault --repo {} unlock` once its holder is gone): {why}",
            repo.location().display(),
            repo.location().display()
        )),
        other => other,
    };
    let _src_lock = src
        .lock(false, "copy")
        .map_err(|e| named("source", src, e))?;
    // A dry run writes nothing to the destination, not even a lock.
    let _dst_lock = match opts.dry_run {
        true => None,
        false => Some(
            dst.lock(false, "copy")
                .map_err(|e| named("destination", dst, e))?,
        ),
    };
    let (src, dst): (&Repository, &Repository) = (src, dst);
    let chosen = choose(src, opts)?;
    // Source snapshot IDs → their copies in the destination (a snapshot is its own copy when
    // both repositories name it alike).
    let dst_snaps = dst.snapshots()?;
    let mut copies: HashMap<Id, Id> = HashMap::new();
    for (id, s) in &dst_snaps {
        copies.insert(*id, *id);
        if let Some(from) = s.copied_from {
            copies.entry(from).or_insert(*id);
        }
    }
    let copy_of = |copies: &HashMap<Id, Id>, id: &Id, s: &Snapshot| {
        copies
            .get(id)
            .or_else(|| s.copied_from.and_then(|f| copies.get(&f)))
            .copied()
    };

    let mut copier = Copier::new(src, dst, opts.dry_run, progress);
    let todo: Vec<&(Id, Snapshot)> = chosen
        .iter()
        .filter(|(id, s)| copy_of(&copies, id, s).is_none())
        .collect();
    if !todo.is_empty() {
        copier.map_earlier_copies(&dst_snaps)?;
    }
    copier.start(&todo)?;

    let mut report = CopyReport {
        dry_run: opts.dry_run,
        source: src.location().display().to_string(),
        destination: dst.location().display().to_string(),
        copied: 0,
        skipped: 0,
        chunks_sent: 0,
        bytes_sent: 0,
        bytes_written: 0,
        chunks_read: 0,
        bytes_read: 0,
        duration_ms: 0,
        snapshots: Vec::new(),
    };
    for (id, snap) in &chosen {
        if let Some(existing) = copy_of(&copies, id, snap) {
            report.skipped += 1;
            report.snapshots.push(entry(
                id,
                snap,
                CopyStatus::Skipped,
                Some(existing),
                Sent::default(),
            ));
            continue;
        }
        progress.file(&format!("snapshot {}", id.short()));
        let (tree, sent) = copier
            .snapshot(snap)
            .map_err(|e| Error::Invalid(format!("copying snapshot {}: {e}", id.short())))?;
        let copy = Snapshot {
            tree,
            parent: snap.parent.and_then(|p| copies.get(&p).copied()),
            copied_from: Some(*id),
            ..snap.clone()
        };
        let (status, new_id) = if opts.dry_run {
            (CopyStatus::WouldCopy, None)
        } else {
            // The commit point: everything it names is durable and indexed.
            let new_id = dst.save_snapshot(&copy)?;
            copies.insert(*id, new_id);
            (CopyStatus::Copied, Some(new_id))
        };
        report.copied += 1;
        report.chunks_sent += sent.chunks;
        report.bytes_sent += sent.bytes;
        report.chunks_read += sent.chunks_read;
        report.bytes_read += sent.bytes_read;
        report.snapshots.push(entry(id, snap, status, new_id, sent));
    }
    progress.phase("writing the last index");
    report.bytes_written = copier.finish()?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    progress.finish();
    Ok(report)
}

/// The source snapshots `opts` selects, oldest first.
fn choose(src: &Repository, opts: &CopyOptions) -> Result<Vec<(Id, Snapshot)>> {
    let all = select::matching(src, &opts.filter)?;
    if opts.snapshots.is_empty() {
        return Ok(all);
    }
    let mut wanted = Vec::new();
    for spec in &opts.snapshots {
        wanted.push(if spec.eq_ignore_ascii_case(select::LATEST) {
            select::latest(src, &opts.filter)?.0
        } else {
            src.resolve_snapshot(spec)?
        });
    }
    if let Some(id) = wanted.iter().find(|id| !all.iter().any(|(a, _)| a == *id)) {
        return Err(Error::Invalid(format!(
            "snapshot {} does not match --tag/--host/--path; drop the filters or the ID",
            id.short()
        )));
    }
    Ok(all
        .into_iter()
        .filter(|(id, _)| wanted.contains(id))
        .collect())
}

fn entry(
    id: &Id,
    s: &Snapshot,
    status: CopyStatus,
    copy: Option<Id>,
    sent: Sent,
) -> CopiedSnapshot {
    CopiedSnapshot {
        source_id: id.to_hex(),
        source_short_id: id.short(),
        status,
        id: copy.map(|c| c.to_hex()),
        short_id: copy.map(|c| c.short()),
        time: s.time,
        host: s.host.clone(),
        paths: s.paths.clone(),
        tags: s.tags.clone(),
        chunks_sent: sent.chunks,
        bytes_sent: sent.bytes,
        chunks_read: sent.chunks_read,
        bytes_read: sent.bytes_read,
    }
}
