//! Content IDs: 32-byte BLAKE3 digests, shown as lowercase hex.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of an ID's short form, as `snapshots` prints it.
pub const SHORT_LEN: usize = 8;
/// Shortest prefix `restore` accepts: shorter ones match too much by accident.
pub const MIN_PREFIX_LEN: usize = 4;

/// A BLAKE3 digest naming a chunk, pack, index file or snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The ID of `data`: its BLAKE3 hash.
    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap());
            s.push(char::from_digit((b & 15) as u32, 16).unwrap());
        }
        s
    }

    pub fn short(&self) -> String {
        self.to_hex()[..SHORT_LEN].to_string()
    }

    /// Parses a full 64-digit hex ID; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Id(out))
    }
}

/// How a repository names content (chunks, trees, snapshots): plain BLAKE3, or in an encrypted
/// repository BLAKE3 keyed with its ID key, so that no name reveals what it names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ids(Option<[u8; 32]>);

impl Ids {
    /// Plain BLAKE3 ([`Id::of`]): repositories without encryption.
    pub const PLAIN: Ids = Ids(None);

    pub fn keyed(key: [u8; 32]) -> Ids {
        Ids(Some(key))
    }

    /// The ID of `data` in this repository.
    pub fn of(&self, data: &[u8]) -> Id {
        match &self.0 {
            None => Id::of(data),
            Some(key) => Id(*blake3::keyed_hash(key, data).as_bytes()),
        }
    }

    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_keyed() {
            "Ids(keyed)"
        } else {
            "Ids(plain)"
        })
    }
}

impl From<blake3::Hash> for Id {
    fn from(h: blake3::Hash) -> Id {
        Id(*h.as_bytes())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = String::deserialize(d)?;
        Id::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid ID {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = Id::of(b"hello");
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(Id::from_hex("zz"), None);
        assert_eq!(Id::from_hex(&"g".repeat(64)), None);
        assert_eq!(id.short().len(), SHORT_LEN);
    }
}
