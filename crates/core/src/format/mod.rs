//! Model file formats: parsing headers into the regions of a file (header, one per tensor).
//! Every parser treats its input as hostile: sizes are checked against the file before
//! anything is allocated, and a malformed header is an error, never a panic.
//!
//! [`layout`] is what backup uses: it recognises the format by its magic bytes, parses it, and
//! returns regions that tile the whole file. A file whose header claims a format but does not
//! parse comes back as one plain region with a warning, so it is still backed up (chunked as
//! unknown data).

pub mod gguf;
pub mod pickle;
pub mod ptzip;
pub mod safetensors;

use std::io;

/// Tensors smaller than this are not regions of their own: they join the plain data around
/// them, so a file of many tiny tensors does not become many tiny chunks.
pub const MIN_TENSOR_REGION: u64 = 16 * 1024;

/// The largest header (or zip central directory) a parser reads into memory.
pub const MAX_HEADER: u64 = safetensors::MAX_HEADER;

/// Random-access reads of a file being parsed.
pub trait Source {
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`; an error if the source ends first.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_at(buf, offset)
    }
}

impl Source for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A file and its length when it was opened.
pub struct FileSource<'a> {
    pub file: &'a std::fs::File,
    pub len: u64,
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self.file, buf, offset)
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the file")
}

/// Reads `len` bytes at `offset` after checking them against the source (never allocates more
/// than the source holds).
pub(crate) fn read_vec(src: &dyn Source, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= src.len())
        .ok_or_else(|| format!("{len} bytes at offset {offset} lie past the end of the file"))?;
    let _ = end;
    let mut buf = vec![0; len as usize];
    src.read_at(&mut buf, offset)
        .map_err(|e| format!("reading {len} bytes at {offset}: {e}"))?;
    Ok(buf)
}

/// One tensor as the file's header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// The format's own spelling (`BF16`, `F32`, `Q4_K`, …); empty when the format does not say
    /// (PyTorch storages: the dtype is in the pickle, which tvault never executes).
    pub dtype: String,
    pub shape: Vec<u64>,
}

impl TensorInfo {
    /// Bytes per element when the dtype is an IEEE-style float whose bytes can be split into
    /// planes (bf16, f16, f32, f64); 0 otherwise (integers, quantized blocks, unknown).
    pub fn float_width(&self) -> u8 {
        float_width(&self.dtype)
    }
}

/// See [`TensorInfo::float_width`].
pub fn float_width(dtype: &str) -> u8 {
    match dtype.to_ascii_uppercase().as_str() {
        "BF16" | "F16" | "FLOAT16" | "BFLOAT16" => 2,
        "F32" | "FLOAT32" => 4,
        "F64" | "FLOAT64" => 8,
        _ => 0,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// A format's header or metadata.
    Header,
    /// One tensor's bytes (with, for GGUF, the alignment padding after it).
    Tensor(TensorInfo),
    /// Anything else.
    Plain,
}

/// A byte range of a file and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
}

impl Region {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    pub fn tensor(&self) -> Option<&TensorInfo> {
        match &self.kind {
            RegionKind::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

/// A file's layout: which format it is and regions tiling it from 0 to its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `safetensors`, `gguf`, `pytorch-zip`, or `plain`.
    pub format: &'static str,
    pub regions: Vec<Region>,
    /// Why a file that looked like a model format is treated as plain data.
    pub warning: Option<String>,
}

impl Layout {
    pub fn plain(len: u64) -> Layout {
        Layout {
            format: "plain",
            regions: tile(Vec::new(), len),
            warning: None,
        }
    }
}

/// Recognises `src` by its first bytes and parses its header into regions (sorted, not yet
/// tiled: small tensors are still their own regions). `None`: not a model format.
fn parse(src: &dyn Source) -> Option<(&'static str, Result<Vec<Region>, String>)> {
    let len = src.len();
    let mut magic = [0u8; 9];
    if len < magic.len() as u64 || src.read_at(&mut magic, 0).is_err() {
        return None;
    }
    if &magic[..4] == gguf::MAGIC {
        Some(("gguf", gguf::parse(src)))
    } else if &magic[..4] == ptzip::LOCAL_MAGIC {
        match ptzip::parse(src) {
            // A zip that is not a PyTorch checkpoint is plain data, silently.
            Ok(r) if r.is_empty() => None,
            other => Some(("pytorch-zip", other)),
        }
    } else if safetensors::header_len(&magic, len).is_some() && magic[8] == b'{' {
        Some(("safetensors", safetensors_regions(src)))
    } else {
        None
    }
}

/// Every tensor the header of `src` describes, small ones included, in file order, and the
/// format's name. `None` when `src` is not a model format or its header does not parse. This
/// is what `diff`, `show --tensors` and `dump --tensor` list; [`layout`] (what backup cuts by)
/// folds tensors under [`MIN_TENSOR_REGION`] into the plain data around them.
pub fn tensors(src: &dyn Source) -> Option<(&'static str, Vec<Region>)> {
    let (format, regions) = parse(src)?;
    let tensors = regions
        .ok()?
        .into_iter()
        .filter(|r| r.tensor().is_some() && r.end <= src.len() && r.start <= r.end)
        .collect();
    Some((format, tensors))
}

/// Recognises and parses `src`. Never fails: an unknown format is one plain region, and a
/// malformed header one plain region with a warning.
pub fn layout(src: &dyn Source) -> Layout {
    let len = src.len();
    let Some(parsed) = parse(src) else {
        return Layout::plain(len);
    };
    match parsed {
        (format, Ok(regions)) => Layout {
            format,
            regions: tile(regions, len),
            warning: None,
        },
        (format, Err(why)) => Layout {
            warning: Some(format!(
                "looks like {format} but its header is malformed ({why}); backed up as plain data"
            )),
            ..Layout::plain(len)
        },
    }
}

/// Why a model file is not complete yet, or `None` when it is (or is no model file). The
/// format is recognised by the file's first bytes, as [`layout`] does: a safetensors header
/// length followed by `{`, GGUF's magic, a zip's local header (a PyTorch checkpoint among
/// others). A safetensors header, or tensors, that reach past the end of the file, a GGUF
/// header or tensor that does, a zip without its central directory (written last): that is
/// what a file still being written looks like. `backup --settle` (and so `watch`) waits for
/// such files (see `ops/settle.rs`); one that never parses is waited for until `--settle-max`
/// calls it a problem. Files shorter than 9 bytes are not judged (their mtime is).
pub fn incomplete(src: &dyn Source) -> Option<String> {
    let mut head = [0u8; 9];
    if src.len() < head.len() as u64 || src.read_at(&mut head, 0).is_err() {
        return None;
    }
    if &head[..4] == gguf::MAGIC {
        return gguf::parse(src).err();
    }
    if &head[..4] == ptzip::LOCAL_MAGIC {
        return ptzip::parse(src).err();
    }
    let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    if head[8] == b'{' && (2..=safetensors::MAX_HEADER).contains(&n) {
        return safetensors_incomplete(src, n);
    }
    None
}

/// [`incomplete`] for a safetensors file whose header is `n` bytes long: the whole header,
/// and every tensor the header places within the file.
fn safetensors_incomplete(src: &dyn Source, n: u64) -> Option<String> {
    let len = src.len();
    if 8 + n > len {
        return Some(format!(
            "its header promises {} bytes of header, the file has {len}",
            8 + n
        ));
    }
    let json = match read_vec(src, 8, n) {
        Ok(j) => j,
        Err(e) => return Some(e),
    };
    match safetensors::parse(&json, u64::MAX) {
        Err(e) => Some(e),
        Ok(tensors) => {
            let end = tensors.iter().map(|t| t.end).max().unwrap_or(8 + n);
            (end > len).then(|| format!("its header promises {end} bytes, the file has {len}"))
        }
    }
}

fn safetensors_regions(src: &dyn Source) -> Result<Vec<Region>, String> {
    let n = safetensors::header_len(&read_vec(src, 0, 8)?, src.len())
        .ok_or("header length out of range")?;
    let json = read_vec(src, 8, n)?;
    let tensors = safetensors::parse(&json, src.len())?;
    let mut regions = vec![Region {
        start: 0,
        end: 8 + n,
        kind: RegionKind::Header,
    }];
    regions.extend(tensors.into_iter().map(|t| Region {
        start: t.start,
        end: t.end,
        kind: RegionKind::Tensor(TensorInfo {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
        }),
    }));
    Ok(regions)
}

/// Makes sorted, non-overlapping regions tile `0..len`: gaps become plain, tensors smaller than
/// [`MIN_TENSOR_REGION`] become plain, and neighbouring plain regions merge. Regions that are
/// unsorted, overlap or pass `len` are a parser bug, not input: they are clipped away.
pub fn tile(regions: Vec<Region>, len: u64) -> Vec<Region> {
    let mut out: Vec<Region> = Vec::new();
    let mut at = 0;
    let push = |out: &mut Vec<Region>, mut r: Region| {
        if r.is_empty() {
            return;
        }
        if matches!(&r.kind, RegionKind::Tensor(_)) && r.len() < MIN_TENSOR_REGION {
            r.kind = RegionKind::Plain;
        }
        if let Some(last) = out.last_mut() {
            if last.kind == RegionKind::Plain && r.kind == RegionKind::Plain {
                last.end = r.end;
                return;
            }
        }
        out.push(r);
    };
    for r in regions {
        let (start, end) = (r.start.max(at), r.end.min(len));
        if start >= end {
            continue;
        }
        if start > at {
            push(
                &mut out,
                Region {
                    start: at,
                    end: start,
                    kind: RegionKind::Plain,
                },
            );
        }
        push(
            &mut out,
            Region {
                start,
                end,
                kind: r.kind,
            },
        );
        at = end;
    }
    if at < len {
        push(
            &mut out,
            Region {
                start: at,
                end: len,
                kind: RegionKind::Plain,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tensor(start: u64, end: u64) -> Region {
        Region {
            start,
            end,
            kind: RegionKind::Tensor(TensorInfo {
                name: format!("t{start}"),
                dtype: "BF16".into(),
                shape: vec![(end - start) / 2],
            }),
        }
    }

    #[test]
    fn tile_fills_gaps_and_merges_small_and_plain_regions() {
        let big = MIN_TENSOR_REGION;
        let regions = vec![
            Region {
                start: 0,
                end: 10,
                kind: RegionKind::Header,
            },
            tensor(10, 10 + big),
            tensor(20 + big, 30 + big), // tiny: plain, merged with the gap before it
            tensor(30 + big, 30 + 3 * big),
        ];
        let t = tile(regions, 40 + 3 * big);
        let spans: Vec<(u64, u64, bool)> = t
            .iter()
            .map(|r| (r.start, r.end, r.tensor().is_some()))
            .collect();
        assert_eq!(
            spans,
            [
                (0, 10, false),
                (10, 10 + big, true),
                (10 + big, 30 + big, false),
                (30 + big, 30 + 3 * big, true),
                (30 + 3 * big, 40 + 3 * big, false),
            ]
        );
    }

    #[test]
    fn unknown_and_short_files_are_one_plain_region() {
        assert_eq!(layout(&b"hello".to_vec()).regions.len(), 1);
        assert_eq!(layout(&Vec::new()).regions, vec![]);
        let l = layout(&vec![7u8; 1000]);
        assert_eq!((l.format, l.regions.len(), l.warning), ("plain", 1, None));
    }

    #[test]
    fn a_generated_safetensors_file_has_one_region_per_tensor() {
        use tvault_workload::{safetensors_header, transformer_specs, Dtype};
        let specs = transformer_specs(4 << 20, Dtype::BF16);
        let header = safetensors_header(&specs, &Default::default());
        let mut file = header.clone();
        file.resize(
            header.len() + specs.iter().map(|s| s.byte_len()).sum::<usize>(),
            1,
        );
        let l = layout(&file);
        assert_eq!(l.format, "safetensors");
        assert_eq!(l.regions[0].kind, RegionKind::Header);
        assert_eq!(l.regions[0].end, header.len() as u64);
        let big = specs
            .iter()
            .filter(|s| s.byte_len() as u64 >= MIN_TENSOR_REGION)
            .count();
        let tensors: Vec<&TensorInfo> = l.regions.iter().filter_map(|r| r.tensor()).collect();
        assert_eq!(tensors.len(), big);
        assert!(tensors.iter().all(|t| t.float_width() == 2));
        assert_eq!(l.regions.last().unwrap().end, file.len() as u64);
    }

    #[test]
    fn a_malformed_safetensors_header_is_plain_with_a_warning() {
        let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,80000]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&[0; 100]);
        let l = layout(&f);
        assert_eq!(l.regions.len(), 1);
        assert!(l.warning.unwrap().contains("outside the file"));
    }

    #[test]
    fn model_files_still_being_written_are_incomplete() {
        let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&[0; 100]);
        let why = incomplete(&f).unwrap();
        assert!(why.contains("promises"), "{why}");
        // Cut inside the header.
        assert!(incomplete(&f[..20].to_vec()).unwrap().contains("header"));
        f.extend_from_slice(&[0; 700]);
        assert_eq!(incomplete(&f), None);
        // A zip before its central directory is written; a GGUF file cut in its header.
        assert!(incomplete(&b"PK\x03\x04 and no central directory".to_vec()).is_some());
        assert!(incomplete(&b"GGUF\x03\0\0\0\x01".to_vec()).is_some());
        // Anything else is complete as far as formats go.
        assert_eq!(incomplete(&b"hello, world".to_vec()), None);
        assert_eq!(incomplete(&b"abcdefgh{not a header}".to_vec()), None);
    }

    proptest! {
        #[test]
        fn tile_always_tiles(spans in proptest::collection::vec((0u64..100_000, 0u64..100_000), 0..20), len in 0u64..120_000) {
            let regions = spans.into_iter().map(|(a, b)| tensor(a.min(b), a.max(b))).collect();
            let t = tile(regions, len);
            let mut at = 0;
            for r in &t {
                prop_assert_eq!(r.start, at);
                prop_assert!(r.end > r.start);
                at = r.end;
            }
            prop_assert_eq!(at, len);
        }

        #[test]
        fn layout_never_panics_and_always_tiles(
            magic in 0usize..4, body in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let mut f = match magic {
                0 => b"GGUF".to_vec(),
                1 => b"PK\x03\x04".to_vec(),
                2 => 40u64.to_le_bytes().to_vec(),
                _ => Vec::new(),
            };
            if magic == 2 {
                f.push(b'{');
            }
            f.extend(body);
            let l = layout(&f);
            let mut at = 0;
            for r in &l.regions {
                prop_assert_eq!(r.start, at);
                at = r.end;
            }
            prop_assert_eq!(at, f.len() as u64);
        }
    }
}
