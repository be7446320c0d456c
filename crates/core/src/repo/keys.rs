//! The key slots of an encrypted repository (`keys/<ID>`, see `crypto` and `FORMAT.md`,
//! "Version 3"): unlocking at open (the first slot the password opens), and `tvault key
//! list|add|remove|passwd`. Each slot wraps the same master key, so adding or removing one
//! re-encrypts nothing. The last slot is never removed: without it nothing could be read.

use chrono::{DateTime, Utc};

use super::crypto::{self, KdfParams, KeySlot, MasterKey};
use super::storage::{Handle, ObjectKind, Storage};
use super::{Config, Repository};
use crate::error::{Error, Result};
use crate::id::{self, Id};

/// Where the password of an encrypted repository comes from; asked only once one is needed
/// (opening a plaintext repository never asks).
pub type PasswordSource<'a> = &'a dyn Fn() -> Result<Vec<u8>>;

/// What `key list` shows of one slot (never the key).
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub id: Id,
    pub created: DateTime<Utc>,
    pub params: KdfParams,
    /// The slot this process opened the repository with.
    pub current: bool,
}

/// The master key the password opens and the slot that opened it. No slot opening it is
/// [`Error::WrongPassword`]; nothing is written either way.
pub(super) fn unlock(
    storage: &Storage,
    config: &Config,
    location: &std::path::Path,
    password: Option<PasswordSource>,
) -> Result<(MasterKey, Id)> {
    let slots = storage.list(ObjectKind::Key)?;
    if slots.is_empty() {
        return Err(Error::NotARepository {
            path: location.to_path_buf(),
            reason: "it is encrypted but has no key slots in keys/, so nothing in it can be read"
                .into(),
        });
    }
    let Some(source) = password else {
        return Err(Error::PasswordNeeded {
            path: location.to_path_buf(),
        });
    };
    let password = source()?;
    let mut damaged = Vec::new();
    for (object, _) in &slots {
        let Some(slot_id) = object.id() else { continue };
        let slot = match storage
            .get(object)
            .and_then(|b| KeySlot::from_bytes(&object.to_string(), &b))
        {
            Ok(s) => s,
            Err(e) => {
                damaged.push(e.to_string());
                continue;
            }
        };
        match slot.unwrap_key(&password, &config.id) {
            Ok(Some(key)) => return Ok((key, slot_id)),
            Ok(None) => {}
            Err(e) => damaged.push(format!("{object}: {e}")),
        }
    }
    if damaged.len() == slots.len() {
        return Err(Error::NotARepository {
            path: location.to_path_buf(),
            reason: format!("no key slot can be read: {}", damaged.join("; ")),
        });
    }
    Err(Error::WrongPassword {
        path: location.to_path_buf(),
    })
}

/// Writes a new slot for `key` opened by `password`; its ID.
pub(super) fn write_slot(
    storage: &Storage,
    key: &MasterKey,
    repo: &Id,
    password: &[u8],
) -> Result<Id> {
    if password.is_empty() {
        return Err(Error::Invalid(
            "the password is empty; choose a non-empty one".into(),
        ));
    }
    let slot = KeySlot::create(key, password, repo, KdfParams::for_new_slots())?;
    let slot_id = Id(crypto::random_bytes());
    storage.put(&Handle::new(ObjectKind::Key, &slot_id), &slot.to_bytes())?;
    Ok(slot_id)
}

impl Repository {
    fn master(&self) -> Result<&(MasterKey, Id)> {
        self.master.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{} is not encrypted: it has no keys (create an encrypted repository with \
                 `tvault init`)",
                self.location.display()
            ))
        })
    }

    /// The key slots, oldest first.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let (_, current) = self.master()?;
        let mut out = Vec::new();
        for (object, _) in self.storage.list(ObjectKind::Key)? {
            let Some(id) = object.id() else { continue };
            let slot = KeySlot::from_bytes(&object.to_string(), &self.storage.get(&object)?)?;
            out.push(KeyInfo {
                id,
                created: slot.created,
                params: slot.params,
                current: id == *current,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Adds a slot opened by `password`; its ID.
    pub fn add_key(&self, password: &[u8]) -> Result<Id> {
        let (key, _) = self.master()?;
        write_slot(&self.storage, key, &self.config.id, password)
    }

    /// The slot a full ID or unique prefix (at least 4 hex digits) names.
    pub fn resolve_key(&self, prefix: &str) -> Result<Id> {
        let p = prefix.to_ascii_lowercase();
        let matches: Vec<Id> = self
            .keys()?
            .into_iter()
            .map(|k| k.id)
            .filter(|id| id.to_hex().starts_with(&p))
            .collect();
        match matches.as_slice() {
            [one] if p.len() >= id::MIN_PREFIX_LEN => Ok(*one),
            [] => Err(Error::Invalid(format!(
                "no key matches {prefix:?}; `tvault key list` lists them"
            ))),
            _ => Err(Error::Invalid(format!(
                "key ID {prefix:?} is ambiguous or too short; give more hex digits"
            ))),
        }
    }

    /// Removes a slot. Refused for the last one, and for the one this process opened the
    /// repository with (open it with another key's password to remove this one).
    pub fn remove_key(&self, slot: &Id) -> Result<()> {
        let (_, current) = self.master()?;
        let keys = self.keys()?;
        if keys.len() <= 1 {
            return Err(Error::Invalid(format!(
                "key {} is the repository's last key: without it nothing in the repository \
                 could be read; add another key first (`tvault key add`)",
                slot.short()
            )));
        }
        if slot == current {
            return Err(Error::Invalid(format!(
                "key {} is the key this password opened; to remove it, give the password of \
                 another key (or change this one with `tvault key passwd`)",
                slot.short()
            )));
        }
        self.storage.delete(&Handle::new(ObjectKind::Key, slot))
    }

    /// Replaces the slot this process opened the repository with by one opened by
    /// `password`: the new slot is written first, then the old one removed. The new ID.
    pub fn change_password(&mut self, password: &[u8]) -> Result<Id> {
        let (key, old) = self.master()?.clone();
        let new = write_slot(&self.storage, &key, &self.config.id, password)?;
        self.storage.delete(&Handle::new(ObjectKind::Key, &old))?;
        self.master = Some((key, new));
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ops::backup::{self, BackupOptions};
    use crate::ops::restore::{self, RestoreOptions};
    use crate::progress::NoProgress;
    use crate::repo::{Backend, MemBackend};

    fn pw(p: &'static str) -> impl Fn() -> Result<Vec<u8>> {
        move || Ok(p.as_bytes().to_vec())
    }

    fn open(backend: &Arc<MemBackend>, password: &'static str) -> Result<Repository> {
        Repository::open_cached(backend.clone(), "mem".into(), None, Some(&pw(password)))
    }

    /// Everything a backup writes is sealed: no object holds a file name, a host name or the
    /// data's bytes; the snapshot restores; keys come and go without re-encrypting anything.
    #[test]
    fn an_encrypted_repository_stores_no_plain_bytes_and_opens_only_with_a_key() {
        std::env::set_var(crypto::FAST_KDF_ENV, "1");
        let src = tempfile::tempdir().unwrap();
        let marker = b"MARKER-3f9c2a-plain-bytes-".repeat(20_000);
        std::fs::write(src.path().join("secret_layer_name.bin"), &marker).unwrap();
        let backend = Arc::new(MemBackend::default());
        let mut repo =
            Repository::init_backend(backend.clone(), "mem".into(), Some(b"first")).unwrap();
        assert_eq!(repo.config().version, crate::repo::FORMAT_VERSION);
        let opts = BackupOptions::new(vec![src.path().to_path_buf()]);
        let done = backup::run(&mut repo, &opts, &NoProgress).unwrap();

        let host = crate::repo::lock::hostname();
        let mut objects = 0;
        for folder in ["data", "index", "snapshots", "keys", "config"] {
            for (key, _) in backend.list(folder).unwrap() {
                let bytes = backend.get(&key).unwrap();
                objects += 1;
                for needle in [&b"MARKER-3f9c2a"[..], b"secret_layer_name", host.as_bytes()] {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle),
                        "{key} holds {:?}",
                        String::from_utf8_lossy(needle)
                    );
                }
            }
        }
        assert!(objects >= 4, "{objects} objects");
        // The snapshot is named by a keyed hash: not the plain BLAKE3 of anything we know.
        let snap = repo.load_snapshot(&done.snapshot_id).unwrap();
        assert_eq!(repo.ids().of(&snap.to_bytes()), done.snapshot_id);
        assert_ne!(Id::of(&snap.to_bytes()), done.snapshot_id);

        // No password, a wrong one: refused before anything is read.
        let none = Repository::open_cached(backend.clone(), "mem".into(), None, None);
        assert!(matches!(none, Err(Error::PasswordNeeded { .. })));
        assert!(matches!(
            open(&backend, "wrong"),
            Err(Error::WrongPassword { .. })
        ));

        // A second key; the first password changed; the old one no longer opens.
        let repo = open(&backend, "first").unwrap();
        repo.add_key(b"second").unwrap();
        assert_eq!(repo.keys().unwrap().len(), 2);
        let mut repo = open(&backend, "second").unwrap();
        let current = repo
            .keys()
            .unwrap()
            .into_iter()
            .find(|k| k.current)
            .unwrap();
        assert!(
            repo.remove_key(&current.id).is_err(),
            "the key in use stays"
        );
        repo.change_password(b"third").unwrap();
        assert!(matches!(
            open(&backend, "second"),
            Err(Error::WrongPassword { .. })
        ));
        let repo = open(&backend, "first").unwrap();
        let keys = repo.keys().unwrap();
        assert_eq!(keys.len(), 2);
        let other = keys.iter().find(|k| !k.current).unwrap();
        repo.remove_key(&other.id).unwrap();
        let last = repo.keys().unwrap()[0].id;
        let mut repo = open(&backend, "first").unwrap();
        assert!(repo
            .remove_key(&last)
            .unwrap_err()
            .to_string()
            .contains("last key"));

        let target = tempfile::tempdir().unwrap();
        let id = done.snapshot_id.to_hex();
        restore::run(
            &mut repo,
            &RestoreOptions::new(&id, target.path()),
            &NoProgress,
        )
        .unwrap();
        let name = src.path().file_name().unwrap();
        let back = std::fs::read(target.path().join(name).join("secret_layer_name.bin")).unwrap();
        assert_eq!(back, marker);

        // A config rewritten to say "none" does not make the repository writable in plain.
        let config = String::from_utf8(backend.get("config").unwrap()).unwrap();
        let downgraded = config.replace(crypto::ALGORITHM, "none");
        backend.put("config", downgraded.as_bytes()).unwrap();
        let err = Repository::open_with(backend.clone(), "mem".into())
            .err()
            .unwrap();
        assert!(err.to_string().contains("key slots"), "{err}");
    }
}
