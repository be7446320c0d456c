//! Carrying out a prune or forget plan, in the order that keeps every kept snapshot
//! restorable at every instant: new packs (every chunk copied is checked first, so damage
//! stops prune before it deletes anything), the new index, then deletions: forgotten
//! manifests, old index files, dead packs, leftovers. Nothing that this run wrote or that the
//! new index names is ever deleted, whatever its name collides with (a crashed earlier prune
//! may have left byte-identical files under the same names).

use std::collections::HashSet;

use super::plan::PrunePlan;
use super::{PackFate, PruneReport};
use crate::codec;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index;
use crate::pack::PackEntry;
use crate::progress::Progress;
use crate::repo::{Handle, ObjectKind, PackSink, Repository};

/// Executes `plan` on the repository it was made for (under the lock it holds, released when
/// this returns). A plan made for a dry run is refused: it holds only a shared lock.
pub fn execute(repo: &Repository, plan: PrunePlan, progress: &dyn Progress) -> Result<PruneReport> {
    if plan.dry_run {
        return Err(Error::Invalid(
            "a --dry-run plan is not executed (it was made under a shared lock): plan again \
             without --dry-run"
                .to_string(),
        ));
    }
    let mut report = plan.report();
    let mut keep: HashSet<Handle> = HashSet::new();
    let changes_packs = plan.packs.values().any(|p| p.fate != PackFate::Keep);
    if changes_packs {
        progress.phase("writing new packs and the new index");
        let mut new_index: index::PackList = Vec::new();
        let mut sink = PackSink::new(repo);
        for (pack, planned) in &plan.packs {
            match planned.fate {
                PackFate::Keep => {
                    new_index.push((*pack, planned.entries.clone(), planned.deltas.clone()))
                }
                PackFate::Delete => {}
                PackFate::Repack => {
                    // Only the blobs in use that are the copies the index reads.
                    let live: Vec<PackEntry> = planned
                        .entries
                        .iter()
                        .filter(|e| {
                            plan.live.contains(&e.id)
                                && repo.index().get(&e.id).map(|l| repo.index().pack_id(l))
                                    == Some(*pack)
                        })
                        .copied()
                        .collect();
                    let (rewrite, copy): (Vec<PackEntry>, Vec<PackEntry>) = live
                        .into_iter()
                        .partition(|e| plan.rebase.rewrite.contains(&e.id));
                    let read = repo
                        .copy_blobs(&mut sink, pack, &copy)
                        .map_err(|e| stopped(pack, e))?;
                    progress.bytes(read);
                    for e in &rewrite {
                        let read = as_keyframe(repo, &mut sink, e).map_err(|e| stopped(pack, e))?;
                        progress.bytes(read);
                    }
                }
            }
        }
        let written = sink.finish()?;
        report.packs_written = written.packs.len() as u64;
        new_index.extend(written.packs);
        keep.extend(new_index.iter().map(|(id, _, _)| Handle::pack(id)));
        if !new_index.is_empty() {
            keep.insert(repo.save_index(&new_index)?.0);
        }
    }
    progress.phase("deleting");
    for (id, _, decision) in &plan.snapshots {
        if !decision.keep {
            repo.delete_snapshot(id)?;
        }
    }
    if changes_packs {
        let dead_packs = plan
            .packs
            .iter()
            .filter(|(_, p)| p.fate != PackFate::Keep)
            .map(|(pack, _)| Handle::pack(pack));
        for object in plan.old_index_files.iter().cloned().chain(dead_packs) {
            if !keep.contains(&object) {
                repo.delete(&[&object])?;
            }
        }
    }
    for name in &plan.temporaries {
        repo.storage().delete_leftover(name)?;
    }
    for object in plan.unindexed.iter().filter(|o| !keep.contains(*o)) {
        repo.delete(&[object])?;
    }
    if !plan.snapshots_only {
        report.bytes_freed = report.bytes_before.saturating_sub(stored_bytes(repo)?);
    }
    report.duration_ms = plan.started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Stores a delta blob again as a keyframe (its chain resolved and checked), encoded as backup
/// encodes new chunks, with the element width of the keyframe its chain ends in; the bytes of
/// the blob read.
fn as_keyframe(repo: &Repository, sink: &mut PackSink, e: &PackEntry) -> Result<u64> {
    let plain = repo.read_blob(&e.id)?;
    let width = keyframe_width(repo, &e.id)?;
    let mut out = Vec::new();
    let encoding = codec::encode_typed(&plain, width, repo.config().zstd_level, &mut out);
    let stored = if encoding == codec::Encoding::Raw {
        &plain
    } else {
        &out
    };
    sink.add(e.id, e.kind, encoding, stored, plain.len())?;
    Ok(e.stored_len as u64)
}

/// The float width the chain's keyframe was stored with (byte planes record it first), or 0.
fn keyframe_width(repo: &Repository, id: &Id) -> Result<u8> {
    let key = repo.index().keyframe_of(id);
    let Some(loc) = repo.index().get(&key).copied() else {
        return Ok(0);
    };
    if loc.encoding != codec::Encoding::Planes {
        return Ok(0);
    }
    let pack = repo.index().pack_id(&loc);
    let stored = repo.storage().get_range(
        &Handle::pack(&pack),
        loc.offset as u64,
        loc.stored_len as usize,
    )?;
    let encoded = repo.unseal(&key, &pack, &stored)?;
    Ok(encoded
        .first()
        .copied()
        .filter(|w| matches!(w, 2 | 4 | 8))
        .unwrap_or(0))
}

/// Bytes of packs and index files now.
fn stored_bytes(repo: &Repository) -> Result<u64> {
    let mut total = 0;
    for kind in [ObjectKind::Pack, ObjectKind::Index] {
        total += repo
            .storage()
            .list(kind)?
            .iter()
            .map(|(_, size)| size)
            .sum::<u64>();
    }
    Ok(total)
}

/// A copy that failed: prune stops before it deletes anything.
fn stopped(pack: &Id, err: Error) -> Error {
    match err {
        Error::CorruptChunk { id, reason, .. } => Error::CorruptChunk {
            id,
            pack: pack.to_hex(),
            reason: format!(
                "{reason}; prune stopped before deleting anything, run `tvault verify`"
            ),
        },
        other => other,
    }
}
