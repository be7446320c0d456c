//! `find PATTERN`: every entry of every snapshot (those the `--tag/--host/--path` filter
//! selects) whose path matches a glob. As with `--exclude`, a pattern without `/` matches an
//! entry's name at any depth (`*.safetensors`); one with `/` matches the whole path as stored
//! (`ckpt/step-*/model.safetensors`; a leading `/` is ignored). Only trees are read; a tree
//! shared by several snapshots is read once.

use std::collections::hash_map::{Entry, HashMap};
use std::os::unix::ffi::OsStrExt;

use chrono::{DateTime, Utc};
use globset::GlobMatcher;
use serde::Serialize;

use super::select::{self, SnapshotFilter};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

#[derive(Clone, Debug, Default)]
pub struct FindOptions {
    pub pattern: String,
    pub filter: SnapshotFilter,
}

/// One match, as `find --json` prints it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Found {
    /// The snapshot's ID.
    pub id: String,
    /// The snapshot's time.
    pub time: DateTime<Utc>,
    pub path: String,
    pub kind: NodeKind,
    pub size: u64,
}

/// A compiled pattern: against the name or against the whole stored path.
struct Pattern {
    glob: GlobMatcher,
    whole_path: bool,
}

impl Pattern {
    fn new(text: &str) -> Result<Pattern> {
        let whole_path = text.contains('/');
        let glob = globset::GlobBuilder::new(text.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Invalid(format!("invalid pattern {text:?}: {e}")))?;
        Ok(Pattern {
            glob: glob.compile_matcher(),
            whole_path,
        })
    }

    fn matches(&self, node: &Node) -> bool {
        let path = &node.path.0;
        let subject = if self.whole_path {
            &path[..]
        } else {
            path.rsplit(|&b| b == b'/').next().unwrap_or(path)
        };
        self.glob.is_match(std::ffi::OsStr::from_bytes(subject))
    }
}

/// Matches in snapshot order (oldest first), each snapshot's in path order.
pub fn run(repo: &mut Repository, opts: &FindOptions) -> Result<Vec<Found>> {
    let pattern = Pattern::new(&opts.pattern)?;
    let _lock = repo.lock(false, "find")?;
    let repo: &Repository = repo;
    let mut by_tree: HashMap<crate::id::Id, Vec<(String, NodeKind, u64)>> = HashMap::new();
    let mut found = Vec::new();
    for (id, snap) in select::matching(repo, &opts.filter)? {
        let hits = match by_tree.entry(snap.tree) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                repo.load_tree(&snap.tree)?
                    .nodes
                    .iter()
                    .filter(|n| pattern.matches(n))
                    .map(|n| (n.path.display(), n.kind, n.size))
                    .collect(),
            ),
        };
        for (path, kind, size) in hits.iter() {
            found.push(Found {
                id: id.to_hex(),
                time: snap.time,
                path: path.clone(),
                kind: *kind,
                size: *size,
            });
        }
    }
    Ok(found)
}
