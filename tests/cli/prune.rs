//! `prune`: the retention rules through the CLI (with the reasons it prints), what it frees
//! (a pruned repository is about as small as a fresh backup of what it keeps), `--dry-run`
//! (changes nothing, decides the same), repacking, leftovers of crashed backups, refusals that
//! delete nothing, crashes and SIGKILLs at any instant, and the locks against backup and verify.
//! After every successful prune the repository verifies with `--read-data` and every remaining
//! snapshot restores byte-identical to the tree it was taken from.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tvault_core::id::Id;
use tvault_core::repo::pack_key;
use tvault_workload::{mix, Scenario};

use crate::bad_input::assert_undamaged;
use crate::testenv::{
    args, crash_at_every_write_step, files_below, finish, flip_byte, num, random_bytes, set_mtime,
    sigkill_at_delays, sources_manifest, text, was_killed, Manifest, Run, TestEnv,
};
use crate::verify::{assert_fields, assert_verifies_clean, broken_repo, verify, Damage, Layout};

// ---------------------------------------------------------------------------------------------
// Helpers

/// `tvault --json prune ARGS…`.
fn prune(env: &TestEnv, extra: &[&str]) -> Run {
    let mut a: Vec<OsString> = args!["--json", "prune"];
    a.extend(extra.iter().map(OsString::from));
    env.tvault(a)
}

/// `prune --json ARGS…`, which must exit 0; its report.
#[track_caller]
fn prune_ok(env: &TestEnv, extra: &[&str]) -> Value {
    let run = prune(env, extra).expect_code(0);
    let report = run.json();
    assert_eq!(report["dry_run"], extra.contains(&"--dry-run"), "{run}");
    report
}

/// What a prune report decided for each snapshot: (short ID, kept, reasons), oldest first.
fn decisions(report: &Value) -> Vec<(String, bool, Vec<String>)> {
    report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(text(d, "short_id"), text(d, "id")[..8]);
            let reasons = d["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            (text(d, "short_id"), d["keep"] == true, reasons)
        })
        .collect()
}

/// `(short ID, keep, reasons)` for snapshot `id`, to build expected decisions.
fn d(id: &str, keep: bool, reasons: &[&str]) -> (String, bool, Vec<String>) {
    (
        id[..8].to_string(),
        keep,
        reasons.iter().map(|r| r.to_string()).collect(),
    )
}

/// After a successful prune: the repository verifies clean with `--read-data`, nothing in it is
/// reclaimable, it lists exactly `kept`, and each of them restores identical.
#[track_caller]
fn assert_pruned_to(env: &TestEnv, kept: &[&(String, Manifest)]) {
    assert_verifies_clean(env, false);
    let kept: Vec<(String, Manifest)> = kept.iter().map(|s| (*s).clone()).collect();
    assert_undamaged(env, &kept);
    assert!(env.temp_files().is_empty(), "{:?}", env.temp_files());
}

/// Backs up `src/ckpt` as it is now with `tags`; returns the snapshot and what it restores to.
fn snap(env: &TestEnv, tags: &[&str]) -> (String, Manifest) {
    let ckpt = env.src.join("ckpt");
    let mut extra = Vec::new();
    for t in tags {
        extra.extend(["--tag", t]);
    }
    let id = text(&env.backup(&[&ckpt], &extra), "id");
    (id, sources_manifest(&[&ckpt]))
}

/// `n` snapshots of `src/ckpt`: versions 0..n of a `frozen` checkpoint of `size` bytes (seed
/// `seed`) beside a notes file that changes every time.
fn frozen_series(env: &TestEnv, n: u32, size: u64, seed: u64) -> Vec<(String, Manifest)> {
    (0..n)
        .map(|step| {
            env.checkpoint("src/ckpt", Scenario::Frozen, size, seed, step);
            env.write("src/ckpt/notes.txt", format!("step {step}\n").as_bytes());
            snap(env, &[])
        })
        .collect()
}

/// One snapshot per entry of `tags` (with those tags) of a small tree of two text files, one of
/// which changes every time.
fn small_series(env: &TestEnv, tags: &[&[&str]]) -> Vec<(String, Manifest)> {
    env.write("src/ckpt/config.json", b"{\"hidden\": 64}\n");
    tags.iter()
        .enumerate()
        .map(|(i, t)| {
            env.write(
                "src/ckpt/notes.txt",
                format!("run {i}: loss {}\n", 3.0 / (i as f64 + 1.0)).as_bytes(),
            );
            snap(env, t)
        })
        .collect()
}

/// Gives snapshot `id` the time `time` (RFC 3339): its manifest is rewritten and, since a
/// manifest's name is the hash of its content, stored under its new ID (the old file deleted).
/// Returns the new ID.
fn retime(env: &TestEnv, id: &str, time: &str) -> String {
    env.rewrite_snapshot(id, |m| m["time"] = json!(time))
}

/// `n` snapshots of `src/ckpt`. Step k writes `pairs` pairs of random files of `len` bytes,
/// `k-j-keep.bin` (which every later step keeps) and `k-j-tmp.bin` (which the next step
/// removes), side by side in the packs, plus version k of a `frozen` checkpoint of `model` bytes
/// and a notes file. Once the early snapshots are forgotten, their packs are about half live and
/// half dead, so prune repacks them.
fn mixed_series(
    env: &TestEnv,
    n: u32,
    pairs: u32,
    len: usize,
    model: u64,
    seed: u64,
) -> Vec<(String, Manifest)> {
    (0..n)
        .map(|k| {
            for j in 0..pairs {
                if k > 0 {
                    fs::remove_file(env.src.join(format!("ckpt/{}-{j}-tmp.bin", k - 1))).unwrap();
                }
                for (what, salt) in [("keep", 1), ("tmp", 2)] {
                    let bytes = random_bytes(len, mix(&[seed, k.into(), j.into(), salt]));
                    env.write(format!("src/ckpt/{k}-{j}-{what}.bin"), &bytes);
                }
            }
            env.checkpoint("src/ckpt/model", Scenario::Frozen, model, seed, k);
            env.write("src/ckpt/notes.txt", format!("step {k}\n").as_bytes());
            snap(env, &[])
        })
        .collect()
}

/// After a crashed or killed command: if it left its lock behind, the next command removes it
/// (its process is provably gone: this host, boot and PID namespace) and says so in one line.
/// Returns whether there was one.
#[track_caller]
fn dead_lock_is_removed(env: &TestEnv, what: &str) -> bool {
    if env.lock_files().is_empty() {
        return false;
    }
    let run = env.tvault(["verify"]);
    assert_eq!(run.code(), Some(0), "{what}: {run}");
    run.stderr_has(&[
        "removed the exclusive lock of `prune`",
        "its process is gone",
    ]);
    assert!(env.lock_files().is_empty(), "{what}");
    true
}

/// Sends `signal` (`STOP`, `CONT`) to a child process.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// Waits until `child` holds a lock in the repository, then stops it (SIGSTOP) while it still
/// holds it. False when the child finished first.
fn stop_while_locked(env: &TestEnv, child: &mut Child) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if !env.lock_files().is_empty() {
            signal(child, "STOP");
            // Stopped before it released the lock? (A finished process has deleted it.)
            let exited = child.try_wait().unwrap().is_some();
            if !exited && !env.lock_files().is_empty() {
                return true;
            }
            if !exited {
                signal(child, "CONT");
            }
            return false;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no lock appeared within 60 s");
}

/// Lets a stopped child go on and waits for it; its `--json` report (it must exit 0).
fn resume_and_finish(child: Child) -> Value {
    signal(&child, "CONT");
    finish(child, "the stopped command, resumed")
        .expect_code(0)
        .json()
}

// ---------------------------------------------------------------------------------------------
// What prune frees, dry runs, repacking, leftovers

#[test]
fn keep_last_leaves_about_what_a_fresh_backup_of_the_last_version_needs() {
    let env = TestEnv::with_repo();
    let snaps = frozen_series(&env, 4, 4 << 20, 81);
    let before = env.repo_state();
    let bytes_before = env.repo_data_bytes();
    let want = vec![
        d(&snaps[0].0, false, &["no rule keeps it"]),
        d(&snaps[1].0, false, &["no rule keeps it"]),
        d(&snaps[2].0, false, &["no rule keeps it"]),
        d(&snaps[3].0, true, &["last 1"]),
    ];

    // The dry run changes nothing at all, and says what it would do.
    let dry = prune_ok(&env, &["--keep-last", "1", "--dry-run"]);
    assert_eq!(env.repo_state(), before, "a dry run changed the repository");
    assert_fields(
        &dry,
        &[
            "dry_run",
            "snapshots",
            "snapshots_removed",
            "packs_deleted",
            "packs_repacked",
            "packs_written",
            "chunks_rewritten",
            "bytes_kept_as_bases",
            "leftovers_deleted",
            "bytes_before",
            "bytes_freed",
            "duration_ms",
        ],
    );
    assert_fields(
        &dry["snapshots"][0],
        &[
            "id", "short_id", "time", "host", "paths", "tags", "keep", "reasons",
        ],
    );
    assert_eq!(decisions(&dry), want);
    assert_eq!(num(&dry, "snapshots_removed"), 3);
    assert_eq!(num(&dry, "bytes_before"), bytes_before);
    assert_eq!(num(&dry, "packs_written"), 0);
    assert!(num(&dry, "packs_repacked") >= 1, "{dry:#}");
    let dry_freed = num(&dry, "bytes_freed");
    assert!(
        dry_freed > bytes_before / 3 && dry_freed < bytes_before,
        "would free {dry_freed} of {bytes_before}"
    );
    let run = env
        .tvault(["prune", "--keep-last", "1", "--dry-run"])
        .expect_code(0);
    for (i, (short, keep, reasons)) in want.iter().enumerate() {
        let verb = if *keep { "keep  " } else { "remove" };
        let line = run
            .stdout
            .lines()
            .nth(i)
            .unwrap_or_else(|| panic!("no line {i}\n{run}"));
        assert!(line.starts_with(&format!("{verb} {short}")), "{run}");
        assert!(
            line.ends_with(&format!("[{}]", reasons.join(", "))),
            "{run}"
        );
    }
    assert!(run.stdout.contains("3 snapshots removed"), "{run}");
    assert!(run.stdout.contains("would free"), "{run}");
    assert!(run.stdout.contains("dry run: nothing was changed"), "{run}");
    assert_eq!(env.repo_state(), before, "a dry run changed the repository");

    // The real run decides the same, frees about what the dry run said.
    let real = prune_ok(&env, &["--keep-last", "1"]);
    assert_eq!(real["snapshots"], dry["snapshots"]);
    for field in [
        "snapshots_removed",
        "packs_deleted",
        "packs_repacked",
        "leftovers_deleted",
        "bytes_before",
    ] {
        assert_eq!(real[field], dry[field], "{field}: {real:#}\n{dry:#}");
    }
    assert!(num(&real, "packs_written") >= 1, "{real:#}");
    let after = env.repo_data_bytes();
    let freed = num(&real, "bytes_freed");
    assert_eq!(freed, bytes_before - after, "{real:#}");
    assert!(
        freed.abs_diff(dry_freed) <= freed / 10,
        "the dry run said {dry_freed}, the prune freed {freed}"
    );
    assert_pruned_to(&env, &[&snaps[3]]);

    // About the size of a fresh repository holding a backup of just the last version.
    let fresh = TestEnv::with_repo();
    let ckpt = fresh.checkpoint("src/ckpt", Scenario::Frozen, 4 << 20, 81, 3);
    fresh.write("src/ckpt/notes.txt", b"step 3\n");
    fresh.backup(&[&ckpt], &[]);
    let fresh_bytes = fresh.repo_data_bytes();
    assert!(
        after.abs_diff(fresh_bytes) <= fresh_bytes / 10,
        "pruned repository {after} bytes, fresh one {fresh_bytes} (before prune {bytes_before})"
    );
}

#[test]
fn partly_dead_packs_are_repacked_above_max_unused() {
    let env = TestEnv::with_repo();
    // Snapshot 1: a checkpoint and 600 KiB of incompressible scratch data in one pack;
    // snapshot 2: the same checkpoint without the scratch file.
    let scratch = random_bytes(600 << 10, 82);
    env.checkpoint("src/ckpt", Scenario::Single, 3 << 20, 82, 0);
    env.write("src/ckpt/scratch.bin", &scratch);
    let s1 = snap(&env, &[]);
    fs::remove_file(env.src.join("ckpt/scratch.bin")).unwrap();
    let s2 = snap(&env, &[]);
    let before = env.repo_state();
    let forget = ["--forget", &s1.0[..8]];

    // About 16 % of the first pack is dead once snapshot 1 is gone.
    let at = |pct: &str| {
        let mut a = forget.to_vec();
        a.extend(["--dry-run", "--max-unused", pct]);
        prune_ok(&env, &a)
    };
    let lenient = at("50");
    assert_eq!(num(&lenient, "packs_repacked"), 0, "{lenient:#}");
    assert_eq!(num(&lenient, "packs_deleted"), 0, "{lenient:#}");
    assert_eq!(num(&lenient, "bytes_freed"), 0, "{lenient:#}");
    let strict = at("10");
    assert_eq!(num(&strict, "packs_repacked"), 1, "{strict:#}");
    assert!(
        num(&strict, "bytes_freed") >= scratch.len() as u64,
        "{strict:#}"
    );
    assert_eq!(
        decisions(&strict),
        vec![
            d(&s1.0, false, &["--forget"]),
            d(&s2.0, true, &["no keep rule given"])
        ]
    );
    assert_eq!(env.repo_state(), before);

    let mut a = forget.to_vec();
    a.extend(["--max-unused", "0"]);
    let report = prune_ok(&env, &a);
    assert_eq!(num(&report, "snapshots_removed"), 1);
    assert_eq!(num(&report, "packs_repacked"), 1, "{report:#}");
    assert_eq!(num(&report, "packs_written"), 1, "{report:#}");
    let freed = num(&report, "bytes_freed");
    assert!(
        freed >= scratch.len() as u64 && freed < scratch.len() as u64 + (64 << 10),
        "freed {freed}"
    );
    assert_pruned_to(&env, &[&s2]);

    // Nothing is dead any more: a second prune changes nothing.
    let before = env.repo_state();
    let again = prune_ok(&env, &["--max-unused", "0"]);
    for field in [
        "snapshots_removed",
        "packs_deleted",
        "packs_repacked",
        "packs_written",
        "chunks_rewritten",
        "bytes_kept_as_bases",
        "bytes_freed",
    ] {
        assert_eq!(num(&again, field), 0, "{field}: {again:#}");
    }
    assert_eq!(env.repo_state(), before);
}

#[test]
fn leftovers_of_crashed_backups_are_removed() {
    let env = TestEnv::with_repo();
    let snaps = small_series(&env, &[&[], &[]]);
    env.checkpoint("src/ckpt/model", Scenario::Single, 1 << 20, 83, 0);
    // Write steps of a backup: 1-2 its lock, 3 the first pack's temporary file, 4 its rename.
    for n in [3, 4] {
        env.crash_after(n, args!["backup", env.src.join("ckpt")]);
    }
    let stray = env.write("repo/snapshots/.tmp-1-0-partial", b"{\"version\": 1, ");
    assert_eq!(env.temp_files().len(), 2, "{:?}", env.temp_files());
    let layout = Layout::read(&env);
    let unindexed: Vec<PathBuf> = files_below(&env.repo.join("data"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with('.')
                && !layout
                    .packs
                    .contains_key(&Id::from_hex(&name).expect("pack name"))
        })
        .collect();
    assert_eq!(unindexed.len(), 1, "{unindexed:?}");
    let leftover_bytes = fs::metadata(&unindexed[0]).unwrap().len();

    // Verify calls the pack reclaimable, not damage.
    let (run, r) = verify(&env, &["--read-data"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(num(&r, "reclaimable_packs"), 1, "{run}");
    assert_eq!(num(&r, "reclaimable_bytes"), leftover_bytes, "{run}");
    let run = env.tvault(["verify"]).expect_code(0);
    assert!(
        run.stdout.contains("can be reclaimed with `tvault prune`"),
        "{run}"
    );

    // The crashed backups' processes are gone (this host, this boot): prune removes their
    // locks, one notice each, and the stray file (of an unknown writer) once it is old.
    set_mtime(&stray, chrono::Utc::now().timestamp() - 7200, 0);
    let run = prune(&env, &[]).expect_code(0);
    assert_eq!(
        run.stderr
            .matches("removed the shared lock of `backup`")
            .count(),
        2,
        "{run}"
    );
    let report = run.json();
    assert_eq!(num(&report, "leftovers_deleted"), 3, "{report:#}");
    assert_eq!(num(&report, "snapshots_removed"), 0);
    assert!(num(&report, "bytes_freed") >= leftover_bytes, "{report:#}");
    assert!(!stray.exists() && !unindexed[0].exists());
    assert!(
        decisions(&report)
            .iter()
            .all(|(_, keep, r)| *keep && r == &["no keep rule given"]),
        "{report:#}"
    );
    assert_pruned_to(&env, &snaps.iter().collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Retention rules through the CLI

#[test]
fn keep_tag_tag_scope_and_forget_by_prefix() {
    let env = TestEnv::with_repo();
    let tags: [&[&str]; 5] = [
        &["nightly"],
        &["release"],
        &["nightly"],
        &["nightly"],
        &["release"],
    ];
    let s = small_series(&env, &tags);
    let before = env.repo_state();

    let r = prune_ok(
        &env,
        &["--keep-last", "1", "--keep-tag", "release", "--dry-run"],
    );
    assert_eq!(
        decisions(&r),
        vec![
            d(&s[0].0, false, &["no rule keeps it"]),
            d(&s[1].0, true, &["tag release"]),
            d(&s[2].0, false, &["no rule keeps it"]),
            d(&s[3].0, false, &["no rule keeps it"]),
            d(&s[4].0, true, &["tag release", "last 1"]),
        ]
    );
    assert_eq!(num(&r, "snapshots_removed"), 3);

    // --tag: the policy only sees the nightly snapshots; the others stay, and say why.
    let r = prune_ok(&env, &["--tag", "nightly", "--keep-last", "1", "--dry-run"]);
    assert_eq!(
        decisions(&r),
        vec![
            d(&s[0].0, false, &["no rule keeps it"]),
            d(&s[1].0, true, &["not selected by --tag"]),
            d(&s[2].0, false, &["no rule keeps it"]),
            d(&s[3].0, true, &["last 1"]),
            d(&s[4].0, true, &["not selected by --tag"]),
        ]
    );
    assert_eq!(r["snapshots"][1]["tags"], json!(["release"]));
    let run = env
        .tvault(["prune", "--tag", "nightly", "--keep-last", "1", "--dry-run"])
        .expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    for ((line, (short, keep, reasons)), tag) in lines.iter().zip(decisions(&r)).zip(tags) {
        let verb = if keep { "keep  " } else { "remove" };
        assert!(line.starts_with(&format!("{verb} {short}")), "{run}");
        assert!(line.contains(&format!("  {}  [", tag[0])), "{run}");
        assert!(
            line.ends_with(&format!("[{}]", reasons.join(", "))),
            "{run}"
        );
    }

    // --forget takes a unique prefix; without rules everything else is kept.
    let r = prune_ok(&env, &["--forget", &s[2].0[..6], "--dry-run"]);
    let mut want: Vec<_> = s
        .iter()
        .map(|(id, _)| d(id, true, &["no keep rule given"]))
        .collect();
    want[2] = d(&s[2].0, false, &["--forget"]);
    assert_eq!(decisions(&r), want);
    for bad in ["ab", "zzzz", "0000000000"] {
        prune(&env, &["--forget", bad])
            .expect_code(1)
            .stderr_has(&[bad]);
    }
    assert_eq!(
        env.repo_state(),
        before,
        "dry runs and refusals changed the repository"
    );

    // All three at once, for real.
    let r = prune_ok(
        &env,
        &[
            "--tag",
            "nightly",
            "--keep-last",
            "1",
            "--forget",
            &s[1].0[..8],
        ],
    );
    assert_eq!(num(&r, "snapshots_removed"), 3);
    assert_eq!(
        decisions(&r)[1],
        d(&s[1].0, false, &["--forget"]),
        "--forget wins over the --tag scope"
    );
    assert_pruned_to(&env, &[&s[3], &s[4]]);
}

#[test]
fn time_rules_on_snapshots_with_fixed_times() {
    let env = TestEnv::with_repo();
    let mut s = small_series(&env, &[&[], &[], &[], &[], &[]]);
    let times = [
        "2026-01-01T10:00:00Z",
        "2026-01-01T18:00:00Z", // same day as the first
        "2026-01-03T09:00:00Z",
        "2026-01-04T09:00:00Z",
        "2026-01-04T20:00:00Z", // same day as the fourth
    ];
    for (snap, time) in s.iter_mut().zip(times) {
        snap.0 = retime(&env, &snap.0, time);
    }
    let listed: Vec<Value> = env.snapshots();
    assert_eq!(
        listed.iter().map(|v| text(v, "time")).collect::<Vec<_>>(),
        times
    );
    assert_verifies_clean(&env, false);
    let before = env.repo_state();

    let daily = prune_ok(&env, &["--keep-daily", "2", "--dry-run"]);
    assert_eq!(
        decisions(&daily),
        vec![
            d(&s[0].0, false, &["no rule keeps it"]),
            d(&s[1].0, false, &["no rule keeps it"]),
            d(&s[2].0, true, &["daily 2"]),
            d(&s[3].0, false, &["no rule keeps it"]),
            d(&s[4].0, true, &["daily 1"]),
        ]
    );
    assert_eq!(daily["snapshots"][4]["time"], times[4]);
    // Within 1d of the newest (Jan 4 20:00): strictly after Jan 3 20:00.
    let within = prune_ok(&env, &["--keep-within", "1d", "--dry-run"]);
    assert_eq!(
        decisions(&within),
        vec![
            d(&s[0].0, false, &["no rule keeps it"]),
            d(&s[1].0, false, &["no rule keeps it"]),
            d(&s[2].0, false, &["no rule keeps it"]),
            d(&s[3].0, true, &["within 1d"]),
            d(&s[4].0, true, &["within 1d"]),
        ]
    );
    let within = prune_ok(&env, &["--keep-within", "2d", "--dry-run"]);
    assert_eq!(
        decisions(&within).iter().map(|x| x.1).collect::<Vec<_>>(),
        [false, false, true, true, true]
    );
    prune(&env, &["--keep-within", "2x"])
        .expect_code(2)
        .stderr_has(&["invalid duration", "2x"]);
    assert_eq!(env.repo_state(), before);

    let run = env
        .tvault(["prune", "--keep-daily", "3", "--keep-within", "1d"])
        .expect_code(0);
    let line = |i: usize| -> String {
        run.stdout
            .lines()
            .find(|l| l.contains(&s[i].0[..8]))
            .unwrap_or_else(|| panic!("{i}: {run}"))
            .to_string()
    };
    assert!(
        line(0).starts_with("remove") && line(0).ends_with("[no rule keeps it]"),
        "{run}"
    );
    assert!(
        line(1).starts_with("keep") && line(1).ends_with("[daily 3]"),
        "{run}"
    );
    assert!(line(2).ends_with("[daily 2]"), "{run}");
    assert!(line(3).ends_with("[within 1d]"), "{run}");
    assert!(line(4).contains("2026-01-04 20:00:00"), "{run}");
    assert!(line(4).ends_with("[within 1d, daily 1]"), "{run}");
    assert_pruned_to(&env, &[&s[1], &s[2], &s[3], &s[4]]);
}

#[test]
fn removing_every_snapshot_needs_allow_remove_all() {
    let env = TestEnv::with_repo();
    let s = small_series(&env, &[&["a"], &["b"], &["c"]]);
    let before = env.repo_state();
    let all_three = [
        "--forget",
        &s[0].0[..8],
        "--forget",
        &s[1].0[..8],
        "--forget",
        &s[2].0[..8],
    ];
    for policy in [
        &["--keep-tag", "no-such-tag"][..],
        &["--keep-tag", "no-such-tag", "--dry-run"],
        &all_three,
        &[
            "--tag",
            "a",
            "--tag",
            "b",
            "--tag",
            "c",
            "--keep-last",
            "0",
            "--keep-tag",
            "x",
        ],
    ] {
        prune(&env, policy)
            .expect_code(1)
            .stderr_has(&["would remove every snapshot (3)", "--allow-remove-all"]);
        assert_eq!(
            env.repo_state(),
            before,
            "{policy:?} changed the repository"
        );
    }

    // Regression (issue 10.4): the dry run of such a policy printed only the refusal; it
    // shows the plan (every snapshot "remove"), then says a real run would refuse it.
    let run = env
        .tvault(["prune", "--dry-run", "--keep-tag", "no-such-tag"])
        .expect_code(1);
    run.stderr_has(&["would refuse", "--allow-remove-all"]);
    for (id, _) in &s {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(&id[..8]))
            .unwrap_or_else(|| panic!("{id} not in the plan\n{run}"));
        assert!(line.starts_with("remove"), "{run}");
    }
    assert!(run.stdout.contains("would refuse"), "{run}");
    let run = env
        .tvault(["--json", "prune", "--dry-run", "--keep-tag", "no-such-tag"])
        .expect_code(1);
    let plan = run.json();
    assert_eq!(plan["snapshots"].as_array().unwrap().len(), 3, "{run}");
    assert!(text(&plan, "refused").contains("--allow-remove-all"));
    assert_eq!(env.repo_state(), before);

    let r = prune_ok(&env, &["--keep-tag", "no-such-tag", "--allow-remove-all"]);
    assert_eq!(num(&r, "snapshots_removed"), 3);
    assert!(env.snapshots().is_empty());
    assert!(files_below(&env.repo.join("data")).is_empty());
    assert!(files_below(&env.repo.join("index")).is_empty());
    assert_eq!(num(&r, "bytes_freed"), num(&r, "bytes_before"));
    let r = assert_verifies_clean(&env, false);
    assert_eq!(num(&r, "snapshots"), 0);
    // The empty repository takes the next backup.
    let next = snap(&env, &[]);
    assert_pruned_to(&env, &[&next]);
}

// ---------------------------------------------------------------------------------------------
// Refusals: prune deletes nothing while it cannot tell what is in use

#[test]
fn refuses_while_an_index_file_is_damaged() {
    let b = broken_repo(Damage::FlipIndex);
    let env = &b.fx.env;
    let before = env.repo_state();
    for extra in [
        &["--keep-last", "1"][..],
        &["--keep-last", "1", "--dry-run"],
        &[],
    ] {
        prune(env, extra).expect_code(1).stderr_has(&[
            "prune deletes nothing while an index file is damaged",
            &b.key,
            "tvault verify",
        ]);
        assert_eq!(env.repo_state(), before);
    }
}

#[test]
fn refuses_while_a_kept_snapshots_tree_is_unreadable() {
    let b = broken_repo(Damage::FlipTree);
    let env = &b.fx.env;
    let before = env.repo_state();
    let newest = &b.fx.snaps[1].0;
    for extra in [
        &["--keep-last", "1"][..],
        &[],
        &["--forget", &b.fx.snaps[0].0],
    ] {
        prune(env, extra).expect_code(1).stderr_has(&[
            &format!("the tree of snapshot {} cannot be read", &newest[..8]),
            "prune deletes nothing",
            "tvault verify",
        ]);
        assert_eq!(env.repo_state(), before);
    }
    // The way out: forget the damaged snapshot; the other one is untouched.
    prune_ok(env, &["--forget", newest]);
    assert_pruned_to(env, &[&b.fx.snaps[0]]);
}

#[test]
fn refuses_while_a_pack_that_kept_snapshots_need_is_missing() {
    let b = broken_repo(Damage::DeletePack);
    let env = &b.fx.env;
    let before = env.repo_state();
    prune(env, &["--keep-last", "1"])
        .expect_code(1)
        .stderr_has(&[
            &b.key,
            "is missing",
            "prune deletes nothing",
            "tvault verify",
        ]);
    assert_eq!(env.repo_state(), before);
}

#[test]
fn refuses_while_chunks_that_kept_snapshots_need_are_in_no_index() {
    // The first backup's index file is gone (its packs are intact and describe themselves, so
    // the data is recoverable); the second snapshot needs the base checkpoint's chunks in them.
    let b = broken_repo(Damage::DeleteIndex);
    let env = &b.fx.env;
    let before = env.repo_state();
    let run = prune(env, &["--keep-last", "1"]);
    let after = env.repo_state();
    let lost: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert_eq!(run.code(), Some(1), "{run}\ndeleted: {lost:#?}");
    run.stderr_has(&["prune deletes nothing", "tvault verify"]);
    assert_eq!(after, before);
}

#[test]
fn prune_whose_new_index_equals_an_old_one_keeps_it() {
    // Two groups of one snapshot each, each snapshot in one pack of its own. Forgetting `a`
    // deletes a's pack and keeps b's, so the new index lists exactly b's pack: byte for byte
    // b's own index file, same name. Prune writes it (a no-op) and deletes the "old" one.
    let env = TestEnv::with_repo();
    let (pa, pb) = (env.src.join("a"), env.src.join("b"));
    env.write("src/a/notes.txt", b"run a\n");
    env.write("src/b/notes.txt", b"run b\n");
    let a = text(&env.backup(&[&pa], &[]), "id");
    let b = (
        text(&env.backup(&[&pb], &[]), "id"),
        sources_manifest(&[&pb]),
    );
    let r = prune_ok(&env, &["--forget", &a]);
    assert_eq!(num(&r, "packs_deleted"), 1, "{r:#}");
    assert_eq!(
        files_below(&env.repo.join("index")).len(),
        1,
        "the kept pack's index file is gone"
    );
    // Without it the next prune takes b's pack for a leftover, and b is lost for good.
    prune_ok(&env, &[]);
    assert_pruned_to(&env, &[&b]);
}

#[test]
fn damaged_chunk_in_a_pack_to_repack_stops_prune_before_it_deletes_anything() {
    let fx = crate::verify::two_snapshots();
    let env = &fx.env;
    let layout = Layout::read(env);
    // A pack of the first backup holding both a chunk the second snapshot uses and blobs only
    // the first one uses: it is repacked once the first snapshot goes.
    let second = &layout.snapshots[&fx.snaps[1].0];
    let used: BTreeSet<Id> = second.files.values().flatten().copied().collect();
    let first_index = layout.index_of(&layout.find(&layout.snapshots[&fx.snaps[0].0].tree).0);
    let (pack, victim) = layout.index_files[&first_index]
        .iter()
        .find_map(|p| {
            let es = &layout.packs[p];
            let live = es.iter().find(|e| used.contains(&e.id))?;
            let dead: u64 = es
                .iter()
                .filter(|e| !used.contains(&e.id))
                .map(|e| u64::from(e.stored_len))
                .sum();
            (dead > 64 << 10).then_some((*p, *live))
        })
        .expect("a pack of the first backup is partly live");
    flip_byte(
        &env.repo.join(pack_key(&pack)),
        u64::from(victim.offset) + u64::from(victim.stored_len) / 2,
    );
    let before = env.repo_state();
    let dry = prune_ok(env, &["--keep-last", "1", "--dry-run"]);
    assert!(num(&dry, "packs_repacked") >= 1, "{dry:#}");

    let run = prune(env, &["--keep-last", "1"]);
    assert_eq!(run.code(), Some(1), "{run}");
    run.stderr_has(&[&victim.id.to_hex(), "damaged", "tvault verify"]);
    let after = env.repo_state();
    let deleted: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(deleted.is_empty(), "{run}\nprune deleted {deleted:#?}");
}

// ---------------------------------------------------------------------------------------------
// Crashes and kills

/// The policy of the crash tests: it forgets the two oldest of four [`mixed_series`]
/// snapshots, deletes packs, repacks others into several new ones.
const CRASH_POLICY: [&str; 2] = ["--keep-last", "2"];

/// After a crash or kill of prune: a lock left behind is removed by the next command, with a
/// notice; the repository verifies clean with `--read-data` (unused packs allowed);
/// every listed snapshot restores identical and the kept ones are all listed. Then the same
/// prune completes and leaves a clean repository holding exactly the kept snapshots.
#[track_caller]
fn assert_recovers(env: &TestEnv, snaps: &[(String, Manifest)], what: &str) {
    let kept = &snaps[snaps.len() - 2..];
    dead_lock_is_removed(env, what);
    let (run, r) = verify(env, &["--read-data"]);
    assert_eq!(run.code(), Some(0), "{what}: {run}");
    assert_eq!(r["clean"], true, "{what}: {run}");
    let listed: Vec<String> = env.snapshots().iter().map(|s| text(s, "id")).collect();
    for (id, manifest) in snaps {
        if listed.contains(id) {
            env.assert_restores(id, manifest);
        }
    }
    for (id, _) in kept {
        assert!(
            listed.contains(id),
            "{what}: kept snapshot {id} disappeared"
        );
    }
    prune_ok(env, &CRASH_POLICY);
    let (run, r) = verify(env, &["--read-data"]);
    assert_eq!(run.code(), Some(0), "{what}, then prune: {run}");
    assert_eq!(r["clean"], true, "{what}, then prune: {run}");
    assert_eq!(num(&r, "reclaimable_packs"), 0, "{what}, then prune: {run}");
    let listed: Vec<String> = env.snapshots().iter().map(|s| text(s, "id")).collect();
    let want: Vec<String> = kept.iter().map(|s| s.0.clone()).collect();
    assert_eq!(listed, want, "{what}, then prune");
    for (id, manifest) in kept {
        env.assert_restores(id, manifest);
    }
    assert!(
        env.temp_files().is_empty(),
        "{what}: {:?}",
        env.temp_files()
    );
}

/// Stops prune at every write step (`TVAULT_CRASH_AFTER_WRITES=N`, N = 1, 2, … until it
/// completes), each time on a fresh copy of the same repository, and checks [`assert_recovers`].
#[test]
fn prune_after_a_crashed_prune_leaves_a_clean_repository() {
    let env = TestEnv::with_repo();
    env.set_pack_size(256 << 10);
    let snaps = mixed_series(&env, 4, 4, 160 << 10, 1 << 20, 84);
    let saved = env.save_repo();
    let reference = {
        let copy = TestEnv::new();
        copy.reset_repo(&saved);
        prune_ok(&copy, &CRASH_POLICY)
    };
    assert!(num(&reference, "packs_deleted") >= 2, "{reference:#}");
    assert!(num(&reference, "packs_repacked") >= 4, "{reference:#}");
    assert!(num(&reference, "packs_written") >= 3, "{reference:#}");

    let prune = args!["--json", "prune", CRASH_POLICY[0], CRASH_POLICY[1]];
    let completed_at = crash_at_every_write_step(&env, &saved, &prune, 100, |n, run| {
        if run.code() == Some(0) {
            assert_eq!(run.json()["snapshots"], reference["snapshots"]);
            assert_pruned_to(&env, &[&snaps[2], &snaps[3]]);
        } else {
            assert_recovers(&env, &snaps, &format!("prune crashed at write step {n}"));
        }
        ControlFlow::Continue(())
    });
    // Two steps (temporary file written, renamed) for the lock, each new pack and the index.
    let steps = completed_at - 1;
    let want = 2 * (1 + num(&reference, "packs_written") + 1);
    assert_eq!(u64::from(steps), want, "write steps of prune");
}

/// SIGKILLs prune of a larger repository (more packs) after 5 ms, then after ever longer delays
/// until a prune finishes first, each time on a fresh copy of the same repository; checks
/// [`assert_recovers`] after each.
#[test]
fn prune_after_a_killed_prune_leaves_a_clean_repository() {
    let env = TestEnv::with_repo();
    env.set_pack_size(256 << 10);
    let snaps = mixed_series(&env, 4, 8, 200 << 10, 2 << 20, 85);
    let saved = env.save_repo();
    let prune = args!["prune", CRASH_POLICY[0], CRASH_POLICY[1]];
    let delays = std::iter::successors(Some(Duration::from_millis(5)), |d| Some(d.mul_f64(1.6)));
    let reset = || env.reset_repo(&saved);
    let killed = sigkill_at_delays(&env, &prune, delays.take(12), reset, |delay, status, ()| {
        let what = format!("prune killed after {delay:?}");
        eprintln!("{what}: {status}");
        assert_recovers(&env, &snaps, &what);
        if was_killed(status) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    assert!(
        killed >= 4,
        "only {killed} prunes were killed before they finished"
    );
}

// ---------------------------------------------------------------------------------------------
// Locks

#[test]
fn prune_refuses_at_once_while_a_backup_holds_its_lock() {
    let env = TestEnv::with_repo();
    let old = small_series(&env, &[&[], &[]]);
    let big = env.checkpoint("src/big", Scenario::Single, 8 << 20, 86, 0);
    let mut child = env.spawn_tvault(args!["--json", "backup", &big]);
    assert!(
        stop_while_locked(&env, &mut child),
        "the backup finished before it could be stopped"
    );
    let before = env.repo_state();
    let started = Instant::now();
    let run = prune(&env, &["--keep-last", "1"]);
    let took = started.elapsed();
    let report = resume_and_finish_after(&env, child, || {
        assert_eq!(run.code(), Some(1), "{run}");
        run.stderr_has(&["locked", "backup", "wait for it to finish"]);
        assert!(
            took < Duration::from_secs(5),
            "prune took {took:?} to refuse"
        );
        assert_eq!(env.repo_state(), before, "prune changed the repository");
    });
    let new = (text(&report, "id"), sources_manifest(&[&big]));

    // Once the backup is done, prune runs; the backup's snapshot restores.
    let r = prune_ok(&env, &["--keep-last", "1"]);
    assert_eq!(
        decisions(&r),
        vec![
            d(&old[0].0, false, &["no rule keeps it"]),
            d(&old[1].0, true, &["last 1"]),
            d(&new.0, true, &["last 1"]),
        ],
        "snapshots of other paths are another group"
    );
    assert_pruned_to(&env, &[&old[1], &new]);
}

/// Runs `check` while the stopped `child` still holds its lock, then lets it finish (even
/// when `check` panics, so that no stopped process is left behind); the child's report.
fn resume_and_finish_after(env: &TestEnv, child: Child, check: impl FnOnce()) -> Value {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    assert!(!env.lock_files().is_empty());
    let report = resume_and_finish(child);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    report
}

#[test]
fn verify_cannot_check_while_prune_holds_the_exclusive_lock() {
    let env = TestEnv::with_repo();
    env.set_pack_size(1 << 20);
    let snaps = mixed_series(&env, 3, 4, 300 << 10, 2 << 20, 87);
    let saved = env.save_repo();
    for attempt in 1..=5 {
        let mut child = env.spawn_tvault(args!["--json", "prune", "--keep-last", "1"]);
        if !stop_while_locked(&env, &mut child) {
            // Prune finished first: start again from the same repository.
            assert!(child.wait().unwrap().success());
            env.reset_repo(&saved);
            assert!(
                attempt < 5,
                "prune always finished before it could be stopped"
            );
            continue;
        }
        let report = resume_and_finish_after(&env, child, || {
            for extra in [&[][..], &["--read-data"]] {
                let mut a: Vec<OsString> = args!["verify"];
                a.extend(extra.iter().map(OsString::from));
                env.tvault(a)
                    .expect_code(1)
                    .stderr_has(&["locked", "exclusive", "prune"]);
            }
        });
        assert_eq!(num(&report, "snapshots_removed"), 2);
        assert_pruned_to(&env, &[&snaps[2]]);
        return;
    }
}

// ---------------------------------------------------------------------------------------------
// A chunk stored twice

/// Two backups that ran at once (each with its own packs and index file) can both store the
/// same chunk: one as an XOR delta against its parent's block, one whole. Built here without a
/// race: `src/ckpt` holds models `a` and `b`; snapshot A0 has only `a` (step 0), B0 only `b`,
/// each in its own copy of the freshly initialised repository (bases are found by tensor
/// identity in any recent snapshot: neither copy may hold the other's model). Step 1 of both is
/// then backed up once with parent A0 (`a` as deltas of A0, `b` whole) and, in the copy, once
/// with parent B0 (`b` as deltas of B0, `a` whole), whose new files are then copied back, as a
/// concurrent backup would have written them. Whichever index
/// file the index prefers, one model's delta copies are not the copies it reads. Returns the
/// IDs of A0 and B0 and the two step-1 snapshots with what they restore to.
fn chunks_stored_as_delta_and_whole(env: &TestEnv) -> ([String; 2], [(String, Manifest); 2]) {
    let ckpt = env.src.join("ckpt");
    // Only the weights: the two models' config.json are the same file, stored once, which
    // would keep one of the old snapshots' packs alive.
    let model = |name: &str, seed: u64, step: u32| {
        let dir = env.checkpoint(
            format!("src/ckpt/{name}"),
            Scenario::Finetune,
            1 << 20,
            seed,
            step,
        );
        fs::remove_file(dir.join("config.json")).unwrap();
    };
    let other = env.fresh_path("other-repo");
    crate::testenv::copy_dir(&env.repo, &other);
    model("a", 31, 0);
    let a0 = snap(env, &[]).0;
    fs::remove_dir_all(ckpt.join("a")).unwrap();
    model("b", 32, 0);
    let b0 = env
        .tvault_at(&other, args!["--json", "backup", &ckpt])
        .expect_code(0)
        .json();
    let b0 = text(&b0, "id");
    model("a", 31, 1);
    model("b", 32, 1);

    let mut step1 = Vec::new();
    for (repo, parent, notes) in [(&env.repo, &a0, "run A"), (&other, &b0, "run B")] {
        env.write("src/ckpt/notes.txt", notes.as_bytes());
        let run = env
            .tvault_at(repo, args!["--json", "backup", &ckpt, "--parent", parent])
            .expect_code(0);
        let report = run.json();
        // One model as deltas, the other whole.
        let (delta, whole) = (
            num(&report["stored"], "delta"),
            num(&report["stored"], "byte_planes"),
        );
        assert!(delta > 0 && whole > delta / 2, "{run}");
        step1.push((text(&report, "id"), sources_manifest(&[&ckpt])));
    }
    let ours: BTreeSet<PathBuf> = files_below(&env.repo)
        .into_iter()
        .map(|p| p.strip_prefix(&env.repo).unwrap().to_path_buf())
        .collect();
    for path in files_below(&other) {
        let rel = path.strip_prefix(&other).unwrap();
        if !ours.contains(rel) && !rel.starts_with("locks") {
            fs::create_dir_all(env.repo.join(rel).parent().unwrap()).unwrap();
            fs::copy(&path, env.repo.join(rel)).unwrap();
        }
    }
    env.tvault(["verify", "--read-data"]).expect_code(0);
    let [s_a, s_b] = <[_; 2]>::try_from(step1).unwrap();
    ([a0, b0], [s_a, s_b])
}

/// Regression: prune kept only the bases of the copies the index read. The other model's delta
/// copies stayed (their packs were kept as they were) while their bases, in the forgotten
/// snapshots only, were deleted: `verify --read-data` found damaged chunks, and once the
/// rewritten index preferred those copies, the model no longer restored.
#[test]
fn prune_leaves_every_copy_of_a_chunk_stored_twice_restorable() {
    let env = TestEnv::with_repo();
    let (old, step1) = chunks_stored_as_delta_and_whole(&env);
    let kept: Vec<&(String, Manifest)> = step1.iter().collect();
    // Packs are kept as they are (no repacking threshold): only dead packs go.
    let report = prune_ok(
        &env,
        &[
            "--forget",
            &old[0],
            "--forget",
            &old[1],
            "--max-unused",
            "100",
        ],
    );
    assert_eq!(num(&report, "snapshots_removed"), 2, "{report:#}");
    // The packs holding the delta copies whose bases went are repacked without them.
    assert!(num(&report, "packs_repacked") >= 1, "{report:#}");
    assert_pruned_to(&env, &kept);

    // A second prune (repacking what is partly dead) and repair find nothing to break.
    prune_ok(&env, &["--max-unused", "0"]);
    assert_pruned_to(&env, &kept);
    let index = env
        .tvault(args!["--json", "repair", "index"])
        .expect_code(0);
    assert_eq!(num(&index.json(), "packs_recovered"), 0, "{index}");
    let packs = env
        .tvault(args!["--json", "repair", "packs"])
        .expect_code(0);
    assert_eq!(packs.json()["chunks_dropped"], json!([]), "{packs}");
    assert_pruned_to(&env, &kept);
}

/// Regression: a pack kept as it was (little of it dead) kept its dead deltas in the index
/// while prune deleted their bases; a later backup of the same content found those chunks
/// indexed, stored nothing, and made a snapshot that could not be restored.
#[test]
fn content_backed_up_again_after_prune_restores() {
    let env = TestEnv::with_repo();
    let ckpt = env.src.join("ckpt");
    env.checkpoint("src/ckpt/model", Scenario::Finetune, 1 << 20, 41, 0);
    let s0 = snap(&env, &[]).0;
    // Step 1 (small deltas of step 0) beside 2 MiB that outlive it, in one pack.
    env.checkpoint("src/ckpt/model", Scenario::Finetune, 1 << 20, 41, 1);
    env.write("src/ckpt/data.bin", &random_bytes(2 << 20, 41));
    let s1 = snap(&env, &[]).0;
    fs::remove_dir_all(ckpt.join("model")).unwrap();
    let s2 = snap(&env, &[]);
    // Step 1's pack is about 10 % dead: kept as it is at this threshold.
    prune_ok(
        &env,
        &["--forget", &s0, "--forget", &s1, "--max-unused", "25"],
    );
    assert_pruned_to(&env, &[&s2]);

    // Step 1 again (say, a rollback): it is stored again, and restores.
    env.checkpoint("src/ckpt/model", Scenario::Finetune, 1 << 20, 41, 1);
    let s3 = snap(&env, &[]);
    assert_pruned_to(&env, &[&s2, &s3]);
}
