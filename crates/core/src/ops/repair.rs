//! `repair index` and `repair packs`: put the index back in line with the packs.
//!
//! - `repair index` rebuilds the entries of packs that no readable index file lists from the
//!   packs themselves (their trailers, and each delta's own header), and writes them as one new
//!   index file. It only adds a file, so a crash at any instant leaves the repository as it was
//!   or repaired; a second run finds every pack indexed and writes nothing. Index files that
//!   are corrupt are deleted only once the new one is durable and every pack on disk could be
//!   read (nothing they listed is then unaccounted for).
//! - `repair packs` reads every indexed pack (as `verify --read-data`), and rewrites each pack
//!   with damage without its damaged chunks (and without the deltas that need them; a delta
//!   whose base has another, sound copy is decoded through that one and kept), in the
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

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{self, Deltas, IdMap, IdSet};
use crate::pack::PackEntry;
use crate::progress::Progress;
use crate::repo::{Handle, PackSink, Repository};

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
    let packs = repo.list_packs()?;
    progress.start(packs.len() as u64, 0);
    for (object, _) in packs {
        report.packs_scanned += 1;
        let key = object.to_string();
        let Some(id) = object.id() else {
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
        match repo.pack_entries(&object) {
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
    let mut corrupt: Vec<Handle> = repo
        .read_index_files()?
        .into_iter()
        .filter(|f| matches!(f.packs, Err(Error::Corrupt { .. })))
        .map(|f| f.object)
        .collect();
    let remove_corrupt = report.unreadable_packs.is_empty();
    if !dry_run {
        if !recovered.is_empty() {
            let (written, _) = repo.save_index(&recovered)?;
            // The rebuilt file may be byte for byte the one that was damaged (same name): it
            // was just replaced, and is not deleted.
            corrupt.retain(|k| *k != written);
            report.index_files_written.push(written.to_string());
        }
        if remove_corrupt {
            repo.delete(&corrupt.iter().collect::<Vec<_>>())?;
        }
    }
    if remove_corrupt {
        report.index_files_removed = corrupt.iter().map(|h| h.to_string()).collect();
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
    let mut listed_by: BTreeMap<Handle, Vec<Id>> = BTreeMap::new();
    for file in files {
        let list = file.packs?;
        listed_by.insert(file.object.clone(), list.iter().map(|(p, _)| *p).collect());
        for (pack, entries) in list {
            let deltas = file.deltas.get(&pack).cloned().unwrap_or_default();
            packs.entry(pack).or_insert((entries, deltas));
        }
    }
    let mut on_disk: IdMap<u64> = IdMap::default();
    for (object, size) in repo.list_packs()? {
        match object.id() {
            Some(id) if packs.contains_key(&id) => {
                on_disk.insert(id, size);
            }
            // A pack of an interrupted run holds only copies of indexed chunks: a leftover
            // (prune removes it; a rerun may write it again under the same name).
            _ if holds_only_indexed(repo, &object) => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "{object} is in no index file and may hold chunks that look lost: run \
                     `tvault repair index` first"
                )))
            }
        }
    }

    // Read every pack and find what is damaged.
    let ids: Vec<&Id> = packs.keys().collect();
    progress.start(ids.len() as u64, on_disk.values().sum());
    let shared: &Repository = repo;
    let checks: Vec<_> = ids
        .par_iter()
        .filter(|p| on_disk.contains_key(**p))
        .map(|p| {
            let r = shared.check_pack(p, &packs[*p].0);
            progress.bytes(r.bytes);
            r
        })
        .collect();
    let mut hash_ok = IdSet::default();
    let mut bad: BTreeMap<Id, BTreeMap<Id, String>> = BTreeMap::new();
    for pack in &ids {
        let entries = &packs[*pack].0;
        let Some(&size) = on_disk.get(*pack) else {
            let all = entries.iter().map(|e| (e.id, "its pack is missing".into()));
            bad.entry(**pack).or_default().extend(all);
            continue;
        };
        if size != repo.expected_pack_size(entries) {
            bad.entry(**pack).or_default();
        }
    }
    for r in checks {
        report.packs_read += 1;
        report.bytes_read += r.bytes;
        let lost = bad.entry(r.pack).or_default();
        if let Some(e) = r.unreadable.as_ref().filter(|e| e.is_not_found()) {
            let reason = format!("its pack is gone: {e}");
            lost.extend(packs[&r.pack].0.iter().map(|e| (e.id, reason.clone())));
        }
        if let Some(e) = r.unreadable.filter(|e| !e.is_not_found()) {
            // A pack that cannot be read (permissions, I/O, network) is not known to be
            // damaged: dropping its chunks would delete a pack that may be sound.
            return Err(Error::Invalid(format!(
                "cannot read pack {} ({e}); repair packs changes nothing until every pack \
                 can be read: fix access to it and run it again",
                r.pack
            )));
        }
        lost.extend(r.bad_blobs);
        if r.hash_ok {
            hash_ok.insert(r.pack);
        }
    }
    revive_deltas(repo, &packs, &on_disk, &mut bad);
    bad.retain(|pack, lost| !(lost.is_empty() && hash_ok.contains(pack)));
    let repo: &Repository = repo;
    for (pack, lost) in &bad {
        let key = Handle::pack(pack).to_string();
        report.damaged_packs.push(key.clone());
        report
            .chunks_dropped
            .extend(lost.iter().map(|(id, reason)| DroppedChunk {
                chunk: id.to_hex(),
                pack: key.clone(),
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
    report.record = Some(repo.save_repair_record(&bytes)?.to_string());

    // 2. New packs with the sound chunks of the damaged ones, checked again as they are copied.
    let mut sink = PackSink::new(repo);
    for (pack, lost) in &bad {
        if !on_disk.contains_key(pack) || lost.len() == packs[pack].0.len() {
            continue;
        }
        let sound: Vec<PackEntry> = packs[pack]
            .0
            .iter()
            .filter(|e| !lost.contains_key(&e.id))
            .copied()
            .collect();
        repo.copy_blobs(&mut sink, pack, &sound)?;
    }
    let new_packs = sink.finish()?.packs;
    report.packs_written = new_packs.len() as u64;

    // 3. One new index file for every index file that lists a damaged pack: their other packs
    // and the new ones. 4. Then the old index files, 5. then the damaged packs.
    let rewritten: Vec<&Handle> = listed_by
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
    let mut keep: BTreeSet<Handle> = new_index.iter().map(|(p, _, _)| Handle::pack(p)).collect();
    if !new_index.is_empty() {
        let (written, _) = repo.save_index(&new_index)?;
        report.index_files_written.push(written.to_string());
        keep.insert(written);
    }
    for object in rewritten {
        if !keep.contains(object) {
            repo.delete(&[object])?;
            report.index_files_removed.push(object.to_string());
        }
    }
    for pack in bad.keys().filter(|p| on_disk.contains_key(*p)) {
        let object = Handle::pack(pack);
        if !keep.contains(&object) {
            repo.delete(&[&object])?;
        }
    }
    progress.finish();
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// A delta is decoded through the copy of its base the index reads; when that copy is damaged
/// and another copy of the base is sound (a chunk stored twice, by backups that ran at once),
/// the delta is sound too. So the index is pointed at sound copies only (the damaged copies out,
/// the other copies of their chunks back in) and the deltas found damaged are decoded again,
/// until no more of them decode: only those that still fail are dropped. The copies of
/// `repair packs` then also read every base from a sound copy.
fn revive_deltas(
    repo: &mut Repository,
    packs: &BTreeMap<Id, (Vec<PackEntry>, Deltas)>,
    on_disk: &IdMap<u64>,
    bad: &mut BTreeMap<Id, BTreeMap<Id, String>>,
) {
    loop {
        let damaged: IdSet = bad.values().flat_map(|lost| lost.keys().copied()).collect();
        if damaged.is_empty() {
            return;
        }
        let index = repo.index_mut();
        for id in &damaged {
            index.remove(id);
        }
        for (pack, (entries, deltas)) in packs {
            let lost = bad.get(pack);
            let sound: Vec<PackEntry> = entries
                .iter()
                .filter(|e| damaged.contains(&e.id))
                .filter(|e| !lost.is_some_and(|l| l.contains_key(&e.id)))
                .copied()
                .collect();
            index.add_pack_with(*pack, &sound, deltas);
        }
        let mut revived = Vec::new();
        for (pack, lost) in bad.iter().filter(|(p, _)| on_disk.contains_key(*p)) {
            let (entries, deltas) = &packs[pack];
            let suspects: Vec<PackEntry> = entries
                .iter()
                .filter(|e| lost.contains_key(&e.id) && deltas.contains_key(&e.id))
                .copied()
                .collect();
            // A delta's own bytes that cannot be read stay lost.
            let Ok(stored) = repo.read_blobs(pack, &suspects) else {
                continue;
            };
            for (e, bytes) in suspects.iter().zip(&stored) {
                let plain_len = e.plain_len as usize;
                if repo
                    .decode_blob(&e.id, pack, e.encoding, bytes, plain_len)
                    .is_ok()
                {
                    revived.push((*pack, e.id));
                }
            }
        }
        if revived.is_empty() {
            return;
        }
        for (pack, id) in revived {
            bad.get_mut(&pack).expect("a pack with damage").remove(&id);
        }
    }
}

/// True when `object` is a readable pack whose every blob the index already lists.
fn holds_only_indexed(repo: &Repository, object: &Handle) -> bool {
    let read = repo.pack_entries(object);
    read.is_ok_and(|(entries, _)| entries.iter().all(|e| repo.index().contains(&e.id)))
}
