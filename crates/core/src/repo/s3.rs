//! A repository in an S3 bucket (AWS or a self-hosted server such as Garage or MinIO), through
//! the `object_store` crate: path-style requests, credentials from the standard AWS variables
//! or the shared credentials file, the region from `AWS_REGION`/`AWS_DEFAULT_REGION`.
//!
//! Every `put` is one PUT of the whole object, which S3 makes visible atomically: there are no
//! temporary objects, so `list_leftovers` has nothing to report. The engine is synchronous and
//! multi-threaded; the backend owns a small tokio runtime and blocks on it, which any number of
//! threads may do at once.
//!
//! Errors are [`Error::Storage`] classified for the retry layer ([`super::retry`]): transient
//! for what may pass (HTTP 5xx, 408, 429, timeouts, refused or dropped connections), not found
//! for a missing object (never a missing bucket), permanent for what will not pass by itself
//! (403, a missing bucket, any other 4xx); the message says what to fix. This backend does not
//! retry on its own.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

use super::backend::Backend;
use crate::error::{Error, ErrorClass, Result};

/// Where a repository lives in S3: `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// `http://HOST[:PORT]` or `https://HOST[:PORT]`.
    pub endpoint: String,
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Location {
    /// The location as the user writes it.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3:{}/{}", self.endpoint, self.bucket),
            p => format!("s3:{}/{}/{p}", self.endpoint, self.bucket),
        }
    }
}

/// Access key, secret and optional session token.
struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), else the profile
/// `AWS_PROFILE` (default `default`) of the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`).
fn credentials() -> std::result::Result<Credentials, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(key_id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            key_id,
            secret,
            token: var("AWS_SESSION_TOKEN"),
        });
    }
    let file = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let missing = || {
        format!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give \
             profile [{profile}] in ~/.aws/credentials (AWS_PROFILE chooses another profile)"
        )
    };
    let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else {
        return Err(missing());
    };
    let (mut in_profile, mut key_id, mut secret, mut token) = (false, None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
        } else if let (true, Some((k, v))) = (in_profile, line.split_once('=')) {
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => key_id = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret)) => Ok(Credentials {
            key_id,
            secret,
            token,
        }),
        _ => Err(missing()),
    }
}

/// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
fn region() -> String {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".into())
}

/// A repository below a prefix of an S3 bucket.
pub struct S3Backend {
    store: AmazonS3,
    runtime: tokio::runtime::Runtime,
    location: S3Location,
}

impl S3Backend {
    /// A backend for `location` whose requests time out after `timeout` (connecting after
    /// 10 s); fails only when no credentials are to be found (nothing is sent before the first
    /// call).
    pub fn new(location: &S3Location, timeout: Duration) -> Result<S3Backend> {
        let creds = credentials().map_err(|m| invalid(&location.url(), m))?;
        S3Backend::build(location, creds, region(), timeout)
    }

    /// A backend with the given access key, secret and region, whatever the environment says
    /// (for tools and tests that reach a bucket directly).
    pub fn with_keys(
        location: &S3Location,
        key_id: &str,
        secret: &str,
        region: &str,
    ) -> Result<S3Backend> {
        let creds = Credentials {
            key_id: key_id.to_string(),
            secret: secret.to_string(),
            token: None,
        };
        S3Backend::build(
            location,
            creds,
            region.to_string(),
            Duration::from_secs(120),
        )
    }

    fn build(
        location: &S3Location,
        creds: Credentials,
        region: String,
        timeout: Duration,
    ) -> Result<S3Backend> {
        let options = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(timeout);
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&location.endpoint)
            .with_bucket_name(&location.bucket)
            .with_region(region)
            .with_access_key_id(creds.key_id)
            .with_secret_access_key(creds.secret)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(true)
            .with_client_options(options)
            // Retries are the job of `repo::retry`, which bounds them and says what happened.
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            });
        if let Some(token) = creds.token {
            builder = builder.with_token(token);
        }
        let store = builder
            .build()
            .map_err(|e| invalid(&location.url(), e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tvault-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io(location.url(), e))?;
        Ok(S3Backend {
            store,
            runtime,
            location: location.clone(),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        match (self.location.prefix.as_str(), key) {
            (p, "") => ObjectPath::from(p),
            ("", k) => ObjectPath::from(k),
            (p, k) => ObjectPath::from(format!("{p}/{k}")),
        }
    }

    /// The repository key of an object path below the prefix.
    fn key_of(&self, path: &ObjectPath) -> String {
        let full = path.as_ref();
        match self.location.prefix.as_str() {
            "" => full.to_string(),
            p => full
                .strip_prefix(p)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
                .to_string(),
        }
    }

    /// The objects below `prefix` by repository key, sorted by key.
    fn listing(&self, prefix: &str) -> Result<Vec<(String, object_store::ObjectMeta)>> {
        let path = self.path(prefix.trim_end_matches('/'));
        let listed: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.store.list(Some(&path)).try_collect())
            .map_err(|e| self.error(prefix, e))?;
        let mut keys: Vec<_> = listed
            .into_iter()
            .map(|m| (self.key_of(&m.location), m))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys)
    }

    fn error(&self, key: &str, e: object_store::Error) -> Error {
        let (class, message) = classify(&self.location, e);
        Error::storage(self.describe(key), class, message)
    }
}

fn invalid(what: &str, message: String) -> Error {
    Error::Invalid(format!("{what}: {message}"))
}

/// The HTTP status an error of `object_store` reports, if any (from its message: the type that
/// carries it is private to the crate).
fn status_of(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// What an `object_store` error means for a retry, and a message that says what to fix.
fn classify(location: &S3Location, e: object_store::Error) -> (ErrorClass, String) {
    let mut text = e.to_string();
    let mut http_kind = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            http_kind = Some(h.kind());
        }
        let s = err.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        source = err.source();
    }
    // `object_store` wraps its HTTP error transparently, which hides it from the chain of
    // sources; its message still tells the kind.
    if http_kind.is_none() {
        let lower = text.to_ascii_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| lower.contains(w));
        http_kind = if any(&["(connect)", "tcp connect error", "connection refused"]) {
            Some(HttpErrorKind::Connect)
        } else if any(&["timed out", "timeout"]) {
            Some(HttpErrorKind::Timeout)
        } else if any(&[
            "error sending request",
            "connection reset",
            "connection closed",
            "broken pipe",
            "incompletemessage",
            "error reading a body",
            "error decoding response body",
        ]) {
            Some(HttpErrorKind::Request)
        } else {
            None
        };
    }
    let bucket = &location.bucket;
    let endpoint = &location.endpoint;
    let has = |code: &str| text.contains(code);
    // Codes in the body say more than the status: AWS answers a stalled upload with 400
    // RequestTimeout and asks to slow down with 503 SlowDown; its SDKs retry these.
    let transient_code = [
        "RequestTimeout",
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
    ]
    .iter()
    .any(|c| has(c));
    if transient_code {
        (
            ErrorClass::Transient,
            format!("the S3 server asked to try again: {}", brief(&text)),
        )
    } else if has("RequestTimeTooSkewed") {
        (
            ErrorClass::Permanent,
            format!(
                "the S3 server refused the request because this machine's clock is wrong \
                 (set it right, e.g. with NTP): {}",
                brief(&text)
            ),
        )
    } else if has("NoSuchBucket") {
        (
            ErrorClass::Permanent,
            format!("bucket {bucket:?} does not exist at {endpoint}: create it, or fix the bucket in --repo/TVAULT_REPO"),
        )
    } else if has("InvalidAccessKeyId")
        || has("SignatureDoesNotMatch")
        || has("AccessDenied")
        || matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        )
    {
        (
            ErrorClass::Permanent,
            format!(
                "access denied by the S3 server ({}): check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or the AWS_PROFILE in ~/.aws/credentials), AWS_REGION, \
                 and that the key may read and write bucket {bucket:?}",
                brief(&text)
            ),
        )
    } else if let object_store::Error::NotFound { .. } = e {
        (ErrorClass::NotFound, "no such object".to_string())
    } else if let Some(status) = status_of(&text) {
        let class = if status >= 500 || status == 429 || status == 408 {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        (
            class,
            format!("the S3 server answered HTTP {status}: {}", brief(&text)),
        )
    } else if let Some(k) = http_kind {
        let class = match k {
            HttpErrorKind::Timeout
            | HttpErrorKind::Connect
            | HttpErrorKind::Request
            | HttpErrorKind::Interrupted => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        let what = match k {
            HttpErrorKind::Connect => {
                format!("cannot connect to {endpoint} (is the S3 server running, and the address right?)")
            }
            HttpErrorKind::Timeout => format!("{endpoint} did not answer in time"),
            _ => "the connection to the S3 server failed".to_string(),
        };
        (class, format!("{what}: {}", brief(&text)))
    } else {
        (ErrorClass::Permanent, brief(&text))
    }
}

/// Whether the server refused a range as past the object's end (HTTP 416, or `object_store`'s
/// own check of the range it got back).
fn is_range_error(e: &object_store::Error) -> bool {
    let text = e.to_string();
    status_of(&text) == Some(416)
        || text.contains("InvalidRange")
        || text.contains("Range not satisfiable")
        || text.contains("Wanted range starting at")
}

/// The last, most specific parts of an error chain, for a message of reasonable length.
fn brief(text: &str) -> String {
    let t = text.replace('\n', " ");
    match t.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &t[..at]),
        None => t,
    }
}

impl Backend for S3Backend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_shared(key, bytes::Bytes::copy_from_slice(data))
    }

    fn put_shared(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        let payload = PutPayload::from(data);
        self.runtime
            .block_on(self.store.put(&self.path(key), payload))
            .map(|_| ())
            .map_err(|e| self.error(key, e))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.runtime
            .block_on(async {
                let got = self.store.get(&self.path(key)).await?;
                got.bytes().await
            })
            // Into a Vec without a copy where the buffer allows it.
            .map(Vec::from)
            .map_err(|e| self.error(key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let range = offset..offset + len as u64;
        // A range past the end is a short read, as on a local disk (callers name what is cut):
        // the server answers 416, or fewer bytes than asked for.
        let short = || {
            let message = format!("the object is shorter than {} bytes", offset + len as u64);
            let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message);
            Error::io(self.describe(key), e)
        };
        let bytes = match self
            .runtime
            .block_on(self.store.get_range(&self.path(key), range))
        {
            Ok(bytes) => bytes,
            Err(e) if is_range_error(&e) => return Err(short()),
            Err(e) => return Err(self.error(key, e)),
        };
        if bytes.len() != len {
            return Err(short());
        }
        Ok(Vec::from(bytes))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .listing(prefix)?
            .into_iter()
            .map(|(key, meta)| (key, meta.size))
            .collect())
    }

    fn list_times(&self, prefix: &str) -> Result<Option<Vec<(String, SystemTime)>>> {
        Ok(Some(
            self.listing(prefix)?
                .into_iter()
                .map(|(key, meta)| (key, SystemTime::from(meta.last_modified)))
                .collect(),
        ))
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.runtime.block_on(self.store.delete(&self.path(key))) {
            Ok(()) => Ok(()),
            Err(e) => match self.error(key, e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.location.url())
    }
}
