//! How a chunk's plain bytes are stored: zstd, or raw when compression does not pay.
//! The encoding is recorded per blob (one byte in the pack and index), so new encodings
//! can be added without touching old data.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    Raw = 0,
    Zstd = 1,
}

impl Encoding {
    pub fn from_u8(b: u8) -> Option<Encoding> {
        match b {
            0 => Some(Encoding::Raw),
            1 => Some(Encoding::Zstd),
            _ => None,
        }
    }
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
}

/// Encodes `plain` into `out` (cleared first) with this thread's reused zstd context. For
/// [`Encoding::Raw`] `out` is left empty: the stored bytes are `plain` itself, not copied.
/// Chooses exactly as [`encode`] does.
pub fn encode_into(plain: &[u8], zstd_level: i32, out: &mut Vec<u8>) -> Encoding {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(plain.len()));
    let compressed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().map(|(level, _)| *level) != Some(zstd_level) {
            *cell = Some((zstd_level, zstd::bulk::Compressor::new(zstd_level).ok()?));
        }
        let (_, compressor) = cell.as_mut()?;
        compressor.compress_to_buffer(plain, out).ok()
    });
    match compressed {
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
        Encoding::Zstd => {
            let out = zstd::bulk::decompress(stored, plain_len)
                .map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
            if out.len() != plain_len {
                return Err(Error::Invalid(format!(
                    "decoded {} bytes, expected {plain_len}",
                    out.len()
                )));
            }
            Ok(out)
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
        crate::workload::fill_weights(
            &mut crate::workload::Rng::new(4),
            crate::workload::Dtype::BF16,
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
                    Encoding::Zstd => assert_eq!(out, stored),
                }
            }
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(data in proptest::collection::vec(0u8..4, 0..20_000)) {
            let (enc, stored) = encode(&data, 1);
            prop_assert!(stored.len() <= data.len());
            prop_assert_eq!(decode(enc, &stored, data.len()).unwrap(), data);
        }
    }
}
