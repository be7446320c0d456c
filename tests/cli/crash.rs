//! Crashes: a backup stopped at any write step (the `TVAULT_CRASH_AFTER_WRITES` hook) or killed
//! with SIGKILL at any moment leaves a repository that opens, whose visible snapshots all
//! restore to exactly the tree they were taken from, whose existing files are untouched, and
//! that takes the next backup. A killed restore never leaves a partial file under its real name.

use std::collections::BTreeMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tvault_workload::Scenario;

use crate::testenv::{
    args, crash_at_every_write_step, finish, manifest, sigkill_at_delays, sources_manifest, text,
    Entry, Manifest, TestEnv,
};

/// What the snapshots tagged with each version must restore to.
type Versions = BTreeMap<String, Manifest>;

/// The checks after any crash: `snapshots` works, every visible snapshot restores to the tree
/// its tag names, the snapshots in `must_have` are still there, and every repository file that
/// existed before the crash is still there with the same content.
#[track_caller]
fn assert_repository_sound(
    env: &TestEnv,
    versions: &Versions,
    must_have: &[String],
    before: &BTreeMap<PathBuf, String>,
    what: &str,
) -> Vec<String> {
    let after = env.repo_state();
    for (path, hash) in before {
        assert_eq!(
            after.get(path),
            Some(hash),
            "{what}: repository file {} was changed or removed",
            path.display()
        );
    }
    let snaps = env.snapshots();
    let ids: Vec<String> = snaps.iter().map(|s| text(s, "id")).collect();
    for id in must_have {
        assert!(ids.contains(id), "{what}: snapshot {id} disappeared");
    }
    for s in &snaps {
        let tag = s["tags"][0]
            .as_str()
            .expect("every snapshot here is tagged");
        assert_eq!(s["complete"], true, "{what}: {s:#}");
        env.assert_restores(&text(s, "id"), &versions[tag]);
    }
    ids
}

/// A two-version checkpoint tree of `scenario` and a repository holding a snapshot (tagged
/// `v0`) of version 0. Leaves the tree at version 1 (what a `v1` snapshot must restore to).
/// Returns (env, source dir, versions, snapshot of v0).
fn two_versions(scenario: Scenario, size: u64, seed: u64) -> (TestEnv, PathBuf, Versions, String) {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt/model", scenario, size, seed, 0);
    let ckpt = ckpt.parent().unwrap().to_path_buf();
    env.checkpoint("src/ckpt/shard", Scenario::Finetune, 256 << 10, seed, 0);
    env.write("src/ckpt/trainer_state.json", b"{\"step\": 1000}");
    let mut versions = Versions::new();
    versions.insert("v0".into(), sources_manifest(&[&ckpt]));
    let s0 = text(&env.backup(&[&ckpt], &["--tag", "v0"]), "id");

    env.checkpoint("src/ckpt/model", scenario, size, seed, 1);
    env.checkpoint("src/ckpt/shard", Scenario::Finetune, 256 << 10, seed, 1);
    env.write("src/ckpt/trainer_state.json", b"{\"step\": 2000}");
    env.write("src/ckpt/extra/eval.json", b"{\"ppl\": 7.1}");
    versions.insert("v1".into(), sources_manifest(&[&ckpt]));
    (env, ckpt, versions, s0)
}

#[test]
fn crash_at_every_write_step_leaves_a_usable_repository() {
    let (env, ckpt, versions, s0) = two_versions(Scenario::Frozen, 1 << 20, 61);
    let saved = env.save_repo();
    let before = env.repo_state();

    let backup = args!["--json", "backup", &ckpt, "--tag", "v1"];
    let completed_at = crash_at_every_write_step(&env, &saved, &backup, 200, |n, run| {
        let what = format!("crash after write step {n}");
        if run.code() == Some(0) {
            let ids =
                assert_repository_sound(&env, &versions, std::slice::from_ref(&s0), &before, &what);
            assert_eq!(ids.len(), 2, "{run}");
            return ControlFlow::Continue(());
        }
        assert_repository_sound(&env, &versions, std::slice::from_ref(&s0), &before, &what);

        // The next ordinary backup works and restores identical.
        let after_crash = env.repo_state();
        let report = env.backup(&[&ckpt], &["--tag", "v1"]);
        assert_eq!(report["complete"], true);
        let id = text(&report, "id");
        let ids = assert_repository_sound(&env, &versions, &[s0.clone(), id], &after_crash, &what);
        assert!(ids.len() >= 2);
        ControlFlow::Continue(())
    });
    // At least pack, index and snapshot are written, with two steps each (and the lock).
    eprintln!("backup completed with the hook at step {completed_at}");
    let steps = completed_at - 1;
    assert!(
        steps >= 6,
        "only {steps} write steps: did the hook fire at each?"
    );
}

#[test]
fn sigkill_during_backup_leaves_a_usable_repository() {
    // Every fp32 value changes between the versions, so version 1 needs more than one pack.
    let (env, ckpt, versions, s0) = two_versions(Scenario::Fulltrain, 64 << 20, 62);
    // How long an uninterrupted backup of version 1 takes, on a copy of the repository.
    let probe = TestEnv::new();
    probe.reset_repo(&env.repo);
    let started = Instant::now();
    probe
        .tvault(args!["backup", &ckpt, "--tag", "v1"])
        .expect_code(0);
    let full = started.elapsed();
    drop(probe);

    let mut must_have = vec![s0];
    let mut delays = vec![Duration::from_millis(10), Duration::from_millis(40)];
    delays.extend((1..=6).map(|k| full.mul_f64(k as f64 / 6.0 * 1.05)));
    let backup = args!["backup", &ckpt, "--tag", "v1"];
    let before_run = || env.repo_state();
    let killed = sigkill_at_delays(
        &env,
        &backup,
        delays,
        before_run,
        |delay, status, before| {
            let what = format!("backup killed after {delay:?} (full run {full:?})");
            let new_files = env.repo_state().len() - before.len();
            eprintln!("{what}: {status}, {new_files} new repository files");
            must_have = assert_repository_sound(&env, &versions, &must_have, &before, &what);
            ControlFlow::Continue(())
        },
    );
    assert!(
        killed >= 4,
        "only {killed} of the backups were killed before they finished"
    );

    let before = env.repo_state();
    let report = env.backup(&[&ckpt], &["--tag", "v1"]);
    assert_eq!(report["complete"], true);
    must_have.push(text(&report, "id"));
    assert_repository_sound(&env, &versions, &must_have, &before, "after the kills");
}

#[test]
fn killed_restore_leaves_no_partial_file_under_its_final_name() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt/a", Scenario::Single, 12 << 20, 63, 0);
    let ckpt = ckpt.parent().unwrap().to_path_buf();
    env.checkpoint("src/ckpt/b", Scenario::Single, 12 << 20, 64, 0);
    let expected = sources_manifest(&[&ckpt]);
    let id = text(&env.backup(&[&ckpt], &[]), "id");

    let started = Instant::now();
    let probe = env.restore(&id);
    let full = started.elapsed();
    fs::remove_dir_all(probe).unwrap();

    for k in 1..=4 {
        let target = env.fresh_path("restore");
        env.kill_after(
            args!["restore", &id, &target],
            full.mul_f64(f64::from(k) / 5.0),
        );
        if !target.exists() {
            continue;
        }
        // Whatever is there under a real name is complete and correct.
        for (path, entry) in manifest(&target) {
            let Some(want) = expected.get(&path) else {
                // Not in the snapshot: a temporary file, only ever inside the hidden staging
                // folder that the next restore of this snapshot clears.
                let top = path
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy();
                assert!(
                    top.starts_with(".tvault-restore-"),
                    "{}: visible stray file",
                    path.display()
                );
                continue;
            };
            match (entry, want) {
                (
                    Entry::File { size, hash, .. },
                    Entry::File {
                        size: s2, hash: h2, ..
                    },
                ) => assert!(
                    size == *s2 && hash == *h2,
                    "{}: partial file under its final name after a killed restore",
                    path.display()
                ),
                (got, want) => assert_eq!(
                    std::mem::discriminant(&got),
                    std::mem::discriminant(want),
                    "{}",
                    path.display()
                ),
            }
        }
        // Restoring again over the remains gives the exact tree, without leftovers.
        env.tvault(args!["restore", &id, &target, "--overwrite"])
            .expect_code(0);
        crate::testenv::assert_manifest_eq(
            &expected,
            &manifest(&target),
            &format!("re-restore {k}"),
        );
        fs::remove_dir_all(&target).unwrap();
    }
    assert!(Path::new(&env.repo).join("config").exists());
}

#[test]
fn crashed_init_can_be_retried() {
    let env = TestEnv::new();
    for n in 1..=2 {
        let _ = fs::remove_dir_all(&env.repo);
        env.crash_after(n, ["init"]);
        // Either the repository exists, or init can simply be run again.
        if env.tvault(["snapshots"]).code() != Some(0) {
            env.tvault(["init"]).expect_code(0);
        }
        env.tvault(["snapshots"]).expect_code(0);
    }
}

#[test]
fn concurrent_backups_both_succeed_and_restore() {
    let env = TestEnv::with_repo();
    let a = env.checkpoint("src/a/ckpt", Scenario::Single, 8 << 20, 65, 0);
    let b = env.checkpoint("src/b/ckpt", Scenario::Finetune, 8 << 20, 65, 1);
    let children: Vec<_> = [&a, &b]
        .iter()
        .map(|p| env.spawn_tvault(args!["--json", "backup", p]))
        .collect();
    let mut ids = Vec::new();
    for child in children {
        let run = finish(child, "one of two concurrent backups").expect_code(0);
        ids.push(text(&run.json(), "id"));
    }
    env.assert_restores(&ids[0], &sources_manifest(&[&a]));
    env.assert_restores(&ids[1], &sources_manifest(&[&b]));
    assert!(
        !env.repo.join("locks").read_dir().unwrap().any(|_| true),
        "locks left behind"
    );
}
