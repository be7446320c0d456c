//! Sparse XOR deltas stored element by element (delta method 4, format version 4): the
//! positions of the changed elements, then each byte of the changed elements as its own
//! stream. A fine-tuning step changes ~1 % of a tensor's values at scattered positions; its
//! XOR's low bytes are noise while its high bytes (sign, exponent) are nearly all zero, so
//! separate streams compress each to its own statistics. Method 3 interleaves the
//! `(gap, len, bytes)` runs in one stream: on the `finetune` steps this stores 17 % less
//! (0.0088 against 0.0106 of a step's size; order-0 entropy bound 0.0080).
//! Layout: `repo/FORMAT.md`, "Encoding 3".

use super::{get_varint, put_varint, split_planes, unzstd, unzstd_into, zstd_into};

/// The element widths of float tensors (bf16/f16, f32, f64).
const WIDTHS: [usize; 3] = [2, 4, 8];

/// Reused per thread: the gaps, the changed elements' bytes and their planes.
#[derive(Default)]
pub(super) struct Scratch {
    gaps: Vec<u8>,
    values: Vec<u8>,
    planes: Vec<u8>,
    frame: Vec<u8>,
}

/// Appends `xor`'s changed `width`-byte elements to `out` as a method-4 payload; false when
/// the width is not a float's, `xor` is not whole elements, or the positions and values
/// pass `limit` bytes before compression (dense: another method fits better).
pub(super) fn encode(
    xor: &[u8],
    width: usize,
    limit: usize,
    zstd_level: i32,
    s: &mut Scratch,
    out: &mut Vec<u8>,
) -> bool {
    if !WIDTHS.contains(&width) || xor.len() % width != 0 {
        return false;
    }
    s.gaps.clear();
    s.values.clear();
    let elements = xor.len() / width;
    let (mut e, mut next) = (0, 0);
    while e < elements {
        let at = e * width;
        // Whole zero words first: most of a fine-tuning step's XOR.
        if at + 8 <= xor.len() && xor[at..at + 8] == [0; 8] {
            e += 8 / width;
            continue;
        }
        let element = &xor[at..at + width];
        if element.iter().any(|&b| b != 0) {
            put_varint(&mut s.gaps, e - next);
            s.values.extend_from_slice(element);
            next = e + 1;
            if s.gaps.len() + s.values.len() > limit {
                return false;
            }
        }
        e += 1;
    }
    let n = s.values.len() / width;
    split_planes(&s.values, width, &mut s.planes);
    out.push(width as u8);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    let lens_at = out.len();
    out.resize(lens_at + 4 * (width + 1), 0);
    let streams = std::iter::once(&s.gaps[..]).chain(s.planes.chunks(n.max(1)).take(width));
    for (i, stream) in streams.enumerate() {
        let Some(len) = zstd_into(stream, zstd_level, &mut s.frame) else {
            return false;
        };
        out[lens_at + 4 * i..lens_at + 4 * i + 4].copy_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&s.frame);
    }
    true
}

/// XORs a method-4 payload into `base` (the base's plain bytes, turned into the delta's).
pub(super) fn apply(payload: &[u8], base: &mut [u8]) -> Result<(), String> {
    let width = *payload.first().ok_or("empty element payload")? as usize;
    if !WIDTHS.contains(&width) || base.len() % width != 0 {
        return Err(format!("element width {width} for {} bytes", base.len()));
    }
    let field = |at: usize| -> Result<usize, String> {
        let b = payload.get(at..at + 4).ok_or("truncated element header")?;
        Ok(u32::from_le_bytes(b.try_into().expect("4")) as usize)
    };
    let n = field(1)?;
    let elements = base.len() / width;
    if n > elements {
        return Err(format!("{n} changed elements of {elements}"));
    }
    let mut at = 5 + 4 * (width + 1);
    let mut frames = Vec::with_capacity(width + 1);
    for i in 0..=width {
        let len = field(5 + 4 * i)?;
        let frame = at
            .checked_add(len)
            .and_then(|end| payload.get(at..end))
            .ok_or("element stream past the end")?;
        frames.push(frame);
        at += len;
    }
    if at != payload.len() {
        return Err("bytes after the element streams".into());
    }
    // A gap takes at most 5 bytes (elements < 2^32 in a chunk).
    let gaps = unzstd(frames[0], n * 5).map_err(|e| format!("zstd: {e}"))?;
    let mut planes = vec![0u8; n * width];
    for (p, plane) in planes.chunks_mut(n.max(1)).take(width).enumerate() {
        let got = unzstd_into(frames[p + 1], plane).map_err(|e| format!("zstd: {e}"))?;
        if got != n {
            return Err(format!("plane {p} holds {got} bytes, not {n}"));
        }
    }
    match width {
        2 => scatter::<2>(&gaps, &planes, n, base),
        4 => scatter::<4>(&gaps, &planes, n, base),
        8 => scatter::<8>(&gaps, &planes, n, base),
        _ => Err(format!("element width {width}")),
    }
}

/// XORs `n` changed `W`-byte elements into `base`: their positions as the varint gaps
/// `gaps`, their bytes as `W` planes of `n` bytes each. One copy per width, so that an
/// element is one fixed-size XOR (the general loop cost ~7 ns per element: a 40-step chain's
/// restore spent 15 % of its time here).
fn scatter<const W: usize>(
    gaps: &[u8],
    planes: &[u8],
    n: usize,
    base: &mut [u8],
) -> Result<(), String> {
    let planes: [&[u8]; W] = std::array::from_fn(|p| &planes[p * n..(p + 1) * n]);
    let elements = base.len() / W;
    let (mut g, mut next) = (0, 0usize);
    for i in 0..n {
        let e = get_varint(gaps, &mut g)
            .and_then(|gap| next.checked_add(gap))
            .filter(|&e| e < elements)
            .ok_or("element position past the end")?;
        let element: &mut [u8; W] = (&mut base[e * W..e * W + W]).try_into().expect("W bytes");
        for (b, plane) in element.iter_mut().zip(planes) {
            *b ^= plane[i];
        }
        next = e + 1;
    }
    if g != gaps.len() {
        return Err("more positions than changed elements".into());
    }
    Ok(())
}
