//! Several tvault processes on one repository: a verify overlapping a backup, a prune beside a
//! command that is taking its lock, and locks left by killed runs. The interleavings are made
//! exact with the `TVAULT_TEST_PAUSE` hook (see `repo::testing::pause`): a process stops at
//! a named point until the test lets it go on.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tvault_workload::Scenario;

use crate::bad_input::repo_of_a_user_who_cannot_read_everything;
use crate::testenv::{
    args, finish, is_root, num, set_mode, set_mtime, spawn_piped, was_killed, TestEnv,
};
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
pub(crate) fn boot_and_namespace() -> (String, String) {
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

/// Issue (review): `is_stale` judged a lock by its PID whenever the host name matched, so a lock
/// of another boot, of another PID namespace (a container with the same host name) or of an
/// older tvault (no boot or namespace recorded) whose PID means nothing here was called stale
/// and `tvault unlock` removed it while its holder ran. Such a lock is judged by its age alone.
#[test]
fn a_lock_that_cannot_be_proven_dead_still_blocks() {
    let (env, ckpt) = repo_with_a_snapshot();
    let (boot, ns) = boot_and_namespace();
    let other_boot = "00000000-0000-4000-8000-000000000000";
    let stale = (chrono::Utc::now() - chrono::Duration::minutes(40)).to_rfc3339();
    // Dead PID, but recorded by another boot, another PID namespace (a container), or without
    // boot and namespace (an older tvault): live while refreshed, never removed by `unlock`.
    for fields in [
        json!({"boot_id": other_boot, "pid_ns": ns}),
        json!({"boot_id": boot, "pid_ns": "pid:[1]"}),
        json!({"pid_ns": ns}),
        json!({}),
    ] {
        let lock = env.forge_lock("cd", fields.clone());
        backup_is_refused(
            &env,
            &ckpt,
            &["is locked", "pid 4000000000", "wait for it to finish"],
        );
        let run = env.tvault(["--json", "unlock"]).expect_code(0);
        assert_eq!(run.json()["removed"], json!([]), "{fields}: {run}");
        assert!(lock.exists(), "{fields}");
        // Unrefreshed for longer than the stale timeout: stale, and `unlock` removes it.
        let mut old = fields.clone();
        old["refreshed"] = json!(stale);
        env.forge_lock("cd", old);
        backup_is_refused(&env, &ckpt, &["stale", "pid 4000000000", "tvault unlock"]);
        assert!(lock.exists(), "{fields}");
        let run = env.tvault(["--json", "unlock"]).expect_code(0);
        assert_eq!(run.json()["removed"].as_array().unwrap().len(), 1, "{run}");
        assert!(!lock.exists(), "{fields}");
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
    env.forge_lock(
        "ef",
        json!({"host": "elsewhere", "boot_id": boot, "pid_ns": ns, "refreshed": stale}),
    );
    backup_is_refused(&env, &ckpt, &["stale", "elsewhere", "tvault unlock"]);
    assert!(lock.exists());
    assert_eq!(env.snapshots().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Item: locks that cannot be read

/// Issue (review): an error reading another process's lock (permissions, I/O, a store that
/// failed) counted as "released", so a command went ahead beside a lock it never saw, maybe
/// prune's. Only a lock that is gone is released; any other error stops the command (and a
/// plain `tvault unlock`) with a message that names the lock file.
#[test]
fn a_lock_that_cannot_be_read_stops_the_command_naming_it() {
    let (env, _) = repo_of_a_user_who_cannot_read_everything();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 64 << 10, 76, 0);
    env.backup(&[&ckpt], &[]);
    let lock = env.forge_lock("ab", json!({}));
    set_mode(&lock, 0o000);
    let name = lock.display().to_string();
    backup_is_refused(&env, &ckpt, &["cannot read", &name]);
    // `unlock` cannot tell whether it is stale either: it keeps it and says why.
    env.tvault(["unlock"])
        .expect_code(1)
        .stderr_has(&["cannot read", &name, "unlock --all"]);
    assert!(lock.exists());
    // `unlock --all` removes every lock, read or not.
    let run = env.tvault(["--json", "unlock", "--all"]).expect_code(0);
    assert_eq!(run.json()["removed"].as_array().unwrap().len(), 1, "{run}");
    assert!(!lock.exists());
    env.backup(&[&ckpt], &[]);
    assert_eq!(env.snapshots().len(), 2);
}

/// Regression test of 02c48ae: on a `/proc` mounted with `hidepid=2`, another user's live
/// process is missing from it, so its lock looked provably dead: removed with a notice, and the
/// command went ahead (prune would then delete that backup's unindexed packs). A missing entry
/// proves nothing while PID 1's is hidden too. Needs root (a mount namespace whose `/proc` hides
/// processes, tvault run as nobody); skipped otherwise.
#[test]
fn under_hidepid_another_users_live_process_keeps_its_lock() {
    let hidepid = "mount -t proc -o hidepid=2 proc /proc";
    let can_hide = is_root()
        && Command::new("unshare")
            .args(["-m", "sh", "-c", hidepid])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !can_hide {
        eprintln!("skipped: needs root and `unshare -m` to mount /proc with hidepid=2");
        return;
    }
    let (env, _) = repo_of_a_user_who_cannot_read_everything();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 64 << 10, 78, 0);
    env.backup(&[&ckpt], &[]);
    // A live process of root's holds an exclusive lock, recorded as a current tvault does.
    let mut holder = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = holder.id();
    let (boot, ns) = boot_and_namespace();
    let lock = env.forge_lock(
        "ab",
        json!({"pid": pid, "boot_id": boot, "pid_ns": ns, "pid_start": start_time(pid)}),
    );
    // Written by root through the engine (0600): readable by nobody's tvault as its own.
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    // The backup runs as nobody in a mount namespace whose /proc hides root's processes.
    let tvault = env.command_as_invoker();
    let mut cmd = Command::new("unshare");
    for (k, v) in tvault.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let drop_to_nobody = "exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"";
    cmd.current_dir(&env.root)
        .args([
            "-m",
            "sh",
            "-c",
            &format!("{hidepid} && {drop_to_nobody}"),
            "sh",
        ])
        .arg(tvault.get_program())
        .args(args!["--repo", &env.repo, "backup", &ckpt]);
    let run = env.run_command(cmd);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(run.code(), Some(1), "{run}");
    run.stderr_has(&["is locked", &format!("pid {pid}"), "wait for it to finish"]);
    assert!(!run.stderr.contains("removed"), "{run}");
    assert!(lock.exists());
    assert_eq!(env.snapshots().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Item: staleness by the store's clock (issue 11)

/// A lock's age goes by the store's clock (here the lock file's mtime), not by the `refreshed`
/// time its writer's clock put in it: a host whose clock is 40 minutes behind does not make
/// its live lock look stale, and one whose clock is ahead does not keep a dead lock fresh.
#[test]
fn a_lock_is_judged_stale_by_the_stores_clock_not_its_writers() {
    let (env, ckpt) = repo_with_a_snapshot();
    let behind = (chrono::Utc::now() - chrono::Duration::minutes(40)).to_rfc3339();
    let other_host = json!({"host": "elsewhere", "refreshed": behind});
    // Written just now by a host whose clock is behind: live.
    let lock = env.forge_lock("ab", other_host);
    set_mtime(&lock, chrono::Utc::now().timestamp(), 0);
    backup_is_refused(
        &env,
        &ckpt,
        &["is locked", "elsewhere", "wait for it to finish"],
    );
    let run = env.tvault(["--json", "unlock"]).expect_code(0);
    assert_eq!(run.json()["removed"], json!([]), "{run}");
    assert!(lock.exists());
    // Says it was refreshed now, but the store last wrote it 40 minutes ago: stale.
    let ahead = chrono::Utc::now().to_rfc3339();
    let lock = env.forge_lock("ab", json!({"host": "elsewhere", "refreshed": ahead}));
    set_mtime(&lock, chrono::Utc::now().timestamp() - 40 * 60, 0);
    backup_is_refused(&env, &ckpt, &["stale", "elsewhere", "tvault unlock"]);
    let run = env.tvault(["--json", "unlock"]).expect_code(0);
    assert_eq!(run.json()["removed"].as_array().unwrap().len(), 1, "{run}");
    assert!(!lock.exists());
    assert!(
        fs::read_dir(env.repo.join("locks"))
            .unwrap()
            .next()
            .is_none(),
        "unlock leaves no lock of its own"
    );
}
