//! Carrying out a prune or forget plan, in the order that keeps every kept snapshot
//! restorable at every instant: new packs (every chunk copied is checked first, so damage
//! stops prune before it deletes anything), the new index, then deletions: forgotten
//! manifests, old index files, dead packs, leftovers. Nothing that this run wrote or that the
//! new index names is ever deleted, whatever its name collides with (a crashed earlier prune
//! may have left byte-identical files under the same names).

use std::collections::HashSet;

use super::plan::PrunePlan;
use super::{PackFate, PruneReport};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index;
use crate::pack::{PackEntry, PackWriter};
use crate::progress::Progress;
use crate::repo::{pack_key, Repository};

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
    let mut keep_keys: HashSet<String> = HashSet::new();
    let changes_packs = plan.packs.values().any(|p| p.fate != PackFate::Keep);
    if changes_packs {
        progress.phase("writing new packs and the new index");
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
        for (pack, planned) in &plan.packs {
            match planned.fate {
                PackFate::Keep => {
                    new_index.push((*pack, planned.entries.clone(), planned.deltas.clone()))
                }
                PackFate::Delete => {}
                PackFate::Repack => {
                    let data = repo.backend().get(&pack_key(pack))?;
                    progress.bytes(data.len() as u64);
                    for e in &planned.entries {
                        let used_here =
                            repo.index().get(&e.id).map(|l| repo.index().pack_id(l)) == Some(*pack);
                        if !plan.live.contains(&e.id) || !used_here {
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
    progress.phase("deleting");
    for (id, _, decision) in &plan.snapshots {
        if !decision.keep {
            repo.backend()
                .delete(&format!("snapshots/{}", id.to_hex()))?;
        }
    }
    if changes_packs {
        let dead_packs = plan
            .packs
            .iter()
            .filter(|(_, p)| p.fate != PackFate::Keep)
            .map(|(pack, _)| pack_key(pack));
        for key in plan.old_index_keys.iter().cloned().chain(dead_packs) {
            if !keep_keys.contains(&key) {
                repo.backend().delete(&key)?;
            }
        }
    }
    for key in plan.leftovers.iter().filter(|k| !keep_keys.contains(*k)) {
        repo.backend().delete(key)?;
    }
    if !plan.snapshots_only {
        report.bytes_freed = report.bytes_before.saturating_sub(stored_bytes(repo)?);
    }
    report.duration_ms = plan.started.elapsed().as_millis() as u64;
    Ok(report)
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
