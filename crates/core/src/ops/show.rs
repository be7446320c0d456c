//! `show ID [--tensors]`: how a snapshot's bytes are stored, per file and (with `--tensors`)
//! per tensor of model files: unchanged since the parent snapshot (its chunks were already
//! there), stored as XOR deltas against the parent, or stored whole (byte planes, zstd, raw).
//! Only the index and the files' headers are read, never the tensors themselves.

use serde::Serialize;

use std::collections::HashMap;

use super::content::Content;
use super::tensors::{tensor_changes, TensorChange};
use crate::codec::Encoding;
use crate::error::Result;
use crate::id::Id;
use crate::index::IdSet;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

/// Plain bytes by how they are stored, and the stored bytes of each kind (`*_stored`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Storage {
    /// In chunks the parent snapshot already had.
    pub unchanged: u64,
    pub delta: u64,
    pub delta_stored: u64,
    pub byte_planes: u64,
    pub byte_planes_stored: u64,
    pub zstd: u64,
    pub zstd_stored: u64,
    pub raw: u64,
    /// Chunks no index lists (a damaged repository).
    pub missing: u64,
}

impl Storage {
    fn add(&self, other: &Storage) -> Storage {
        Storage {
            unchanged: self.unchanged + other.unchanged,
            delta: self.delta + other.delta,
            delta_stored: self.delta_stored + other.delta_stored,
            byte_planes: self.byte_planes + other.byte_planes,
            byte_planes_stored: self.byte_planes_stored + other.byte_planes_stored,
            zstd: self.zstd + other.zstd,
            zstd_stored: self.zstd_stored + other.zstd_stored,
            raw: self.raw + other.raw,
            missing: self.missing + other.missing,
        }
    }

    /// Stored bytes of what changed since the parent.
    pub fn stored(&self) -> u64 {
        self.delta_stored + self.byte_planes_stored + self.zstd_stored + self.raw
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TensorStorage {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub bytes: u64,
    /// `unchanged`, `delta` (every changed block stored as a delta), `new` (every block stored
    /// whole) or `changed` (some of each).
    pub status: &'static str,
    pub blocks: u64,
    pub blocks_changed: u64,
    pub storage: Storage,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileStorage {
    pub path: String,
    pub size: u64,
    pub storage: Storage,
    /// With `--tensors`, for model files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorStorage>>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ShowReport {
    /// The snapshot shown (JSON: also under its deprecated name `snapshot`).
    pub id: String,
    pub parent: Option<String>,
    pub files: Vec<FileStorage>,
    pub total: Storage,
}

pub fn run(repo: &mut Repository, snapshot: &str, tensors: bool) -> Result<ShowReport> {
    let id = repo.resolve_snapshot(snapshot)?;
    let _lock = repo.lock(false, "show")?;
    let repo: &Repository = repo;
    let snap = repo.load_snapshot(&id)?;
    let tree = repo.load_tree(&snap.tree)?;
    // The parent's chunks: what this snapshot did not have to store. A parent that is gone
    // (pruned) counts as empty.
    let mut before = IdSet::default();
    let mut parent_files = HashMap::new();
    if let Some(parent) = snap.parent {
        if let Ok(p) = repo.load_snapshot(&parent) {
            for node in repo.load_tree(&p.tree)?.nodes {
                before.extend(node.chunks.iter().copied());
                if node.kind == NodeKind::File {
                    parent_files.insert(node.path.clone(), node);
                }
            }
        }
    }
    let classify = |ids: &mut dyn Iterator<Item = &Id>| {
        let mut s = Storage::default();
        for id in ids {
            let Some(loc) = repo.index().get(id) else {
                s.missing += 1;
                continue;
            };
            let (plain, stored) = (loc.plain_len as u64, loc.stored_len as u64);
            if before.contains(id) {
                s.unchanged += plain;
                continue;
            }
            match loc.encoding {
                Encoding::Delta => {
                    (s.delta, s.delta_stored) = (s.delta + plain, s.delta_stored + stored)
                }
                Encoding::Planes => {
                    (s.byte_planes, s.byte_planes_stored) =
                        (s.byte_planes + plain, s.byte_planes_stored + stored)
                }
                Encoding::Zstd => {
                    (s.zstd, s.zstd_stored) = (s.zstd + plain, s.zstd_stored + stored)
                }
                Encoding::Raw => s.raw += plain,
            }
        }
        s
    };
    let mut report = ShowReport {
        id: id.to_hex(),
        parent: snap.parent.map(|p| p.to_hex()),
        files: Vec::new(),
        total: Storage::default(),
    };
    for node in tree.nodes.iter().filter(|n| n.kind == NodeKind::File) {
        let storage = classify(&mut node.chunks.iter());
        report.total = report.total.add(&storage);
        let tensors = if tensors {
            // No file at this path in the parent (a new folder per step): compare with the
            // parent's file of the same name, as backup looks for delta bases.
            let name = |p: &[u8]| p.rsplit(|b| *b == b'/').next().map(<[u8]>::to_vec);
            let earlier = parent_files.get(&node.path).or_else(|| {
                let mine = name(&node.path.0);
                let mut same: Vec<&Node> = parent_files
                    .values()
                    .filter(|p| name(&p.path.0) == mine)
                    .collect();
                // One answer whatever the map's order: the last path.
                same.sort_by(|a, b| a.path.0.cmp(&b.path.0));
                same.last().copied()
            });
            tensor_storage(repo, earlier, node, &classify, &before)
        } else {
            None
        };
        report.files.push(FileStorage {
            path: node.path.display(),
            size: node.size,
            storage,
            tensors,
        });
    }
    Ok(report)
}

/// Each tensor of `node` against the parent's version of the same file, with how its chunks
/// are stored. The change is the one `diff` reports (`tensors::tensor_changes`); storage counts
/// the chunks that lie within the tensor (a tensor smaller than a chunk shares it with its
/// neighbours and counts none). `None` for files that are not model files, or cannot be read.
fn tensor_storage(
    repo: &Repository,
    parent: Option<&Node>,
    node: &Node,
    classify: &dyn Fn(&mut dyn Iterator<Item = &Id>) -> Storage,
    before: &IdSet,
) -> Option<Vec<TensorStorage>> {
    let (tensors, _removed) = tensor_changes(repo, parent, node).ok()??;
    let content = Content::of_file(repo, node).ok()?;
    let list: Vec<TensorStorage> = tensors
        .into_iter()
        .map(|t| {
            let ids = content.within(t.start, t.end);
            let storage = classify(&mut ids.iter());
            let changed = ids.iter().filter(|c| !before.contains(c)).count() as u64;
            let whole = storage.byte_planes + storage.zstd + storage.raw;
            // A tensor new at this path may be one the parent holds elsewhere (a new folder
            // per step, a renamed or re-sharded file): said by how it is stored.
            let status = match t.change {
                TensorChange::Unchanged => "unchanged",
                TensorChange::Added if !ids.is_empty() && changed == 0 => "unchanged",
                TensorChange::Changed | TensorChange::Added if storage.delta > 0 && whole == 0 => {
                    "delta"
                }
                TensorChange::Added => "new",
                TensorChange::Changed => "changed",
            };
            TensorStorage {
                name: t.info.name,
                dtype: t.info.dtype,
                shape: t.info.shape,
                bytes: t.end - t.start,
                status,
                blocks: ids.len() as u64,
                blocks_changed: changed,
                storage,
            }
        })
        .collect();
    (!list.is_empty()).then_some(list)
}
