//! `ls ID [PATH]`: the entries of a snapshot's tree, all of them or those at and below PATH,
//! with kind, permission bits, size and mtime. Only the tree is read.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{NodeKind, NodePath};

#[derive(Clone, Debug)]
pub struct LsOptions {
    pub snapshot: Id,
    /// Only this path of the snapshot and what is below it (`None`: everything).
    pub path: Option<String>,
}

/// One entry, as `ls --json` prints it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LsEntry {
    /// The snapshot's ID.
    pub id: String,
    pub path: String,
    pub kind: NodeKind,
    /// File size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub mtime: DateTime<Utc>,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A path as the user typed it, as the tree spells it (no leading or trailing `/`).
pub(crate) fn node_path(path: &str) -> NodePath {
    NodePath(path.trim_matches('/').as_bytes().to_vec())
}

/// Nanoseconds since the epoch as a UTC time.
pub(crate) fn time_of(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
    .unwrap_or_default()
}

pub fn run(repo: &mut Repository, opts: &LsOptions) -> Result<Vec<LsEntry>> {
    let _lock = repo.lock(false, "ls")?;
    let repo: &Repository = repo;
    let tree = repo.load_tree(&repo.load_snapshot(&opts.snapshot)?.tree)?;
    let below = opts
        .path
        .as_deref()
        .map(node_path)
        .filter(|p| !p.0.is_empty());
    let id = opts.snapshot.to_hex();
    let entries: Vec<LsEntry> = tree
        .nodes
        .into_iter()
        .filter(|n| below.as_ref().is_none_or(|b| n.path.starts_with(b)))
        .map(|n| LsEntry {
            id: id.clone(),
            path: n.path.display(),
            kind: n.kind,
            size: n.size,
            mode: n.mode,
            mtime: time_of(n.mtime_ns),
            target: n.target.map(|t| t.display()),
        })
        .collect();
    if let (Some(b), true) = (&below, entries.is_empty()) {
        return Err(Error::Invalid(format!(
            "{:?} is not in snapshot {}; paths start with the backed-up directory's name \
             (`tvault ls {}` lists them)",
            b.display(),
            opts.snapshot.short(),
            opts.snapshot.short()
        )));
    }
    Ok(entries)
}

/// Permission bits as `ls -l` shows them, after a kind letter: `drwxr-xr-x`.
pub fn mode_string(kind: NodeKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::File => '-',
    });
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (who, (bit, set, unset)) in special.iter().enumerate() {
        let shift = 6 - who * 3;
        let rwx = (mode >> shift) & 7;
        s.push(if rwx & 4 != 0 { 'r' } else { '-' });
        s.push(if rwx & 2 != 0 { 'w' } else { '-' });
        let x = rwx & 1 != 0;
        s.push(match (mode & bit != 0, x) {
            (true, true) => *set,
            (true, false) => *unset,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(NodeKind::File, 0o644), "-rw-r--r--");
        assert_eq!(mode_string(NodeKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(NodeKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(NodeKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(NodeKind::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn times_before_the_epoch_keep_their_nanoseconds() {
        assert_eq!(time_of(-1).timestamp_nanos_opt(), Some(-1));
        assert_eq!(time_of(1_500_000_000_123).timestamp_subsec_nanos(), 123);
    }
}
