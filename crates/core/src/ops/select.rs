//! Choosing snapshots: the `--tag/--host/--path` filter that `snapshots` lists by, and the
//! `latest` name every command that takes a snapshot ID accepts (the newest *complete* snapshot
//! that matches the filter).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// The word that names the newest complete snapshot matching the filter.
pub const LATEST: &str = "latest";

/// Which snapshots a command looks at. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Any of these tags.
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// A backed-up path, resolved the way backup stores it.
    pub path: Option<String>,
}

impl SnapshotFilter {
    /// Paths are stored resolved; a path that exists here is resolved the same way.
    pub fn new(tags: Vec<String>, host: Option<String>, path: Option<PathBuf>) -> SnapshotFilter {
        let path = path.map(|p| std::fs::canonicalize(&p).unwrap_or(p).display().to_string());
        SnapshotFilter { tags, host, path }
    }

    pub fn is_empty(&self) -> bool {
        *self == SnapshotFilter::default()
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.tags.is_empty() || s.tags.iter().any(|t| self.tags.contains(t)))
            && self.host.as_ref().is_none_or(|h| &s.host == h)
            && self.path.as_ref().is_none_or(|p| s.paths.contains(p))
    }

    /// The filter as the options that gave it, for messages.
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.tags.iter().map(|t| format!("--tag {t}")).collect();
        parts.extend(self.host.iter().map(|h| format!("--host {h}")));
        parts.extend(self.path.iter().map(|p| format!("--path {p}")));
        parts.join(" ")
    }
}

/// The repository's snapshots that match `filter`, oldest first.
pub fn matching(repo: &Repository, filter: &SnapshotFilter) -> Result<Vec<(Id, Snapshot)>> {
    Ok(repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| filter.matches(s))
        .collect())
}

/// The snapshot `latest` resolved to (part of the JSON reports of commands given `latest`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Latest {
    pub id: String,
    pub short_id: String,
    pub time: DateTime<Utc>,
    pub host: String,
    pub paths: Vec<String>,
}

impl std::fmt::Display for Latest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "latest = {} ({}, {}, {})",
            self.short_id,
            self.time.format("%Y-%m-%d %H:%M:%S UTC"),
            self.host,
            self.paths.join(" ")
        )
    }
}

/// A snapshot argument, resolved.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub id: Id,
    /// Set when the argument was `latest`.
    pub latest: Option<Latest>,
}

/// Resolves each snapshot argument: `latest` (see [`latest`]), a full ID or a unique prefix.
/// The filter selects `latest`; given with no `latest` argument it would be silently ignored,
/// so that is an error.
pub fn resolve(
    repo: &Repository,
    specs: &[&str],
    filter: &SnapshotFilter,
) -> Result<Vec<Resolved>> {
    if !filter.is_empty() && !specs.iter().any(|s| is_latest(s)) {
        let given = if specs.is_empty() {
            "give `latest` as the snapshot to use them".to_string()
        } else {
            format!("they do not apply to snapshot ID {}", specs.join(", "))
        };
        return Err(Error::Invalid(format!(
            "{} only choose which snapshot `latest` is; {given}",
            filter.describe()
        )));
    }
    specs
        .iter()
        .map(|spec| {
            if is_latest(spec) {
                let (id, latest) = self::latest(repo, filter)?;
                Ok(Resolved {
                    id,
                    latest: Some(latest),
                })
            } else {
                Ok(Resolved {
                    id: repo.resolve_snapshot(spec)?,
                    latest: None,
                })
            }
        })
        .collect()
}

fn is_latest(spec: &str) -> bool {
    spec.eq_ignore_ascii_case(LATEST)
}

/// The newest complete snapshot (its `problems` empty) that matches `filter`; ties in time go
/// to the greater ID, as everywhere snapshots are ordered.
pub fn latest(repo: &Repository, filter: &SnapshotFilter) -> Result<(Id, Latest)> {
    let all = repo.snapshots()?;
    let newest = all
        .iter()
        .rev()
        .find(|(_, s)| s.is_complete() && filter.matches(s));
    let Some((id, s)) = newest else {
        let what = if filter.is_empty() {
            String::new()
        } else {
            format!(" matching {}", filter.describe())
        };
        let incomplete = all
            .iter()
            .filter(|(_, s)| filter.matches(s) && !s.is_complete())
            .count();
        let note = if incomplete > 0 {
            format!(" ({incomplete} incomplete one(s) match, and `latest` never picks those)")
        } else {
            String::new()
        };
        return Err(Error::Invalid(format!(
            "`latest`: no complete snapshot{what}{note}; `tvault snapshots` lists them"
        )));
    };
    Ok((
        *id,
        Latest {
            id: id.to_hex(),
            short_id: id.short(),
            time: s.time,
            host: s.host.clone(),
            paths: s.paths.clone(),
        },
    ))
}
