//! Where a repository is, as the user names it (`--repo`, `TVAULT_REPO`): a local directory,
//! or `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]` for a bucket of an S3 server. [`open`] and
//! [`init`] take either; a local path behaves exactly as `Repository::open`/`init`.
//!
//! An S3 repository's backend is the S3 backend below the retry layer (and, for tests only,
//! the fault layer of `TVAULT_TEST_FAULTS` between them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::faults::{FaultPlan, Faults};
use super::retry::{Retry, RetryPolicy};
use super::s3::{S3Backend, S3Location};
use super::{Backend, PasswordSource, Repository, Storage};
use crate::error::{Error, Result};

/// What `s3:` locations look like, for messages.
pub const S3_FORM: &str = "s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Location),
}

impl Location {
    /// `s3:…` is an S3 location; anything else a local path.
    pub fn parse(given: &Path) -> Result<Location> {
        let Some(rest) = given.to_str().and_then(|s| s.strip_prefix("s3:")) else {
            return Ok(Location::Local(given.to_path_buf()));
        };
        let bad = |why: &str| {
            Error::Invalid(format!(
                "bad S3 location {:?}: {why}; expected {S3_FORM}",
                given.display().to_string()
            ))
        };
        let (scheme, after) = rest
            .split_once("://")
            .ok_or_else(|| bad("no http:// or https:// endpoint"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the endpoint must start with http:// or https://"));
        }
        let (host, path) = after.split_once('/').unwrap_or((after, ""));
        if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
            return Err(bad("no host, or a host with a user, query or spaces"));
        }
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(bad(
                "the bucket must be 3 to 63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(bad("the prefix has an empty, '.' or '..' part"));
        }
        // Other characters are percent-encoded in object paths, which the listing would give
        // back in another spelling than the keys written.
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        {
            return Err(bad(
                "the prefix may hold only letters, digits, '.', '_', '-' and '/'",
            ));
        }
        Ok(Location::S3(S3Location {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }
}

/// The backend of an S3 location: S3, retried, with the test fault layer when asked for.
pub fn s3_backend(location: &S3Location) -> Result<Arc<dyn Backend>> {
    let policy = RetryPolicy::from_env()?;
    // One request may take as long as all attempts together (a pack on a slow link), and
    // never less than 30 s.
    let s3 = S3Backend::new(location, policy.max_time.max(Duration::from_secs(30)))?;
    Ok(match FaultPlan::from_env()? {
        Some(plan) => Arc::new(Retry::new(Faults::new(s3, plan), policy)),
        None => Arc::new(Retry::new(s3, policy)),
    })
}

/// Packs a backup stores at once on an object store: each put waits on the network, and each
/// one in flight holds a pack (32 MiB) in memory.
pub const REMOTE_UPLOAD_SLOTS: usize = 4;
/// Reads restore and verify keep in flight on an object store (each up to a pack in memory).
pub const REMOTE_READ_SLOTS: usize = 4;

/// Opens the repository at `given` (a local path or an `s3:` location). A remote one keeps
/// its indexes, manifests and trees in a cache below `cache_root` (none: no cache) and moves
/// several packs at once. `password` is asked for only when the repository is encrypted.
pub fn open(
    given: &Path,
    cache_root: Option<&Path>,
    password: Option<PasswordSource>,
) -> Result<Repository> {
    match Location::parse(given)? {
        Location::Local(path) => Repository::open_local(&path, password),
        Location::S3(s3) => {
            let backend = s3_backend(&s3)?;
            let url = PathBuf::from(s3.url());
            if !has_config(&backend)? {
                if !backend.list("")?.is_empty() {
                    return Err(Error::NotARepository {
                        path: url,
                        reason: "it holds objects but no tvault `config`".into(),
                    });
                }
                return Err(Error::NoRepository { path: url });
            }
            let mut repo = Repository::open_cached(backend, url, cache_root, password)?;
            repo.set_upload_slots(REMOTE_UPLOAD_SLOTS);
            repo.set_read_slots(REMOTE_READ_SLOTS)?;
            Ok(repo)
        }
    }
}

/// Creates a repository at `given`: a missing or empty local directory, or an S3 prefix that
/// holds no objects. Encrypted, with one key opened by `password`, when one is given.
pub fn init(given: &Path, password: Option<&[u8]>) -> Result<Repository> {
    match Location::parse(given)? {
        Location::Local(path) => Repository::init_local(&path, password),
        Location::S3(s3) => {
            let backend = s3_backend(&s3)?;
            let url = PathBuf::from(s3.url());
            if has_config(&backend)? {
                return Err(Error::Invalid(format!(
                    "{} is already a tvault repository",
                    url.display()
                )));
            }
            let objects = backend.list("")?;
            // An interrupted encrypted `init` leaves its key slots and no config: redone anew.
            let leftover_keys = objects.iter().all(|(k, _)| k.starts_with("keys/"));
            if !objects.is_empty() && !leftover_keys {
                return Err(Error::NotARepository {
                    path: url,
                    reason: "the prefix holds objects; choose a new or empty prefix".into(),
                });
            }
            for (key, _) in &objects {
                backend.delete(key)?;
            }
            Repository::init_backend(backend, url, password)
        }
    }
}

/// Whether the bucket prefix holds a `config` (the only object every repository has).
fn has_config(backend: &Arc<dyn Backend>) -> Result<bool> {
    match Storage::new(backend.clone()).get_config() {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// True for an `s3:` location (which has no local directory to create or inspect).
pub fn is_remote(given: &Path) -> bool {
    given.to_str().is_some_and(|s| s.starts_with("s3:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(text: &str) -> S3Location {
        match Location::parse(Path::new(text)).unwrap() {
            Location::S3(l) => l,
            other => panic!("{text} parsed as {other:?}"),
        }
    }

    #[test]
    fn s3_locations_parse_and_local_paths_stay_paths() {
        let l = s3("s3:http://127.0.0.1:3900/tvault/hosts/a/");
        assert_eq!(l.endpoint, "http://127.0.0.1:3900");
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("tvault", "hosts/a")
        );
        assert_eq!(l.url(), "s3:http://127.0.0.1:3900/tvault/hosts/a");
        let root = s3("s3:https://s3.example.org/my-bucket");
        assert_eq!(root.prefix, "");
        for local in ["/srv/repo", "repo", "s3-backups/x", "./s3:odd"] {
            assert_eq!(
                Location::parse(Path::new(local)).unwrap(),
                Location::Local(PathBuf::from(local))
            );
        }
        for bad in [
            "s3:127.0.0.1/b",
            "s3:ftp://h/bucket",
            "s3:http:///bucket",
            "s3:http://h",
            "s3:http://h/B",
            "s3:http://h/bucket/a/../b",
            "s3:http://h/bucket/~alice",
            "s3:http://h/bucket/a b",
        ] {
            let e = Location::parse(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains(S3_FORM), "{bad}: {e}");
        }
    }
}
