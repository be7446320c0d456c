//! The backup hot path for one file: read → chunk → hash → (if new) compress → pack.
//!
//! A reader thread reads the file in large blocks while the previous block is processed; each
//! block is chunked with the gear-hash scan on every core, its chunks are hashed and compressed
//! in parallel (each thread reusing its zstd context and output buffers), and the results are
//! added to the pack in order, the full pack being stored in the background by `BlobWriter`.
//! Memory is a few blocks plus their encoded chunks plus two packs, whatever the file's size.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::chunker::{cut_spans, Cutter, Span};
use crate::codec::Encoding;
use crate::error::Result;
use crate::id::Id;
use crate::pack::BlobKind;
use crate::progress::Progress;
use crate::repo::{BlobWriter, PackSink};

use super::encode_block::{encode_block, tensor_of, DenseTensors, Encoded};
use super::tensors::Bases;

/// Finds the delta bases of a file's tensor blocks: given its regions and the tensor block
/// size, the base chunk of each block by its file offset (see `tensor_bases.rs`).
pub(crate) type FindBases<'f> = &'f dyn Fn(&[crate::format::Region], u32) -> Bases;

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

/// Bytes per read block: 16 chunks of the default average size, enough to keep both cores
/// busy between blocks while three blocks and two packs stay well under 200 MiB.
const BLOCK: usize = 8 * 1024 * 1024;

/// A block read by the reader thread: `buf[head..head + len]` is file content; the `head`
/// bytes before it are room for the unfinished last chunk of the previous block.
struct Block {
    buf: Vec<u8>,
    len: usize,
    eof: bool,
}

/// Reads `file` into blocks until its end or an error, reusing buffers sent back on `free`.
fn read_blocks<R: Read>(
    mut file: R,
    head: usize,
    block: usize,
    full: SyncSender<io::Result<Block>>,
    free: Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = free.try_recv().unwrap_or_else(|_| vec![0; head + block]);
        let mut len = 0;
        let mut eof = false;
        let result = loop {
            if len == block {
                break Ok(());
            }
            match file.read(&mut buf[head + len..]) {
                Ok(0) => {
                    eof = true;
                    break Ok(());
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let done = eof || result.is_err();
        if full.send(result.map(|()| Block { buf, len, eof })).is_err() || done {
            return;
        }
    }
}

/// Reads and stores one file. `Err` only for repository failures (which end the backup);
/// problems with the file itself come back as an outcome.
pub(crate) fn store_file(
    path: &Path,
    writer: &mut BlobWriter,
    progress: &dyn Progress,
    find_bases: FindBases,
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
    crate::repo::testing::pause("backup-opened");
    let (spans, bases) = spans_of(&file, before.len(), writer, path, progress, find_bases);
    let (chunks, bytes_read) = match store_stream(&file, &spans, &bases, writer, progress)? {
        Ok(stored) => stored,
        Err(e) => return unreadable(e),
    };
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

/// How a file is chunked: in a version-2 repository, its format's regions (a tensor in fixed
/// blocks from its start, the rest by content); otherwise (or for unknown formats) nothing,
/// which chunks the whole file by content. With them, the base of each tensor block that
/// `find_bases` finds.
fn spans_of(
    file: &File,
    len: u64,
    writer: &BlobWriter,
    path: &Path,
    progress: &dyn Progress,
    find_bases: FindBases,
) -> (Vec<Span>, Bases) {
    let Some(block) = writer.config().tensor_block else {
        return (Vec::new(), Bases::new());
    };
    let layout = crate::format::layout(&crate::format::FileSource { file, len });
    if let Some(w) = &layout.warning {
        progress.warn(&format!("{}: {w}", path.display()));
    }
    let bases = find_bases(&layout.regions, block);
    (spans(&layout.regions, block), bases)
}

/// How a file whose layout is `regions` is cut: its tensors in `block`-byte blocks from their
/// start (split into byte planes by their float width), the rest by content.
pub(crate) fn spans(regions: &[crate::format::Region], block: u32) -> Vec<Span> {
    regions
        .iter()
        .map(|r| {
            let tensor = r.tensor();
            Span {
                start: r.start,
                end: r.end,
                block: if tensor.is_some() { block } else { 0 },
                width: tensor.map_or(0, |t| t.float_width()),
            }
        })
        .collect()
}

/// A block whose new chunks are decided (claimed) and wait to be copied into the pack while
/// the next block encodes; it keeps its buffer, which also holds the next block's first bytes.
struct Pending {
    buf: Vec<u8>,
    /// Where the block's data starts in `buf` (chunk ranges are relative to it).
    start: usize,
    /// The unfinished last chunk, carried into the next block.
    tail: std::ops::Range<usize>,
    /// The chunks to store (claimed, not yet in the pack).
    new: Vec<Encoded>,
}

impl Pending {
    /// Copies the claimed chunks into the pack (which stores each full pack).
    fn store(&self, sink: &mut PackSink) -> Result<()> {
        for e in &self.new {
            let plain = &self.buf[self.start + e.range.start..self.start + e.range.end];
            let encoding = e.encoding.expect("only encoded chunks are pending");
            sink.add(
                e.id,
                BlobKind::Data,
                encoding,
                stored_bytes(encoding, plain, &e.out),
                plain.len(),
            )?;
        }
        Ok(())
    }
}

fn stored_bytes<'a>(encoding: Encoding, plain: &'a [u8], out: &'a [u8]) -> &'a [u8] {
    match encoding {
        Encoding::Raw => plain,
        Encoding::Zstd | Encoding::Planes | Encoding::Delta => out,
    }
}

/// Stores everything `reader` yields, chunked along `spans` (see [`cut_spans`]; empty: all by
/// content): its chunk IDs and length. The outer `Err` is a repository failure, the inner one
/// a failure to read the stream.
///
/// Three stages overlap: the reader thread fills block N+2 while block N+1's chunks are hashed
/// and encoded on the pool and block N's new chunks are copied into the pack (whose flush may
/// wait for a pack being stored). Which chunks are new is decided serially between blocks, so
/// a chunk repeated in the next block is seen as stored.
pub(crate) fn store_stream<R: Read + Send>(
    reader: R,
    spans: &[Span],
    bases: &Bases,
    writer: &mut BlobWriter,
    progress: &dyn Progress,
) -> Result<io::Result<(Vec<Id>, u64)>> {
    let config = writer.config().clone();
    let cutter = Cutter::new(&config.chunker);
    let head = (config
        .chunker
        .max_size
        .max(config.tensor_block.unwrap_or(0))) as usize;
    let planes = config.model_aware();
    let format = writer.delta_format();
    // Tensors of this file whose XOR with their base came out dense while dense deltas are
    // off: their other blocks are stored whole without reading a base (full training changes
    // every value; reading and XORing the base only to refuse it halved a step's speed).
    let dense_tensors = DenseTensors::default();
    // File offset of the first byte of the data being cut.
    let mut base = 0u64;
    let mut chunks = Vec::new();
    let mut bytes_read = 0u64;
    let read = std::thread::scope(|scope| -> Result<io::Result<()>> {
        // Rendezvous channels: the reader fills one block ahead, and spare buffers wait in
        // `free`, so at most four blocks exist at once (reading, encoding, being stored, spare).
        let (full_tx, full_rx) = sync_channel(0);
        let (free_tx, free_rx) = sync_channel(1);
        scope.spawn(move || read_blocks(reader, head, BLOCK, full_tx, free_rx));
        let mut prev: Option<Pending> = None;
        let mut spare: Vec<Vec<u8>> = Vec::new();
        // The reader stops on its own at the end or an error; dropping `full_rx` on an early
        // return ends it too.
        for block in full_rx.iter() {
            let Block { mut buf, len, eof } = match block {
                Ok(b) => b,
                Err(e) => return Ok(Err(e)),
            };
            bytes_read += len as u64;
            let mut start = head;
            if let Some(p) = &prev {
                start -= p.tail.len();
                buf[start..head].copy_from_slice(&p.buf[p.tail.clone()]);
            }
            let data = &buf[start..head + len];
            let data_at = base;
            let (ranges, tail) = cut_spans(&cutter, spans, data, base, eof);
            base += tail as u64;
            let mut encoded: Vec<Encoded> = ranges
                .into_iter()
                .map(|(range, width)| Encoded {
                    id: Id([0; 32]),
                    base: bases.get(&(data_at + range.start as u64)).copied(),
                    tensor: tensor_of(spans, data_at + range.start as u64),
                    range,
                    width: if planes { width } else { 0 },
                    encoding: None,
                    out: spare.pop().unwrap_or_default(),
                    first_of_tensor: false,
                })
                .collect();
            let (lookup, sink) = writer.split();
            let mut encode = || encode_block(&lookup, data, &mut encoded, format, &dense_tensors);
            match &prev {
                Some(p) => rayon::join(encode, || p.store(sink)).1?,
                None => encode(),
            }
            if let Some(p) = prev.take() {
                spare.extend(p.new.into_iter().map(|e| e.out));
                let _ = free_tx.try_send(p.buf);
            }
            // Decide, in order, which chunks this block adds.
            let mut new = Vec::new();
            let mut n = 0;
            for e in encoded {
                let plain_len = e.range.len();
                chunks.push(e.id);
                n += plain_len as u64;
                let claimed = match e.encoding {
                    Some(enc) => {
                        let stored = stored_bytes(enc, &data[e.range.clone()], &e.out);
                        writer.claim(e.id, enc, stored.len(), plain_len)
                    }
                    None => {
                        writer.stored_by.deduplicated += plain_len as u64;
                        false
                    }
                };
                if claimed {
                    new.push(e);
                } else {
                    spare.push(e.out);
                }
            }
            progress.bytes(n);
            prev = Some(Pending {
                buf,
                start,
                tail: start + tail..head + len,
                new,
            });
        }
        if let Some(p) = prev {
            p.store(writer.split().1)?;
        }
        Ok(Ok(()))
    })?;
    Ok(read.map(|()| (chunks, bytes_read)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codec;
    use crate::progress::NoProgress;
    use crate::repo::{MemBackend, Repository};

    /// A pattern repeated across many read blocks is stored once, even where a repeat's chunks
    /// are in the very next block while the previous block's are still on their way into the
    /// pack; and the chunks read back as the stream.
    #[test]
    fn repeats_in_the_next_block_are_stored_once_and_read_back_whole() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let pattern: Vec<u8> = (0..(1 << 20) + 12_345)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let stream: Vec<u8> = pattern.repeat(40); // ~40 MiB: five read blocks
        let mut repo =
            Repository::init_with(Arc::new(MemBackend::default()), "mem".into()).unwrap();
        let mut writer = BlobWriter::new(&repo);
        let (chunks, len) = store_stream(&stream[..], &[], &Bases::new(), &mut writer, &NoProgress)
            .unwrap()
            .unwrap();
        assert_eq!(len, stream.len() as u64);
        let dedup = writer.stored_by.deduplicated;
        let stored = writer.finish().unwrap();
        assert!(
            stored < 3 * pattern.len() as u64,
            "stored {stored} bytes of a {} byte pattern repeated 40 times",
            pattern.len()
        );
        assert!(dedup > 35 * pattern.len() as u64, "deduplicated {dedup}");
        repo.load_index().unwrap();
        let mut back = Vec::new();
        for id in &chunks {
            back.extend_from_slice(&repo.read_blob(id).unwrap());
        }
        assert!(
            back == stream,
            "the chunks read back differ from the stream"
        );
    }

    /// In a series where every value changes (dense XORs), each dense delta is based directly
    /// on a keyframe, so reading any chunk costs at most one dense decode beyond its keyframe;
    /// and every delta still decodes.
    #[test]
    fn dense_deltas_sit_directly_on_keyframes() {
        use crate::ops::backup::{self, BackupOptions};
        let src = tempfile::tempdir().unwrap();
        let dir = src.path().join("ckpt");
        let backend = Arc::new(MemBackend::default());
        let mut repo = Repository::init_with(backend, "mem".into()).unwrap();
        for step in 0..5 {
            let _ = std::fs::remove_dir_all(&dir);
            tvault_workload::generate(tvault_workload::Scenario::Fulltrain, &dir, 2 << 20, 3, step)
                .unwrap();
            let opts = BackupOptions {
                dense_deltas: true,
                ..BackupOptions::new(vec![dir.clone()])
            };
            backup::run(&mut repo, &opts, &NoProgress).unwrap();
        }
        repo.load_index().unwrap();
        let index = repo.index();
        let (mut dense, mut on_deltas) = (0, 0);
        for (id, d) in index.deltas() {
            let loc = index.get(id).unwrap();
            let stored = repo
                .storage()
                .get_range(
                    &crate::repo::Handle::pack(&index.pack_id(loc)),
                    loc.offset as u64,
                    loc.stored_len as usize,
                )
                .unwrap();
            let encoded = repo.unseal(id, &index.pack_id(loc), &stored).unwrap();
            if !codec::delta_header(&encoded).unwrap().is_sparse() {
                dense += 1;
                on_deltas += usize::from(index.delta(&d.base).is_some());
            }
            repo.read_blob(id).unwrap();
        }
        assert!(dense > 10, "the series should store dense deltas ({dense})");
        assert_eq!(on_deltas, 0, "dense deltas on other deltas, of {dense}");
    }
}
