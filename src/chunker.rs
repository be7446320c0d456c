//! Content-defined chunking (FastCDC 2020, gear hash) over a stream, in bounded memory.
//!
//! The stream is read in large blocks; each block is cut into chunks and every complete chunk
//! is handed out as a batch, so callers can hash and compress a batch in parallel. A chunk cut
//! only by the end of a block is carried into the next block: FastCDC decides each cut from
//! the chunk's own start, so the result is exactly what chunking the whole stream at once gives.

use std::io::{self, Read};
use std::ops::Range;

use fastcdc::v2020::{FastCDC, Normalization};
use serde::{Deserialize, Serialize};

/// Chunking parameters, stored in the repository config (they decide every chunk ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// XORed into the gear table; 0 for unkeyed repositories (room for keyed chunking).
    pub gear_seed: u64,
}

impl Default for ChunkerParams {
    /// 128 KiB / 512 KiB / 2 MiB: see `repo/FORMAT.md` ("Chunking parameters") for why.
    fn default() -> Self {
        ChunkerParams {
            min_size: 128 * 1024,
            avg_size: 512 * 1024,
            max_size: 2 * 1024 * 1024,
            gear_seed: 0,
        }
    }
}

impl ChunkerParams {
    /// Checks the limits FastCDC accepts, so a bad config is an error and not a panic.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::*;
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size;
        if ok {
            Ok(())
        } else {
            Err(format!("unsupported chunker parameters {self:?}"))
        }
    }

    /// Cut points of `data` when it is the whole input.
    pub fn cut_all(&self, data: &[u8]) -> Vec<Range<usize>> {
        self.cdc(data)
            .map(|c| c.offset..c.offset + c.length)
            .collect()
    }

    fn cdc<'a>(&self, data: &'a [u8]) -> FastCDC<'a> {
        FastCDC::with_level_and_seed(
            data,
            self.min_size,
            self.avg_size,
            self.max_size,
            Normalization::Level1,
            self.gear_seed,
        )
    }
}

/// Reads a stream and hands out its chunks in batches.
pub struct StreamChunker<R> {
    reader: R,
    params: ChunkerParams,
    buf: Vec<u8>,
    /// `buf[start..filled]` is read but not yet handed out.
    start: usize,
    filled: usize,
    eof: bool,
    bytes_read: u64,
}

/// A block and the ranges of the complete chunks in it.
pub type Batch<'a> = (&'a [u8], Vec<Range<usize>>);

/// Default block: a batch of ~32 average chunks, enough to keep every core busy.
pub const DEFAULT_BLOCK: usize = 16 * 1024 * 1024;

impl<R: Read> StreamChunker<R> {
    pub fn new(reader: R, params: ChunkerParams, block: usize) -> StreamChunker<R> {
        let cap = block.max(2 * params.max_size as usize);
        StreamChunker {
            reader,
            params,
            buf: vec![0; cap],
            start: 0,
            filled: 0,
            eof: false,
            bytes_read: 0,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next batch: the block and the ranges of its complete chunks, in order.
    /// `None` at the end of the stream.
    pub fn next_batch(&mut self) -> io::Result<Option<Batch<'_>>> {
        self.buf.copy_within(self.start..self.filled, 0);
        self.filled -= self.start;
        self.start = 0;
        while !self.eof && self.filled < self.buf.len() {
            match self.reader.read(&mut self.buf[self.filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.filled += n;
                    self.bytes_read += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.filled == 0 {
            return Ok(None);
        }
        let data = &self.buf[..self.filled];
        let mut ranges = self.params.cut_all(data);
        if !self.eof {
            // The buffer holds at least two maximal chunks, so the first cut is a real one.
            let last = ranges.pop().expect("a full block has chunks");
            self.start = last.start;
        } else {
            self.start = self.filled;
        }
        Ok(Some((&self.buf[..self.filled], ranges)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
            gear_seed: 0,
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn stream_chunks(data: &[u8], params: ChunkerParams, block: usize) -> Vec<Vec<u8>> {
        let mut c = StreamChunker::new(data, params, block);
        let mut out = Vec::new();
        while let Some((buf, ranges)) = c.next_batch().unwrap() {
            out.extend(ranges.into_iter().map(|r| buf[r].to_vec()));
        }
        assert_eq!(c.bytes_read(), data.len() as u64);
        out
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_the_input_whatever_the_block(
            len in 0usize..50_000, seed in any::<u64>(), block in 1usize..9000,
        ) {
            let data = noise(len, seed);
            let chunks = stream_chunks(&data, small(), block);
            prop_assert_eq!(chunks.concat(), data.clone());
            for c in &chunks[..chunks.len().saturating_sub(1)] {
                prop_assert!(c.len() >= 64 && c.len() <= 1024);
            }
            // Streaming in blocks cuts exactly where chunking the whole input does.
            let whole: Vec<Vec<u8>> =
                small().cut_all(&data).into_iter().map(|r| data[r].to_vec()).collect();
            prop_assert_eq!(chunks, whole);
        }

        #[test]
        fn an_insertion_changes_only_the_chunks_near_it(
            seed in any::<u64>(), at in 0usize..40_000, insert in 1usize..300,
        ) {
            let data = noise(40_000, seed);
            let mut edited = data[..at].to_vec();
            edited.extend(noise(insert, seed ^ 0xabcdef));
            edited.extend_from_slice(&data[at..]);
            let before: std::collections::HashSet<Vec<u8>> =
                stream_chunks(&data, small(), 4096).into_iter().collect();
            let after = stream_chunks(&edited, small(), 4096);
            let new_bytes: usize =
                after.iter().filter(|c| !before.contains(*c)).map(|c| c.len()).sum();
            // Chunks wholly before the edit are untouched, and only a window around the edit is
            // new: resynchronising takes a few chunks (how many is chance; 6 max-size chunks
            // out of 40 KB leaves a wide margin yet fails if chunking does not resynchronise).
            let mut end = 0;
            for c in &after {
                end += c.len();
                // A cut at `end` is decided by hashing byte `end` too.
                if end >= at {
                    break;
                }
                prop_assert!(before.contains(c), "a chunk ending before the edit changed");
            }
            prop_assert!(new_bytes <= insert + 6 * 1024, "new bytes {}", new_bytes);
        }
    }

    #[test]
    fn chunking_is_deterministic_and_seed_dependent() {
        let data = noise(100_000, 7);
        assert_eq!(small().cut_all(&data), small().cut_all(&data));
        let seeded = ChunkerParams {
            gear_seed: 99,
            ..small()
        };
        assert_ne!(small().cut_all(&data), seeded.cut_all(&data));
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(ChunkerParams::default().validate().is_ok());
        let bad = ChunkerParams {
            min_size: 8,
            ..small()
        };
        assert!(bad.validate().is_err());
        let inverted = ChunkerParams {
            min_size: 2048,
            avg_size: 1024,
            max_size: 4096,
            gear_seed: 0,
        };
        assert!(inverted.validate().is_err());
    }
}
