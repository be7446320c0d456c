//! GGUF (llama.cpp), versions 2 and 3: `"GGUF"`, u32 version, u64 tensor count, u64 key/value
//! count, the key/values (`general.alignment` among them, 32 by default), the tensor infos
//! (name, dims, ggml type, offset relative to the data section), then the data section at the
//! next multiple of the alignment. All little-endian.
//!
//! The header is parsed from a prefix of the file read into memory, doubled (up to
//! [`super::MAX_HEADER`]) while the parse needs more, so a hostile count never allocates.

use super::{read_vec, Region, RegionKind, Source, TensorInfo, MAX_HEADER};

pub const MAGIC: &[u8; 4] = b"GGUF";

const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML_MAX_DIMS is 4; a little room for newer files.
const MAX_DIMS: u32 = 8;
/// Arrays of arrays nest at most this deep.
const MAX_NESTING: u32 = 4;

/// Why a parse of the prefix stopped.
enum Stop {
    /// The prefix ended: read more of the file and parse again.
    More,
    Bad(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Bad(s)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], Stop> {
        let n = usize::try_from(n).map_err(|_| Stop::Bad("length overflows".into()))?;
        let end = self.at.checked_add(n).ok_or(Stop::More)?;
        let s = self.buf.get(self.at..end).ok_or(Stop::More)?;
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Stop> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, Stop> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<&'a [u8], Stop> {
        let n = self.u64()?;
        if n > MAX_HEADER {
            return Err(Stop::Bad(format!("a string of {n} bytes")));
        }
        self.take(n)
    }
}

/// Size of one value of a fixed-size metadata type, `None` for strings and arrays.
fn scalar_size(ty: u32) -> Result<Option<u64>, Stop> {
    Ok(Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 | 9 => return Ok(None),
        _ => return Err(Stop::Bad(format!("unknown metadata value type {ty}"))),
    }))
}

fn skip_value(c: &mut Cursor, ty: u32, depth: u32) -> Result<(), Stop> {
    if let Some(size) = scalar_size(ty)? {
        c.take(size)?;
        return Ok(());
    }
    if ty == 8 {
        c.string()?;
        return Ok(());
    }
    if depth >= MAX_NESTING {
        return Err(Stop::Bad("metadata arrays nested too deeply".into()));
    }
    let elem = c.u32()?;
    let n = c.u64()?;
    match scalar_size(elem)? {
        Some(size) => {
            let total = size
                .checked_mul(n)
                .filter(|&t| t <= MAX_HEADER)
                .ok_or_else(|| Stop::Bad(format!("an array of {n} values")))?;
            c.take(total)?;
        }
        None => {
            // Each string or array takes at least 8 bytes: a count past that is hostile.
            if n > MAX_HEADER / 8 {
                return Err(Stop::Bad(format!("an array of {n} values")));
            }
            for _ in 0..n {
                skip_value(c, elem, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// (block elements, block bytes) of a ggml type, and its name.
fn ggml_type(ty: u32) -> Option<(u64, u64, &'static str)> {
    Some(match ty {
        0 => (1, 4, "F32"),
        1 => (1, 2, "F16"),
        2 => (32, 18, "Q4_0"),
        3 => (32, 20, "Q4_1"),
        6 => (32, 22, "Q5_0"),
        7 => (32, 24, "Q5_1"),
        8 => (32, 34, "Q8_0"),
        9 => (32, 36, "Q8_1"),
        10 => (256, 84, "Q2_K"),
        11 => (256, 110, "Q3_K"),
        12 => (256, 144, "Q4_K"),
        13 => (256, 176, "Q5_K"),
        14 => (256, 210, "Q6_K"),
        15 => (256, 292, "Q8_K"),
        16 => (256, 66, "IQ2_XXS"),
        17 => (256, 74, "IQ2_XS"),
        18 => (256, 98, "IQ3_XXS"),
        19 => (256, 50, "IQ1_S"),
        20 => (32, 18, "IQ4_NL"),
        21 => (256, 110, "IQ3_S"),
        22 => (256, 82, "IQ2_S"),
        23 => (256, 136, "IQ4_XS"),
        24 => (1, 1, "I8"),
        25 => (1, 2, "I16"),
        26 => (1, 4, "I32"),
        27 => (1, 8, "I64"),
        28 => (1, 8, "F64"),
        29 => (256, 56, "IQ1_M"),
        30 => (1, 2, "BF16"),
        _ => return None,
    })
}

/// The byte size of a tensor of a known ggml type (its `dtype` as [`parse`] names it), without
/// the alignment padding after it; `None` for types this build does not know.
pub fn byte_size(info: &TensorInfo) -> Option<u64> {
    let (block, bytes, _) = (0..=30).filter_map(ggml_type).find(|t| t.2 == info.dtype)?;
    let numel = info.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    (numel / block).checked_mul(bytes)
}

struct RawTensor {
    info: TensorInfo,
    offset: u64,
    /// Known byte size (`None` for ggml types this build does not know).
    size: Option<u64>,
}

/// Parses the header from `buf` (a prefix of the file): the tensors and where data begins.
fn parse_prefix(buf: &[u8]) -> Result<(Vec<RawTensor>, u64), Stop> {
    let mut c = Cursor { buf, at: 0 };
    if c.take(4)? != MAGIC {
        return Err(Stop::Bad("no GGUF magic".into()));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Stop::Bad(format!(
            "GGUF version {version} (2 and 3 are known)"
        )));
    }
    let tensor_count = c.u64()?;
    let kv_count = c.u64()?;
    // Every tensor info and key/value takes at least 8 bytes.
    for (what, n) in [("tensors", tensor_count), ("key/values", kv_count)] {
        if n > MAX_HEADER / 8 {
            return Err(Stop::Bad(format!("{n} {what}")));
        }
    }
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..kv_count {
        let key = c.string()?;
        let ty = c.u32()?;
        if key == b"general.alignment" && ty == 4 {
            let a = u64::from(c.u32()?);
            if a == 0 || !a.is_power_of_two() {
                return Err(Stop::Bad(format!("alignment {a}")));
            }
            alignment = a;
        } else {
            skip_value(&mut c, ty, 0)?;
        }
    }
    let mut tensors = Vec::new();
    for _ in 0..tensor_count {
        let name = String::from_utf8_lossy(c.string()?).into_owned();
        let n_dims = c.u32()?;
        if n_dims > MAX_DIMS {
            return Err(Stop::Bad(format!(
                "tensor {name:?} has {n_dims} dimensions"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64()?);
        }
        let ty = c.u32()?;
        let offset = c.u64()?;
        let (dtype, size) = match ggml_type(ty) {
            Some((block, bytes, name)) => {
                let numel = shape
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| Stop::Bad(format!("tensor {name:?}: shape overflows")))?;
                let size = (numel / block)
                    .checked_mul(bytes)
                    .ok_or_else(|| Stop::Bad(format!("tensor {name:?}: size overflows")))?;
                (name.to_string(), Some(size))
            }
            None => (format!("ggml_type_{ty}"), None),
        };
        if offset % alignment != 0 {
            return Err(Stop::Bad(format!(
                "tensor {name:?} at offset {offset}, not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(RawTensor {
            info: TensorInfo { name, dtype, shape },
            offset,
            size,
        });
    }
    let data_start = (c.at as u64).next_multiple_of(alignment);
    Ok((tensors, data_start))
}

/// The regions of a GGUF file: the header (up to the data section), then one per tensor, each
/// running to the next tensor's start (its alignment padding included).
pub fn parse(src: &dyn Source) -> Result<Vec<Region>, String> {
    let limit = src.len().min(MAX_HEADER);
    let mut want = limit.min(1 << 20);
    let (mut tensors, data_start) = loop {
        let buf = read_vec(src, 0, want)?;
        match parse_prefix(&buf) {
            Ok(parsed) => break parsed,
            Err(Stop::Bad(why)) => return Err(why),
            Err(Stop::More) if want < limit => want = (want * 2).min(limit),
            Err(Stop::More) => {
                return Err(if limit < src.len() {
                    format!("header larger than {MAX_HEADER} bytes")
                } else {
                    "truncated header".into()
                })
            }
        }
    };
    let len = src.len();
    if data_start > len {
        return Err("the data section starts past the end of the file".into());
    }
    tensors.sort_by_key(|t| t.offset);
    let mut regions = vec![Region {
        start: 0,
        end: data_start,
        kind: RegionKind::Header,
    }];
    for (i, t) in tensors.iter().enumerate() {
        let start = data_start
            .checked_add(t.offset)
            .filter(|&s| s <= len)
            .ok_or_else(|| format!("tensor {:?} starts past the end of the file", t.info.name))?;
        let end = match tensors.get(i + 1) {
            Some(next) if next.offset == t.offset => {
                return Err(format!(
                    "tensors {:?} and {:?} overlap",
                    t.info.name, next.info.name
                ))
            }
            Some(next) => data_start.saturating_add(next.offset).min(len),
            None => len,
        };
        if let Some(size) = t.size {
            if start.checked_add(size).is_none_or(|e| e > end) {
                return Err(format!(
                    "tensor {:?} ({size} bytes) overlaps the next one or the end of the file",
                    t.info.name
                ));
            }
        }
        regions.push(Region {
            start,
            end,
            kind: RegionKind::Tensor(t.info.clone()),
        });
    }
    Ok(regions)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A GGUF v3 file: a few key/values (an array of strings among them) and `tensors`
    /// (name, ggml type, dims), each `fill`ed, at `alignment`.
    pub(crate) fn build(tensors: &[(&str, u32, Vec<u64>)], alignment: u32) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        f.extend_from_slice(&3u64.to_le_bytes());
        string(&mut f, "general.architecture");
        f.extend_from_slice(&8u32.to_le_bytes());
        string(&mut f, "llama");
        string(&mut f, "tokenizer.ggml.tokens");
        f.extend_from_slice(&9u32.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&3u64.to_le_bytes());
        for t in ["<s>", "</s>", "hello"] {
            string(&mut f, t);
        }
        string(&mut f, "general.alignment");
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&alignment.to_le_bytes());
        let mut offset = 0u64;
        let mut sizes = Vec::new();
        for (name, ty, dims) in tensors {
            string(&mut f, name);
            f.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                f.extend_from_slice(&d.to_le_bytes());
            }
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&offset.to_le_bytes());
            let (block, bytes, _) = ggml_type(*ty).unwrap();
            let size = dims.iter().product::<u64>() / block * bytes;
            sizes.push(size);
            offset = (offset + size).next_multiple_of(u64::from(alignment));
        }
        f.resize(f.len().next_multiple_of(alignment as usize), 0);
        for (i, size) in sizes.iter().enumerate() {
            let start = f.len();
            f.extend((0..*size).map(|j| (j as u8).wrapping_mul(i as u8 + 3)));
            if i + 1 < sizes.len() {
                f.resize(
                    (start + *size as usize).next_multiple_of(alignment as usize),
                    0,
                );
            }
        }
        f
    }

    #[test]
    fn a_gguf_file_parses_into_header_and_tensors() {
        let f = build(
            &[
                ("token_embd.weight", 30, vec![64, 300]),
                ("blk.0.attn_q.weight", 12, vec![256, 100]),
                ("output_norm.weight", 0, vec![7]),
            ],
            64,
        );
        let regions = parse(&f).unwrap();
        assert_eq!(regions.len(), 4);
        assert_eq!(regions[0].kind, RegionKind::Header);
        assert_eq!(regions[0].end % 64, 0);
        let t = regions[1].tensor().unwrap();
        assert_eq!(
            (t.name.as_str(), t.dtype.as_str()),
            ("token_embd.weight", "BF16")
        );
        assert_eq!(t.shape, vec![64, 300]);
        assert_eq!(regions[1].len(), 64 * 300 * 2);
        assert_eq!(regions[2].tensor().unwrap().dtype, "Q4_K");
        assert_eq!(regions[2].len(), 100 * 144);
        assert_eq!(regions[3].end, f.len() as u64);
        let l = super::super::layout(&f);
        assert_eq!((l.format, l.warning), ("gguf", None));
    }

    #[test]
    fn hostile_gguf_headers_are_errors() {
        let good = build(&[("a", 0, vec![16])], 32);
        // Huge counts: an error, and no allocation of the claimed size.
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
        let mut huge_kv = good.clone();
        huge_kv[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(parse(&huge_kv).is_err());
        // A tensor past the end.
        let cut = &good[..good.len() - 1];
        assert!(parse(&cut).is_err());
        // Version 1 is not supported.
        let mut v1 = good.clone();
        v1[4] = 1;
        assert!(parse(&v1).is_err());
        // Overlapping tensors (same offset).
        let two = build(&[("a", 0, vec![16]), ("b", 0, vec![16])], 32);
        let mut overlap = two.clone();
        let pos = find_last_offset(&two);
        overlap[pos..pos + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(parse(&overlap).is_err());
    }

    /// Where the last tensor info's offset field is, in a file built by [`build`].
    fn find_last_offset(f: &[u8]) -> usize {
        let mut c = Cursor { buf: f, at: 24 };
        let kv = u64::from_le_bytes(f[16..24].try_into().unwrap());
        for _ in 0..kv {
            let _ = c.string().ok().unwrap();
            let ty = c.u32().ok().unwrap();
            skip_value(&mut c, ty, 0).ok().unwrap();
        }
        let n = u64::from_le_bytes(f[8..16].try_into().unwrap());
        let mut last = 0;
        for _ in 0..n {
            c.string().ok().unwrap();
            let dims = c.u32().ok().unwrap();
            c.take(8 * u64::from(dims) + 4).ok().unwrap();
            last = c.at;
            c.take(8).ok().unwrap();
        }
        last
    }

    proptest! {
        #[test]
        fn mutated_gguf_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut f = build(&[("x", 30, vec![8, 8]), ("y", 8, vec![64])], 32);
            for (at, b) in flips {
                let n = f.len();
                f[at % n] = b;
            }
            let keep = cut % (f.len() + 1);
            f.truncate(keep.max(4));
            if let Ok(regions) = parse(&f) {
                for w in regions.windows(2) {
                    prop_assert!(w[0].end <= w[1].start || w[1].is_empty());
                }
                prop_assert!(regions.iter().all(|r| r.end <= f.len() as u64));
            }
        }
    }
}
