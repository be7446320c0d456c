//! `--pre-hook` and `--post-hook` on `backup`: the environment a hook sees, a failing pre-hook
//! that stops the backup before anything is written, a hanging hook killed (with what it
//! started) at `--hook-timeout`, hook output prefixed on stderr, and a post-hook that learns
//! of a failed backup.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::testenv::{args, num, text, TestEnv};

/// A hook that writes its `TVAULT_*` variables into `file` (one `NAME=value` per line).
fn record_env(file: &Path) -> String {
    format!(
        "env | grep '^TVAULT_' | grep -v PASSWORD > '{}'",
        file.display()
    )
}

/// The `TVAULT_*` variables a [`record_env`] hook saw.
#[track_caller]
fn recorded(file: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("the hook did not write {}: {e}", file.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn hooks_see_the_run_in_their_environment() {
    let env = TestEnv::with_repo();
    env.write("src/weights.bin", &vec![7u8; 100_000]);
    let (pre, post) = (env.path("pre.env"), env.path("post.env"));
    let report = env.backup(
        &[&env.src],
        &[
            "--pre-hook",
            &record_env(&pre),
            "--post-hook",
            &record_env(&post),
        ],
    );
    let pre = recorded(&pre);
    assert_eq!(pre["TVAULT_HOOK"], "pre");
    assert_eq!(pre["TVAULT_REPOSITORY"], env.repo.display().to_string());
    assert!(!pre.contains_key("TVAULT_STATUS"), "{pre:?}");
    let post = recorded(&post);
    assert_eq!(post["TVAULT_HOOK"], "post");
    assert_eq!(post["TVAULT_REPOSITORY"], env.repo.display().to_string());
    assert_eq!(post["TVAULT_STATUS"], "success");
    assert_eq!(post["TVAULT_EXIT_CODE"], "0");
    assert_eq!(post["TVAULT_SNAPSHOT_ID"], text(&report, "id"));
    assert_eq!(
        post["TVAULT_BYTES_ADDED"],
        num(&report, "bytes_added").to_string()
    );
    assert!(num(&report, "bytes_added") > 0);
}

#[test]
fn hooks_do_not_see_the_repository_password() {
    let env = TestEnv::with_repo();
    env.write("src/weights.bin", &vec![7u8; 1000]);
    let seen = env.path("seen.env");
    let dump = format!("env > '{}'", seen.display());
    env.backup(&[&env.src], &["--pre-hook", &dump, "--post-hook", &dump]);
    let text = fs::read_to_string(&seen).unwrap();
    assert!(text.contains("TVAULT_HOOK=post"), "{text}");
    assert!(
        !text.contains("PASSWORD"),
        "a hook saw a password variable:\n{text}"
    );
}

#[test]
fn a_failing_pre_hook_stops_the_backup_before_anything_is_written() {
    let env = TestEnv::with_repo();
    env.write("src/weights.bin", &vec![7u8; 100_000]);
    let before = env.repo_state();
    let post = env.path("post.env");
    let run = env
        .tvault(args![
            "backup",
            &env.src,
            "--pre-hook",
            "echo mounting; exit 7",
            "--post-hook",
            record_env(&post)
        ])
        .expect_code(1);
    run.stderr_has(&[
        "pre-hook `echo mounting; exit 7` failed with exit code 7",
        "nothing was written",
        "[pre-hook] mounting",
    ]);
    assert_eq!(env.repo_state(), before, "nothing was written");
    assert!(env.snapshots().is_empty());
    // The post-hook hears of it, to alert.
    let post = recorded(&post);
    assert_eq!(post["TVAULT_STATUS"], "failed");
    assert_eq!(post["TVAULT_EXIT_CODE"], "1");
    assert_eq!(post["TVAULT_SNAPSHOT_ID"], "");
    assert!(post["TVAULT_ERROR"].contains("pre-hook"), "{post:?}");
}

#[test]
fn a_hanging_hook_is_killed_with_what_it_started_at_the_timeout() {
    let env = TestEnv::with_repo();
    env.write("src/a.txt", b"a");
    let pid_file = env.path("sleep.pid");
    let hook = format!("sleep 1000 & echo $! > '{}'; wait", pid_file.display());
    let started = Instant::now();
    let run = env
        .tvault(args![
            "backup",
            &env.src,
            "--pre-hook",
            hook,
            "--hook-timeout",
            "1s"
        ])
        .expect_code(1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    run.stderr_has(&[
        "pre-hook",
        "timed out",
        "1 second",
        "--hook-timeout",
        "killed",
    ]);
    assert!(env.snapshots().is_empty());
    // The sleep the hook's shell started died with it (gone, or a zombie nobody reaped).
    let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim().chars().next().unwrap_or('Z'));
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the hook's child {pid} still runs: {state:?}"
    );
}

#[test]
fn hook_output_goes_to_stderr_prefixed_with_the_hook() {
    let env = TestEnv::with_repo();
    env.write("src/a.txt", b"a");
    let run = env
        .tvault(args![
            "backup",
            &env.src,
            "--pre-hook",
            "echo to-stdout; echo to-stderr >&2",
            "--post-hook",
            "echo done $TVAULT_STATUS"
        ])
        .expect_code(0);
    run.stderr_has(&[
        "[pre-hook] to-stdout\n",
        "[pre-hook] to-stderr\n",
        "[post-hook] done success\n",
    ]);
    assert!(!run.stdout.contains("to-stdout"), "{run}");
}

#[test]
fn the_post_hook_runs_after_a_failed_backup_and_its_failure_is_a_warning() {
    let env = TestEnv::with_repo();
    let post = env.path("post.env");
    let missing = env.path("no-such-dir");
    let run = env
        .tvault(args![
            "backup",
            &missing,
            "--post-hook",
            format!("{}; exit 4", record_env(&post))
        ])
        .expect_code(1);
    run.stderr_has(&["warning: post-hook", "failed with exit code 4"]);
    let seen = recorded(&post);
    assert_eq!(seen["TVAULT_STATUS"], "failed");
    assert_eq!(seen["TVAULT_EXIT_CODE"], "1");
    assert_eq!(seen["TVAULT_BYTES_ADDED"], "0");
    assert!(seen["TVAULT_ERROR"].contains("no-such-dir"), "{seen:?}");

    // After a good backup, a failing post-hook warns and leaves the exit code at 0.
    env.write("src/a.txt", b"a");
    env.tvault(args!["backup", &env.src, "--post-hook", "exit 9"])
        .expect_code(0)
        .stderr_has(&["warning: post-hook `exit 9` failed with exit code 9"]);
    assert_eq!(env.snapshots().len(), 1);
}

#[test]
fn a_hook_that_leaves_a_process_in_the_background_does_not_hold_the_backup() {
    let env = TestEnv::with_repo();
    env.write("src/a.txt", b"a");
    let pid_file = env.path("bg.pid");
    // The background sleep keeps the hook's stdout open long after the hook exited.
    let hook = format!(
        "echo started; sleep 20 & echo $! > '{}'",
        pid_file.display()
    );
    let started = Instant::now();
    let run = env
        .tvault(args!["backup", &env.src, "--post-hook", hook])
        .expect_code(0);
    let took = started.elapsed();
    let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let _ = std::process::Command::new("kill").arg(&pid).status();
    assert!(took < Duration::from_secs(10), "took {took:?}: {run}");
    run.stderr_has(&["[post-hook] started"]);
}
