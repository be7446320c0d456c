//! Encryption at rest: the master key, sealing and opening objects, keyed IDs, and key slots
//! (see `FORMAT.md`, "Version 3").
//!
//! - The *master key* is 64 random bytes: a 32-byte *data key* for the AEAD and a 32-byte *ID
//!   key* for keyed BLAKE3, so that no object name reveals content.
//! - The AEAD is XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`). Its 192-bit nonces are
//!   drawn at random for every sealing: with that many bits, random nonces never repeat in
//!   practice (2^-96 after 2^48 messages), so no counter has to be kept in step across
//!   processes or hosts that write one repository at once. Why not AES-256-GCM: its 96-bit nonce
//!   is too short to draw at random for a repository written by many hosts for years, and
//!   ChaCha20 is fast in software on every CPU (with AVX2 about as fast as AES-NI-GCM).
//! - A sealed object is `nonce (24 bytes) || ciphertext || tag (16 bytes)`: [`OVERHEAD`] bytes
//!   longer than its plain bytes. Its associated data binds it to its kind and name.
//! - A *key slot* wraps the master key with a key-encryption key derived from a password by
//!   Argon2id, whose parameters and salt the slot stores. Each slot is an independent way in.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{Id, Ids};

/// The `encryption` of an encrypted repository's config.
pub const ALGORITHM: &str = "xchacha20poly1305";
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plain bytes.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The one setting that lowers the Argon2id cost of *new* key slots, for tests only:
/// `TVAULT_TEST_FAST_KDF=1`. Never the default; an existing slot always uses its own parameters.
pub const FAST_KDF_ENV: &str = "TVAULT_TEST_FAST_KDF";

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).expect("the operating system's random source");
    out
}

/// The master key of a repository: the data key (AEAD) and the ID key (keyed BLAKE3).
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    data: [u8; 32],
    id: [u8; 32],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.data = [0; 32];
        self.id = [0; 32];
    }
}

impl MasterKey {
    pub fn random() -> MasterKey {
        MasterKey {
            data: random_bytes(),
            id: random_bytes(),
        }
    }

    fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.data);
        out[32..].copy_from_slice(&self.id);
        out
    }

    fn from_bytes(b: &[u8]) -> Option<MasterKey> {
        if b.len() != 64 {
            return None;
        }
        Some(MasterKey {
            data: b[..32].try_into().ok()?,
            id: b[32..].try_into().ok()?,
        })
    }
}

/// Seals and opens objects with a master key, and computes keyed IDs.
#[derive(Clone)]
pub struct Crypto {
    cipher: XChaCha20Poly1305,
    ids: Ids,
}

/// A ciphertext that does not authenticate: damaged, truncated, moved under another name, or
/// sealed with another key.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthError;

impl Crypto {
    pub fn new(key: &MasterKey) -> Crypto {
        Crypto {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key.data)),
            ids: Ids::keyed(key.id),
        }
    }

    /// How this repository names content: keyed BLAKE3 with the ID key.
    pub fn ids(&self) -> Ids {
        self.ids
    }

    /// Seals `plain` with associated data `aad`: nonce, ciphertext, tag.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(plain);
        out.extend_from_slice(&[0; TAG_LEN]);
        self.seal_in_place(aad, &mut out);
        out
    }

    /// Seals in place a buffer laid out as `[NONCE_LEN spare bytes][plain][TAG_LEN spare
    /// bytes]`: one pass over the plain bytes, no copy.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut [u8]) {
        assert!(
            buf.len() >= OVERHEAD,
            "a sealing buffer has room for nonce and tag"
        );
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let end = buf.len() - TAG_LEN;
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut buf[NONCE_LEN..end])
            .expect("XChaCha20-Poly1305 seals any length tvault writes");
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        buf[end..].copy_from_slice(&tag);
    }

    /// The plain bytes of a sealed object, if it authenticates with `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < OVERHEAD {
            return Err(AuthError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                aad,
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| AuthError)?;
        Ok(plain)
    }
}

/// Argon2id cost parameters, as a key slot stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// The parameters of new key slots: 64 MiB, 3 passes, 1 lane (about a quarter of a second
    /// on one core); much cheaper ones only under [`FAST_KDF_ENV`]`=1` (tests).
    pub fn for_new_slots() -> KdfParams {
        if std::env::var(FAST_KDF_ENV).as_deref() == Ok("1") {
            return KdfParams {
                m_cost: 64,
                t_cost: 1,
                p_cost: 1,
            };
        }
        KdfParams {
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }

    /// The key-encryption key of `password` and `salt`.
    fn derive(&self, password: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        // A slot is data from the repository: bound its cost before spending it.
        if self.m_cost > 4 << 20 || self.t_cost > 100 || self.p_cost > 64 {
            return Err(Error::Invalid(format!(
                "key slot asks for Argon2id parameters past any tvault writes: {self:?}"
            )));
        }
        let params = Params::new(self.m_cost, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| Error::Invalid(format!("bad Argon2id parameters {self:?}: {e}")))?;
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, salt, &mut out)
            .map_err(|e| Error::Invalid(format!("Argon2id failed: {e}")))?;
        Ok(out)
    }
}

/// One key slot (`keys/<ID>`, JSON): the master key wrapped with a key derived from one
/// password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySlot {
    /// `"argon2id"`.
    pub kdf: String,
    #[serde(flatten)]
    pub params: KdfParams,
    /// 32 random bytes, hex.
    pub salt: String,
    /// The master key (64 bytes) sealed with the derived key, hex.
    pub wrapped: String,
    pub created: DateTime<Utc>,
}

/// Associated data of a wrapped master key: binds it to its repository.
fn slot_aad(repo: &Id) -> Vec<u8> {
    format!("tvault key slot\0{repo}").into_bytes()
}

impl KeySlot {
    /// A new slot opening `key` with `password`, for the repository `repo`.
    pub fn create(key: &MasterKey, password: &[u8], repo: &Id, params: KdfParams) -> Result<Self> {
        let salt: [u8; 32] = random_bytes();
        let kek = params.derive(password, &salt)?;
        let wrapper = XChaCha20Poly1305::new(Key::from_slice(&kek));
        let mut buf = vec![0u8; OVERHEAD + 64];
        buf[NONCE_LEN..NONCE_LEN + 64].copy_from_slice(&key.to_bytes());
        let crypto = Crypto {
            cipher: wrapper,
            ids: Ids::PLAIN,
        };
        crypto.seal_in_place(&slot_aad(repo), &mut buf);
        Ok(KeySlot {
            kdf: "argon2id".into(),
            params,
            salt: Id(salt).to_hex(),
            wrapped: hex(&buf),
            created: Utc::now(),
        })
    }

    /// The master key, if `password` opens this slot; `Ok(None)` for another password.
    pub fn unwrap_key(&self, password: &[u8], repo: &Id) -> Result<Option<MasterKey>> {
        let bad = |why: &str| Error::Invalid(format!("damaged key slot: {why}"));
        if self.kdf != "argon2id" {
            return Err(bad(&format!("unknown key derivation {:?}", self.kdf)));
        }
        let salt = Id::from_hex(&self.salt).ok_or_else(|| bad("bad salt"))?;
        let wrapped = unhex(&self.wrapped).ok_or_else(|| bad("bad wrapped key"))?;
        let kek = self.params.derive(password, &salt.0)?;
        let crypto = Crypto {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&kek)),
            ids: Ids::PLAIN,
        };
        match crypto.open(&slot_aad(repo), &wrapped) {
            Ok(plain) => Ok(Some(
                MasterKey::from_bytes(&plain).ok_or_else(|| bad("wrapped key of a wrong size"))?,
            )),
            Err(AuthError) => Ok(None),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a key slot serialises")
    }

    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<KeySlot> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(name, format!("not a key slot: {e}")))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    #[test]
    fn sealed_bytes_round_trip_and_any_tamper_is_an_error() {
        let c = Crypto::new(&MasterKey::random());
        let plain = b"layer.0.weight: secret tensor bytes".to_vec();
        let sealed = c.seal(b"blob\0abc", &plain);
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.open(b"blob\0abc", &sealed).unwrap(), plain);
        // Two sealings of the same bytes differ (random nonces).
        assert_ne!(c.seal(b"blob\0abc", &plain), sealed);
        // Any flipped bit, a truncation, other associated data, another key: an error.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(c.open(b"blob\0abc", &bad), Err(AuthError), "byte {i}");
        }
        assert_eq!(
            c.open(b"blob\0abc", &sealed[..sealed.len() - 1]),
            Err(AuthError)
        );
        assert_eq!(c.open(b"blob\0abc", &sealed[..10]), Err(AuthError));
        assert_eq!(c.open(b"blob\0abd", &sealed), Err(AuthError));
        let other = Crypto::new(&MasterKey::random());
        assert_eq!(other.open(b"blob\0abc", &sealed), Err(AuthError));
        // The empty plain text seals too.
        assert!(c.open(b"", &c.seal(b"", b"")).unwrap().is_empty());
    }

    #[test]
    fn keyed_ids_depend_on_the_key_and_differ_from_plain_blake3() {
        let key = MasterKey::random();
        let (a, b) = (Crypto::new(&key), Crypto::new(&key));
        assert_eq!(a.ids().of(b"x"), b.ids().of(b"x"));
        assert_ne!(a.ids().of(b"x"), Id::of(b"x"));
        assert_ne!(
            a.ids().of(b"x"),
            Crypto::new(&MasterKey::random()).ids().of(b"x")
        );
        assert_eq!(Ids::PLAIN.of(b"x"), Id::of(b"x"));
    }

    #[test]
    fn a_key_slot_opens_with_its_password_only_and_in_its_repository_only() {
        let key = MasterKey::random();
        let repo = Id::of(b"repo");
        let slot = KeySlot::create(&key, b"correct horse", &repo, fast()).unwrap();
        let slot = KeySlot::from_bytes("keys/x", &slot.to_bytes()).unwrap();
        assert_eq!(
            slot.unwrap_key(b"correct horse", &repo).unwrap(),
            Some(key.clone())
        );
        assert_eq!(slot.unwrap_key(b"wrong", &repo).unwrap(), None);
        assert_eq!(
            slot.unwrap_key(b"correct horse", &Id::of(b"other"))
                .unwrap(),
            None
        );
        let mut tampered = slot.clone();
        tampered.wrapped.replace_range(
            60..61,
            if &slot.wrapped[60..61] == "0" {
                "1"
            } else {
                "0"
            },
        );
        assert_eq!(tampered.unwrap_key(b"correct horse", &repo).unwrap(), None);
        let mut costly = slot;
        costly.params.m_cost = u32::MAX;
        assert!(costly.unwrap_key(b"correct horse", &repo).is_err());
    }

    #[test]
    fn new_slots_use_real_argon2_parameters_unless_the_test_setting_is_on() {
        // The suite may run with the setting on; the default is what is asserted here.
        if std::env::var(FAST_KDF_ENV).is_err() {
            assert_eq!(KdfParams::for_new_slots().m_cost, 64 * 1024);
            assert_eq!(KdfParams::for_new_slots().t_cost, 3);
        }
    }
}
