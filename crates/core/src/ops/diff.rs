//! `diff ID1 ID2`: files added, removed and changed between two snapshots, and for changed
//! model files (safetensors, GGUF, PyTorch zip), which tensors changed, classified exactly as
//! `show --tensors` classifies them (`tensors::tensor_changes`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::tensors::{tensor_changes, TensorChange};
use crate::error::Result;
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub kind: NodeKind,
    pub size: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TensorDiff {
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Changed {
    pub path: String,
    pub size_before: u64,
    pub size_after: u64,
    /// Content differs (else only metadata: mode, mtime, or a symlink's target).
    pub content: bool,
    /// For model files whose header parses (safetensors, GGUF, PyTorch zip).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<TensorDiff>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DiffReport {
    pub from: String,
    pub to: String,
    pub added: Vec<FileEntry>,
    pub removed: Vec<FileEntry>,
    pub changed: Vec<Changed>,
    pub unchanged: u64,
}

pub fn run(repo: &mut Repository, from: &str, to: &str) -> Result<DiffReport> {
    let (a, b) = (repo.resolve_snapshot(from)?, repo.resolve_snapshot(to)?);
    let _lock = repo.lock(false, "diff")?;
    let repo: &Repository = repo;
    let tree = |id: &Id| -> Result<BTreeMap<_, _>> {
        let snap = repo.load_snapshot(id)?;
        Ok(repo
            .load_tree(&snap.tree)?
            .nodes
            .into_iter()
            .map(|n| (n.path.clone(), n))
            .collect())
    };
    let (old, new) = (tree(&a)?, tree(&b)?);
    let mut report = DiffReport {
        from: a.to_hex(),
        to: b.to_hex(),
        ..DiffReport::default()
    };
    let entry = |n: &Node| FileEntry {
        path: n.path.display(),
        kind: n.kind,
        size: n.size,
    };
    for (path, n) in &old {
        if !new.contains_key(path) {
            report.removed.push(entry(n));
        }
    }
    for (path, n) in &new {
        let Some(o) = old.get(path) else {
            report.added.push(entry(n));
            continue;
        };
        let content = o.kind != n.kind || o.chunks != n.chunks || o.target != n.target;
        let metadata = o.mode != n.mode || (n.kind != NodeKind::Dir && o.mtime_ns != n.mtime_ns);
        if !content && !metadata {
            report.unchanged += 1;
            continue;
        }
        let tensors = if content && o.kind == NodeKind::File && n.kind == NodeKind::File {
            tensor_diff(repo, o, n)?
        } else {
            None
        };
        report.changed.push(Changed {
            path: n.path.display(),
            size_before: o.size,
            size_after: n.size,
            content,
            tensors,
        });
    }
    Ok(report)
}

/// Which tensors changed, by the classification `show --tensors` uses too.
fn tensor_diff(repo: &Repository, old: &Node, new: &Node) -> Result<Option<TensorDiff>> {
    let Some((tensors, removed)) = tensor_changes(repo, Some(old), new)? else {
        return Ok(None);
    };
    let mut diff = TensorDiff {
        removed,
        ..TensorDiff::default()
    };
    for t in tensors {
        match t.change {
            TensorChange::Unchanged => diff.unchanged += 1,
            TensorChange::Changed => diff.changed.push(t.info.name),
            TensorChange::Added => diff.added.push(t.info.name),
        }
    }
    Ok(Some(diff))
}
