//! safetensors: an 8-byte little-endian header length, a JSON header mapping tensor names to
//! `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data section), and the
//! data section right after the header.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Headers larger than this are refused: real ones are kilobytes to a few MB.
pub const MAX_HEADER: u64 = 100 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// The length of the JSON header announced by the first 8 bytes, if plausible for a file of
/// `file_len` bytes.
pub fn header_len(first8: &[u8], file_len: u64) -> Option<u64> {
    let n = u64::from_le_bytes(first8.get(..8)?.try_into().ok()?);
    ((2..=MAX_HEADER).contains(&n) && 8 + n <= file_len).then_some(n)
}

/// Parses the tensors from the header bytes (the JSON, without the 8-byte length), checking
/// every range against the file, in file order.
pub fn parse(json: &[u8], file_len: u64) -> Result<Vec<Tensor>, String> {
    let data_start = 8 + json.len() as u64;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| format!("safetensors header is not valid JSON: {e}"))?;
    let mut tensors = Vec::new();
    for (name, value) in map {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawTensor =
            serde_json::from_value(value).map_err(|e| format!("tensor {name:?}: {e}"))?;
        let [begin, end] = raw.data_offsets;
        let (start, end) = (data_start.checked_add(begin), data_start.checked_add(end));
        match (start, end) {
            (Some(s), Some(e)) if s <= e && e <= file_len => tensors.push(Tensor {
                name,
                dtype: raw.dtype,
                shape: raw.shape,
                start: s,
                end: e,
            }),
            _ => return Err(format!("tensor {name:?} lies outside the file")),
        }
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    if tensors.windows(2).any(|w| w[0].end > w[1].start) {
        return Err("tensors overlap".into());
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data_len));
        f
    }

    #[test]
    fn a_real_header_parses_into_tensors_in_file_order() {
        let h = r#"{"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#;
        let f = file(h, 16);
        let n = header_len(&f, f.len() as u64).unwrap();
        let t = parse(&f[8..8 + n as usize], f.len() as u64).unwrap();
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!((t[1].start, t[1].end), (8 + n + 8, 8 + n + 16));
        assert_eq!(t[1].shape, vec![2, 2]);
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert_eq!(header_len(&u64::MAX.to_le_bytes(), 1 << 40), None);
        assert_eq!(header_len(&100u64.to_le_bytes(), 50), None);
        assert_eq!(header_len(&[1, 2, 3], 50), None);
        let past_end = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#;
        assert!(parse(past_end.as_bytes(), 100).is_err());
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        assert!(parse(overlap.as_bytes(), 1000).is_err());
        let inverted = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#;
        assert!(parse(inverted.as_bytes(), 1000).is_err());
        let overflow =
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}"#;
        assert!(parse(overflow.as_bytes(), 1000).is_err());
        assert!(parse(b"not json", 1000).is_err());
        assert!(parse(br#"{"a": 5}"#, 1000).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), len in 0u64..10_000) {
            let _ = header_len(&bytes, len);
            let _ = parse(&bytes, len);
        }
    }
}
