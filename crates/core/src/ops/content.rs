//! A file's content as stored in the repository: read a byte range, or stream it all, fetching
//! (and re-hashing) only the chunks needed. Chunk lengths come from the index, so locating a
//! range reads nothing. [`Content::of_file`] is how every reader of a file (restore, restore
//! `--tar`, verify) checks that the chunks hold exactly the size the tree records.

use std::io::{self, Read};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::tree::Node;

pub struct Content<'a> {
    repo: &'a Repository,
    chunks: &'a [Id],
    /// `starts[i]` is where chunk `i` begins; the last element is the file's length.
    starts: Vec<u64>,
}

impl<'a> Content<'a> {
    pub fn new(repo: &'a Repository, chunks: &'a [Id]) -> Result<Content<'a>> {
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut at = 0u64;
        for id in chunks {
            starts.push(at);
            let loc = repo
                .index()
                .get(id)
                .ok_or_else(|| Error::MissingChunk { id: id.to_hex() })?;
            at += loc.plain_len as u64;
        }
        starts.push(at);
        Ok(Content {
            repo,
            chunks,
            starts,
        })
    }

    /// A file's content, checked against the tree: every chunk is indexed and their plain
    /// lengths add up to `node.size`. A mismatch is a corrupt tree entry, named by its path.
    pub fn of_file(repo: &'a Repository, node: &'a Node) -> Result<Content<'a>> {
        let content = Content::new(repo, &node.chunks)?;
        if content.len() != node.size {
            return Err(size_mismatch(node, content.len()));
        }
        Ok(content)
    }

    /// Where each chunk starts in the file.
    pub fn chunk_starts(&self) -> &[u64] {
        &self.starts[..self.chunks.len()]
    }

    pub fn len(&self) -> u64 {
        *self.starts.last().expect("starts has a final length")
    }

    /// The chunks covering `start..end`, and the offset of `start` in the first of them.
    pub fn covering(&self, start: u64, end: u64) -> (&'a [Id], u64) {
        if start >= end {
            return (&[], 0);
        }
        let first = self.starts.partition_point(|&s| s <= start) - 1;
        let last = self.starts.partition_point(|&s| s < end) - 1;
        (&self.chunks[first..=last], start - self.starts[first])
    }

    /// The chunks that lie entirely within `start..end`.
    pub fn within(&self, start: u64, end: u64) -> &'a [Id] {
        let first = self.starts.partition_point(|&s| s < start);
        let last = self.starts.partition_point(|&s| s <= end);
        // Chunk i spans starts[i]..starts[i + 1]; it is within when both ends are.
        let (first, last) = (first, last.saturating_sub(1));
        if first >= last || first >= self.chunks.len() {
            return &[];
        }
        &self.chunks[first..last]
    }

    /// Bytes `start..end` (clamped to the file).
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        let end = end.min(self.len());
        let (chunks, skip) = self.covering(start, end);
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        let mut skip = skip as usize;
        for id in chunks {
            let plain = self.repo.read_blob(id)?;
            let want = (end - start) as usize - out.len();
            let take = (plain.len() - skip).min(want);
            out.extend_from_slice(&plain[skip..skip + take]);
            skip = 0;
        }
        Ok(out)
    }

    /// Streams the whole content, one chunk in memory at a time.
    pub fn reader(&self) -> ContentReader<'a> {
        ContentReader {
            repo: self.repo,
            chunks: self.chunks,
            next: 0,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

/// The error of a file whose chunks do not add up to its recorded size.
pub fn size_mismatch(node: &Node, chunk_bytes: u64) -> Error {
    Error::corrupt(
        format!("tree entry {}", node.path.display()),
        format!(
            "its chunks hold {chunk_bytes} bytes but its recorded size is {} (damaged tree)",
            node.size
        ),
    )
}

pub struct ContentReader<'a> {
    repo: &'a Repository,
    chunks: &'a [Id],
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(id) = self.chunks.get(self.next) else {
                return Ok(0);
            };
            self.buf = self.repo.read_blob(id).map_err(io::Error::other)?;
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
