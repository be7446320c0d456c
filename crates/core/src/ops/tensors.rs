//! Tensors of a file as a snapshot stored it: its layout is parsed again from the stored bytes
//! (the header is in the file's first chunks), and each tensor's fixed blocks are matched to
//! the file's chunks. Backup uses it to find the base of each tensor block in the parent
//! snapshot (the same tensor's block at the same index); `show --tensors` to say which tensors
//! changed.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::format::{self, Source, TensorInfo};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::Node;

/// A stored file read through the repository, a chunk at a time (the last one kept).
pub(crate) struct StoredFile<'a> {
    repo: &'a Repository,
    /// Each chunk's offset in the file, its length and ID.
    chunks: Vec<(u64, u64, Id)>,
    len: u64,
    last: Mutex<Option<(usize, Vec<u8>)>>,
}

impl<'a> StoredFile<'a> {
    /// `None` when a chunk is in no index (nothing can be read then).
    pub(crate) fn new(repo: &'a Repository, node: &Node) -> Option<StoredFile<'a>> {
        let mut chunks = Vec::with_capacity(node.chunks.len());
        let mut at = 0u64;
        for id in &node.chunks {
            let len = repo.index().get(id)?.plain_len as u64;
            chunks.push((at, len, *id));
            at += len;
        }
        Some(StoredFile {
            repo,
            chunks,
            len: at,
            last: Mutex::new(None),
        })
    }

    /// The chunk that starts exactly at `offset` and is `len` bytes long.
    fn chunk_at(&self, offset: u64, len: u64) -> Option<Id> {
        let i = self.chunks.partition_point(|c| c.0 < offset);
        self.chunks
            .get(i)
            .filter(|c| c.0 == offset && c.1 == len)
            .map(|c| c.2)
    }
}

impl Source for StoredFile<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let io = |e: crate::error::Error| std::io::Error::other(e.to_string());
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        let mut at = offset;
        let mut last = self.last.lock().expect("lock");
        while at < end {
            let i = self.chunks.partition_point(|c| c.0 + c.1 <= at);
            let (start, len, id) = self.chunks[i];
            if last.as_ref().map(|l| l.0) != Some(i) {
                *last = Some((i, self.repo.read_blob(&id).map_err(io)?));
            }
            let plain = &last.as_ref().expect("just read").1;
            let from = (at - start) as usize;
            let n = ((start + len).min(end) - at) as usize;
            let dst = (at - offset) as usize;
            buf[dst..dst + n].copy_from_slice(&plain[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }
}

/// One tensor of a stored file: its description, where it starts, and its blocks' chunks.
pub(crate) struct StoredTensor {
    pub info: TensorInfo,
    pub start: u64,
    pub end: u64,
    /// The chunk of each `block`-byte block from the tensor's start (`None`: cut otherwise).
    pub blocks: Vec<Option<Id>>,
}

/// The tensors of a file as stored in the repository, with their block chunks; empty when the
/// file is not a model format (or cannot be read).
pub(crate) fn stored_tensors(repo: &Repository, node: &Node, block: u32) -> Vec<StoredTensor> {
    let Some(file) = StoredFile::new(repo, node) else {
        return Vec::new();
    };
    let layout = format::layout(&file);
    let block = block as u64;
    layout
        .regions
        .iter()
        .filter_map(|r| {
            let info = r.tensor()?.clone();
            let blocks = (r.start..r.end)
                .step_by(block as usize)
                .map(|at| file.chunk_at(at, block.min(r.end - at)))
                .collect();
            Some(StoredTensor {
                info,
                start: r.start,
                end: r.end,
                blocks,
            })
        })
        .collect()
}

/// The base for each tensor block of a new file: by the block's file offset, the chunk of the
/// same block of the same tensor (name, dtype, shape) in the parent's version of the file.
pub(crate) type Bases = HashMap<u64, Id>;

/// Pairs the new file's tensor `regions` with the parent file's stored tensors `stored` (see
/// [`stored_tensors`]).
pub(crate) fn bases_for(stored: &[StoredTensor], regions: &[format::Region], block: u32) -> Bases {
    let mut bases = Bases::new();
    let old: HashMap<&str, &StoredTensor> =
        stored.iter().map(|t| (t.info.name.as_str(), t)).collect();
    for r in regions {
        let Some(info) = r.tensor() else { continue };
        let Some(p) = old.get(info.name.as_str()) else {
            continue;
        };
        if p.info != *info || p.end - p.start != r.end - r.start {
            continue;
        }
        for (k, base) in p.blocks.iter().enumerate() {
            if let Some(base) = base {
                bases.insert(r.start + k as u64 * block as u64, *base);
            }
        }
    }
    bases
}

/// What happened to one tensor between a file's earlier version and this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TensorChange {
    /// Same name, dtype, shape and bytes.
    Unchanged,
    /// Same name; other bytes, dtype or shape.
    Changed,
    /// No tensor of that name in the earlier version (or there is no earlier version).
    Added,
}

/// One tensor of the newer version, where its bytes are, and what happened to it.
pub(crate) struct TensorDelta {
    pub info: TensorInfo,
    pub start: u64,
    pub end: u64,
    pub change: TensorChange,
}

/// Every tensor of `new` (small ones too) against `old`, and the names only `old` has. The one
/// classification behind `diff` and `show --tensors`, so they always agree. A tensor covered by
/// the same chunks at the same offsets in both versions is unchanged without reading it;
/// otherwise both versions of just that tensor are read and compared. `None` when `new` is not
/// a model file whose header parses; an `old` that is not one counts as absent.
pub(crate) fn tensor_changes(
    repo: &Repository,
    old: Option<&Node>,
    new: &Node,
) -> crate::error::Result<Option<(Vec<TensorDelta>, Vec<String>)>> {
    use super::content::Content;
    // `Content` says which chunk is missing; `StoredFile` keeps the last chunk it decoded, which
    // header parsers that read a few bytes at a time need.
    let cn = Content::of_file(repo, new)?;
    let parsed = |node: &Node| StoredFile::new(repo, node).and_then(|f| format::tensors(&f));
    let Some((_, regions)) = parsed(new) else {
        return Ok(None);
    };
    let co = match old {
        Some(o) => Some(Content::of_file(repo, o)?),
        None => None,
    };
    let before: Vec<format::Region> = old.and_then(parsed).map(|(_, r)| r).unwrap_or_default();
    let by_name: HashMap<&str, &format::Region> = before
        .iter()
        .filter_map(|r| Some((r.tensor()?.name.as_str(), r)))
        .collect();
    let mut out = Vec::with_capacity(regions.len());
    for r in regions {
        let info = r.tensor().expect("tensors() returns tensors").clone();
        let change = match (by_name.get(info.name.as_str()), &co) {
            (Some(o), Some(co)) => {
                let same = o.tensor() == Some(&info)
                    && o.len() == r.len()
                    && (co.covering(o.start, o.end) == cn.covering(r.start, r.end)
                        || co.read_range(o.start, o.end)? == cn.read_range(r.start, r.end)?);
                if same {
                    TensorChange::Unchanged
                } else {
                    TensorChange::Changed
                }
            }
            _ => TensorChange::Added,
        };
        out.push(TensorDelta {
            info,
            start: r.start,
            end: r.end,
            change,
        });
    }
    let now: std::collections::HashSet<&str> = out.iter().map(|t| t.info.name.as_str()).collect();
    let removed = by_name
        .keys()
        .filter(|n| !now.contains(*n))
        .map(|n| n.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(Some((out, removed)))
}
