//! The backup hot path for one file: read → chunk → hash → (if new) compress → pack.
//! Each block's chunks are hashed and compressed in parallel; memory is one block plus its
//! encoded chunks plus the open pack, whatever the file's size.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rayon::prelude::*;

use crate::chunker::{StreamChunker, DEFAULT_BLOCK};
use crate::codec;
use crate::error::Result;
use crate::id::Id;
use crate::pack::BlobKind;
use crate::progress::Progress;
use crate::repo::BlobWriter;

pub(crate) enum ReadOutcome {
    /// The content is stored; `meta` is the file's state before and after the read.
    Stored {
        chunks: Vec<Id>,
        meta: Metadata,
        bytes_read: u64,
    },
    /// Opening or reading failed; the message names the cause.
    Unreadable(String),
    /// The file changed while it was read, so what was read may be torn.
    Changed { bytes_read: u64 },
}

/// The fields that change when a file's content is rewritten.
fn same_state(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && a.ctime() == b.ctime()
        && a.ctime_nsec() == b.ctime_nsec()
        && a.ino() == b.ino()
}

/// Reads and stores one file. `Err` only for repository failures (which end the backup);
/// problems with the file itself come back as an outcome.
pub(crate) fn store_file(
    path: &Path,
    writer: &mut BlobWriter,
    progress: &dyn Progress,
) -> Result<ReadOutcome> {
    let unreadable =
        |e: std::io::Error| Ok(ReadOutcome::Unreadable(format!("{}: {e}", path.display())));
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return unreadable(e),
    };
    let before = match file.metadata() {
        Ok(m) => m,
        Err(e) => return unreadable(e),
    };
    let config = writer.config().clone();
    let mut chunker = StreamChunker::new(&file, config.chunker, DEFAULT_BLOCK);
    let mut chunks = Vec::new();
    loop {
        let (block, ranges) = match chunker.next_batch() {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => return unreadable(e),
        };
        let w: &BlobWriter = writer;
        let encoded: Vec<_> = ranges
            .par_iter()
            .map(|r| {
                let plain = &block[r.clone()];
                let id = Id::of(plain);
                let enc = (!w.contains(&id)).then(|| codec::encode(plain, config.zstd_level));
                (id, plain.len(), enc)
            })
            .collect();
        let mut n = 0;
        for (id, plain_len, enc) in encoded {
            if let Some((encoding, stored)) = enc {
                writer.add(id, BlobKind::Data, encoding, &stored, plain_len)?;
            }
            chunks.push(id);
            n += plain_len as u64;
        }
        progress.bytes(n);
    }
    let bytes_read = chunker.bytes_read();
    let after = match file.metadata() {
        Ok(m) => m,
        Err(e) => return unreadable(e),
    };
    if !same_state(&before, &after) || bytes_read != before.len() {
        return Ok(ReadOutcome::Changed { bytes_read });
    }
    Ok(ReadOutcome::Stored {
        chunks,
        meta: before,
        bytes_read,
    })
}
