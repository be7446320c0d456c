//! An order-0 canonical Huffman coder for byte planes (the exponent bytes of float tensors,
//! whose order-0 entropy is far below 8 bits but which have no long matches for an LZ coder to
//! find). Codes are at most [`MAX_LEN`] bits, so every lookup of the next `MAX_LEN` bits in a
//! 2048-entry table decodes at least one symbol; the input is split into four segments coded as
//! four bit streams. Decoding interleaves the four streams and looks up a multi-symbol table
//! (every whole code within the next 11 bits: about four exponent bytes per lookup); encoding
//! interleaves two streams at a time, adding five codes to a 64-bit accumulator per 8-byte write.
//!
//! Stored layout (byte-exact in `repo/FORMAT.md`, "Huffman plane"):
//! 128 bytes of code lengths (4 bits per symbol, symbol 2k in the low nibble of byte k),
//! 4 × u32 LE stream lengths, then the 4 streams. Bits are written most significant first;
//! segment `i` holds bytes `[i*q, min((i+1)*q, n))` with `q = ceil(n / 4)`.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub const MAX_LEN: u32 = 11;
const STREAMS: usize = 4;
pub const HEADER: usize = 128 + 4 * STREAMS;

/// Byte frequencies of `data`.
#[multiversion::multiversion(targets = "simd")]
pub fn histogram(data: &[u8]) -> [u64; 256] {
    histogram_portable(data)
}

/// [`histogram`] as written, compiled for whatever target includes it (the dispatched clones
/// inline it; tests compare both).
#[inline(always)]
pub(crate) fn histogram_portable(data: &[u8]) -> [u64; 256] {
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

/// Per byte value: its code and its code length, as [`BitWriter::put`] takes them.
struct Codes {
    code: [u64; 256],
    len: [u32; 256],
}

/// Codes per flush: at most 7 pending bits and five codes of at most 11 bits fit 64 bits.
const PER_FLUSH: usize = 5;

/// One stream being written, most significant bit first: the low `nbits` bits of `acc` are
/// pending (the bits above them are stale and never written), flushed eight bytes at a time
/// into `buf` (bytes past `pos` are scratch, overwritten by the next flush).
struct BitWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
}

impl<'a> BitWriter<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        BitWriter {
            buf,
            pos: 0,
            acc: 0,
            nbits: 0,
        }
    }

    /// Adds the code of `b`.
    #[inline(always)]
    fn put(&mut self, codes: &Codes, b: u8) {
        let len = codes.len[b as usize];
        self.acc = self.acc << len | codes.code[b as usize];
        self.nbits += len;
    }

    /// Writes out the whole pending bytes, leaving fewer than 8 bits pending.
    #[inline(always)]
    fn flush(&mut self) {
        // With nothing pending the word is scratch: the position does not move.
        let word = self.acc.wrapping_shl(64 - self.nbits).to_be_bytes();
        self.buf[self.pos..self.pos + 8].copy_from_slice(&word);
        self.pos += (self.nbits / 8) as usize;
        self.nbits %= 8;
    }

    /// Codes `seg` (any length) after what is pending, then pads to a whole byte; the length.
    fn finish(mut self, codes: &Codes, seg: &[u8]) -> usize {
        let mut groups = seg.chunks_exact(PER_FLUSH);
        for g in &mut groups {
            for &b in g {
                self.put(codes, b);
            }
            self.flush();
        }
        for &b in groups.remainder() {
            self.put(codes, b);
        }
        self.flush();
        if self.nbits > 0 {
            self.acc <<= 8 - self.nbits;
            self.nbits = 8;
            self.flush();
        }
        self.pos
    }
}

/// Appends `data` coded with `lens` (from [`code_lengths`] of its histogram) to `out`.
#[multiversion::multiversion(targets = "simd")]
pub fn encode(data: &[u8], lens: &[u8; 256], out: &mut Vec<u8>) {
    encode_portable(data, lens, out)
}

/// [`encode`] as written, compiled for whatever target includes it (the dispatched clones
/// inline it; tests compare both).
#[inline(always)]
pub(crate) fn encode_portable(data: &[u8], lens: &[u8; 256], out: &mut Vec<u8>) {
    for pair in lens.chunks(2) {
        out.push(pair[0] | pair[1] << 4);
    }
    let mut codes = Codes {
        code: [0; 256],
        len: [0; 256],
    };
    for (s, &(code, len)) in canonical(lens).iter().enumerate() {
        codes.code[s] = u64::from(code);
        codes.len[s] = u32::from(len);
    }
    let lengths_at = out.len();
    out.extend_from_slice(&[0; 4 * STREAMS]);
    let q = data.len().div_ceil(STREAMS);
    let seg = |i: usize| &data[(i * q).min(data.len())..((i + 1) * q).min(data.len())];
    // Each stream is written into its own region of this thread's scratch (room for the worst
    // case plus an 8-byte overhang of the last flush; never zeroed again, since a stream's
    // bytes are all written before they are read), two streams interleaved so that their
    // codes are combined in parallel (four would spill registers); then appended in order.
    let cap = q * MAX_LEN as usize / 8 + 16;
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < STREAMS * cap {
            scratch.resize(STREAMS * cap, 0);
        }
        let mut regions = scratch.chunks_exact_mut(cap);
        let mut n = [0usize; STREAMS];
        for pair in 0..STREAMS / 2 {
            let (i, j) = (2 * pair, 2 * pair + 1);
            let mut a = BitWriter::new(regions.next().expect("a region per stream"));
            let mut b = BitWriter::new(regions.next().expect("a region per stream"));
            let (sa, sb) = (seg(i), seg(j));
            let common = sa.len().min(sb.len()) / PER_FLUSH * PER_FLUSH;
            let groups = sa[..common]
                .chunks_exact(PER_FLUSH)
                .zip(sb[..common].chunks_exact(PER_FLUSH));
            for (x, y) in groups {
                for k in 0..PER_FLUSH {
                    a.put(&codes, x[k]);
                    b.put(&codes, y[k]);
                }
                a.flush();
                b.flush();
            }
            n[i] = a.finish(&codes, &sa[common..]);
            n[j] = b.finish(&codes, &sb[common..]);
        }
        for (i, (&n, region)) in n.iter().zip(scratch.chunks_exact(cap)).enumerate() {
            out.extend_from_slice(&region[..n]);
            out[lengths_at + 4 * i..][..4].copy_from_slice(&(n as u32).to_le_bytes());
        }
    });
}

thread_local! {
    /// The streams being written by [`encode`], reused per thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One stream being read, most significant bit first: `bits` holds `count` unread bits at its
/// top (zeros below), the next bytes from `pos` on. Past the end of `data` it reads zeros.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    bits: u64,
    count: u32,
}

impl BitReader<'_> {
    /// Tops `bits` up to at least 56 unread bits.
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

    /// The next `MAX_LEN` bits, for a table lookup.
    #[inline(always)]
    fn peek(&self) -> usize {
        (self.bits >> (64 - MAX_LEN)) as usize
    }

    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.bits <<= n;
        self.count -= n;
    }

    /// Bits consumed so far.
    fn used(&self) -> u64 {
        self.pos as u64 * 8 - u64::from(self.count)
    }
}

const TABLE: usize = 1 << MAX_LEN;
/// Most symbols one entry of the multi-symbol table decodes.
const MULTI: u32 = 6;
/// Flag of a multi-symbol entry whose bits start no code (damage).
const INVALID: u64 = 1 << 63;

/// Decoding tables for code lengths `lens`. `single[x]`: the code the `MAX_LEN` bits `x` begin
/// with, as `symbol | len << 8` (0: no code begins so, damage). `multi[x]`: every whole code
/// (up to [`MULTI`]) within those bits, as the symbols in bytes 0 to 5, their total length in
/// byte 6 and their number in byte 7 (at least 1, with [`INVALID`] set when none is valid).
struct Tables {
    single: [u16; TABLE],
    multi: [u64; TABLE],
}

fn tables(lens: &[u8; 256]) -> Box<Tables> {
    let mut t = Box::new(Tables {
        single: [0; TABLE],
        multi: [0; TABLE],
    });
    let canon = canonical(lens);
    for (s, &(code, len)) in canon.iter().enumerate() {
        if len > 0 {
            let shift = MAX_LEN - u32::from(len);
            let first = (code << shift) as usize;
            t.single[first..first + (1 << shift)].fill(s as u16 | u16::from(len) << 8);
        }
    }
    // Codes in canonical order (by length): each one's entries of the multi-symbol table are a
    // range, inside which the following codes' ranges nest.
    let mut codes: Vec<(u8, u32, u32)> = canon
        .iter()
        .enumerate()
        .filter(|(_, &(_, len))| len > 0)
        .map(|(s, &(code, len))| (s as u8, code, u32::from(len)))
        .collect();
    codes.sort_by_key(|&(s, _, len)| (len, s));
    fill_multi(&mut t.multi, &codes, 0, MAX_LEN, 0, 0);
    t
}

/// Fills the `2^bits` entries of `multi` from `start`, whose bits all begin with the `n` codes
/// of the symbols in `e` (`MAX_LEN - bits` bits), then the ranges of the codes that follow.
fn fill_multi(
    multi: &mut [u64; TABLE],
    codes: &[(u8, u32, u32)],
    start: usize,
    bits: u32,
    e: u64,
    n: u32,
) {
    let used = MAX_LEN - bits;
    let entry = if n == 0 {
        INVALID | 1 << 56 | u64::from(MAX_LEN) << 48
    } else {
        e | u64::from(n) << 56 | u64::from(used) << 48
    };
    multi[start..start + (1 << bits)].fill(entry);
    if n == MULTI {
        return;
    }
    for &(s, code, len) in codes.iter().take_while(|&&(_, _, len)| len <= bits) {
        let at = start + ((code as usize) << (bits - len));
        fill_multi(
            multi,
            codes,
            at,
            bits - len,
            e | u64::from(s) << (8 * n),
            n + 1,
        );
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
    let mut at = HEADER;
    let mut streams = [&stored[..0]; STREAMS];
    for (i, s) in streams.iter_mut().enumerate() {
        let n = u32::from_le_bytes(stored[128 + 4 * i..][..4].try_into().expect("4")) as usize;
        *s = stored
            .get(at..)
            .and_then(|rest| rest.get(..n))
            .ok_or("Huffman stream lengths exceed the plane")?;
        at += n;
    }
    if at != stored.len() {
        return Err("trailing bytes after the Huffman streams".into());
    }
    let t = tables(&lens);
    let mut r = streams.map(|data| BitReader {
        data,
        pos: 0,
        bits: 0,
        count: 0,
    });
    let q = out.len().div_ceil(STREAMS);
    let mut segs = out.chunks_mut(q.max(1));
    let mut s = [(); STREAMS].map(|_| segs.next().unwrap_or_default());
    // Each stream's next output position in its segment.
    let mut o = [0usize; STREAMS];
    let mut bad = 0u64;
    // Rounds of one refill (at least 56 bits) then five lookups (at most 55 bits) per stream,
    // the four streams interleaved. A lookup writes 8 bytes (up to 6 symbols, then scratch the
    // next lookup overwrites) and moves on by its symbol count, so a round needs 32 bytes of
    // room in every segment.
    const ROOM: usize = 4 * MULTI as usize + 8;
    let ([r0, r1, r2, r3], [s0, s1, s2, s3], [o0, o1, o2, o3]) = (&mut r, &mut s, &mut o);
    while *o0 + ROOM <= s0.len()
        && *o1 + ROOM <= s1.len()
        && *o2 + ROOM <= s2.len()
        && *o3 + ROOM <= s3.len()
    {
        r0.refill();
        r1.refill();
        r2.refill();
        r3.refill();
        for _ in 0..5 {
            for (r, s, o) in [
                (&mut *r0, &mut **s0, &mut *o0),
                (&mut *r1, &mut **s1, &mut *o1),
                (&mut *r2, &mut **s2, &mut *o2),
                (&mut *r3, &mut **s3, &mut *o3),
            ] {
                let e = t.multi[r.peek()];
                r.consume((e >> 48) as u32 & 15);
                s[*o..*o + 8].copy_from_slice(&e.to_le_bytes());
                *o += (e >> 56) as usize & 7;
                bad |= e;
            }
        }
    }
    // The rest of each segment one symbol at a time.
    for ((r, s), &o) in r.iter_mut().zip(s.iter_mut()).zip(&o) {
        for x in s[o..].iter_mut() {
            r.refill();
            let c = t.single[r.peek()];
            let len = u32::from(c >> 8);
            if len == 0 {
                return Err("invalid Huffman code in the stream".into());
            }
            r.consume(len);
            *x = c as u8;
        }
    }
    if bad & INVALID != 0 {
        return Err("invalid Huffman code in the stream".into());
    }
    for r in &r {
        if r.used().div_ceil(8) != r.data.len() as u64 {
            return Err("Huffman stream length does not match its content".into());
        }
        let pad = r.data.len() as u64 * 8 - r.used();
        if r.data
            .last()
            .is_some_and(|&b| u64::from(b) & ((1 << pad) - 1) != 0)
        {
            return Err("Huffman stream padding is not zero".into());
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
        tvault_workload::fill_weights(
            &mut tvault_workload::Rng::new(9),
            tvault_workload::Dtype::BF16,
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

    /// The layout of `FORMAT.md` written bit by bit, to pin the fast encoder to it.
    fn reference_encode(data: &[u8], lens: &[u8; 256]) -> Vec<u8> {
        let mut out: Vec<u8> = lens.chunks(2).map(|p| p[0] | p[1] << 4).collect();
        let codes = canonical(lens);
        let q = data.len().div_ceil(STREAMS);
        let mut streams = Vec::new();
        for i in 0..STREAMS {
            let seg = &data[(i * q).min(data.len())..((i + 1) * q).min(data.len())];
            let mut bits = Vec::new();
            for &b in seg {
                let (code, len) = codes[b as usize];
                bits.extend((0..len).rev().map(|k| (code >> k) & 1 == 1));
            }
            let bytes: Vec<u8> = bits
                .chunks(8)
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .map(|(k, &x)| u8::from(x) << (7 - k))
                        .sum()
                })
                .collect();
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            streams.push(bytes);
        }
        out.extend(streams.concat());
        out
    }

    /// `n` bytes over `alphabet` values, value `k` about `skew^k` times as frequent as value 0.
    fn skewed(n: usize, alphabet: u32, skew: f64, seed: u64) -> Vec<u8> {
        let mut rng = tvault_workload::Rng::new(seed);
        let weights: Vec<f64> = (0..alphabet).map(|k| skew.powi(k as i32)).collect();
        let total: f64 = weights.iter().sum();
        let mut raw = vec![0u8; 4 * n];
        rng.fill_bytes(&mut raw);
        raw.chunks_exact(4)
            .map(|c| {
                let mut x = f64::from(u32::from_le_bytes(c.try_into().unwrap())) / 4294967296.0;
                x *= total;
                let mut k = 0;
                while k + 1 < alphabet as usize && x >= weights[k] {
                    x -= weights[k];
                    k += 1;
                }
                k as u8
            })
            .collect()
    }

    #[test]
    fn lengths_around_the_fast_loops_round_trip() {
        for n in 0..300 {
            for (alphabet, skew) in [(1, 1.0), (2, 0.5), (20, 0.6), (256, 1.0), (256, 0.9)] {
                round_trip(&skewed(n, alphabet, skew, n as u64));
            }
        }
    }

    #[test]
    fn invalid_codes_and_wrong_lengths_are_refused() {
        // One symbol: its code is a single 0 bit, so a 1 bit starts no code.
        let mut out = Vec::new();
        let lens = code_lengths(&histogram(&[7; 100]));
        encode(&[7; 100], &lens, &mut out);
        let mut back = vec![0; 100];
        decode(&out, &mut back).unwrap();
        for at in HEADER..out.len() {
            let mut bad = out.clone();
            bad[at] |= 1;
            assert!(decode(&bad, &mut back).is_err(), "bit at {at}");
        }
        // Streams longer or shorter than their codes need.
        assert!(decode(&out, &mut [0; 99]).is_err());
        assert!(decode(&out, &mut [0; 101]).is_err());
        let mut long = out.clone();
        long[128] += 1;
        long.insert(HEADER + 4, 0);
        assert!(decode(&long, &mut back).is_err());
        // An empty plane is the header alone.
        encode(&[], &code_lengths(&histogram(&[])), &mut out);
        assert!(decode(&out[out.len() - HEADER..], &mut []).is_ok());
        assert!(decode(&out[out.len() - HEADER..], &mut [0]).is_err());
    }

    #[test]
    fn multi_symbol_entries_are_greedy_single_lookups() {
        let mut rng = tvault_workload::Rng::new(3);
        for (alphabet, skew) in [
            (1, 1.0),
            (2, 0.3),
            (3, 0.5),
            (20, 0.6),
            (40, 0.7),
            (256, 1.0),
        ] {
            let data = skewed(5000, alphabet, skew, rng.next_u64());
            let t = tables(&code_lengths(&histogram(&data)));
            for x in 0..TABLE {
                let (mut syms, mut used) = (Vec::new(), 0);
                while syms.len() < MULTI as usize {
                    let c = t.single[(x << used) & (TABLE - 1)];
                    let len = u32::from(c >> 8);
                    if len == 0 || used + len > MAX_LEN {
                        break;
                    }
                    syms.push(c as u8);
                    used += len;
                }
                let e = t.multi[x];
                if syms.is_empty() {
                    assert_ne!(e & INVALID, 0);
                } else {
                    assert_eq!(e & INVALID, 0);
                    assert_eq!((e >> 56) as usize, syms.len());
                    assert_eq!((e >> 48) as u32 & 255, used);
                    assert_eq!(&e.to_le_bytes()[..syms.len()], &syms[..]);
                }
            }
        }
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
        fn any_distribution_round_trips_in_the_documented_layout(
            n in 0usize..20_000,
            alphabet in 1u32..=256,
            skew in 0.05f64..1.0,
            seed in any::<u64>(),
        ) {
            let data = skewed(n, alphabet, skew, seed);
            round_trip(&data);
            let lens = code_lengths(&histogram(&data));
            let mut out = vec![9];
            encode(&data, &lens, &mut out);
            prop_assert_eq!(&out[1..], &reference_encode(&data, &lens)[..]);
        }

        #[test]
        fn random_planes_are_errors_not_panics(
            lens in proptest::collection::vec(0u8..=11, 256),
            stream_lens in proptest::collection::vec(0u32..2000, 4),
            fill in any::<u64>(),
            n in 0usize..10_000,
        ) {
            let mut stored: Vec<u8> = lens.chunks(2).map(|p| p[0] | p[1] << 4).collect();
            for l in &stream_lens {
                stored.extend_from_slice(&l.to_le_bytes());
            }
            let mut body = vec![0u8; stream_lens.iter().sum::<u32>() as usize];
            tvault_workload::Rng::new(fill).fill_bytes(&mut body);
            stored.extend(body);
            let mut back = vec![0; n];
            let _ = decode(&stored, &mut back);
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
