//! `dump ID PATH [--tensor NAME]`: one file of a snapshot to a writer (standard output), without
//! restoring the snapshot. Every chunk is re-hashed as it is read (the repository's read path
//! does it), and the chunks must add up to the size the tree records. With `--tensor`, the
//! file's safetensors or GGUF header is parsed from the stored bytes and only the chunks that
//! cover that tensor are read.

use std::io::Write;

use serde::Serialize;

use super::content::Content;
use super::ls::node_path;
use super::tensors::StoredFile;
use crate::error::{Error, Result};
use crate::format::{self, gguf, safetensors, Source};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub snapshot: Id,
    /// The file's path in the snapshot, as `ls` prints it.
    pub path: String,
    /// Write only this tensor's bytes (safetensors and GGUF files).
    pub tensor: Option<String>,
}

/// What was written.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DumpReport {
    pub id: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
    /// Where the bytes written start in the file (0 without `--tensor`).
    pub offset: u64,
    pub bytes: u64,
}

/// Where the dump goes, for messages ("standard output").
pub const OUTPUT: &str = "standard output";

pub fn run(repo: &mut Repository, opts: &DumpOptions, out: &mut dyn Write) -> Result<DumpReport> {
    let _lock = repo.lock(false, "dump")?;
    let repo: &Repository = repo;
    let tree = repo.load_tree(&repo.load_snapshot(&opts.snapshot)?.tree)?;
    let wanted = node_path(&opts.path);
    let short = opts.snapshot.short();
    let Some(node) = tree.nodes.iter().find(|n| n.path == wanted) else {
        return Err(Error::Invalid(format!(
            "{:?} is not in snapshot {short}; `tvault ls {short}` lists its paths",
            wanted.display()
        )));
    };
    let name = node.path.display();
    match node.kind {
        NodeKind::File => {}
        NodeKind::Dir => {
            return Err(Error::Invalid(format!(
                "{name:?} is a directory in snapshot {short}: dump writes one file; \
                 use `tvault restore {short} --include {name} --target DIR` (or `--tar -`)"
            )))
        }
        NodeKind::Symlink => {
            return Err(Error::Invalid(format!(
            "{name:?} is a symlink in snapshot {short} (to {:?}): dump writes a file's content; \
                 dump the file it points to",
            node.target
                .as_ref()
                .map(|t| t.display())
                .unwrap_or_default()
        )))
        }
    }
    let damaged = |e: Error| Error::Invalid(format!("cannot dump {name:?}: {e}"));
    // The chunks must make up exactly the file the tree describes (the check every reader
    // makes).
    let content = Content::of_file(repo, node).map_err(damaged)?;
    let (start, end) = match &opts.tensor {
        None => (0, node.size),
        Some(t) => tensor_range(repo, node, t).map_err(|why| {
            Error::Invalid(format!(
                "--tensor {t:?} of {name:?} in snapshot {short}: {why}"
            ))
        })?,
    };
    let bytes = copy_range(repo, &content, start, end, out).map_err(|e| match e {
        e @ Error::Io { .. } => e,
        e => damaged(e),
    })?;
    Ok(DumpReport {
        id: opts.snapshot.to_hex(),
        path: name,
        tensor: opts.tensor.clone(),
        offset: start,
        bytes,
    })
}

/// Writes bytes `start..end` of the content, a chunk at a time; only the chunks covering the
/// range are read. Write failures are `Error::Io` on [`OUTPUT`].
fn copy_range(
    repo: &Repository,
    content: &Content,
    start: u64,
    end: u64,
    out: &mut dyn Write,
) -> Result<u64> {
    let (chunks, mut skip) = content.covering(start, end);
    let mut left = end - start;
    for id in chunks {
        let plain = repo.read_blob(id)?;
        let from = (skip as usize).min(plain.len());
        let n = (plain.len() - from).min(left as usize);
        out.write_all(&plain[from..from + n])
            .map_err(|e| Error::io(OUTPUT, e))?;
        left -= n as u64;
        skip = 0;
    }
    out.flush().map_err(|e| Error::io(OUTPUT, e))?;
    if left != 0 {
        return Err(Error::Invalid(format!(
            "its chunks ended {left} bytes early (damaged index); run `tvault verify`"
        )));
    }
    Ok(end - start)
}

/// The byte range of tensor `name` in a stored safetensors or GGUF file, without GGUF's
/// alignment padding. Only the header's chunks are read.
fn tensor_range(
    repo: &Repository,
    node: &Node,
    name: &str,
) -> std::result::Result<(u64, u64), String> {
    let file = StoredFile::new(repo, node).ok_or("a chunk of the file is in no index")?;
    let tensors = tensors_of(&file)?;
    if let Some(t) = tensors.iter().find(|t| t.0 == name) {
        return Ok((t.1, t.2));
    }
    const SHOWN: usize = 8;
    let mut names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).take(SHOWN).collect();
    if tensors.len() > SHOWN {
        names.push("…");
    }
    Err(format!(
        "no such tensor; the file has {} tensor(s): {}",
        tensors.len(),
        names.join(", ")
    ))
}

/// (name, start, end) of every tensor of a safetensors or GGUF file.
fn tensors_of(src: &dyn Source) -> std::result::Result<Vec<(String, u64, u64)>, String> {
    let not_model = "not a safetensors or GGUF file (no tensors to pick from)";
    let mut magic = [0u8; 9];
    if src.len() < magic.len() as u64 {
        return Err(not_model.into());
    }
    src.read_at(&mut magic, 0).map_err(|e| e.to_string())?;
    if &magic[..4] == gguf::MAGIC {
        let regions = gguf::parse(src).map_err(|e| format!("its GGUF header: {e}"))?;
        return Ok(regions
            .into_iter()
            .filter_map(|r| {
                let t = r.tensor()?;
                let end = gguf::byte_size(t).map_or(r.end, |n| (r.start + n).min(r.end));
                Some((t.name.clone(), r.start, end))
            })
            .collect());
    }
    match safetensors::header_len(&magic, src.len()) {
        Some(n) if magic[8] == b'{' => {
            let json = format::read_vec(src, 8, n)?;
            let tensors = safetensors::parse(&json, src.len())
                .map_err(|e| format!("its safetensors header: {e}"))?;
            Ok(tensors
                .into_iter()
                .map(|t| (t.name, t.start, t.end))
                .collect())
        }
        _ => Err(not_model.into()),
    }
}
