//! `tag ID --add T --remove T`: changes a snapshot's tags. Tags are part of the manifest, whose
//! hash is the snapshot's ID, so retagging writes a new manifest (a new ID) and then deletes the
//! old one. A crash between the two leaves both (the same data under two IDs that differ only in
//! their tags), never neither. Snapshots that name the old one as their `parent` keep that name:
//! a parent is informational (backup picks its parent by host and paths, deltas by chunk IDs).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;

#[derive(Clone, Debug)]
pub struct TagOptions {
    pub snapshot: Id,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TagReport {
    /// The snapshot's ID before.
    pub old_id: String,
    /// Its ID now (the same as `old_id` when nothing changed).
    pub id: String,
    pub tags: Vec<String>,
    pub changed: bool,
}

pub fn run(repo: &mut Repository, opts: &TagOptions) -> Result<TagReport> {
    if opts.add.is_empty() && opts.remove.is_empty() {
        return Err(Error::Invalid("tag needs --add TAG or --remove TAG".into()));
    }
    if let Some(t) = opts.add.iter().chain(&opts.remove).find(|t| t.is_empty()) {
        return Err(Error::Invalid(format!(
            "invalid tag {t:?}: a tag is not empty"
        )));
    }
    if let Some(t) = opts.add.iter().find(|t| opts.remove.contains(t)) {
        return Err(Error::Invalid(format!(
            "tag {t:?} is both added and removed; give it once"
        )));
    }
    // Exclusive, as restic's: a backup must not pick a manifest as its parent while it is
    // being replaced.
    let _lock = repo.lock(true, "tag")?;
    let old = opts.snapshot;
    let mut snap = repo.load_snapshot(&old)?;
    let mut tags = snap.tags.clone();
    tags.retain(|t| !opts.remove.contains(t));
    for t in &opts.add {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    if tags == snap.tags {
        return Ok(TagReport {
            old_id: old.to_hex(),
            id: old.to_hex(),
            tags,
            changed: false,
        });
    }
    snap.tags = tags.clone();
    let new = repo.save_snapshot(&snap)?;
    repo.delete_snapshot(&old)?;
    Ok(TagReport {
        old_id: old.to_hex(),
        id: new.to_hex(),
        tags,
        changed: true,
    })
}
