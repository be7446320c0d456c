//! Several tvault processes on one repository: a verify overlapping a backup, a prune beside a
//! command that is taking its lock, and locks left by killed runs. The interleavings are made
//! exact with the `TVAULT_TEST_PAUSE` hook (see `repo::backend::test_pause`): a process stops at
//! a named point until the test lets it go on.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::json;
use tvault::workload::Scenario;

use crate::testenv::{args, num, spawn, TestEnv};
use crate::unattended::finish;
use crate::verify::assert_verifies_clean;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A repository with one snapshot of `src/ckpt`; returns the checkpoint's path.
fn repo_with_a_snapshot() -> (TestEnv, PathBuf) {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 71, 0);
    env.backup(&[&ckpt], &[]);
    (env, ckpt)
}

/// `tvault --repo REPO ARGS` in the background, stopping at the test hook `point`.
fn spawn_paused(env: &TestEnv, point: &str, a: Vec<OsString>) -> Child {
    let hooks = env.path("hooks");
    fs::create_dir_all(&hooks).unwrap();
    let mut cmd = env.command();
    cmd.env("TVAULT_TEST_PAUSE", format!("{point}:{}", hooks.display()))
        .arg("--repo")
        .arg(&env.repo)
        .args(a)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    spawn(&mut cmd)
}

/// Waits until the child started by [`spawn_paused`] stands at `point`.
#[track_caller]
fn wait_paused(env: &TestEnv, point: &str, child: &mut Child) {
    let marker = env.path("hooks").join(format!("{point}.paused"));
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before it reached {point}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lets the child standing at `point` go on.
fn resume(env: &TestEnv, point: &str) {
    fs::write(env.path("hooks").join(format!("{point}.resume")), b"").unwrap();
}

// ---------------------------------------------------------------------------------------------
// Item: verify overlapping a backup

#[test]
fn verify_never_reports_a_snapshot_published_while_it_runs_as_lost() {
    let (env, _) = repo_with_a_snapshot();
    let more = env.checkpoint("src/more", Scenario::Single, 256 << 10, 72, 0);
    let mut child = spawn_paused(&env, "verify", args!["--json", "verify", "--read-data"]);
    wait_paused(&env, "verify", &mut child);
    // A backup runs to completion (shared locks coexist) between verify's two reads.
    let report = env.backup(&[&more], &[]);
    resume(&env, "verify");
    let run = finish(child, "verify --read-data, a backup published meanwhile");
    assert_eq!(run.code(), Some(0), "{run}");
    let r = run.json();
    assert_eq!(r["clean"], true, "{run}");
    assert_eq!(r["problems"], json!([]), "{run}");
    // Either checked against an index that has it, or left for the next run.
    assert!([1, 2].contains(&num(&r, "snapshots")), "{run}");
    let r = assert_verifies_clean(&env, false);
    assert_eq!(num(&r, "snapshots"), 2);
    assert_eq!(env.snapshots().len(), 2, "{report:#}");
}
