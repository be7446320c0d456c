//! An order-0 canonical Huffman coder for byte planes (the exponent bytes of float tensors,
//! whose order-0 entropy is far below 8 bits but which have no long matches for an LZ coder to
//! find). Codes are at most [`MAX_LEN`] bits, so decoding is one lookup in a 2048-entry table;
//! the input is split into four segments coded as four bit streams, decoded interleaved.
//!
//! Stored layout (byte-exact in `repo/FORMAT.md`, "Huffman plane"):
//! 128 bytes of code lengths (4 bits per symbol, symbol 2k in the low nibble of byte k),
//! 4 × u32 LE stream lengths, then the 4 streams. Bits are written most significant first;
//! segment `i` holds bytes `[i*q, min((i+1)*q, n))` with `q = ceil(n / 4)`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub const MAX_LEN: u32 = 11;
const STREAMS: usize = 4;
pub const HEADER: usize = 128 + 4 * STREAMS;

/// Byte frequencies of `data`.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    // Four tables hide the store-to-load dependency of repeated bytes.
    let mut h = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        h[0][q[0] as usize] += 1;
        h[1][q[1] as usize] += 1;
        h[2][q[2] as usize] += 1;
        h[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        h[0][b as usize] += 1;
    }
    let mut out = [0u64; 256];
    for (s, o) in out.iter_mut().enumerate() {
        *o = h.iter().map(|t| u64::from(t[s])).sum();
    }
    out
}

/// Length-limited Huffman code lengths (0 for absent symbols).
pub fn code_lengths(freq: &[u64; 256]) -> [u8; 256] {
    let mut lens = [0u8; 256];
    let present: Vec<usize> = (0..256).filter(|&s| freq[s] > 0).collect();
    match present.len() {
        0 => return lens,
        1 => {
            lens[present[0]] = 1;
            return lens;
        }
        _ => {}
    }
    // Huffman tree: leaves 0..256, inner nodes from 256 on; parent links give depths.
    let mut parent = vec![usize::MAX; 512];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> =
        present.iter().map(|&s| Reverse((freq[s], s))).collect();
    let mut next = 256;
    while heap.len() > 1 {
        let Reverse((fa, a)) = heap.pop().expect("two nodes");
        let Reverse((fb, b)) = heap.pop().expect("two nodes");
        parent[a] = next;
        parent[b] = next;
        heap.push(Reverse((fa + fb, next)));
        next += 1;
    }
    for &s in &present {
        let (mut d, mut n) = (0u32, s);
        while parent[n] != usize::MAX {
            n = parent[n];
            d += 1;
        }
        lens[s] = d.min(MAX_LEN) as u8;
    }
    // Clamping may overfill the code space: lengthen the least costly codes until it fits.
    let cap = 1u64 << MAX_LEN;
    let mut kraft: u64 = present.iter().map(|&s| cap >> lens[s]).sum();
    while kraft > cap {
        let s = *present
            .iter()
            .filter(|&&s| u32::from(lens[s]) < MAX_LEN)
            .max_by_key(|&&s| (lens[s], Reverse(freq[s])))
            .expect("room below the maximum length");
        kraft -= cap >> (lens[s] + 1);
        lens[s] += 1;
    }
    lens
}

/// Canonical codes for `lens`: (code, length) per symbol.
fn canonical(lens: &[u8; 256]) -> [(u32, u8); 256] {
    let mut codes = [(0u32, 0u8); 256];
    let mut code = 0u32;
    for len in 1..=MAX_LEN as u8 {
        for s in 0..256 {
            if lens[s] == len {
                codes[s] = (code, len);
                code += 1;
            }
        }
        code <<= 1;
    }
    codes
}

/// Stored size of `n` bytes with histogram `freq` and code lengths `lens`.
pub fn estimate(freq: &[u64; 256], lens: &[u8; 256]) -> usize {
    let bits: u64 = (0..256).map(|s| freq[s] * u64::from(lens[s])).sum();
    HEADER + (bits / 8) as usize + STREAMS
}

/// Appends `data` coded with `lens` (from [`code_lengths`] of its histogram) to `out`.
pub fn encode(data: &[u8], lens: &[u8; 256], out: &mut Vec<u8>) {
    for pair in lens.chunks(2) {
        out.push(pair[0] | pair[1] << 4);
    }
    let codes = canonical(lens);
    let lengths_at = out.len();
    out.extend_from_slice(&[0; 4 * STREAMS]);
    let q = data.len().div_ceil(STREAMS);
    for i in 0..STREAMS {
        let seg = &data[(i * q).min(data.len())..((i + 1) * q).min(data.len())];
        let start = out.len();
        // Room for the worst case plus an 8-byte overhang of the last flush.
        out.resize(start + seg.len() * MAX_LEN as usize / 8 + 16, 0);
        let buf = &mut out[start..];
        let (mut acc, mut nbits, mut pos) = (0u64, 0u32, 0usize);
        let mut quads = seg.chunks_exact(4);
        // Four codes (at most 44 bits) join the under 8 bits left over, then whole bytes go out.
        for q in &mut quads {
            for &b in q {
                let (code, len) = codes[b as usize];
                acc = (acc << len) | u64::from(code);
                nbits += u32::from(len);
            }
            buf[pos..pos + 8].copy_from_slice(&(acc << (64 - nbits)).to_be_bytes());
            pos += (nbits / 8) as usize;
            nbits %= 8;
        }
        for &b in quads.remainder() {
            let (code, len) = codes[b as usize];
            acc = (acc << len) | u64::from(code);
            nbits += u32::from(len);
        }
        if nbits > 0 {
            buf[pos..pos + 8].copy_from_slice(&(acc << (64 - nbits)).to_be_bytes());
            pos += nbits.div_ceil(8) as usize;
        }
        out.truncate(start + pos);
        let n = pos as u32;
        out[lengths_at + 4 * i..][..4].copy_from_slice(&n.to_le_bytes());
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    bits: u64,
    count: u32,
    /// Bits consumed so far.
    used: u64,
}

impl BitReader<'_> {
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(b) = self.data.get(self.pos..self.pos + 8) {
            let v = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            self.bits |= v >> self.count;
            let take = (63 - self.count) >> 3;
            self.pos += take as usize;
            self.count += take * 8;
        } else {
            while self.count <= 56 {
                let b = self.data.get(self.pos).copied().unwrap_or(0);
                self.bits |= u64::from(b) << (56 - self.count);
                self.pos += 1;
                self.count += 8;
            }
        }
    }

    #[inline(always)]
    fn symbol(&mut self, table: &[u16; 1 << MAX_LEN]) -> u16 {
        let e = table[(self.bits >> (64 - MAX_LEN)) as usize];
        let len = u32::from(e >> 8);
        self.bits <<= len;
        self.count -= len;
        self.used += u64::from(len);
        e
    }
}

/// Decodes a Huffman plane into `out` (whose length is the plane's). Damaged input is an
/// error, never a panic.
pub fn decode(stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    if stored.len() < HEADER {
        return Err("Huffman plane shorter than its header".into());
    }
    let mut lens = [0u8; 256];
    for (k, &b) in stored[..128].iter().enumerate() {
        lens[2 * k] = b & 15;
        lens[2 * k + 1] = b >> 4;
    }
    let cap = 1u64 << MAX_LEN;
    if lens.iter().any(|&l| u32::from(l) > MAX_LEN) {
        return Err("Huffman code length over the maximum".into());
    }
    let kraft: u64 = lens.iter().filter(|&&l| l > 0).map(|&l| cap >> l).sum();
    if kraft > cap {
        return Err("Huffman code lengths overfill the code space".into());
    }
    // Entry: symbol in the low byte, length in the high byte; 0 = no code (damage).
    let mut table = [0u16; 1 << MAX_LEN];
    for (s, &(code, len)) in canonical(&lens).iter().enumerate() {
        if len > 0 {
            let shift = MAX_LEN - u32::from(len);
            let first = (code << shift) as usize;
            table[first..first + (1 << shift)].fill(s as u16 | u16::from(len) << 8);
        }
    }
    let mut at = 128;
    let mut readers = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let n = u32::from_le_bytes(stored[128 + 4 * i..][..4].try_into().expect("4")) as usize;
        let data = stored
            .get(HEADER.max(at)..)
            .and_then(|rest| rest.get(..n))
            .ok_or("Huffman stream lengths exceed the plane")?;
        at = HEADER.max(at) + n;
        readers.push(BitReader {
            data,
            pos: 0,
            bits: 0,
            count: 0,
            used: 0,
        });
    }
    if at != stored.len() {
        return Err("trailing bytes after the Huffman streams".into());
    }
    let n = out.len();
    let q = n.div_ceil(STREAMS);
    let mut segs: Vec<&mut [u8]> = Vec::with_capacity(STREAMS);
    let mut rest = out;
    for _ in 0..STREAMS {
        let (a, b) = rest.split_at_mut(q.min(rest.len()));
        segs.push(a);
        rest = b;
    }
    let common = segs.iter().map(|s| s.len()).min().unwrap_or(0);
    let mut bad = 0u16;
    if let [r0, r1, r2, r3] = &mut readers[..] {
        if let [s0, s1, s2, s3] = &mut segs[..] {
            // Four symbols per stream per refill: 4 × 11 bits fit the 56 a refill guarantees.
            let mut i = 0;
            while i + 4 <= common {
                r0.refill();
                r1.refill();
                r2.refill();
                r3.refill();
                for k in i..i + 4 {
                    let (a, b, c, d) = (
                        r0.symbol(&table),
                        r1.symbol(&table),
                        r2.symbol(&table),
                        r3.symbol(&table),
                    );
                    // An entry without a code has length 0 (damage): noted without a branch.
                    bad |= u16::from((a < 256) | (b < 256) | (c < 256) | (d < 256));
                    s0[k] = a as u8;
                    s1[k] = b as u8;
                    s2[k] = c as u8;
                    s3[k] = d as u8;
                }
                i += 4;
            }
            for (r, s) in [(r0, s0), (r1, s1), (r2, s2), (r3, s3)] {
                for x in s[i..].iter_mut() {
                    r.refill();
                    let e = r.symbol(&table);
                    if e >> 8 == 0 {
                        bad = 1;
                    }
                    *x = e as u8;
                }
            }
        }
    }
    if bad != 0 {
        return Err("invalid Huffman code in the stream".into());
    }
    for r in &readers {
        let bytes = r.used.div_ceil(8);
        if bytes != r.data.len() as u64 {
            return Err("Huffman stream length does not match its content".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(data: &[u8]) -> usize {
        let freq = histogram(data);
        let lens = code_lengths(&freq);
        let mut out = Vec::new();
        encode(data, &lens, &mut out);
        assert!(out.len() <= estimate(&freq, &lens));
        let mut back = vec![0; data.len()];
        decode(&out, &mut back).unwrap();
        assert_eq!(back, data);
        out.len()
    }

    #[test]
    fn exponent_planes_code_near_their_entropy() {
        let mut w = vec![0u8; 1 << 20];
        crate::workload::fill_weights(
            &mut crate::workload::Rng::new(9),
            crate::workload::Dtype::BF16,
            &mut w,
        );
        let plane: Vec<u8> = w.iter().skip(1).step_by(2).copied().collect();
        let freq = histogram(&plane);
        let n = plane.len() as f64;
        let entropy: f64 = freq
            .iter()
            .filter(|&&f| f > 0)
            .map(|&f| -(f as f64) * (f as f64 / n).log2())
            .sum::<f64>()
            / 8.0;
        let stored = round_trip(&plane) as f64;
        assert!(
            stored < entropy * 1.03 + 200.0,
            "{stored} vs entropy {entropy}"
        );
    }

    #[test]
    fn edge_cases_round_trip() {
        round_trip(&[]);
        round_trip(&[5]);
        round_trip(&[5; 1000]);
        round_trip(&[1, 2, 3]);
        let all: Vec<u8> = (0..=255).collect();
        round_trip(&all);
        // Fibonacci frequencies force lengths past the maximum before limiting.
        let mut skewed = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for s in 0..20u8 {
            skewed.extend(std::iter::repeat_n(s, a));
            (a, b) = (b, a + b);
        }
        round_trip(&skewed);
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(0u8..20, 0..5000)) {
            round_trip(&data);
        }

        #[test]
        fn damaged_planes_are_errors_not_panics(
            data in proptest::collection::vec(0u8..40, 1..3000),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let lens = code_lengths(&histogram(&data));
            let mut out = Vec::new();
            encode(&data, &lens, &mut out);
            for (at, b) in flips {
                let n = out.len();
                out[at % n] ^= b;
            }
            out.truncate(cut % (out.len() + 1));
            let mut back = vec![0; data.len()];
            let _ = decode(&out, &mut back);
        }
    }
}
