//! `tvault watch`: one cycle with `--once`; a training run that saves a checkpoint folder per
//! step (shards, then the index JSON) and rewrites a file in place while `watch` runs as a
//! child process, every snapshot holding whole checkpoints only and each checkpoint landing
//! soon after its last write; a half-written safetensors file never snapshotted before it is
//! complete; SIGTERM mid-snapshot (held there by the `TVAULT_TEST_PAUSE` hook) finishing it, a
//! second one abandoning it, no lock left and exit 0 either way; retention after a snapshot
//! limited to the watched paths of this host.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::locks::{resume, wait_paused};
use crate::testenv::{args, finish, manifest, set_mtime, spawn, spawn_piped, text, TestEnv};

/// A safetensors file of one U8 tensor of `n` bytes, each `fill`.
fn safetensors(n: usize, fill: u8) -> Vec<u8> {
    let header = format!(r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#);
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend(std::iter::repeat_n(fill, n));
    f
}

/// Unix time `secs` seconds ago.
fn ago(secs: i64) -> i64 {
    chrono::Utc::now().timestamp() - secs
}

/// Writes `bytes` into `path` (created, or rewritten in place without truncation) in four
/// pieces, `pause` apart, as a trainer's save does.
fn write_slowly(path: &Path, bytes: &[u8], pause: Duration) {
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    for piece in bytes.chunks(bytes.len().div_ceil(4)) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(pause);
    }
}

/// Sends `signal` (e.g. `-TERM`) to the child.
fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The files of snapshot `id`: path → size.
fn files_of(env: &TestEnv, id: &str) -> BTreeMap<String, u64> {
    let listing = env.tvault(args!["--json", "ls", id]).expect_code(0).json();
    listing
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| text(e, "kind") == "file")
        .map(|e| (text(e, "path"), e["size"].as_u64().unwrap()))
        .collect()
}

/// Snapshot IDs, oldest first.
fn snapshot_ids(env: &TestEnv) -> Vec<String> {
    env.snapshots().iter().map(|s| text(s, "id")).collect()
}

#[test]
fn watch_once_snapshots_a_directory_and_logs_the_snapshot() {
    let env = TestEnv::with_repo();
    for (name, bytes) in [
        ("src/a.txt", b"alpha".to_vec()),
        ("src/ckpt/model.safetensors", safetensors(50_000, 3)),
    ] {
        set_mtime(&env.write(name, &bytes), ago(60), 0);
    }
    let post = env.path("post.txt");
    let run = env
        .tvault(args![
            "watch",
            &env.src,
            "--once",
            "--settle",
            "1s",
            "--post-hook",
            format!(
                "echo $TVAULT_STATUS $TVAULT_SNAPSHOT_ID > '{}'",
                post.display()
            )
        ])
        .expect_code(0);
    let ids = snapshot_ids(&env);
    assert_eq!(ids.len(), 1, "{run}");
    run.stderr_has(&[
        "tvault: watch: ",
        &format!("snapshot {} saved", &ids[0][..8]),
        "0 deferred",
    ]);
    env.assert_restores(&ids[0], &crate::testenv::sources_manifest(&[&env.src]));
    assert_eq!(
        fs::read_to_string(&post).unwrap().trim(),
        format!("success {}", ids[0])
    );
    // Nothing changed: the next cycle writes no snapshot.
    env.tvault(args!["watch", &env.src, "--once", "--settle", "1s"])
        .expect_code(0)
        .stderr_has(&["no change since snapshot", "nothing written"]);
    assert_eq!(snapshot_ids(&env), ids);
}

#[test]
fn a_half_written_safetensors_file_is_not_snapshotted_before_it_is_complete() {
    let env = TestEnv::with_repo();
    let full = safetensors(60_000, 7);
    set_mtime(&env.write("src/a.txt", b"alpha"), ago(60), 0);
    // The header promises 60 000 bytes of data; a third of them are there, written a minute
    // ago (a writer that stalled longer than --settle).
    let model = env.write("src/model.safetensors", &full[..full.len() / 3]);
    set_mtime(&model, ago(60), 0);
    let run = env
        .tvault(args![
            "--json", "watch", &env.src, "--once", "--settle", "1s"
        ])
        .expect_code(0);
    let report = run.json();
    let deferred: Vec<String> = report["settling"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(deferred, [model.display().to_string()], "{run}");
    let first = text(&report, "id");
    let files = files_of(&env, &first);
    assert!(!files.contains_key("src/model.safetensors"), "{files:?}");
    assert!(files.contains_key("src/a.txt"));

    // Complete, it is taken.
    fs::write(&model, &full).unwrap();
    set_mtime(&model, ago(60), 0);
    let report = env
        .tvault(args![
            "--json", "watch", &env.src, "--once", "--settle", "1s"
        ])
        .expect_code(0)
        .json();
    assert_eq!(report["settling"], Value::Array(vec![]));
    let files = files_of(&env, &text(&report, "id"));
    assert_eq!(files["src/model.safetensors"], full.len() as u64);
    env.assert_restores(
        &text(&report, "id"),
        &crate::testenv::sources_manifest(&[&env.src]),
    );
}

/// One training step: `run/checkpoint-N/` with two shards written piece by piece (with
/// `stall`, the writer stops half-way through the second one until `stall()` returns), the
/// index JSON last, then `run/state.bin` rewritten in place (every byte `N`).
fn save_step(run: &Path, step: u8, stall: Option<&dyn Fn()>) {
    let dir = run.join(format!("checkpoint-{step}"));
    fs::create_dir_all(&dir).unwrap();
    let pause = Duration::from_millis(40);
    let shard = safetensors(30_000, step);
    write_slowly(&dir.join("model-00001-of-00002.safetensors"), &shard, pause);
    let second = dir.join("model-00002-of-00002.safetensors");
    match stall {
        None => write_slowly(&second, &shard, pause),
        Some(stall) => {
            let half = shard.len() / 2;
            write_slowly(&second, &shard[..half], pause);
            stall();
            let mut f = File::options().append(true).open(&second).unwrap();
            f.write_all(&shard[half..]).unwrap();
        }
    }
    write_slowly(
        &dir.join("model.safetensors.index.json"),
        format!(r#"{{"step": {step}}}"#).as_bytes(),
        pause,
    );
    write_slowly(&run.join("state.bin"), &[step; 20_000], pause);
}

#[test]
fn each_snapshot_of_a_training_run_holds_whole_checkpoints_only() {
    let env = TestEnv::with_repo();
    let run_dir = env.src.join("run");
    fs::create_dir_all(&run_dir).unwrap();
    let watch = spawn_piped(env.repo_command(args!["watch", &env.src, "--settle", "1s"]));
    let shard_len = safetensors(30_000, 0).len() as u64;
    for step in 1..=3u8 {
        // Step 2's writer stalls longer than --settle half-way through a shard, until a cycle
        // has run: that snapshot must leave the folder out (the shard is not complete).
        let before = snapshot_ids(&env).len();
        let stalled = Instant::now();
        let until_a_cycle = || {
            while snapshot_ids(&env).len() == before {
                assert!(
                    stalled.elapsed() < Duration::from_secs(30),
                    "no cycle ran while the writer stalled"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let stall = (step == 2).then_some(&until_a_cycle as &dyn Fn());
        save_step(&run_dir, step, stall);
        let written = Instant::now();
        // The checkpoint lands within settle + backup time (30 s: a generous bound for a busy CI).
        let ckpt = format!("src/run/checkpoint-{step}/model.safetensors.index.json");
        loop {
            let ids = snapshot_ids(&env);
            if let Some(last) = ids.last() {
                if files_of(&env, last).contains_key(&ckpt) {
                    break;
                }
            }
            assert!(
                written.elapsed() < Duration::from_secs(30),
                "checkpoint {step} not snapshotted 30 s after its last write"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    signal(&watch, "-TERM");
    let run = finish(watch, "watch").expect_code(0);
    assert!(env.lock_files().is_empty(), "a lock is left: {run}");
    // The cycle during the stall deferred the unfinished checkpoint folder.
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains(" deferred") && !l.contains(" 0 deferred")),
        "{run}"
    );

    // Every snapshot: each checkpoint folder whole (both shards complete and the index) or
    // absent, and state.bin one step's version, never two.
    let ids = snapshot_ids(&env);
    assert!(ids.len() >= 3, "{run}");
    for id in &ids {
        let files = files_of(&env, id);
        for step in 1..=3 {
            let dir = format!("src/run/checkpoint-{step}/");
            let held: BTreeMap<&String, &u64> =
                files.iter().filter(|(p, _)| p.starts_with(&dir)).collect();
            if held.is_empty() {
                continue;
            }
            let index = format!(r#"{{"step": {step}}}"#).len() as u64;
            let expected: BTreeMap<String, u64> = [
                (format!("{dir}model-00001-of-00002.safetensors"), shard_len),
                (format!("{dir}model-00002-of-00002.safetensors"), shard_len),
                (format!("{dir}model.safetensors.index.json"), index),
            ]
            .into_iter()
            .collect();
            let held: BTreeMap<String, u64> =
                held.into_iter().map(|(p, s)| (p.clone(), *s)).collect();
            assert_eq!(
                held, expected,
                "snapshot {id} holds part of checkpoint {step}"
            );
        }
        if files.contains_key("src/run/state.bin") {
            let state = env.tvault_bytes(args!["dump", id, "src/run/state.bin"]).1;
            assert_eq!(state.len(), 20_000);
            assert!(
                state.iter().all(|&b| b == state[0]),
                "snapshot {id} holds a torn state.bin"
            );
        }
    }
    // The last one holds the last step whole.
    let last = env.restore(ids.last().unwrap());
    assert_eq!(
        manifest(&last.join("src")),
        manifest(&env.src),
        "the last snapshot is the run as it ended"
    );
}

/// `watch ARGS…` held at the `backup-open` pause point (see `locks.rs`), its stderr going to
/// a file that [`wait_for_stderr`] reads while it runs.
fn spawn_watch_paused(env: &TestEnv, a: Vec<std::ffi::OsString>) -> (Child, PathBuf) {
    let hooks = env.path("hooks");
    fs::create_dir_all(&hooks).unwrap();
    let log = env.path("watch.stderr");
    let mut cmd = env.repo_command(a);
    cmd.env(
        "TVAULT_TEST_PAUSE",
        format!("backup-open:{}", hooks.display()),
    )
    .stdout(Stdio::null())
    .stderr(File::create(&log).unwrap());
    (spawn(&mut cmd), log)
}

/// Waits until `watch` has written `needle` to its stderr `log`.
#[track_caller]
fn wait_for_stderr(log: &Path, needle: &str) {
    let started = Instant::now();
    while !fs::read_to_string(log).unwrap().contains(needle) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "watch never said {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two settled files, `watch` paused with its snapshot open, then SIGTERM: the watch process
/// (still paused) and its stderr log, once it said it is stopping.
fn sigterm_mid_snapshot(env: &TestEnv) -> (Child, PathBuf) {
    set_mtime(&env.write("src/a.bin", &[1u8; 50_000]), ago(60), 0);
    set_mtime(&env.write("src/b.bin", &[2u8; 50_000]), ago(60), 0);
    let (mut watch, log) = spawn_watch_paused(env, args!["watch", &env.src, "--settle", "1s"]);
    wait_paused(env, "backup-open", &mut watch);
    signal(&watch, "-TERM");
    wait_for_stderr(&log, "stopping");
    (watch, log)
}

#[test]
fn sigterm_mid_snapshot_finishes_it_and_exits_0_without_a_lock() {
    let env = TestEnv::with_repo();
    let (mut watch, log) = sigterm_mid_snapshot(&env);
    resume(&env, "backup-open");
    let status = watch.wait().unwrap();
    let stderr = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("saved"), "{stderr}");
    let ids = snapshot_ids(&env);
    assert_eq!(ids.len(), 1, "{stderr}");
    env.assert_restores(&ids[0], &crate::testenv::sources_manifest(&[&env.src]));
    assert!(env.lock_files().is_empty(), "a lock is left: {stderr}");
}

#[test]
fn a_second_signal_abandons_the_snapshot_cleanly_and_exits_0() {
    let env = TestEnv::with_repo();
    let (mut watch, log) = sigterm_mid_snapshot(&env);
    signal(&watch, "-INT");
    wait_for_stderr(&log, "abandoning");
    resume(&env, "backup-open");
    let status = watch.wait().unwrap();
    let stderr = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("backup abandoned"), "{stderr}");
    assert!(snapshot_ids(&env).is_empty(), "{stderr}");
    assert!(env.lock_files().is_empty(), "a lock is left: {stderr}");
    // The repository is sound, and the next run stores everything.
    env.tvault(["verify"]).expect_code(0);
    env.tvault(args!["watch", &env.src, "--once", "--settle", "1s"])
        .expect_code(0);
    assert_eq!(snapshot_ids(&env).len(), 1);
}

#[test]
fn retention_after_a_snapshot_forgets_only_this_hosts_snapshots_of_these_paths() {
    let env = TestEnv::with_repo();
    let other = env.path("other");
    fs::create_dir_all(&other).unwrap();
    env.write("other/x.txt", b"x");
    env.backup(&[&other], &["--host", "h1"]);
    for _ in 0..3 {
        env.backup(&[&env.src], &["--host", "h2"]);
    }
    for i in 0..3u8 {
        set_mtime(&env.write("src/a.txt", &[i; 10]), ago(60 - i as i64), 0);
        env.tvault(args![
            "watch",
            &env.src,
            "--once",
            "--settle",
            "1s",
            "--host",
            "h1",
            "--keep-last",
            "2"
        ])
        .expect_code(0);
    }
    let snaps = env.snapshots();
    let of = |host: &str, path: &Path| {
        snaps
            .iter()
            .filter(|s| text(s, "host") == host && s["paths"][0] == path.display().to_string())
            .count()
    };
    assert_eq!(of("h1", &env.src), 2, "{snaps:#?}");
    assert_eq!(of("h1", &other), 1, "another path's snapshot stays");
    assert_eq!(of("h2", &env.src), 3, "another host's snapshots stay");
}
