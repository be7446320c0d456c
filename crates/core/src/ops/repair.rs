//! `repair index` and `repair packs`: put the index back in line with the packs.
//!
//! - `repair index` rebuilds the entries of packs that no readable index file lists from the
//!   packs themselves (their trailers, and each delta's own header), and writes them as one new
//!   index file. It only adds a file, so a crash at any instant leaves the repository as it was
//!   or repaired; a second run finds every pack indexed and writes nothing. Index files that
//!   are corrupt are deleted only once the new one is durable and every pack on disk could be
//!   read (nothing they listed is then unaccounted for).
//! - `repair packs` reads every indexed pack (as `verify --read-data`), and rewrites each pack
//!   with damage without its damaged chunks (and without the deltas that need them), in the
//!   order prune uses: a record of what is dropped (`repair/<ID>`), new packs, a new index,
//!   then the old index files and the damaged packs are deleted. Dropped chunks are in no
//!   index any more, so the next backup of the same content stores them again and the
//!   snapshots that need them heal. A rerun after a crash redoes the same steps (packs the
//!   crash left unindexed hold only copies of indexed chunks and are passed over).
//!
//! Both hold the exclusive lock (a shared one with `--dry-run`, which writes nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Serialize;

use super::verify::{check_pack, expected_pack_size};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{self, Deltas, IdMap, IdSet};
use crate::pack::{PackEntry, PackWriter};
use crate::progress::Progress;
use crate::repo::{pack_key, Repository};

/// A repository file repair could not use, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Unreadable {
    pub file: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairIndexReport {
    pub dry_run: bool,
    /// Packs on disk.
    pub packs_scanned: u64,
    /// Packs no readable index file listed, whose entries were rebuilt (or would be).
    pub packs_recovered: u64,
    pub entries_recovered: u64,
    pub index_files_written: Vec<String>,
    /// Corrupt index files deleted once the new index was durable.
    pub index_files_removed: Vec<String>,
    /// Packs whose trailer cannot be read: their chunks stay lost (exit 4).
    pub unreadable_packs: Vec<Unreadable>,
    pub duration_ms: u64,
}

/// Rebuilds the index entries of every pack that no readable index file lists.
pub fn index(
    repo: &mut Repository,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<RepairIndexReport> {
    let started = Instant::now();
    let _lock = repo.lock(!dry_run, "repair index")?;
    let repo: &Repository = repo;
    let mut report = RepairIndexReport {
        dry_run,
        ..RepairIndexReport::default()
    };
    let indexed: IdSet = repo.index().packs.iter().copied().collect();
    let mut recovered: index::PackList = Vec::new();
    let keys = repo.backend().list("data")?;
    progress.start(keys.len() as u64, 0);
    for key in keys {
        report.packs_scanned += 1;
        let Some(id) = key.rsplit('/').next().and_then(Id::from_hex) else {
            report.unreadable_packs.push(Unreadable {
                file: key,
                message: "file name is not a pack ID".into(),
            });
            continue;
        };
        if indexed.contains(&id) {
            continue;
        }
        progress.file(&key);
        let read = repo
            .backend()
            .get(&key)
            .and_then(|bytes| index::entries_of_pack(&key, &bytes));
        match read {
            Ok((entries, deltas)) => {
                report.packs_recovered += 1;
                report.entries_recovered += entries.len() as u64;
                recovered.push((id, entries, deltas));
            }
            Err(e) => report.unreadable_packs.push(Unreadable {
                file: key,
                message: e.to_string(),
            }),
        }
    }
    let mut corrupt: Vec<String> = repo
        .read_index_files()?
        .into_iter()
        .filter(|f| matches!(f.packs, Err(Error::Corrupt { .. })))
        .map(|f| f.key)
        .collect();
    let remove_corrupt = report.unreadable_packs.is_empty();
    if !dry_run {
        if !recovered.is_empty() {
            let key = repo.save_index(&recovered)?;
            // The rebuilt file may be byte for byte the one that was damaged (same name): it
            // was just replaced, and is not deleted.
            corrupt.retain(|k| *k != key);
            report.index_files_written.push(key);
        }
        if remove_corrupt {
            for key in &corrupt {
                repo.backend().delete(key)?;
            }
        }
    }
    if remove_corrupt {
        report.index_files_removed = corrupt;
    }
    progress.finish();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// One chunk `repair packs` drops from the index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DroppedChunk {
    pub chunk: String,
    /// The pack it was in (`data/…`).
    pub pack: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairPacksReport {
    pub dry_run: bool,
    pub packs_read: u64,
    pub bytes_read: u64,
    /// Packs with damage (missing, truncated, damaged chunks or a wrong hash): rewritten
    /// without their damaged chunks, then deleted.
    pub damaged_packs: Vec<String>,
    pub chunks_dropped: Vec<DroppedChunk>,
    pub packs_written: u64,
    pub index_files_written: Vec<String>,
    pub index_files_removed: Vec<String>,
    /// The record of this repair in the repository (`repair/<ID>`).
    pub record: Option<String>,
    pub duration_ms: u64,
}

/// The record `repair packs` leaves in the repository (`repair/<ID>`, see FORMAT.md).
#[derive(Serialize)]
struct Record<'a> {
    command: &'static str,
    time: DateTime<Utc>,
    dropped: &'a [DroppedChunk],
    packs_removed: &'a [String],
}

/// Drops damaged chunks from the index by rewriting the packs that hold them.
pub fn packs(
    repo: &mut Repository,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<RepairPacksReport> {
    let started = Instant::now();
    let _lock = repo.lock(!dry_run, "repair packs")?;
    let repo: &Repository = repo;
    let mut report = RepairPacksReport {
        dry_run,
        ..RepairPacksReport::default()
    };
    if let Some(e) = repo.index_problems().first() {
        return Err(Error::Invalid(format!(
            "an index file is damaged ({e}): run `tvault repair index` first"
        )));
    }
    // Every pack as the index files list it (the first listing wins, as in verify).
    let files = repo.read_index_files()?;
    let mut packs: BTreeMap<Id, (Vec<PackEntry>, Deltas)> = BTreeMap::new();
    let mut listed_by: BTreeMap<String, Vec<Id>> = BTreeMap::new();
    for file in files {
        let list = file.packs?;
        listed_by.insert(file.key.clone(), list.iter().map(|(p, _)| *p).collect());
        for (pack, entries) in list {
            let deltas = file.deltas.get(&pack).cloned().unwrap_or_default();
            packs.entry(pack).or_insert((entries, deltas));
        }
    }
    let mut on_disk: IdMap<u64> = IdMap::default();
    for key in repo.backend().list("data")? {
        let id = key.rsplit('/').next().and_then(Id::from_hex);
        match id {
            Some(id) if packs.contains_key(&id) => {
                on_disk.insert(id, repo.backend().size(&key)?.unwrap_or(0));
            }
            // A pack of an interrupted run holds only copies of indexed chunks: a leftover
            // (prune removes it; a rerun may write it again under the same name).
            _ if holds_only_indexed(repo, &key) => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "{key} is in no index file and may hold chunks that look lost: run \
                     `tvault repair index` first"
                )))
            }
        }
    }

    // Read every pack and find what is damaged.
    let ids: Vec<&Id> = packs.keys().collect();
    progress.start(ids.len() as u64, on_disk.values().sum());
    let checks: Vec<_> = ids
        .par_iter()
        .filter(|p| on_disk.contains_key(**p))
        .map(|p| {
            let r = check_pack(repo, p, &packs[*p].0);
            progress.bytes(r.bytes);
            r
        })
        .collect();
    let mut bad: BTreeMap<Id, BTreeMap<Id, String>> = BTreeMap::new();
    for pack in &ids {
        let entries = &packs[*pack].0;
        let Some(&size) = on_disk.get(*pack) else {
            let all = entries.iter().map(|e| (e.id, "its pack is missing".into()));
            bad.entry(**pack).or_default().extend(all);
            continue;
        };
        if size != expected_pack_size(entries) {
            bad.entry(**pack).or_default();
        }
    }
    for r in checks {
        report.packs_read += 1;
        report.bytes_read += r.bytes;
        let lost = bad.entry(r.pack).or_default();
        if let Some(e) = r.unreadable {
            let reason = format!("cannot read its pack: {e}");
            lost.extend(packs[&r.pack].0.iter().map(|e| (e.id, reason.clone())));
        }
        lost.extend(r.bad_blobs);
        if r.hash_ok && lost.is_empty() {
            bad.remove(&r.pack);
        }
    }
    for (pack, lost) in &bad {
        report.damaged_packs.push(pack_key(pack));
        report
            .chunks_dropped
            .extend(lost.iter().map(|(id, reason)| DroppedChunk {
                chunk: id.to_hex(),
                pack: pack_key(pack),
                reason: reason.clone(),
            }));
    }
    if bad.is_empty() || dry_run {
        progress.finish();
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    // 1. The record, so what is dropped stays known whatever happens next.
    let record = Record {
        command: "repair packs",
        time: Utc::now(),
        dropped: &report.chunks_dropped,
        packs_removed: &report.damaged_packs,
    };
    let bytes = serde_json::to_vec_pretty(&record).expect("record serialises");
    let key = format!("repair/{}", Id::of(&bytes).to_hex());
    repo.backend().put(&key, &bytes)?;
    report.record = Some(key);

    // 2. New packs with the sound chunks of the damaged ones, checked again as they are copied.
    let old_deltas: Deltas = bad
        .keys()
        .flat_map(|p| packs[p].1.iter().map(|(id, d)| (*id, *d)))
        .collect();
    let mut new_packs: index::PackList = Vec::new();
    let mut writer = PackWriter::new();
    let pack_size = repo.config().pack_size as usize;
    let mut store = |writer: PackWriter, report: &mut RepairPacksReport| -> Result<()> {
        let (id, bytes, entries) = writer.finish();
        repo.backend().put(&pack_key(&id), &bytes)?;
        report.packs_written += 1;
        let deltas: Deltas = entries
            .iter()
            .filter_map(|e| Some((e.id, *old_deltas.get(&e.id)?)))
            .collect();
        new_packs.push((id, entries, deltas));
        Ok(())
    };
    for (pack, lost) in &bad {
        if !on_disk.contains_key(pack) || lost.len() == packs[pack].0.len() {
            continue;
        }
        let data = repo.backend().get(&pack_key(pack))?;
        for e in packs[pack].0.iter().filter(|e| !lost.contains_key(&e.id)) {
            let stored = &data[e.offset as usize..(e.offset + e.stored_len) as usize];
            repo.decode_blob(&e.id, pack, e.encoding, stored, e.plain_len as usize)?;
            writer.add(e.id, e.kind, e.encoding, stored, e.plain_len as usize);
            if writer.len() >= pack_size {
                store(std::mem::take(&mut writer), &mut report)?;
            }
        }
    }
    if !writer.is_empty() {
        store(writer, &mut report)?;
    }

    // 3. One new index file for every index file that lists a damaged pack: their other packs
    // and the new ones. 4. Then the old index files, 5. then the damaged packs.
    let rewritten: Vec<&String> = listed_by
        .iter()
        .filter(|(_, list)| list.iter().any(|p| bad.contains_key(p)))
        .map(|(k, _)| k)
        .collect();
    let mut kept: BTreeSet<Id> = BTreeSet::new();
    for key in &rewritten {
        kept.extend(listed_by[*key].iter().filter(|p| !bad.contains_key(p)));
    }
    let mut new_index: index::PackList = kept
        .into_iter()
        .map(|p| (p, packs[&p].0.clone(), packs[&p].1.clone()))
        .collect();
    new_index.extend(new_packs);
    let mut keep_keys: BTreeSet<String> = new_index.iter().map(|(p, _, _)| pack_key(p)).collect();
    if !new_index.is_empty() {
        let key = repo.save_index(&new_index)?;
        keep_keys.insert(key.clone());
        report.index_files_written.push(key);
    }
    for key in rewritten {
        if !keep_keys.contains(key) {
            repo.backend().delete(key)?;
            report.index_files_removed.push(key.clone());
        }
    }
    for pack in bad.keys().filter(|p| on_disk.contains_key(*p)) {
        let key = pack_key(pack);
        if !keep_keys.contains(&key) {
            repo.backend().delete(&key)?;
        }
    }
    progress.finish();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// True when `key` is a readable pack whose every blob the index already lists.
fn holds_only_indexed(repo: &Repository, key: &str) -> bool {
    let read = repo
        .backend()
        .get(key)
        .and_then(|bytes| index::entries_of_pack(key, &bytes));
    read.is_ok_and(|(entries, _)| entries.iter().all(|e| repo.index().contains(&e.id)))
}
