//! Content-defined chunking (FastCDC 2020, gear hash) over a stream, in bounded memory.
//!
//! The stream is read in large blocks; each block is cut into chunks and every complete chunk
//! is handed out as a batch, so callers can hash and compress a batch in parallel. A chunk cut
//! only by the end of a block is carried into the next block: FastCDC decides each cut from
//! the chunk's own start, so the result is exactly what chunking the whole stream at once gives.
//!
//! [`Cutter`] finds exactly the cut points of the `fastcdc` crate's v2020 chunker (the tests
//! compare the two), but in two phases so that the expensive one runs on every core:
//!
//! 1. *Scan* (parallel, any split of the block): the gear hash at a position depends only on the
//!    64 bytes ending there once it is 64 bytes past where the chunk's hashing began, so each
//!    piece of the block is hashed independently (after 64 bytes of warm-up) and the rare
//!    positions whose hash passes both masks' common bits are kept as candidates.
//! 2. *Walk* (serial, cheap): from each chunk start, the first 63 hashed positions are hashed
//!    directly (their hash still lacks older bytes), then the candidates are checked in order
//!    against the mask that applies at their distance from the chunk start.

use std::io::{self, Read};
use std::ops::Range;

use fastcdc::v2020::{FastCDC, Normalization, MASKS};
use rayon::prelude::*;
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

#[cold]
#[inline(never)]
fn record(found: &mut Vec<Candidate>, at: usize, hash: u64) {
    found.push((at, hash));
}

/// Finds FastCDC cut points (exactly those of [`ChunkerParams::cut_all`]) with the gear-hash
/// scan spread over every core. See the module documentation for how.
pub struct Cutter {
    gear: Box<[u64; 256]>,
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    /// Bits every checked mask has: a position can only cut if its hash has none of them.
    filter: u64,
}

/// A position whose full-window hash passed the filter, and that hash.
type Candidate = (usize, u64);

/// Pieces of at least this many bytes are scanned as one task.
const SCAN_PIECE: usize = 1 << 20;
/// Independent hash chains interleaved in one scan loop, to hide the chain's latency.
const LANES: usize = 4;

impl Cutter {
    pub fn new(params: &ChunkerParams) -> Cutter {
        let bits = fastcdc::v2020::logarithm2(params.avg_size);
        let normalization = Normalization::Level1.bits();
        let mask_s = MASKS[(bits + normalization) as usize];
        let mask_l = MASKS[(bits - normalization) as usize];
        // fastcdc checks even positions as `(2h) & (mask << 1)`, which drops the mask's top bit.
        let filter = mask_s & mask_l & !(1 << 63);
        let (gear, _) = fastcdc::v2020::get_gear_with_seed(params.gear_seed);
        Cutter {
            gear,
            min: params.min_size as usize,
            avg: params.avg_size as usize,
            max: params.max_size as usize,
            mask_s,
            mask_l,
            filter,
        }
    }

    /// Cuts `data`, which begins at a chunk start. With `eof` every chunk is returned and the
    /// second value is `data.len()`; otherwise the last chunk (which only the end of `data` may
    /// have cut) is held back and the second value is where it starts.
    pub fn cut(&self, data: &[u8], eof: bool) -> (Vec<Range<usize>>, usize) {
        let candidates = self.scan(data);
        let mut ranges = Vec::with_capacity(data.len() / self.avg + 2);
        let mut start = 0;
        while start < data.len() {
            let end = self.cut_one(data, start, &candidates);
            ranges.push(start..end);
            start = end;
        }
        if eof {
            (ranges, data.len())
        } else {
            let tail = ranges.pop().map_or(data.len(), |r| r.start);
            (ranges, tail)
        }
    }

    /// Candidates of the whole of `data`, in order, scanned in parallel pieces.
    fn scan(&self, data: &[u8]) -> Vec<Candidate> {
        let pieces = data.len().div_ceil(SCAN_PIECE).max(1);
        let per = data.len().div_ceil(pieces);
        let found: Vec<Vec<Candidate>> = (0..pieces)
            .into_par_iter()
            .map(|i| {
                let from = (i * per).min(data.len());
                let to = ((i + 1) * per).min(data.len());
                let mut out = Vec::new();
                self.scan_range(data, from, to, &mut out);
                out
            })
            .collect();
        found.concat()
    }

    /// Candidates in `data[from..to]`, hashed with 64 bytes of history where there are.
    fn scan_range(&self, data: &[u8], from: usize, to: usize, out: &mut Vec<Candidate>) {
        let gear = &*self.gear;
        let filter = self.filter;
        let step = |h: u64, b: u8| (h << 1).wrapping_add(gear[b as usize]);
        let warm = |start: usize| {
            data[start.saturating_sub(64)..start]
                .iter()
                .fold(0, |h, &b| step(h, b))
        };
        let lane_len = (to - from) / LANES;
        let starts: [usize; LANES] = std::array::from_fn(|lane| from + lane * lane_len);
        let mut h: [u64; LANES] = std::array::from_fn(|lane| warm(starts[lane]));
        let lanes: [&[u8]; LANES] = std::array::from_fn(|lane| &data[starts[lane]..][..lane_len]);
        let mut found: [Vec<Candidate>; LANES] = Default::default();
        let (mut h0, mut h1, mut h2, mut h3) = (h[0], h[1], h[2], h[3]);
        // Four chains in registers; a hit (about one in 2^18 bytes) is recorded out of line so
        // that the loop keeps its pointers and hashes in registers.
        let bytes = lanes[0].iter().zip(lanes[1]).zip(lanes[2]).zip(lanes[3]);
        for (i, (((&b0, &b1), &b2), &b3)) in bytes.enumerate() {
            h0 = step(h0, b0);
            h1 = step(h1, b1);
            h2 = step(h2, b2);
            h3 = step(h3, b3);
            if h0 & filter == 0 {
                record(&mut found[0], starts[0] + i, h0);
            }
            if h1 & filter == 0 {
                record(&mut found[1], starts[1] + i, h1);
            }
            if h2 & filter == 0 {
                record(&mut found[2], starts[2] + i, h2);
            }
            if h3 & filter == 0 {
                record(&mut found[3], starts[3] + i, h3);
            }
        }
        h = [h0, h1, h2, h3];
        for lane in found {
            out.extend(lane);
        }
        // What the lanes left over at the end continues the last lane.
        let mut hash = h[LANES - 1];
        let rest = from + LANES * lane_len;
        for (at, &b) in (rest..to).zip(&data[rest..to]) {
            hash = step(hash, b);
            if hash & filter == 0 {
                out.push((at, hash));
            }
        }
    }

    /// The end of the chunk that starts at `start`, exactly as `fastcdc::v2020::cut_gear`
    /// finds it.
    fn cut_one(&self, data: &[u8], start: usize, candidates: &[Candidate]) -> usize {
        let left = data.len() - start;
        if left <= self.min {
            return data.len();
        }
        let mut center = self.avg;
        let mut remaining = left;
        if remaining > self.max {
            remaining = self.max;
        } else if remaining < center {
            center = remaining;
        }
        // Relative positions checked: [first, checked_end); mask_s below small_end.
        let first = self.min / 2 * 2;
        let small_end = center / 2 * 2;
        let checked_end = remaining / 2 * 2;
        let hits = |a: usize, h: u64| {
            let mut mask = if a < small_end {
                self.mask_s
            } else {
                self.mask_l
            };
            if a % 2 == 0 {
                mask &= !(1 << 63);
            }
            h & mask == 0
        };
        // The first 63 positions: the hash still lacks bytes from before `first`.
        let warm_end = (first + 63).min(checked_end);
        let mut h = 0u64;
        for a in first..warm_end {
            h = (h << 1).wrapping_add(self.gear[data[start + a] as usize]);
            if hits(a, h) {
                return start + a;
            }
        }
        // From there on the hash is the full-window hash the scan computed.
        let from = start + warm_end;
        let to = start + checked_end;
        let first_candidate = candidates.partition_point(|c| c.0 < from);
        for &(at, h) in &candidates[first_candidate..] {
            if at >= to {
                break;
            }
            if hits(at - start, h) {
                return at;
            }
        }
        start + remaining
    }
}

/// A stretch of a file chunked one way: a tensor in fixed blocks aligned to its start, anything
/// else by content. See [`cut_spans`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    /// Cut into blocks of this many bytes from `start` (the last one shorter); 0: by content.
    pub block: u32,
    /// Bytes per element of a float tensor (2, 4, 8) for dtype-aware encoding; 0: none.
    pub width: u8,
}

/// One chunk of a block: its range and the float element width of the tensor it is in.
pub type Cut = (Range<usize>, u8);

/// Cuts `data`, which begins at a chunk start at file offset `base`, honouring `spans` (sorted,
/// tiling the file): every span boundary is a cut, a fixed-block span is cut at its blocks, and
/// the rest by content exactly as [`Cutter::cut`] would cut each span alone. So a tensor's
/// chunks do not depend on where it sits in the file. Returns the chunks and, unless `eof`,
/// where the held-back last chunk starts (it is at most `max(max_size, block)` bytes long).
pub fn cut_spans(
    cutter: &Cutter,
    spans: &[Span],
    data: &[u8],
    base: u64,
    eof: bool,
) -> (Vec<Cut>, usize) {
    let end_abs = base + data.len() as u64;
    let mut out: Vec<Cut> = Vec::new();
    let first = spans.partition_point(|s| s.end <= base);
    for span in &spans[first..] {
        if span.start >= end_abs {
            break;
        }
        let from = (span.start.max(base) - base) as usize;
        let complete = span.end <= end_abs;
        let to = (span.end.min(end_abs) - base) as usize;
        let last = eof || complete;
        if span.block == 0 {
            let (ranges, tail) = cutter.cut(&data[from..to], last);
            out.extend(
                ranges
                    .into_iter()
                    .map(|r| (r.start + from..r.end + from, 0)),
            );
            if !last {
                return (out, from + tail);
            }
        } else {
            let block = span.block as usize;
            let mut at = from;
            // `from` is a block boundary: chunk starts are, and so is the span's start.
            while to - at >= block {
                out.push((at..at + block, span.width));
                at += block;
            }
            if at < to {
                if !last {
                    return (out, at);
                }
                out.push((at..to, span.width));
            } else if !last {
                return (out, at);
            }
        }
    }
    // Past the spans (a file that grew since its layout was read): by content.
    let covered = spans.last().map_or(0, |s| s.end);
    if covered < end_abs {
        let from = (covered.max(base) - base) as usize;
        let (ranges, tail) = cutter.cut(&data[from..], eof);
        out.extend(
            ranges
                .into_iter()
                .map(|r| (r.start + from..r.end + from, 0)),
        );
        return (out, from + tail);
    }
    (out, data.len())
}

/// Reads a stream and hands out its chunks in batches.
///
/// Bench and test code only: the backup path cuts through [`Cutter`] inside its own reader
/// pipeline; `benches/hot_path.rs` measures the chunker through this.
#[doc(hidden)]
pub struct StreamChunker<R> {
    reader: R,
    cutter: Cutter,
    buf: Vec<u8>,
    /// `buf[start..filled]` is read but not yet handed out.
    start: usize,
    filled: usize,
    eof: bool,
    bytes_read: u64,
}

/// A block and the ranges of the complete chunks in it.
pub type Batch<'a> = (&'a [u8], Vec<Range<usize>>);

/// Default block of [`StreamChunker`] (bench and test code only): a batch of ~32 average chunks,
/// enough to keep every core busy.
#[doc(hidden)]
pub const DEFAULT_BLOCK: usize = 16 * 1024 * 1024;

impl<R: Read> StreamChunker<R> {
    pub fn new(reader: R, params: ChunkerParams, block: usize) -> StreamChunker<R> {
        let cap = block.max(2 * params.max_size as usize);
        StreamChunker {
            reader,
            cutter: Cutter::new(&params),
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
        // Unless at the end, the buffer holds at least two maximal chunks, so the chunk held
        // back is never the only one.
        let (ranges, tail) = self.cutter.cut(&self.buf[..self.filled], self.eof);
        self.start = tail;
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

    fn cutter_all(data: &[u8], params: ChunkerParams) -> Vec<Range<usize>> {
        let (ranges, tail) = Cutter::new(&params).cut(data, true);
        assert_eq!(tail, data.len());
        ranges
    }

    proptest! {
        #[test]
        fn cutter_cuts_exactly_where_fastcdc_does(
            len in 0usize..60_000, seed in any::<u64>(), gear_seed in prop_oneof![Just(0u64), any::<u64>()],
            min in 64u32..400, avg_extra in 0u32..2000, max_extra in 0u32..3000, runs in any::<bool>(),
        ) {
            let mut data = noise(len, seed);
            if runs {
                // Long runs of one byte reach the maximal size and the "no cut" paths.
                for (i, b) in data.iter_mut().enumerate() {
                    if (i / 3000) % 2 == 0 {
                        *b = 0;
                    }
                }
            }
            let avg = (min + avg_extra).max(256);
            let params = ChunkerParams { min_size: min, avg_size: avg, max_size: (avg + max_extra).max(1024), gear_seed };
            prop_assume!(params.validate().is_ok());
            prop_assert_eq!(cutter_all(&data, params), params.cut_all(&data));
        }
    }

    #[test]
    fn cutter_matches_fastcdc_on_weights_zeros_and_default_params() {
        let params = ChunkerParams::default();
        let mut weights = vec![0u8; 8 << 20];
        tvault_workload::fill_weights(
            &mut tvault_workload::Rng::new(3),
            tvault_workload::Dtype::BF16,
            &mut weights,
        );
        assert_eq!(cutter_all(&weights, params), params.cut_all(&weights));
        let mut mixed = noise(9 << 20, 5);
        mixed[1 << 20..5 << 20].fill(0);
        assert_eq!(cutter_all(&mixed, params), params.cut_all(&mixed));
        let seeded = ChunkerParams {
            gear_seed: 0xdead_beef,
            ..params
        };
        assert_eq!(cutter_all(&mixed, seeded), seeded.cut_all(&mixed));
        let zeros = vec![0u8; 7 << 20];
        assert_eq!(cutter_all(&zeros, params), params.cut_all(&zeros));
    }

    /// Chunks of `data` cut along `spans` through the block-wise streaming of `read_file`.
    fn span_chunks(data: &[u8], spans: &[Span], block: usize) -> Vec<(Range<usize>, u8)> {
        let cutter = Cutter::new(&small());
        let mut out = Vec::new();
        let mut base = 0usize;
        let mut end = 0usize;
        loop {
            end = (end + block).min(data.len());
            let eof = end == data.len();
            let (cuts, tail) = cut_spans(&cutter, spans, &data[base..end], base as u64, eof);
            out.extend(
                cuts.into_iter()
                    .map(|(r, w)| (r.start + base..r.end + base, w)),
            );
            base += tail;
            if eof {
                return out;
            }
        }
    }

    proptest! {
        #[test]
        fn span_cuts_tile_the_input_honour_spans_and_ignore_blocking(
            len in 0usize..30_000, seed in any::<u64>(), bounds in proptest::collection::vec(0usize..30_000, 0..6),
            fixed in any::<u8>(), block in 2048usize..9000,
        ) {
            let data = noise(len, seed);
            let mut cuts: Vec<usize> = bounds.into_iter().filter(|&b| b < len).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort();
            cuts.dedup();
            let spans: Vec<Span> = cuts.windows(2).enumerate().map(|(i, w)| Span {
                start: w[0] as u64, end: w[1] as u64,
                block: if fixed >> (i % 8) & 1 == 1 { 700 } else { 0 },
                width: if fixed >> (i % 8) & 1 == 1 { 2 } else { 0 },
            }).collect();
            let got = span_chunks(&data, &spans, block);
            let whole = span_chunks(&data, &spans, len.max(1) + 4096);
            prop_assert_eq!(&got, &whole);
            let mut at = 0;
            for (r, _) in &got {
                prop_assert_eq!(r.start, at);
                prop_assert!(r.end > r.start);
                at = r.end;
            }
            prop_assert_eq!(at, len);
            for s in &spans {
                // Every span boundary is a cut; fixed spans are cut every 700 bytes from their start.
                prop_assert!(got.iter().any(|(r, _)| r.start as u64 == s.start) || s.start == s.end);
                for (r, w) in got.iter().filter(|(r, _)| r.start as u64 >= s.start && (r.end as u64) <= s.end) {
                    if s.block > 0 {
                        prop_assert_eq!((r.start as u64 - s.start) % 700, 0);
                        prop_assert!(r.len() == 700 || r.end as u64 == s.end);
                        prop_assert_eq!(*w, 2);
                    }
                }
            }
        }
    }

    #[test]
    fn gear_table_shifted_is_the_shifted_gear_table() {
        // Cutter relies on fastcdc's second table being the first shifted left by one.
        for seed in [0, 1, u64::MAX] {
            let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(seed);
            for i in 0..256 {
                assert_eq!(gear_ls[i], gear[i] << 1);
            }
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
