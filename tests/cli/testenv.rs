//! `TestEnv`: a temp dir with `src/` and `repo/`, helpers that write files and realistic
//! checkpoints into it, run the built `tvault` binary and parse its `--json`, and read and
//! forge repository files. Generated data and the exact tree comparison are in
//! `testenv/trees.rs`, background runs and kills in `testenv/process.rs`, the crash-hook and
//! SIGKILL loops in `testenv/crash.rs`; all of it is reached as `crate::testenv::…`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, FileTimes};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use tvault_workload::{self as workload, Scenario};

/// The repository password every command gets (`TVAULT_PASSWORD`).
pub const PASSWORD: &str = "test-password";

/// The binary under test.
pub const TVAULT: &str = env!("CARGO_BIN_EXE_tvault");

/// Builds a `Vec<OsString>` from anything path- or string-like: `args!["backup", &path]`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        vec![$(::std::ffi::OsStr::new(&$x).to_os_string()),*]
    };
}
pub(crate) use args;

#[path = "testenv/crash.rs"]
mod crash;
#[path = "testenv/process.rs"]
mod process;
#[path = "testenv/trees.rs"]
mod trees;
pub use crash::*;
pub use process::*;
pub use trees::*;

/// What one run of the binary did.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Run {
    fn from_output(what: String, out: Output) -> Run {
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            what,
        }
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics (showing the whole output) unless the process exited with `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(self.code(), Some(code), "unexpected exit status\n{self}");
        self
    }

    /// The `--json` report on stdout.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }

    /// Panics unless stderr contains every one of `needles`.
    #[track_caller]
    pub fn stderr_has(&self, needles: &[&str]) -> &Run {
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}\n{self}");
        }
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\n{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

pub struct TestEnv {
    /// The temp dir; `src/` and `repo/` are inside it.
    pub root: PathBuf,
    pub src: PathBuf,
    pub repo: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    fresh: Cell<u32>,
    _dir: tempfile::TempDir,
}

impl TestEnv {
    /// A temp dir with empty `src/` and `repo/` directories (no repository yet).
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("tvault-test-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        for sub in ["src", "repo", "home", "xdg"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        TestEnv {
            src: root.join("src"),
            repo: root.join("repo"),
            root,
            bin: PathBuf::from(TVAULT),
            user: None,
            fresh: Cell::new(0),
            _dir: dir,
        }
    }

    /// A `TestEnv` with an initialised repository.
    pub fn with_repo() -> TestEnv {
        let env = TestEnv::new();
        env.init();
        env
    }

    /// From now on, runs the binary as `uid`/`gid` (needs root). The temp dir is opened to
    /// everyone and the binary copied into it, so that user can reach both.
    pub fn run_as(&mut self, uid: u32, gid: u32) {
        let bin = self.root.join("tvault-bin");
        fs::copy(TVAULT, &bin).unwrap();
        set_mode(&bin, 0o755);
        set_mode(&self.root, 0o777);
        for sub in ["home", "xdg"] {
            set_mode(&self.root.join(sub), 0o777);
        }
        self.bin = bin;
        self.user = Some((uid, gid));
    }

    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// A new path below the temp dir that does not exist yet (`restore-1`, `restore-2`, ...).
    pub fn fresh_path(&self, stem: &str) -> PathBuf {
        self.fresh.set(self.fresh.get() + 1);
        self.root.join(format!("{stem}-{}", self.fresh.get()))
    }

    /// The binary with a clean environment: no `TVAULT_REPO`, no crash hook, no
    /// `TVAULT_CONFIG`/`TVAULT_PROFILE`, `HOME`, `XDG_DATA_HOME`, `XDG_CACHE_HOME` and
    /// `XDG_CONFIG_HOME` (the config file's folder) inside the temp dir; run as the user `run_as` chose, if any.
    /// Every command gets the password [`PASSWORD`] (`TVAULT_PASSWORD`) and cheap key slots
    /// (`TVAULT_TEST_FAST_KDF=1`), so repositories are encrypted unless a test makes a
    /// plaintext one on purpose ([`TestEnv::init_plain`]).
    pub fn command(&self) -> Command {
        let mut cmd = self.command_as_invoker();
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Like [`TestEnv::command`], but always as the user running the tests.
    pub fn command_as_invoker(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_remove("TVAULT_REPO")
            .env_remove("TVAULT_CRASH_AFTER_WRITES")
            .env_remove("TVAULT_TEST_PAUSE")
            .env_remove("TVAULT_NO_CACHE")
            .env_remove("TVAULT_LIMIT_UPLOAD")
            .env_remove("TVAULT_NEW_PASSWORD")
            .env_remove("TVAULT_CONFIG")
            .env_remove("TVAULT_PROFILE")
            .env("TVAULT_PASSWORD", PASSWORD)
            .env("TVAULT_TEST_FAST_KDF", "1")
            .env("HOME", self.root.join("home"))
            .env("XDG_DATA_HOME", self.root.join("xdg"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .current_dir(&self.root)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run_command(&self, mut cmd: Command) -> Run {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let what = format!(
            "{}{}",
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k, v?)))
                .filter(|(k, _)| *k == "TVAULT_CRASH_AFTER_WRITES" || *k == "TVAULT_REPO")
                .map(|(k, v)| format!("  [{}={}]", k.to_string_lossy(), v.to_string_lossy()))
                .collect::<String>()
        );
        let out = spawn(&mut cmd).wait_with_output().expect("wait for tvault");
        Run::from_output(format!("tvault {what}"), out)
    }

    /// `tvault --repo REPO ARGS...`
    pub fn tvault<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Run {
        self.run_command(self.repo_command(args))
    }

    /// `tvault --repo R ARGS...` for another repository `R`.
    pub fn tvault_at<S: AsRef<OsStr>>(
        &self,
        repo: &Path,
        args: impl IntoIterator<Item = S>,
    ) -> Run {
        self.run_command(self.command_at(repo, args))
    }

    /// `tvault ARGS...` with neither `--repo` nor `TVAULT_REPO` (the default location).
    pub fn tvault_default_repo<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Run {
        let mut cmd = self.command();
        cmd.args(args);
        self.run_command(cmd)
    }

    pub fn init(&self) {
        self.tvault(["init"]).expect_code(0);
        assert!(self.repo.join("config").is_file());
    }

    /// A plaintext repository, on purpose: for tests that read or edit repository bytes at
    /// known offsets (damage, repair, forged locks and manifests).
    pub fn init_plain(&self) {
        self.tvault(["init", "--no-encryption"]).expect_code(0);
        assert!(self.repo.join("config").is_file());
    }

    /// The repository, opened by the engine (with [`PASSWORD`] if it is encrypted).
    pub fn open_repo(&self) -> tvault_core::repo::Repository {
        let password = || Ok(PASSWORD.as_bytes().to_vec());
        tvault_core::repo::Repository::open_local(&self.repo, Some(&password))
            .expect("open the repository")
    }

    /// A `TestEnv` with a plaintext repository ([`TestEnv::init_plain`]).
    pub fn with_plain_repo() -> TestEnv {
        let env = TestEnv::new();
        env.init_plain();
        env
    }

    /// `backup --json PATHS EXTRA`, which must exit 0; returns the report.
    #[track_caller]
    pub fn backup(&self, paths: &[&Path], extra: &[&str]) -> Value {
        self.backup_run(paths, extra).expect_code(0).json()
    }

    /// `tvault --json backup PATHS… EXTRA…`, whatever its exit code.
    pub fn backup_run(&self, paths: &[&Path], extra: &[&str]) -> Run {
        let mut a: Vec<OsString> = args!["--json", "backup"];
        a.extend(paths.iter().map(|p| p.as_os_str().to_os_string()));
        a.extend(extra.iter().map(OsString::from));
        self.tvault(a)
    }

    /// Restores `id` into a fresh directory (exit 0 required); returns the directory.
    #[track_caller]
    pub fn restore(&self, id: &str) -> PathBuf {
        let target = self.fresh_path("restore");
        let run = self
            .tvault(args!["--json", "restore", id, &target])
            .expect_code(0);
        let report = run.json();
        assert!(
            report["failed"].as_array().is_some_and(|f| f.is_empty()),
            "{run}"
        );
        target
    }

    /// Restores `id` and checks the result is exactly `expected`; removes the copy afterwards.
    #[track_caller]
    pub fn assert_restores(&self, id: &str, expected: &Manifest) {
        let target = self.restore(id);
        assert_manifest_eq(expected, &manifest(&target), &format!("restore of {id}"));
        fs::remove_dir_all(&target).unwrap();
    }

    /// `snapshots --json`, which must exit 0.
    #[track_caller]
    pub fn snapshots(&self) -> Vec<Value> {
        let v = self.tvault(["--json", "snapshots"]).expect_code(0).json();
        v.as_array().expect("snapshots --json is an array").clone()
    }

    /// Writes `bytes` to `rel` below the temp dir, creating parent directories.
    pub fn write(&self, rel: impl AsRef<Path>, bytes: &[u8]) -> PathBuf {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes step `step` of a generated checkpoint workload into `rel` below the temp dir.
    pub fn checkpoint(
        &self,
        rel: impl AsRef<Path>,
        scenario: Scenario,
        size: u64,
        seed: u64,
        step: u32,
    ) -> PathBuf {
        let dir = self.root.join(rel);
        let files =
            workload::generate(scenario, &dir, size, seed, step).expect("generate workload");
        assert!(!files.is_empty());
        dir
    }

    /// Every file of the repository with the hash of its content (temp files included), to
    /// show that a failed command wrote, renamed and deleted nothing.
    pub fn repo_state(&self) -> BTreeMap<PathBuf, String> {
        manifest(&self.repo)
            .into_iter()
            .filter_map(|(p, e)| match e {
                Entry::File { hash, .. } => Some((p, hash)),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Small file-system helpers

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets a file's or directory's mtime (seconds may be negative: before 1970).
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos)
    };
    let f = File::options()
        .read(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

/// Overwrites `bytes.len()` bytes at `offset` in place (same inode, same length).
pub fn overwrite_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = File::options().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// True when this test process runs as root (permission bits do not stop its reads).
pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The host name tvault records, read the same way it does.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A tensor of a safetensors file: name, dtype, absolute byte range in the file.
#[derive(Clone, Debug)]
pub struct TensorLoc {
    pub name: String,
    pub dtype: String,
    pub start: u64,
    pub len: u64,
}

/// Parses a safetensors header (8-byte LE length, JSON) into absolute tensor locations.
pub fn safetensors_tensors(path: &Path) -> Vec<TensorLoc> {
    let len_bytes = read_at(path, 0, 8);
    let header_len = u64::from_le_bytes(len_bytes.try_into().unwrap());
    let header: Value = serde_json::from_slice(&read_at(path, 8, header_len as usize)).unwrap();
    let data_start = 8 + header_len;
    let mut out: Vec<TensorLoc> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(name, v)| {
            let offsets = v["data_offsets"].as_array().unwrap();
            let (b, e) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
            TensorLoc {
                name: name.clone(),
                dtype: v["dtype"].as_str().unwrap().to_string(),
                start: data_start + b,
                len: e - b,
            }
        })
        .collect();
    out.sort_by_key(|t| t.start);
    out
}

/// A JSON field as u64, with a message naming it.
#[track_caller]
pub fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("field {field:?} is not a number in {v:#}"))
}

/// A JSON field as a string, with a message naming it.
#[track_caller]
pub fn text(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("field {field:?} is not a string in {v:#}"))
        .to_string()
}

/// Copies a directory tree of regular files and directories (a repository, say).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Repository files, for the verify and prune tests

impl TestEnv {
    /// Sets `pack_size` in the repository's `config`, so that small test backups spread over
    /// several packs (a pack is stored once it reaches this size).
    pub fn set_pack_size(&self, bytes: u32) {
        let path = self.repo.join("config");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        config["pack_size"] = Value::from(bytes);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    /// Bytes of the packs and index files (`data/` and `index/`, temporary files excluded).
    pub fn repo_data_bytes(&self) -> u64 {
        ["data", "index"]
            .iter()
            .flat_map(|d| files_below(&self.repo.join(d)))
            .filter(|p| !is_temporary(p))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    /// Lock files now in the repository (temporary files excluded). Cheap enough to poll.
    pub fn lock_files(&self) -> Vec<PathBuf> {
        files_below(&self.repo.join("locks"))
            .into_iter()
            .filter(|p| !is_temporary(p))
            .collect()
    }

    /// Writes the lock file `repo/locks/NAME…` (`name` repeated to 64 characters) as another
    /// tvault process would: an exclusive `prune` lock of this host (PID 4000000000, created and
    /// refreshed now) with `fields` merged over it.
    pub fn forge_lock(&self, name: &str, fields: Value) -> PathBuf {
        let now = chrono::Utc::now().to_rfc3339();
        let mut lock = serde_json::json!({
            "host": hostname(), "pid": 4_000_000_000u64, "exclusive": true,
            "command": "prune", "created": now, "refreshed": now,
        });
        for (k, v) in fields.as_object().unwrap() {
            lock[k] = v.clone();
        }
        // Through the engine, so that it is sealed in an encrypted repository.
        use tvault_core::repo::{Handle, ObjectKind};
        let hex = name.repeat(64 / name.len());
        let id = tvault_core::id::Id::from_hex(&hex).expect("a lock name of hex digits");
        let repo = self.open_repo();
        let object = Handle::new(ObjectKind::Lock, &id);
        repo.storage()
            .put(&object, &serde_json::to_vec(&lock).unwrap())
            .unwrap();
        let path = self.repo.join(object.to_string());
        // The store's time of the lock (its mtime, which staleness goes by) is its refresh.
        if let Some(refreshed) = lock["refreshed"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            let when = std::time::SystemTime::from(refreshed);
            let file = fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(when).unwrap();
        }
        path
    }

    /// Temporary files (`.tmp-…`) anywhere in the repository.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        files_below(&self.repo)
            .into_iter()
            .filter(|p| is_temporary(p))
            .collect()
    }
}

/// The delta method (`codec::DeltaHeader::method`: 3 sparse runs, 4 sparse elements, 0-2
/// dense) of every delta blob `repo`'s index lists.
pub fn delta_methods(repo: &tvault_core::repo::Repository) -> Vec<u8> {
    let ids: Vec<_> = repo.index().deltas().map(|(id, _)| *id).collect();
    let methods = std::sync::Mutex::new(Vec::new());
    repo.read_blobs_encoded(&ids, |_, _, encoded, _| {
        methods
            .lock()
            .unwrap()
            .push(tvault_core::codec::delta_header(encoded)?.method);
        Ok(())
    })
    .expect("read every delta blob");
    methods.into_inner().unwrap()
}

/// Every regular file below `dir` (none if it does not exist), without reading them.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            out.extend(files_below(&entry.path()));
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
}

/// Flips one bit of the byte at `offset` in place (same length, same inode).
pub fn flip_byte(path: &Path, offset: u64) {
    let byte = read_at(path, offset, 1)[0];
    set_mode(path, 0o644);
    overwrite_at(path, offset, &[byte ^ 0x40]);
}

// ---------------------------------------------------------------------------------------------
// Snapshot manifests and second-resolution trees, for the unattended-operation tests

impl TestEnv {
    /// Rewrites snapshot `id`'s manifest with `edit` and stores it under its new ID (a manifest
    /// is named by the hash of its content; the old one is deleted). Returns the new ID.
    pub fn rewrite_snapshot(&self, id: &str, edit: impl FnOnce(&mut Value)) -> String {
        // Through the engine, so that it is sealed and named by the keyed hash in an
        // encrypted repository.
        let repo = self.open_repo();
        let old = tvault_core::id::Id::from_hex(id).expect("a full snapshot ID");
        let mut manifest = serde_json::to_value(repo.load_snapshot(&old).unwrap()).unwrap();
        edit(&mut manifest);
        let snap: tvault_core::snapshot::Snapshot = serde_json::from_value(manifest).unwrap();
        let new = repo.save_snapshot(&snap).unwrap();
        if new != old {
            repo.delete_snapshot(&old).unwrap();
        }
        new.to_hex()
    }
}

impl TestEnv {
    /// `tvault --repo REPO ARGS…` with `input` written to its standard input through a pipe.
    pub fn tvault_with_stdin<S: AsRef<OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
        input: &[u8],
    ) -> Run {
        let mut cmd = self.repo_command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!(
            "tvault {} < ({} bytes)",
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            input.len()
        );
        let mut child = spawn(&mut cmd);
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = input.to_vec();
        // tvault may stop reading early (a refused archive): a broken pipe is not an error here.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait for tvault");
        writer.join().unwrap();
        Run::from_output(what, out)
    }

    /// `tvault --repo REPO ARGS…` whose standard output is binary: (status, stdout, stderr).
    pub fn tvault_bytes<S: AsRef<OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> (ExitStatus, Vec<u8>, String) {
        let out = spawn_piped(self.repo_command(args))
            .wait_with_output()
            .expect("wait for tvault");
        (
            out.status,
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
