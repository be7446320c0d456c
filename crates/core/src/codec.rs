//! How a chunk's plain bytes are stored: zstd, raw when compression does not pay, or (for
//! chunks of float tensors) split into byte planes, each stored raw, as zstd or with an order-0
//! Huffman code. The encoding is recorded per blob (one byte in the pack and index), so new
//! encodings can be added without touching old data. Layouts: `repo/FORMAT.md`.

pub mod huffman;
mod sparse;

use std::cell::RefCell;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    Raw = 0,
    Zstd = 1,
    /// Byte planes of fixed-width elements (format version 2).
    Planes = 2,
    /// XOR with a base blob of the same length (format version 2); see [`encode_delta`].
    Delta = 3,
}

impl Encoding {
    pub fn from_u8(b: u8) -> Option<Encoding> {
        match b {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            2 => Some(Encoding::Planes),
            3 => Some(Encoding::Delta),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Zstd => "zstd",
            Encoding::Planes => "byte-planes",
            Encoding::Delta => "xor-delta",
        }
    }
}

/// How one byte plane of an [`Encoding::Planes`] blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum PlaneMethod {
    Raw = 0,
    Zstd = 1,
    Huffman = 2,
}

/// Compression must save at least 1/32 of a chunk to be worth a decode on restore.
fn pays(plain: usize, stored: usize) -> bool {
    stored + plain / 32 < plain
}

/// Encodes `plain`; the result is never larger than the input.
pub fn encode(plain: &[u8], zstd_level: i32) -> (Encoding, Vec<u8>) {
    match zstd::bulk::compress(plain, zstd_level) {
        Ok(z) if pays(plain.len(), z.len()) => (Encoding::Zstd, z),
        _ => (Encoding::Raw, plain.to_vec()),
    }
}

thread_local! {
    /// One zstd context per thread and level, reused for every chunk the thread compresses.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// One zstd decompression context per thread (creating one per chunk cost ~6 % of a
    /// restore of delta chains, whose links each hold a small zstd frame).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    /// Scratch for splitting planes and trying zstd on one, reused per thread.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// One decoded plane, reused per thread.
    static PLANE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A plain buffer handed back by [`recycle`], for the next decode on this thread: a fresh
    /// block-sized allocation per chunk made glibc map and zero new pages (a restore of a
    /// fine-tune chain spent more time in page faults than applying its deltas).
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Largest buffer [`recycle`] keeps (a chunk is at most 2 MiB by default).
const SPARE_MAX: usize = 8 << 20;

/// A buffer of `len` bytes for a decoder that overwrites all of them: this thread's spare
/// (stale bytes left in place, only growth is zeroed), else a new one.
pub(crate) fn plain_buffer(len: usize) -> Vec<u8> {
    let mut buf = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    buf.resize(len, 0);
    buf
}

/// Hands a decoded blob's buffer back once its bytes are used, for this thread's next decode.
pub fn recycle(buf: Vec<u8>) {
    if buf.capacity() <= SPARE_MAX {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if buf.capacity() > s.capacity() {
                *s = buf;
            }
        });
    }
}

/// zstd-compresses `plain` into `out` (cleared) with this thread's context; its length.
fn zstd_into(plain: &[u8], zstd_level: i32, out: &mut Vec<u8>) -> Option<usize> {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().map(|(level, _)| *level) != Some(zstd_level) {
            *cell = Some((zstd_level, zstd::bulk::Compressor::new(zstd_level).ok()?));
        }
        let (_, compressor) = cell.as_mut()?;
        compressor.compress_to_buffer(plain, out).ok()
    })
}

/// zstd-decompresses `data` into `out` with this thread's context; the bytes written.
fn unzstd_into(data: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        cell.as_mut()
            .expect("created above")
            .decompress_to_buffer(data, out)
    })
}

/// zstd-decompresses `data`, at most `capacity` bytes, with this thread's context.
fn unzstd(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        cell.as_mut()
            .expect("created above")
            .decompress(data, capacity)
    })
}

/// Chunks shorter than this are not split into planes (the per-plane headers would not pay).
const MIN_PLANES: usize = 4096;

/// Like [`encode_into`], for a chunk of a float tensor whose elements are `width` bytes (2, 4
/// or 8; anything else, or `planes == false`, is [`encode_into`]). The chunk is split into byte
/// planes; each plane is stored with an order-0 Huffman code when that saves at least 1/32 of
/// it, else raw, and very skewed planes (under ~1.3 bits per byte: runs of zeros) also try
/// zstd. When the planes save less than a tenth, plain zstd is tried too, and the smaller wins.
/// For [`Encoding::Raw`] `out` is left empty.
pub fn encode_typed(plain: &[u8], width: u8, zstd_level: i32, out: &mut Vec<u8>) -> Encoding {
    let w = width as usize;
    if !matches!(w, 2 | 4 | 8) || plain.len() < MIN_PLANES {
        return encode_into(plain, zstd_level, out);
    }
    out.clear();
    let n = plain.len() / w;
    SCRATCH.with(|cell| {
        let (planes, z) = &mut *cell.borrow_mut();
        split_planes(&plain[..n * w], w, planes);
        out.push(width);
        let table_at = out.len();
        out.resize(table_at + 5 * w, 0);
        for (p, plane) in planes.chunks_exact(n).enumerate() {
            let (method, lens, zn) = choose(plane, zstd_level, z);
            let start = out.len();
            match method {
                PlaneMethod::Raw => out.extend_from_slice(plane),
                PlaneMethod::Zstd => out.extend_from_slice(&z[..zn]),
                PlaneMethod::Huffman => huffman::encode(plane, &lens, out),
            }
            let len = (out.len() - start) as u32;
            out[table_at + 5 * p] = method as u8;
            out[table_at + 5 * p + 1..][..4].copy_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(&plain[n * w..]);
    });
    let planes = out.len();
    if planes * 10 > plain.len() * 9 {
        // Planes barely help: plain zstd may do better (or nothing pays: raw).
        let mut z = Vec::new();
        let enc = encode_into(plain, zstd_level, &mut z);
        let plain_size = if enc == Encoding::Raw {
            plain.len()
        } else {
            z.len()
        };
        if plain_size <= planes || !pays(plain.len(), planes) {
            *out = z;
            return enc;
        }
    }
    Encoding::Planes
}

/// Bytes of a plane sample that decide, before a full histogram, that a plane is noise.
const SAMPLE: usize = 8192;

/// How to store one plane: the method, the Huffman code lengths, and the zstd length (its
/// bytes in `z`). See [`encode_typed`].
fn choose(plane: &[u8], zstd_level: i32, z: &mut Vec<u8>) -> (PlaneMethod, [u8; 256], usize) {
    let n = plane.len();
    let none = [0u8; 256];
    if n > 4 * SAMPLE {
        // Mantissa planes are noise: a sample says so at a fraction of the cost.
        let freq = huffman::histogram(&plane[..SAMPLE]);
        let lens = huffman::code_lengths(&freq);
        if huffman::estimate(&freq, &lens) - huffman::HEADER > SAMPLE * 31 / 32 {
            return (PlaneMethod::Raw, none, 0);
        }
    }
    let freq = huffman::histogram(plane);
    let lens = huffman::code_lengths(&freq);
    let est = huffman::estimate(&freq, &lens);
    let (mut method, mut best) = (PlaneMethod::Raw, n);
    if pays(n, est) {
        (method, best) = (PlaneMethod::Huffman, est);
    }
    let mut zn = 0;
    if est - huffman::HEADER < n / 6 {
        if let Some(k) = zstd_into(plane, zstd_level, z) {
            if k < best {
                (method, zn) = (PlaneMethod::Zstd, k);
            }
        }
    }
    (method, lens, zn)
}

/// Splits `elems` (whole elements of `w` bytes) into `w` planes of `elems.len() / w` bytes,
/// back to back in `planes`. Compiled for AVX2/AVX-512 too and picked at run time, as are the
/// Huffman histogram and encoder: the generic x86-64 build leaves these loops scalar (the
/// decoding side gained nothing measurable from the same, so it stays portable).
#[multiversion::multiversion(targets = "simd")]
fn split_planes(elems: &[u8], w: usize, planes: &mut Vec<u8>) {
    split_planes_portable(elems, w, planes)
}

/// [`split_planes`] as written, compiled for whatever target includes it (the dispatched clones
/// inline it; tests compare both).
#[inline(always)]
fn split_planes_portable(elems: &[u8], w: usize, planes: &mut Vec<u8>) {
    let n = elems.len() / w;
    planes.clear();
    planes.resize(elems.len(), 0);
    if n == 0 {
        return;
    }
    match w {
        2 => {
            let (p0, p1) = planes.split_at_mut(n);
            for ((e, a), b) in elems.chunks_exact(2).zip(p0).zip(p1) {
                *a = e[0];
                *b = e[1];
            }
        }
        _ => {
            for (p, plane) in planes.chunks_exact_mut(n).enumerate() {
                for (e, x) in elems.chunks_exact(w).zip(plane) {
                    *x = e[p];
                }
            }
        }
    }
}

/// Decodes an [`Encoding::Planes`] blob into `plain_len` bytes.
fn decode_planes(stored: &[u8], plain_len: usize) -> Result<Vec<u8>> {
    let mut out = plain_buffer(plain_len);
    planes_into(stored, &mut out, false)?;
    Ok(out)
}

/// Decodes an [`Encoding::Planes`] blob of `out.len()` bytes into `out`, or XORs it onto `out`
/// (a dense delta applied plane by plane: no buffer of the whole XOR).
fn planes_into(stored: &[u8], out: &mut [u8], xor: bool) -> Result<()> {
    let bad = |m: &str| Error::Invalid(format!("byte planes: {m}"));
    let plain_len = out.len();
    let w = *stored.first().ok_or_else(|| bad("empty"))? as usize;
    if !matches!(w, 2 | 4 | 8) {
        return Err(bad(&format!("unknown element width {w}")));
    }
    let n = plain_len / w;
    let tail = plain_len % w;
    let table = stored.get(1..1 + 5 * w).ok_or_else(|| bad("truncated"))?;
    let mut at = 1 + 5 * w;
    PLANE.with(|cell| {
        let mut plane = cell.borrow_mut();
        plane.resize(n, 0);
        for p in 0..w {
            let method = table[5 * p];
            let len = u32::from_le_bytes(table[5 * p + 1..][..4].try_into().expect("4")) as usize;
            let data = at
                .checked_add(len)
                .and_then(|end| stored.get(at..end))
                .ok_or_else(|| bad("plane lengths exceed the blob"))?;
            at += len;
            match method {
                0 if data.len() == n => plane.copy_from_slice(data),
                0 => return Err(bad("raw plane of the wrong length")),
                1 => {
                    let k = unzstd_into(data, &mut plane[..])
                        .map_err(|e| bad(&format!("zstd: {e}")))?;
                    if k != n {
                        return Err(bad("zstd plane of the wrong length"));
                    }
                }
                2 => huffman::decode(data, &mut plane).map_err(|e| bad(&e))?,
                m => return Err(bad(&format!("unknown plane method {m}"))),
            }
            interleave(out, &plane, w, p, xor);
        }
        Ok(())
    })?;
    let rest = stored
        .get(at..)
        .filter(|rest| rest.len() == tail)
        .ok_or_else(|| bad("length does not match the planes"))?;
    for (o, &b) in out[n * w..].iter_mut().zip(rest) {
        *o = if xor { *o ^ b } else { b };
    }
    Ok(())
}

/// Writes (or XORs) plane `p` of `w`-byte elements into `out`'s whole elements.
fn interleave(out: &mut [u8], plane: &[u8], w: usize, p: usize, xor: bool) {
    let elems = out.chunks_exact_mut(w).zip(plane.iter());
    if xor {
        elems.for_each(|(e, &b)| e[p] ^= b);
    } else {
        elems.for_each(|(e, &b)| e[p] = b);
    }
}

/// Encodes `plain` into `out` (cleared first) with this thread's reused zstd context. For
/// [`Encoding::Raw`] `out` is left empty: the stored bytes are `plain` itself, not copied.
/// Chooses exactly as [`encode`] does.
pub fn encode_into(plain: &[u8], zstd_level: i32, out: &mut Vec<u8>) -> Encoding {
    match zstd_into(plain, zstd_level, out) {
        Some(n) if pays(plain.len(), n) => Encoding::Zstd,
        _ => {
            out.clear();
            Encoding::Raw
        }
    }
}

/// Decodes a stored blob back to exactly `plain_len` bytes.
pub fn decode(encoding: Encoding, stored: &[u8], plain_len: usize) -> Result<Vec<u8>> {
    match encoding {
        Encoding::Raw => {
            if stored.len() != plain_len {
                return Err(Error::Invalid(format!(
                    "raw blob has {} bytes, expected {plain_len}",
                    stored.len()
                )));
            }
            Ok(stored.to_vec())
        }
        Encoding::Planes => decode_planes(stored, plain_len),
        Encoding::Delta => Err(Error::Invalid(
            "a delta blob needs its base (read it through the repository)".into(),
        )),
        Encoding::Zstd => {
            let mut out = plain_buffer(plain_len);
            let n =
                unzstd_into(stored, &mut out).map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
            if n != plain_len {
                return Err(Error::Invalid(format!(
                    "decoded {n} bytes, expected {plain_len}"
                )));
            }
            Ok(out)
        }
    }
}

/// What a repository's format version lets a delta writer use (`repo/FORMAT.md`,
/// "Encoding 3"). Readers take every method and depth whatever the version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaFormat {
    /// A writer stores a delta only while its chain depth stays at or below this; past it, a
    /// keyframe (an ordinary encoding).
    pub max_depth: u8,
    /// Sparse XORs of float tensors may be stored element by element (method 4).
    pub sparse_elements: bool,
    /// Dense XORs (methods 0-2) may be stored. Every version allows them; a writer turns them
    /// off when restore speed matters more than size: a block that changed everywhere then
    /// restores from one blob instead of its keyframe and a dense delta (see
    /// `BlobWriter::dense_deltas`).
    pub dense: bool,
}

impl DeltaFormat {
    /// Versions 2 and 3: sparse runs (method 3), chains up to depth 32.
    pub const V2: DeltaFormat = DeltaFormat {
        max_depth: 32,
        sparse_elements: false,
        dense: true,
    };
    /// Version 4: sparse elements (method 4), chains up to depth 64: a keyframe every 65
    /// steps of a fine-tune instead of every 33 (its keyframes were ~0.02 of each step).
    pub const V4: DeltaFormat = DeltaFormat {
        max_depth: 64,
        sparse_elements: true,
        dense: true,
    };

    /// This format with chains bounded to `max_chain` (a depth: a sparse link counts
    /// [`SPARSE_DEPTH_COST`], a dense one [`DENSE_DEPTH_COST`]) when that is shorter than the
    /// format's own bound: a writer's choice of restore speed over size. 0 stores no deltas.
    pub fn with_max_chain(self, max_chain: Option<u8>) -> DeltaFormat {
        DeltaFormat {
            max_depth: max_chain.map_or(self.max_depth, |c| c.min(self.max_depth)),
            ..self
        }
    }
}

/// Depth a sparse delta adds to its base's (cheap to apply: only the changed bytes).
pub const SPARSE_DEPTH_COST: u8 = 1;
/// Depth a dense delta adds (applying it decodes a whole chunk's worth of XOR).
pub const DENSE_DEPTH_COST: u8 = 4;
/// Readers follow at most this many bases (a longer chain is damage, e.g. a cycle).
pub const MAX_READ_CHAIN: usize = 64;
/// Bytes before a delta's payload: base ID, depth, method.
pub const DELTA_HEADER: usize = 34;
/// Delta payload method: runs of the XOR's non-zero bytes, one zstd frame.
pub(crate) const SPARSE: u8 = 3;
/// Delta payload method (version 4): the XOR's changed elements, a stream per byte.
pub(crate) const SPARSE_ELEMENTS: u8 = 4;

/// What a delta blob's first [`DELTA_HEADER`] bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaHeader {
    /// The blob whose plain bytes this delta is XORed with.
    pub base: crate::id::Id,
    /// Chain depth: the base's depth (0 for a keyframe) plus this delta's cost.
    pub depth: u8,
    /// How the XOR is stored: 0 raw, 1 zstd, 2 byte planes (as encodings 0-2), 3 sparse runs,
    /// 4 sparse elements.
    pub method: u8,
}

impl DeltaHeader {
    /// What this delta adds to its base's chain depth ([`SPARSE_DEPTH_COST`] or
    /// [`DENSE_DEPTH_COST`]).
    pub fn cost(&self) -> u8 {
        if self.is_sparse() {
            SPARSE_DEPTH_COST
        } else {
            DENSE_DEPTH_COST
        }
    }

    /// True for the methods that store only the changed bytes (3 and 4).
    pub fn is_sparse(&self) -> bool {
        matches!(self.method, SPARSE | SPARSE_ELEMENTS)
    }
}

/// Parses a delta blob's header.
pub fn delta_header(stored: &[u8]) -> Result<DeltaHeader> {
    let bad = |m: &str| Error::Invalid(format!("xor-delta: {m}"));
    if stored.len() < DELTA_HEADER {
        return Err(bad("shorter than its header"));
    }
    let h = DeltaHeader {
        base: crate::id::Id(stored[..32].try_into().expect("32")),
        depth: stored[32],
        method: stored[33],
    };
    if h.depth == 0 || h.method > SPARSE_ELEMENTS {
        return Err(bad(&format!(
            "bad header (depth {}, method {})",
            h.depth, h.method
        )));
    }
    Ok(h)
}

thread_local! {
    /// The XOR and the sparse runs of the chunk being delta-encoded, reused per thread.
    static DELTA_SCRATCH: RefCell<(Vec<u8>, Vec<u8>, Vec<u8>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    /// The same for sparse elements.
    static ELEMENT_SCRATCH: RefCell<sparse::Scratch> = RefCell::new(sparse::Scratch::default());
}

/// Why [`encode_delta`] stored nothing: the block is to be stored as a keyframe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Base and block differ in length (or are empty).
    Length,
    /// The chain would grow past its depth bound.
    Depth,
    /// The XOR is dense and may not be stored: dense links are off, or the base is itself a
    /// delta (a dense link sits only directly on a keyframe).
    Dense,
}

/// The blob a delta is taken against.
#[derive(Clone, Copy)]
pub struct DeltaBase<'a> {
    /// Its plain bytes (as long as the chunk being encoded).
    pub plain: &'a [u8],
    pub id: &'a crate::id::Id,
    /// Its chain depth (0 for a keyframe).
    pub depth: u8,
}

/// Encodes `plain` as its XOR with `base` into `out`: the header, then the XOR stored sparse when it is
/// mostly zeros (element by element where `format` allows and `width` is a float's, else
/// runs of its non-zero bytes, zstd), else as [`encode_typed`] stores a chunk.
/// Refused when the chain would grow past `format.max_depth` or the lengths differ: store a
/// keyframe; and when the XOR is dense and `format.dense` is off or the base is itself a
/// delta: a dense link sits only directly on a keyframe (the caller may try the chain's
/// keyframe as the base), so that reading any chunk costs at most one dense decode beyond its
/// keyframe, the sparse links above it being cheap. The caller compares the size with a plain
/// encoding.
pub fn encode_delta(
    plain: &[u8],
    base: DeltaBase,
    width: u8,
    zstd_level: i32,
    format: DeltaFormat,
    out: &mut Vec<u8>,
) -> std::result::Result<u8, Refused> {
    let DeltaBase {
        plain: base,
        id: base_id,
        depth: base_depth,
    } = base;
    if plain.len() != base.len() || plain.is_empty() {
        return Err(Refused::Length);
    }
    let bounded = |depth: u8, cost: u8| {
        depth
            .checked_add(cost)
            .filter(|&d| d <= format.max_depth)
            .ok_or(Refused::Depth)
    };
    DELTA_SCRATCH.with(|cell| {
        let (xor, runs, enc) = &mut *cell.borrow_mut();
        xor.clear();
        xor.extend(plain.iter().zip(base).map(|(a, b)| a ^ b));
        let limit = plain.len() / 8;
        if format.sparse_elements {
            let depth = bounded(base_depth, SPARSE_DEPTH_COST)?;
            out.clear();
            out.extend_from_slice(&base_id.0);
            out.extend_from_slice(&[depth, SPARSE_ELEMENTS]);
            let fits = ELEMENT_SCRATCH.with(|s| {
                let s = &mut *s.borrow_mut();
                sparse::encode(xor, width.into(), limit, zstd_level, s, out)
            });
            if fits {
                return Ok(depth);
            }
        }
        let (method, cost) = if sparse_runs(xor, limit, runs) {
            (SPARSE, SPARSE_DEPTH_COST)
        } else if base_depth == 0 && format.dense {
            (u8::MAX, DENSE_DEPTH_COST)
        } else {
            return Err(Refused::Dense);
        };
        let depth = bounded(base_depth, cost)?;
        out.clear();
        out.extend_from_slice(&base_id.0);
        out.push(depth);
        if method == SPARSE {
            out.push(SPARSE);
            // A frame of runs is at most plain/8 bytes: zstd never fails on it.
            zstd_into(runs, zstd_level, enc).ok_or(Refused::Dense)?;
            out.extend_from_slice(enc);
        } else {
            let e = encode_typed(xor, width, zstd_level, enc);
            out.push(e as u8);
            out.extend_from_slice(if e == Encoding::Raw { xor } else { enc });
        }
        Ok(depth)
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline(always)]
fn get_varint(data: &[u8], at: &mut usize) -> Option<usize> {
    // Runs' lengths and most gaps take one or two bytes: those without the loop (the sparse
    // links of a fine-tune chain are ~16 M runs per GiB restored).
    let b0 = *data.get(*at)?;
    if b0 < 0x80 {
        *at += 1;
        return Some(b0 as usize);
    }
    if let Some(&b1) = data.get(*at + 1) {
        if b1 < 0x80 {
            *at += 2;
            return Some((b0 & 0x7f) as usize | (b1 as usize) << 7);
        }
    }
    get_varint_long(data, at)
}

fn get_varint_long(data: &[u8], at: &mut usize) -> Option<usize> {
    let mut v = 0usize;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        v |= ((b & 0x7f) as usize).checked_shl(shift)?;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Writes the runs of `xor`'s non-zero bytes (gaps of up to two zeros stay inside a run) as
/// `(gap, len, bytes)` triples into `out`; false once they pass `limit` bytes.
fn sparse_runs(xor: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    let n = xor.len();
    let (mut i, mut last) = (0, 0);
    while i < n {
        while i + 8 <= n && xor[i..i + 8] == [0; 8] {
            i += 8;
        }
        while i < n && xor[i] == 0 {
            i += 1;
        }
        if i == n {
            break;
        }
        let start = i;
        let mut end = i + 1;
        let mut j = end;
        while j < n && j - end < 3 {
            if xor[j] != 0 {
                end = j + 1;
            }
            j += 1;
        }
        put_varint(out, start - last);
        put_varint(out, end - start);
        out.extend_from_slice(&xor[start..end]);
        if out.len() > limit {
            return false;
        }
        (i, last) = (end, end);
    }
    true
}

/// Turns `base` (the plain bytes of the delta's base, `plain_len` of them) into the delta
/// blob's plain bytes, in place.
pub fn apply_delta(stored: &[u8], base: &mut [u8], plain_len: usize) -> Result<()> {
    let bad = |m: String| Error::Invalid(format!("xor-delta: {m}"));
    let h = delta_header(stored)?;
    if base.len() != plain_len {
        return Err(bad(format!(
            "base has {} bytes, the delta {plain_len}",
            base.len()
        )));
    }
    let payload = &stored[DELTA_HEADER..];
    if h.method == SPARSE_ELEMENTS {
        return sparse::apply(payload, base).map_err(bad);
    }
    if h.method == SPARSE {
        let runs = unzstd(payload, plain_len + 64).map_err(|e| bad(format!("zstd: {e}")))?;
        let mut at = 0;
        let mut pos = 0usize;
        while at < runs.len() {
            let gap = get_varint(&runs, &mut at);
            let len = get_varint(&runs, &mut at);
            let (Some(gap), Some(len)) = (gap, len) else {
                return Err(bad("truncated run".into()));
            };
            let start = pos
                .checked_add(gap)
                .filter(|s| s.checked_add(len).is_some_and(|e| e <= plain_len));
            let bytes = at.checked_add(len).and_then(|e| runs.get(at..e));
            let (Some(start), Some(bytes)) = (start, bytes) else {
                return Err(bad("run past the end".into()));
            };
            for (b, x) in base[start..start + len].iter_mut().zip(bytes) {
                *b ^= x;
            }
            at += len;
            pos = start + len;
        }
        return Ok(());
    }
    let enc = Encoding::from_u8(h.method).ok_or_else(|| bad("bad method".into()))?;
    let xor_onto = |base: &mut [u8], xor: &[u8]| {
        if xor.len() != plain_len {
            return Err(bad("XOR of the wrong length".into()));
        }
        base.iter_mut().zip(xor).for_each(|(b, x)| *b ^= x);
        Ok(())
    };
    match enc {
        Encoding::Raw => xor_onto(base, payload),
        Encoding::Planes => planes_into(payload, base, true),
        _ => {
            let xor = decode(enc, payload, plain_len)?;
            xor_onto(base, &xor)?;
            recycle(xor);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressible_data_is_zstd_and_random_data_is_raw() {
        let zeros = vec![0u8; 100_000];
        let (enc, stored) = encode(&zeros, 3);
        assert_eq!(enc, Encoding::Zstd);
        assert!(stored.len() < 1000);

        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (enc, stored) = encode(&noise, 3);
        assert_eq!(enc, Encoding::Raw);
        assert_eq!(stored, noise);
    }

    #[test]
    fn decode_rejects_wrong_lengths_and_garbage() {
        let (enc, stored) = encode(&[7u8; 4096], 3);
        assert!(decode(enc, &stored, 4095).is_err());
        assert!(decode(Encoding::Zstd, b"not zstd at all", 10).is_err());
        assert!(decode(Encoding::Raw, b"abc", 4).is_err());
    }

    #[test]
    fn encode_into_chooses_and_stores_as_encode_does() {
        let mut out = Vec::new();
        let mut weights = vec![0u8; 300_000];
        tvault_workload::fill_weights(
            &mut tvault_workload::Rng::new(4),
            tvault_workload::Dtype::BF16,
            &mut weights,
        );
        let noise: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for data in [&weights[..], &noise[..], &[0u8; 5000][..], &[][..]] {
            for level in [1, 3] {
                let (enc, stored) = encode(data, level);
                assert_eq!(encode_into(data, level, &mut out), enc);
                match enc {
                    Encoding::Raw => assert!(out.is_empty()),
                    _ => assert_eq!(out, stored),
                }
            }
        }
    }

    fn stored<'a>(enc: Encoding, plain: &'a [u8], out: &'a [u8]) -> &'a [u8] {
        if enc == Encoding::Raw {
            plain
        } else {
            out
        }
    }

    #[test]
    fn float_chunks_store_as_planes_below_plain_zstd() {
        use tvault_workload::{fill_weights, Dtype, Rng};
        let mut out = Vec::new();
        for (dtype, width) in [(Dtype::BF16, 2u8), (Dtype::F16, 2), (Dtype::F32, 4)] {
            let mut w = vec![0u8; 512 * 1024];
            fill_weights(&mut Rng::new(5), dtype, &mut w);
            let (_, z) = encode(&w, 1);
            let enc = encode_typed(&w, width, 1, &mut out);
            assert_eq!(enc, Encoding::Planes, "{dtype:?}");
            assert!(
                out.len() < z.len(),
                "{dtype:?}: {} vs zstd {}",
                out.len(),
                z.len()
            );
            assert_eq!(decode(enc, &out, w.len()).unwrap(), w);
        }
        // All zeros: zstd beats any plane coding; odd lengths keep their tail.
        for data in [vec![0u8; 100_001], vec![3u8; 5000]] {
            let enc = encode_typed(&data, 4, 1, &mut out);
            assert!(stored(enc, &data, &out).len() < 200, "{enc:?}");
            assert_eq!(
                decode(enc, stored(enc, &data, &out), data.len()).unwrap(),
                data
            );
        }
        // Noise: raw.
        let mut noise = vec![0u8; 70_000];
        tvault_workload::Rng::new(1).fill_bytes(&mut noise);
        assert_eq!(encode_typed(&noise, 2, 1, &mut out), Encoding::Raw);
    }

    #[test]
    fn damaged_planes_are_refused() {
        let mut w = vec![0u8; 64 * 1024];
        tvault_workload::fill_weights(
            &mut tvault_workload::Rng::new(2),
            tvault_workload::Dtype::BF16,
            &mut w,
        );
        let mut out = Vec::new();
        assert_eq!(encode_typed(&w, 2, 1, &mut out), Encoding::Planes);
        assert!(decode(Encoding::Planes, &out[..out.len() - 1], w.len()).is_err());
        let mut bad_width = out.clone();
        bad_width[0] = 3;
        assert!(decode(Encoding::Planes, &bad_width, w.len()).is_err());
        let mut bad_method = out.clone();
        bad_method[1] = 9;
        assert!(decode(Encoding::Planes, &bad_method, w.len()).is_err());
        assert_eq!(Encoding::from_u8(4), None);
    }

    proptest! {
        #[test]
        fn planes_round_trip(data in proptest::collection::vec(0u8..8, 0..20_000), width in prop_oneof![Just(2u8), Just(4), Just(8)]) {
            let mut out = Vec::new();
            let enc = encode_typed(&data, width, 1, &mut out);
            let s = stored(enc, &data, &out);
            prop_assert!(s.len() <= data.len());
            prop_assert_eq!(decode(enc, s, data.len()).unwrap(), data);
        }

        #[test]
        fn damaged_planes_never_panic(data in proptest::collection::vec(0u8..30, 4096..9000), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..5)) {
            let mut out = Vec::new();
            if encode_typed(&data, 2, 1, &mut out) == Encoding::Planes {
                for (at, b) in flips {
                    let n = out.len();
                    out[at % n] ^= b;
                }
                let _ = decode(Encoding::Planes, &out, data.len());
            }
        }

        #[test]
        fn encode_decode_round_trips(data in proptest::collection::vec(0u8..4, 0..20_000)) {
            let (enc, stored) = encode(&data, 1);
            prop_assert!(stored.len() <= data.len());
            prop_assert_eq!(decode(enc, &stored, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn deltas_round_trip_sparse_and_dense() {
        use crate::id::Id;
        use tvault_workload::{fill_weights, Dtype, Rng};
        let mut base = vec![0u8; 512 * 1024];
        fill_weights(&mut Rng::new(7), Dtype::BF16, &mut base);
        let base_id = Id::of(&base);
        let mut out = Vec::new();
        // Sparse: a few changed elements.
        let mut new = base.clone();
        for i in (0..new.len()).step_by(997) {
            new[i] ^= 0x5a;
        }
        let depth = encode_delta(
            &new,
            DeltaBase {
                plain: &base,
                id: &base_id,
                depth: 3,
            },
            2,
            1,
            DeltaFormat::V2,
            &mut out,
        )
        .unwrap();
        assert_eq!(depth, 3 + SPARSE_DEPTH_COST);
        assert!(out.len() < new.len() / 50, "{}", out.len());
        let h = delta_header(&out).unwrap();
        assert_eq!((h.base, h.depth, h.method), (base_id, depth, SPARSE));
        let mut plain = base.clone();
        apply_delta(&out, &mut plain, new.len()).unwrap();
        assert_eq!(plain, new);
        // Dense: every element changed.
        let mut dense = base.clone();
        fill_weights(&mut Rng::new(8), Dtype::BF16, &mut dense);
        let depth = encode_delta(
            &dense,
            DeltaBase {
                plain: &base,
                id: &base_id,
                depth: 0,
            },
            2,
            1,
            DeltaFormat::V2,
            &mut out,
        )
        .unwrap();
        assert_eq!(depth, DENSE_DEPTH_COST);
        let mut plain = base.clone();
        apply_delta(&out, &mut plain, dense.len()).unwrap();
        assert_eq!(plain, dense);
        // Dense deltas off, or on top of another delta: refused as dense.
        let key = |depth| DeltaBase {
            plain: &base,
            id: &base_id,
            depth,
        };
        let off = DeltaFormat {
            dense: false,
            ..DeltaFormat::V4
        };
        let refused = encode_delta(&dense, key(0), 2, 1, off, &mut out);
        assert_eq!(refused, Err(Refused::Dense));
        let refused = encode_delta(&dense, key(1), 2, 1, DeltaFormat::V4, &mut out);
        assert_eq!(refused, Err(Refused::Dense));
        // A sparse one still goes through with dense deltas off.
        assert_eq!(encode_delta(&new, key(0), 2, 1, off, &mut out), Ok(1));
        let refused = encode_delta(&new, key(64), 2, 1, off, &mut out);
        assert_eq!(refused, Err(Refused::Depth));
        // Past the depth bound: no delta.
        assert!(encode_delta(
            &new,
            DeltaBase {
                plain: &base,
                id: &base_id,
                depth: DeltaFormat::V2.max_depth
            },
            2,
            1,
            DeltaFormat::V2,
            &mut out
        )
        .is_err());
        // Damage is refused, never a panic.
        encode_delta(
            &new,
            DeltaBase {
                plain: &base,
                id: &base_id,
                depth: 0,
            },
            2,
            1,
            DeltaFormat::V2,
            &mut out,
        )
        .unwrap();
        let mut plain = base.clone();
        assert!(apply_delta(&out[..out.len() - 3], &mut plain, new.len()).is_err());
        assert!(apply_delta(&out, &mut plain[..100], new.len()).is_err());
    }

    #[test]
    fn version_4_stores_sparse_xors_element_by_element_below_runs() {
        use crate::id::Id;
        use tvault_workload::{fill_weights, Dtype, Rng};
        let mut base = vec![0u8; 512 * 1024];
        fill_weights(&mut Rng::new(7), Dtype::BF16, &mut base);
        let base_id = Id::of(&base);
        // ~1 % of the elements nudged, as a fine-tuning step does.
        let mut new = base.clone();
        let mut rng = Rng::new(9);
        for _ in 0..base.len() / 200 {
            let e = (rng.next_u64() as usize % (base.len() / 2)) * 2;
            new[e] ^= (rng.next_u64() % 7 + 1) as u8;
        }
        let (mut runs, mut elements) = (Vec::new(), Vec::new());
        // The step's delta against `base` at `depth`, in `width`-byte elements.
        let encode = |depth, width, format, out: &mut Vec<u8>| {
            let base = DeltaBase {
                plain: &base,
                id: &base_id,
                depth,
            };
            encode_delta(&new, base, width, 1, format, out)
        };
        encode(0, 2, DeltaFormat::V2, &mut runs).unwrap();
        let depth = encode(40, 2, DeltaFormat::V4, &mut elements).unwrap();
        assert_eq!(depth, 41, "version 4 chains pass depth 32");
        let h = delta_header(&elements).unwrap();
        assert_eq!((h.method, h.cost()), (SPARSE_ELEMENTS, SPARSE_DEPTH_COST));
        assert!(
            elements.len() < runs.len(),
            "{} vs {}",
            elements.len(),
            runs.len()
        );
        let mut plain = base.clone();
        apply_delta(&elements, &mut plain, new.len()).unwrap();
        assert_eq!(plain, new);
        // The bound of version 4, and a width with no element streams (runs instead).
        assert!(encode(64, 2, DeltaFormat::V4, &mut elements).is_err());
        encode(0, 1, DeltaFormat::V4, &mut elements).unwrap();
        assert_eq!(delta_header(&elements).unwrap().method, SPARSE);
        // Damage is refused: a cut stream, a count past the elements, a stray byte.
        encode(0, 2, DeltaFormat::V4, &mut elements).unwrap();
        let mut plain = base.clone();
        assert!(apply_delta(&elements[..elements.len() - 3], &mut plain, new.len()).is_err());
        let mut extra = elements.clone();
        extra.push(0);
        assert!(apply_delta(&extra, &mut plain, new.len()).is_err());
        let mut count = elements.clone();
        count[DELTA_HEADER + 1..DELTA_HEADER + 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(apply_delta(&count, &mut plain, new.len()).is_err());
    }

    #[test]
    fn decoding_into_a_recycled_buffer_overwrites_every_stale_byte() {
        use tvault_workload::{fill_weights, Dtype, Rng};
        // Odd length: a tail after the planes' whole elements.
        let mut weights = vec![0u8; 300_001];
        fill_weights(&mut Rng::new(3), Dtype::BF16, &mut weights[..300_000]);
        let text = b"tokenizer ".repeat(30_000);
        let mut out = Vec::new();
        for (plain, width) in [(&weights[..], 2), (&text[..], 1)] {
            let enc = encode_typed(plain, width, 1, &mut out);
            assert!(matches!(enc, Encoding::Planes | Encoding::Zstd), "{enc:?}");
            // A spare of another blob's stale bytes, longer than this one.
            recycle(vec![0xee; plain.len() + 4096]);
            assert_eq!(decode(enc, &out, plain.len()).unwrap(), plain, "{enc:?}");
            recycle(vec![0xee; plain.len() - 1000]);
            assert_eq!(decode(enc, &out, plain.len()).unwrap(), plain, "{enc:?}");
        }
        // A dense delta is XORed onto its base plane by plane, tail included.
        let mut next = weights.clone();
        fill_weights(&mut Rng::new(4), Dtype::BF16, &mut next[..300_000]);
        next[300_000] ^= 0x81;
        let id = crate::id::Id::of(&weights);
        encode_delta(
            &next,
            DeltaBase {
                plain: &weights,
                id: &id,
                depth: 0,
            },
            2,
            1,
            DeltaFormat::V2,
            &mut out,
        )
        .unwrap();
        assert_eq!(delta_header(&out).unwrap().method, Encoding::Planes as u8);
        recycle(vec![0xee; next.len()]);
        let mut plain = weights.clone();
        apply_delta(&out, &mut plain, next.len()).unwrap();
        assert_eq!(plain, next);
    }

    proptest! {
        /// The codec's loops dispatched at run time (AVX2/AVX-512 clones where the CPU has
        /// them) give exactly what the portable build of the same code gives.
        #[test]
        fn dispatched_loops_match_the_portable_build(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            skew in 1u8..=255,
            w in prop::sample::select(vec![2usize, 4, 8]),
        ) {
            // Skewed bytes (like exponent planes) as well as noise.
            let skewed: Vec<u8> = data.iter().map(|b| b % skew).collect();
            for bytes in [&data, &skewed] {
                let whole = &bytes[..bytes.len() / w * w];
                let (mut a, mut b) = (Vec::new(), Vec::new());
                split_planes(whole, w, &mut a);
                split_planes_portable(whole, w, &mut b);
                prop_assert_eq!(&a, &b);
                let freq = huffman::histogram(bytes);
                prop_assert_eq!(freq, huffman::histogram_portable(bytes));
                let lens = huffman::code_lengths(&freq);
                let (mut x, mut y) = (Vec::new(), Vec::new());
                huffman::encode(bytes, &lens, &mut x);
                huffman::encode_portable(bytes, &lens, &mut y);
                prop_assert_eq!(&x, &y);
                let mut back = vec![0; bytes.len()];
                prop_assert_eq!(huffman::decode(&x, &mut back), Ok(()));
                prop_assert_eq!(&back, bytes);
            }
        }

        #[test]
        fn sparse_runs_round_trip(base in proptest::collection::vec(any::<u8>(), 1..3000), flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..40)) {
            let mut new = base.clone();
            for (at, x) in flips {
                let n = new.len();
                new[at % n] ^= x;
            }
            let id = crate::id::Id::of(&base);
            let mut out = Vec::new();
            for (format, width) in [(DeltaFormat::V2, 2), (DeltaFormat::V4, 2), (DeltaFormat::V4, 4), (DeltaFormat::V4, 8)] {
                if encode_delta(&new, DeltaBase { plain: &base, id: &id, depth: 0 }, width, 1, format, &mut out).is_ok() {
                    let mut plain = base.clone();
                    apply_delta(&out, &mut plain, new.len()).unwrap();
                    prop_assert_eq!(&plain, &new);
                }
            }
        }

        #[test]
        fn damaged_element_deltas_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
            let base: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
            let mut new = base.clone();
            for i in (0..new.len()).step_by(61) {
                new[i] ^= 3;
            }
            let mut out = Vec::new();
            encode_delta(&new, DeltaBase { plain: &base, id: &crate::id::Id::of(&base), depth: 0 }, 2, 1, DeltaFormat::V4, &mut out).unwrap();
            for (at, x) in flips {
                let n = out.len() - DELTA_HEADER;
                out[DELTA_HEADER + at % n] ^= x;
            }
            let mut plain = base.clone();
            let _ = apply_delta(&out, &mut plain, new.len());
        }

        #[test]
        fn damaged_deltas_never_panic(stored in proptest::collection::vec(any::<u8>(), 0..200), len in 0usize..500) {
            let mut base = vec![1u8; len];
            let _ = apply_delta(&stored, &mut base, len);
        }
    }
}
