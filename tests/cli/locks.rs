//! Several tvault processes on one repository: a verify overlapping a backup, a prune beside a
//! command that is taking its lock, and locks left by killed runs. The interleavings are made
//! exact with the `TVAULT_TEST_PAUSE` hook (see `repo::testing::pause`): a process stops at
//! a named point until the test lets it go on.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use tvault_workload::Scenario;

use crate::testenv::{args, finish, num, set_mtime, spawn_piped, was_killed, TestEnv};
use crate::verify::assert_verifies_clean;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A repository with one snapshot of `src/ckpt`; returns the checkpoint's path.
fn repo_with_a_snapshot() -> (TestEnv, PathBuf) {
    let env = TestEnv::with_plain_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 71, 0);
    env.backup(&[&ckpt], &[]);
    (env, ckpt)
}

/// `tvault --repo REPO ARGS` in the background, stopping at the test hook `point`.
pub(crate) fn spawn_paused(env: &TestEnv, point: &str, a: Vec<OsString>) -> Child {
    let hooks = env.path("hooks");
    fs::create_dir_all(&hooks).unwrap();
    let mut cmd = env.repo_command(a);
    cmd.env("TVAULT_TEST_PAUSE", format!("{point}:{}", hooks.display()));
    spawn_piped(cmd)
}

/// Waits until the child started by [`spawn_paused`] stands at `point`.
#[track_caller]
pub(crate) fn wait_paused(env: &TestEnv, point: &str, child: &mut Child) {
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
pub(crate) fn resume(env: &TestEnv, point: &str) {
    fs::write(env.path("hooks").join(format!("{point}.resume")), b"").unwrap();
}

/// Temporary files below `dir` of the repository.
fn temp_files_in(env: &TestEnv, dir: &str) -> Vec<PathBuf> {
    env.temp_files()
        .into_iter()
        .filter(|p| p.starts_with(env.repo.join(dir)))
        .collect()
}

/// This machine's boot ID and this process's PID namespace, as tvault records them in locks.
fn boot_and_namespace() -> (String, String) {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = fs::read_link("/proc/self/ns/pid").unwrap();
    (boot.trim().to_string(), ns.display().to_string())
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(19).unwrap().parse().unwrap()
}

/// `tvault backup` of `ckpt`, which must be refused because of a lock; the message has `needles`.
#[track_caller]
fn backup_is_refused(env: &TestEnv, ckpt: &Path, needles: &[&str]) {
    let before = env.snapshots().len();
    env.tvault(args!["backup", ckpt])
        .expect_code(1)
        .stderr_has(needles);
    assert_eq!(env.snapshots().len(), before);
}

// ---------------------------------------------------------------------------------------------
// Item: verify overlapping a backup

#[test]
fn verify_never_reports_a_snapshot_published_while_it_runs_as_lost() {
    let (env, _) = repo_with_a_snapshot();
    let more = env.checkpoint("src/more", Scenario::Single, 256 << 10, 72, 0);
    let mut child = spawn_paused(&env, "verify", args!["--json", "verify", "--read-data"]);
    wait_paused(&env, "verify", &mut child);
    // A backup runs to completion (shared locks coexist) while verify checks.
    let report = env.backup(&[&more], &[]);
    resume(&env, "verify");
    let run = finish(child, "verify --read-data, a backup published meanwhile");
    assert_eq!(run.code(), Some(0), "{run}");
    let r = run.json();
    assert_eq!(r["clean"], true, "{run}");
    assert_eq!(r["problems"], json!([]), "{run}");
    // Checked: the repository as it was listed, not half of the backup that came later.
    for field in ["snapshots", "index_files", "packs", "packs_read"] {
        assert_eq!(num(&r, field), 1, "{field}: {run}");
    }
    let r = assert_verifies_clean(&env, false);
    assert_eq!(num(&r, "snapshots"), 2);
    assert_eq!(env.snapshots().len(), 2, "{report:#}");
}

#[test]
fn a_backup_takes_a_parent_published_after_its_lock_as_its_parent() {
    let (env, ckpt) = repo_with_a_snapshot();
    let mut child = spawn_paused(&env, "locked", args!["--json", "backup", &ckpt]);
    wait_paused(&env, "locked", &mut child);
    // Another backup of the same path publishes a snapshot after the first read the index.
    env.write(
        "src/ckpt/added.bin",
        b"published while the other backup held its lock",
    );
    let between = env.backup(&[&ckpt], &[]);
    resume(&env, "locked");
    let run = finish(child, "backup whose parent was published after its lock");
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(run.json()["parent"], between["id"], "{run}");
    assert_eq!(env.snapshots().len(), 3);
    assert_verifies_clean(&env, false);
}

// ---------------------------------------------------------------------------------------------
// Item: prune beside a command taking its lock

#[test]
fn prune_leaves_the_lock_file_being_written_by_another_command_alone() {
    let (env, _) = repo_with_a_snapshot();
    let more = env.checkpoint("src/more", Scenario::Single, 128 << 10, 73, 0);
    let mut child = spawn_paused(
        &env,
        "put-locks",
        args!["--lock-wait", "30s", "backup", &more],
    );
    wait_paused(&env, "put-locks", &mut child);
    let in_flight = temp_files_in(&env, "locks");
    assert_eq!(in_flight.len(), 1, "{:?}", env.temp_files());

    let run = env.tvault(["--json", "prune"]).expect_code(0);
    assert_eq!(num(&run.json(), "leftovers_deleted"), 0, "{run}");
    assert!(in_flight[0].exists(), "prune deleted a lock being written");
    resume(&env, "put-locks");
    let run = finish(child, "backup --lock-wait 30s, a prune ran meanwhile");
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(env.snapshots().len(), 2);
    assert!(env.lock_files().is_empty() && env.temp_files().is_empty());
}

#[test]
fn a_lock_whose_temporary_file_vanishes_is_written_again() {
    let (env, _) = repo_with_a_snapshot();
    let more = env.checkpoint("src/more", Scenario::Single, 128 << 10, 74, 0);
    let mut child = spawn_paused(&env, "put-locks", args!["backup", &more]);
    wait_paused(&env, "put-locks", &mut child);
    // What an older tvault's prune did: delete every temporary file, in flight or not.
    for tmp in temp_files_in(&env, "locks") {
        fs::remove_file(tmp).unwrap();
    }
    resume(&env, "put-locks");
    let run = finish(child, "backup whose lock's temporary file vanished");
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(env.snapshots().len(), 2);
    assert!(env.lock_files().is_empty());
}

#[test]
fn prune_deletes_only_temporary_files_whose_writer_is_gone() {
    let (env, ckpt) = repo_with_a_snapshot();
    // A backup that aborts once its first pack is under its temporary name (write steps 1-2:
    // its lock): this host, this boot, a process that is gone.
    let more = env.checkpoint("src/more", Scenario::Single, 128 << 10, 75, 0);
    env.crash_after(3, args!["backup", &more]);
    let of_crash = temp_files_in(&env, "data");
    assert_eq!(of_crash.len(), 1, "{:?}", env.temp_files());
    // Temporary files whose writer cannot be told dead (names without it, as older tvaults
    // wrote them, or another host's): fresh ones may be in flight, old ones are not.
    let fresh = env.write("repo/snapshots/.tmp-1-0-fresh", b"{\"version\": 1, ");
    let old = env.write("repo/index/.tmp-1-0-old", b"partial");
    let two_hours_ago = chrono::Utc::now().timestamp() - 7200;
    set_mtime(&old, two_hours_ago, 0);

    let report = env.tvault(["--json", "prune"]).expect_code(0).json();
    // The crashed backup's temporary pack and the old file.
    assert_eq!(num(&report, "leftovers_deleted"), 2, "{report:#}");
    assert!(!of_crash[0].exists() && !old.exists());
    assert!(
        fresh.exists(),
        "a fresh temporary file may be a write in flight"
    );
    assert!(env.lock_files().is_empty());
    assert_verifies_clean(&env, false);
    env.backup(&[&ckpt], &[]);
}

// ---------------------------------------------------------------------------------------------
// Item: locks of killed runs

#[test]
fn a_killed_prune_lock_is_removed_by_the_next_backup_with_a_notice() {
    let (env, ckpt) = repo_with_a_snapshot();
    // Write steps 1-2: prune's lock written and renamed; then it aborts, holding it.
    env.crash_after(2, args!["prune", "--keep-last", "1"]);
    assert_eq!(env.lock_files().len(), 1);

    let run = env.tvault(args!["--json", "backup", &ckpt]).expect_code(0);
    let notices: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(notices.len(), 1, "{run}");
    run.stderr_has(&["removed", "lock of `prune`", "gone"]);
    assert!(run.json()["id"].is_string(), "{run}");
    assert!(env.lock_files().is_empty());
    assert_eq!(env.snapshots().len(), 2);
}

#[test]
fn a_sigkilled_verify_lock_does_not_block_prune() {
    let (env, _) = repo_with_a_snapshot();
    let mut child = spawn_paused(&env, "verify", args!["verify"]);
    wait_paused(&env, "verify", &mut child);
    assert_eq!(env.lock_files().len(), 1);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(was_killed(status), "{status}");
    assert_eq!(
        env.lock_files().len(),
        1,
        "a killed process leaves its lock"
    );

    let run = env.tvault(["prune"]).expect_code(0);
    run.stderr_has(&["removed", "lock of `verify`"]);
    assert!(env.lock_files().is_empty());
    let run = env.tvault(["--quiet", "verify"]).expect_code(0);
    assert_eq!(run.stderr, "", "{run}");
}

#[test]
fn a_lock_of_a_live_process_still_blocks() {
    let (env, ckpt) = repo_with_a_snapshot();
    let (boot, ns) = boot_and_namespace();
    let mut holder = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = holder.id();
    let lock = env.forge_lock(
        "ab",
        json!({"pid": pid, "boot_id": boot, "pid_ns": ns, "pid_start": start_time(pid)}),
    );
    backup_is_refused(&env, &ckpt, &["is locked", "wait for it to finish"]);
    assert!(lock.exists());
    // The same PID with another start time is another process: the lock's owner is gone.
    env.forge_lock(
        "ab",
        json!({"pid": pid, "boot_id": boot, "pid_ns": ns, "pid_start": start_time(pid) + 1}),
    );
    let run = env.tvault(args!["backup", &ckpt]).expect_code(0);
    run.stderr_has(&["removed", &format!("pid {pid}")]);
    assert!(!lock.exists());
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn a_lock_that_cannot_be_proven_dead_still_blocks() {
    let (env, ckpt) = repo_with_a_snapshot();
    let (boot, ns) = boot_and_namespace();
    let other_boot = "00000000-0000-4000-8000-000000000000";
    // Dead PID, but recorded by another boot, another PID namespace (a container), or without
    // boot and namespace (an older tvault): stale, reported, never removed without `tvault unlock`.
    for fields in [
        json!({"boot_id": other_boot, "pid_ns": ns}),
        json!({"boot_id": boot, "pid_ns": "pid:[1]"}),
        json!({}),
    ] {
        let lock = env.forge_lock("cd", fields.clone());
        backup_is_refused(&env, &ckpt, &["stale", "pid 4000000000", "tvault unlock"]);
        assert!(lock.exists(), "{fields}");
        let run = env.tvault(["--json", "unlock"]).expect_code(0);
        assert_eq!(run.json()["removed"].as_array().unwrap().len(), 1, "{run}");
    }
    // Another host: its PIDs say nothing here; a fresh lock is live and waited for.
    let lock = env.forge_lock(
        "ef",
        json!({"host": "elsewhere", "boot_id": boot, "pid_ns": ns}),
    );
    backup_is_refused(
        &env,
        &ckpt,
        &["is locked", "elsewhere", "wait for it to finish"],
    );
    assert!(lock.exists());
    let stale = (chrono::Utc::now() - chrono::Duration::minutes(40)).to_rfc3339();
    env.forge_lock(
        "ef",
        json!({"host": "elsewhere", "boot_id": boot, "pid_ns": ns, "refreshed": stale}),
    );
    backup_is_refused(&env, &ckpt, &["stale", "elsewhere", "tvault unlock"]);
    assert!(lock.exists());
    assert_eq!(env.snapshots().len(), 1);
}
