//! `diff ID1 ID2`: files added, removed and changed between two snapshots, and for changed
//! safetensors checkpoints, which tensors changed. A tensor whose bytes are covered by the same
//! chunks at the same offsets in both versions is unchanged without reading anything; otherwise
//! both versions of just that tensor are read and compared.

use std::collections::BTreeMap;

use serde::Serialize;

use super::content::Content;
use crate::error::Result;
use crate::format::safetensors;
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
    /// For safetensors files whose headers both parse.
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

/// Tensors of a safetensors file, or `None` when it is not one (or its header is damaged).
fn tensors_of(c: &Content) -> Result<Option<Vec<safetensors::Tensor>>> {
    if c.len() < 8 {
        return Ok(None);
    }
    let Some(n) = safetensors::header_len(&c.read_range(0, 8)?, c.len()) else {
        return Ok(None);
    };
    Ok(safetensors::parse(&c.read_range(8, 8 + n)?, c.len()).ok())
}

fn tensor_diff(repo: &Repository, old: &Node, new: &Node) -> Result<Option<TensorDiff>> {
    let (co, cn) = (
        Content::new(repo, &old.chunks)?,
        Content::new(repo, &new.chunks)?,
    );
    let (Some(to), Some(tn)) = (tensors_of(&co)?, tensors_of(&cn)?) else {
        return Ok(None);
    };
    let before: BTreeMap<&str, &safetensors::Tensor> =
        to.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut diff = TensorDiff::default();
    for t in &tn {
        let Some(o) = before.get(t.name.as_str()) else {
            diff.added.push(t.name.clone());
            continue;
        };
        let same_place = co.covering(o.start, o.end) == cn.covering(t.start, t.end);
        let same = o.dtype == t.dtype
            && o.shape == t.shape
            && (same_place || co.read_range(o.start, o.end)? == cn.read_range(t.start, t.end)?);
        if same {
            diff.unchanged += 1;
        } else {
            diff.changed.push(t.name.clone());
        }
    }
    let after: BTreeMap<&str, ()> = tn.iter().map(|t| (t.name.as_str(), ())).collect();
    diff.removed = to
        .iter()
        .filter(|t| !after.contains_key(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect();
    Ok(Some(diff))
}
