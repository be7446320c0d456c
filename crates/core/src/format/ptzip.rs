//! PyTorch zip checkpoints (`torch.save`, `.pt`/`.pth`/`.bin`): a zip archive whose entries
//! `<archive>/data/<key>` are the tensor storages, stored uncompressed, beside `data.pkl` (the
//! pickle that says which storage is which tensor). tvault never unpickles: it reads only the
//! zip structure (end of central directory, zip64 records, central directory, local headers)
//! and makes each stored storage a region. Its dtype comes from a walk over the pickle's opcodes
//! that never unpickles ([`super::pickle`]), so float storages get byte planes and deltas like
//! safetensors tensors; where the walk finds none, the storage is chunked as a tensor and
//! encoded as plain data. Shapes are left unknown.

use super::{read_vec, Region, RegionKind, Source, TensorInfo, MAX_HEADER};

pub const LOCAL_MAGIC: &[u8; 4] = b"PK\x03\x04";
const CENTRAL_MAGIC: &[u8; 4] = b"PK\x01\x02";
const EOCD_MAGIC: &[u8; 4] = b"PK\x05\x06";
const ZIP64_LOCATOR_MAGIC: &[u8; 4] = b"PK\x06\x07";
const ZIP64_EOCD_MAGIC: &[u8; 4] = b"PK\x06\x06";
const EOCD_LEN: u64 = 22;
/// The EOCD is followed by a comment of at most 65535 bytes.
const EOCD_SEARCH: u64 = EOCD_LEN + 65535;

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}
fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        b[at..at + 4].try_into().expect("4 bytes"),
    ))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Where the central directory is: (offset, size, entries).
fn central_directory(src: &dyn Source) -> Result<(u64, u64, u64), String> {
    let len = src.len();
    let tail_len = len.min(EOCD_SEARCH);
    let tail = read_vec(src, len - tail_len, tail_len)?;
    let eocd = tail
        .windows(4)
        .rposition(|w| w == EOCD_MAGIC)
        .filter(|&at| at + EOCD_LEN as usize <= tail.len())
        .ok_or("no end of central directory record")?;
    let e = &tail[eocd..];
    let (mut entries, mut size, mut offset) = (u16_at(e, 10), u32_at(e, 12), u32_at(e, 16));
    if entries == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
        // zip64: a locator right before the EOCD points at the zip64 EOCD record.
        let eocd_abs = len - tail_len + eocd as u64;
        let loc_at = eocd_abs.checked_sub(20).ok_or("zip64 locator missing")?;
        let loc = read_vec(src, loc_at, 20)?;
        if &loc[..4] != ZIP64_LOCATOR_MAGIC {
            return Err("zip64 locator missing".into());
        }
        let rec = read_vec(src, u64_at(&loc, 8), 56)?;
        if &rec[..4] != ZIP64_EOCD_MAGIC {
            return Err("zip64 end of central directory missing".into());
        }
        (entries, size, offset) = (u64_at(&rec, 32), u64_at(&rec, 40), u64_at(&rec, 48));
    }
    if size > MAX_HEADER || offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(format!(
            "central directory of {size} bytes at {offset} does not fit the file"
        ));
    }
    // Each entry takes at least 46 bytes.
    if entries > size / 46 + 1 {
        return Err(format!(
            "{entries} entries in a {size}-byte central directory"
        ));
    }
    Ok((offset, size, entries))
}

/// One central directory entry: its name, compression method, sizes, local header offset.
struct Entry {
    name: String,
    method: u64,
    compressed: u64,
    local: u64,
}

fn entries(cd: &[u8], count: u64) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        let head = cd.get(at..at + 46).ok_or("central directory truncated")?;
        if &head[..4] != CENTRAL_MAGIC {
            return Err("damaged central directory entry".into());
        }
        let (name_len, extra_len, comment_len) = (
            u16_at(head, 28) as usize,
            u16_at(head, 30) as usize,
            u16_at(head, 32) as usize,
        );
        let name_at = at + 46;
        let extra_at = name_at + name_len;
        let next = extra_at + extra_len + comment_len;
        let name = cd
            .get(name_at..extra_at)
            .ok_or("central directory truncated")?;
        let extra = cd
            .get(extra_at..extra_at + extra_len)
            .ok_or("central directory truncated")?;
        let mut uncompressed = u32_at(head, 24);
        let mut compressed = u32_at(head, 20);
        let mut local = u32_at(head, 42);
        // zip64 extended information: the 0xFFFFFFFF fields, in this order.
        let mut x = 0;
        while x + 4 <= extra.len() {
            let (id, n) = (u16_at(extra, x), u16_at(extra, x + 2) as usize);
            let body = extra.get(x + 4..x + 4 + n).ok_or("damaged extra field")?;
            if id == 1 {
                let mut f = 0;
                for v in [&mut uncompressed, &mut compressed, &mut local] {
                    if *v == 0xFFFF_FFFF {
                        *v = u64_at(body.get(f..f + 8).ok_or("damaged zip64 field")?, 0);
                        f += 8;
                    }
                }
            }
            x += 4 + n;
        }
        let method = u16_at(head, 10);
        if method == 0 && compressed != uncompressed {
            return Err("a stored entry whose sizes differ".into());
        }
        out.push(Entry {
            name: String::from_utf8_lossy(name).into_owned(),
            method,
            compressed,
            local,
        });
        at = next;
    }
    Ok(out)
}

/// The pickle's size at most: a few hundred bytes per tensor.
const MAX_PICKLE: u64 = 64 << 20;

/// Storage key → dtype from the archive's `data.pkl` (stored, not compressed, as `torch.save`
/// writes it); empty when there is none or it cannot be read.
fn storage_dtypes(
    src: &dyn Source,
    entries: &[Entry],
) -> std::collections::HashMap<String, String> {
    let pkl = entries.iter().find(|e| {
        e.method == 0
            && e.compressed <= MAX_PICKLE
            && e.name.matches('/').count() == 1
            && e.name.ends_with("/data.pkl")
    });
    pkl.and_then(|e| read_vec(src, data_start(src, e).ok()?, e.compressed).ok())
        .map(|bytes| super::pickle::storage_dtypes(&bytes))
        .unwrap_or_default()
}

/// Where an entry's data starts: after its local header, name and extra field.
fn data_start(src: &dyn Source, e: &Entry) -> Result<u64, String> {
    let local = read_vec(src, e.local, 30)?;
    if &local[..4] != LOCAL_MAGIC {
        return Err(format!("entry {:?}: no local header", e.name));
    }
    Ok(e.local + 30 + u16_at(&local, 26) + u16_at(&local, 28))
}

/// True for `<archive>/data/<digits>`: a tensor storage.
fn is_storage(name: &str) -> bool {
    let mut parts = name.rsplitn(3, '/');
    let (key, dir) = (parts.next(), parts.next());
    dir == Some("data")
        && parts.next().is_some()
        && key.is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// The storages of a PyTorch zip checkpoint as tensor regions (everything else is left for
/// [`super::tile`] to fill as plain). Empty when the zip has no storages (not a checkpoint).
pub fn parse(src: &dyn Source) -> Result<Vec<Region>, String> {
    let (offset, size, count) = central_directory(src)?;
    let cd = read_vec(src, offset, size)?;
    let entries = entries(&cd, count)?;
    let dtypes = storage_dtypes(src, &entries);
    let mut regions = Vec::new();
    for e in entries {
        if !is_storage(&e.name) || e.method != 0 {
            continue;
        }
        let start = data_start(src, &e)?;
        let end = start
            .checked_add(e.compressed)
            .filter(|&end| end <= offset)
            .ok_or_else(|| format!("entry {:?} runs past its archive", e.name))?;
        regions.push(Region {
            start,
            end,
            kind: RegionKind::Tensor(TensorInfo {
                dtype: dtypes
                    .get(e.name.rsplit('/').next().unwrap_or_default())
                    .cloned()
                    .unwrap_or_default(),
                name: e.name,
                shape: Vec::new(),
            }),
        });
    }
    regions.sort_by_key(|r| (r.start, r.end));
    if regions.windows(2).any(|w| w[0].end > w[1].start) {
        return Err("storages overlap".into());
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal stored zip in torch.save's layout: `archive/data.pkl`, then storages, each
    /// data start padded to 64 bytes with an extra field as PyTorch does.
    pub(crate) fn build(storages: &[Vec<u8>]) -> Vec<u8> {
        build_with(b"\x80\x02}q\x00.", storages)
    }

    /// [`build`] with the given `data.pkl` (the workload generator's zip writer: stored
    /// entries, each data start padded to 64 bytes as PyTorch does).
    pub(crate) fn build_with(pkl: &[u8], storages: &[Vec<u8>]) -> Vec<u8> {
        let mut files: Vec<(String, Vec<u8>)> = vec![("archive/data.pkl".into(), pkl.to_vec())];
        for (i, s) in storages.iter().enumerate() {
            files.push((format!("archive/data/{i}"), s.clone()));
        }
        files.push(("archive/version".into(), b"3\n".to_vec()));
        tvault_workload::stored_zip(&files)
    }

    #[test]
    fn storages_become_tensor_regions() {
        let a = vec![1u8; 40_000];
        let b = vec![2u8; 30_000];
        let z = build(&[a.clone(), b.clone()]);
        let regions = parse(&z).unwrap();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].tensor().unwrap().name, "archive/data/0");
        assert_eq!(
            &z[regions[0].start as usize..regions[0].end as usize],
            &a[..]
        );
        assert_eq!(
            &z[regions[1].start as usize..regions[1].end as usize],
            &b[..]
        );
        assert_eq!(regions[0].start % 64, 0);
        let l = super::super::layout(&z);
        assert_eq!(l.format, "pytorch-zip");
        assert_eq!(l.regions.iter().filter(|r| r.tensor().is_some()).count(), 2);
    }

    #[test]
    fn storages_take_their_dtype_from_the_pickle() {
        let pkl = crate::format::pickle::tests::torch_pickle(&[
            ("w", "BFloat16Storage", 20_000),
            ("n", "FloatStorage", 10),
            ("step", "LongStorage", 1),
        ]);
        let z = build_with(&pkl, &[vec![1u8; 40_000], vec![2u8; 40], vec![3u8; 8]]);
        let regions = parse(&z).unwrap();
        let widths: Vec<u8> = regions
            .iter()
            .map(|r| r.tensor().unwrap().float_width())
            .collect();
        assert_eq!(widths, [2, 4, 0]);
    }

    #[test]
    fn storage_names_and_hostile_directories() {
        assert!(is_storage("archive/data/0"));
        assert!(is_storage("model/data/123"));
        assert!(!is_storage("data/0"));
        assert!(!is_storage("archive/data.pkl"));
        assert!(!is_storage("archive/data/x1"));
        let z = build(&[vec![3u8; 20_000]]);
        // The central directory claims to be huge.
        let mut big = z.clone();
        let n = big.len();
        big[n - 10..n - 6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&big).is_err());
        // A plain zip with no storages is not a checkpoint: plain data, no warning.
        let plain = {
            let mut p = build(&[]);
            p.truncate(p.len());
            p
        };
        let l = super::super::layout(&plain);
        assert_eq!((l.format, l.warning), ("plain", None));
    }

    proptest! {
        #[test]
        fn mutated_zips_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut z = build(&[vec![5u8; 3000], vec![6u8; 5000]]);
            for (at, b) in flips {
                let n = z.len();
                z[at % n] = b;
            }
            let keep = cut % (z.len() + 1);
            z.truncate(keep);
            if let Ok(regions) = parse(&z) {
                for w in regions.windows(2) {
                    prop_assert!(w[0].end <= w[1].start);
                }
                prop_assert!(regions.iter().all(|r| r.start <= r.end && r.end <= z.len() as u64));
            }
        }
    }
}
