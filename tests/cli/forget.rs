//! `forget`: restic's entry point for removing snapshots. It applies prune's retention policy
//! (and takes snapshot IDs or prefixes) but removes only snapshot manifests: packs and index
//! files stay byte for byte, and `verify` reports the data only forgotten snapshots used as
//! reclaimable. `forget --prune` is exactly `prune`. Also: a prune dry run prints the plan
//! (packs to delete and repack, bytes to free) that the real prune then carries out.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tvault_workload::Rng;

use crate::testenv::{args, copy_dir, files_below, num, text, Run, TestEnv};
use crate::verify::{assert_fields, assert_verifies_clean};

/// `tvault --json forget ARGS…`.
fn forget(env: &TestEnv, extra: &[&str]) -> Run {
    let mut a: Vec<OsString> = args!["--json", "forget"];
    a.extend(extra.iter().map(OsString::from));
    env.tvault(a)
}

/// `tvault --json prune ARGS…`, which must exit 0; its report.
fn prune_ok(env: &TestEnv, extra: &[&str]) -> Value {
    let mut a: Vec<OsString> = args!["--json", "prune"];
    a.extend(extra.iter().map(OsString::from));
    env.tvault(a).expect_code(0).json()
}

/// Writes `len` random bytes (seed `seed`) to `src/ckpt/NAME`.
fn random_file(env: &TestEnv, name: &str, len: usize, seed: u64) {
    let mut buf = vec![0; len];
    Rng::new(seed).fill_bytes(&mut buf);
    env.write(format!("src/ckpt/{name}"), &buf);
}

/// Backs up `src/ckpt` as it is; the snapshot ID.
fn snap(env: &TestEnv) -> String {
    text(&env.backup(&[&env.src.join("ckpt")], &[]), "snapshot_id")
}

/// `n` snapshots of `src/ckpt`, each holding only its own random file: the packs of a
/// forgotten one hold nothing any other snapshot uses.
fn series(env: &TestEnv, n: u64) -> Vec<String> {
    (0..n)
        .map(|k| {
            let _ = fs::remove_dir_all(env.src.join("ckpt"));
            random_file(env, "weights.bin", 96 << 10, 900 + k);
            snap(env)
        })
        .collect()
}

/// The repository's files below `dir` (`data`, `index`, `snapshots`): path → hash.
fn state_below(env: &TestEnv, dir: &str) -> BTreeMap<PathBuf, String> {
    env.repo_state()
        .into_iter()
        .filter(|(p, _)| p.starts_with(dir))
        .collect()
}

/// Snapshot IDs the repository lists, oldest first.
fn listed(env: &TestEnv) -> Vec<String> {
    env.snapshots().iter().map(|s| text(s, "id")).collect()
}

/// Per snapshot of a report: (ID, kept, reasons).
fn decisions(r: &Value) -> Vec<(String, bool, Vec<String>)> {
    r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let reasons = d["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            (text(d, "id"), d["keep"] == true, reasons)
        })
        .collect()
}

const PACK_FIELDS: [&str; 8] = [
    "packs_deleted",
    "packs_repacked",
    "packs_written",
    "chunks_rewritten",
    "bytes_kept_as_bases",
    "leftovers_deleted",
    "bytes_before",
    "bytes_freed",
];

#[test]
fn forget_by_policy_removes_only_manifests_and_leaves_the_data_to_prune() {
    let env = TestEnv::with_repo();
    let s = series(&env, 3);
    let data = state_below(&env, "data");
    let index = state_below(&env, "index");

    let run = forget(&env, &["--keep-last", "1"]).expect_code(0);
    let r = run.json();
    // The same report as prune's, with nothing done to packs.
    assert_fields(
        &r,
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
    assert_eq!(r["dry_run"], false);
    assert_eq!(num(&r, "snapshots_removed"), 2, "{run}");
    for field in PACK_FIELDS {
        assert_eq!(num(&r, field), 0, "{field}: {run}");
    }
    let kept: Vec<bool> = decisions(&r).iter().map(|d| d.1).collect();
    assert_eq!(kept, [false, false, true]);
    assert_eq!(listed(&env), [s[2].clone()]);
    assert_eq!(state_below(&env, "data"), data, "forget touched a pack");
    assert_eq!(
        state_below(&env, "index"),
        index,
        "forget touched an index file"
    );
    assert!(env.lock_files().is_empty());

    // The forgotten snapshots' data is still there, unused: verify calls it reclaimable.
    let v = assert_verifies_clean(&env, true);
    assert!(num(&v, "reclaimable_packs") >= 2, "{v:#}");
    assert!(num(&v, "reclaimable_bytes") >= 2 * (96 << 10), "{v:#}");
    env.assert_restores(
        &s[2],
        &crate::testenv::sources_manifest(&[&env.src.join("ckpt")]),
    );

    // The human output says where the data went.
    random_file(&env, "weights.bin", 96 << 10, 999);
    snap(&env);
    let run = env.tvault(["forget", "--keep-last", "1"]).expect_code(0);
    assert!(
        run.stdout
            .contains("1 snapshot removed; their data stays until `tvault prune`"),
        "{run}"
    );

    // prune then frees it.
    let p = prune_ok(&env, &[]);
    assert_eq!(num(&p, "snapshots_removed"), 0);
    assert!(num(&p, "packs_deleted") >= 3, "{p:#}");
    assert!(num(&p, "bytes_freed") >= 3 * (96 << 10), "{p:#}");
    assert_verifies_clean(&env, false);
}

#[test]
fn forget_by_id_and_prefix_and_dry_run_changes_nothing() {
    let env = TestEnv::with_repo();
    let s = series(&env, 4);
    let before = env.repo_state();

    // A dry run prints the plan and changes nothing (the lock aside, which it releases).
    let r = forget(&env, &[&s[1][..8], &s[3], "--dry-run"])
        .expect_code(0)
        .json();
    assert_eq!(r["dry_run"], true);
    assert_eq!(num(&r, "snapshots_removed"), 2);
    let run = env
        .tvault(["forget", &s[1][..8], "--dry-run"])
        .expect_code(0);
    assert!(run.stdout.contains("dry run: nothing was changed"), "{run}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&format!("remove {}", &s[1][..8]))),
        "{run}"
    );
    assert_eq!(env.repo_state(), before, "a dry run changed the repository");

    // Unknown or ambiguous prefixes: nothing is removed.
    for bad in ["ab", "zzzz", "0000000000"] {
        forget(&env, &[&s[0][..8], bad])
            .expect_code(1)
            .stderr_has(&[bad]);
    }
    assert_eq!(
        env.repo_state(),
        before,
        "a refused forget changed the repository"
    );

    // IDs and prefixes, as restic takes them; with no rule everything else is kept.
    let r = forget(&env, &[&s[1][..6], &s[3]]).expect_code(0).json();
    let keep = |id: &str| (id.to_string(), true, vec!["no keep rule given".to_string()]);
    let gone = |id: &str| (id.to_string(), false, vec!["--forget".to_string()]);
    assert_eq!(
        decisions(&r),
        [keep(&s[0]), gone(&s[1]), keep(&s[2]), gone(&s[3])]
    );
    assert_eq!(listed(&env), [s[0].clone(), s[2].clone()]);
    assert_eq!(state_below(&env, "data"), state_below_of(&before, "data"));
    assert_verifies_clean(&env, true);
}

/// `state_below` of a `repo_state` taken earlier.
fn state_below_of(state: &BTreeMap<PathBuf, String>, dir: &str) -> BTreeMap<PathBuf, String> {
    state
        .iter()
        .filter(|(p, _)| p.starts_with(dir))
        .map(|(p, h)| (p.clone(), h.clone()))
        .collect()
}

#[test]
fn forgetting_every_snapshot_needs_allow_remove_all() {
    let env = TestEnv::with_repo();
    let s = series(&env, 2);
    let before = env.repo_state();

    forget(&env, &["--keep-tag", "no-such-tag"])
        .expect_code(1)
        .stderr_has(&["would remove every snapshot (2)", "--allow-remove-all"]);
    forget(&env, &[&s[0], &s[1]])
        .expect_code(1)
        .stderr_has(&["would remove every snapshot (2)", "--allow-remove-all"]);
    // The dry run shows the plan, then says a real run would refuse it.
    let run = env
        .tvault(["forget", "--dry-run", "--keep-tag", "no-such-tag"])
        .expect_code(1);
    run.stderr_has(&["would refuse", "--allow-remove-all"]);
    for id in &s {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("remove {}", &id[..8]))),
            "{run}"
        );
    }
    assert_eq!(env.repo_state(), before, "a refusal changed the repository");

    let r = forget(&env, &["--keep-tag", "no-such-tag", "--allow-remove-all"])
        .expect_code(0)
        .json();
    assert_eq!(num(&r, "snapshots_removed"), 2);
    assert!(env.snapshots().is_empty());
    assert_eq!(state_below(&env, "data"), state_below_of(&before, "data"));
    let v = assert_verifies_clean(&env, true);
    assert_eq!(num(&v, "snapshots"), 0);
}

/// A copy of `env`'s repository in a new environment.
fn clone_repo(env: &TestEnv) -> TestEnv {
    let other = TestEnv::with_repo();
    fs::remove_dir_all(&other.repo).unwrap();
    copy_dir(&env.repo, &other.repo);
    other
}

/// Four snapshots whose pruning to the last one deletes some packs and repacks others: `d`
/// alone; `a` and `b` (one pack); `c` alone; then `a` and `c`.
fn delete_and_repack_fixture() -> TestEnv {
    let env = TestEnv::with_plain_repo();
    random_file(&env, "d.bin", 200 << 10, 1);
    snap(&env);
    fs::remove_file(env.src.join("ckpt/d.bin")).unwrap();
    random_file(&env, "a.bin", 200 << 10, 2);
    random_file(&env, "b.bin", 200 << 10, 3);
    snap(&env);
    fs::remove_file(env.src.join("ckpt/a.bin")).unwrap();
    fs::remove_file(env.src.join("ckpt/b.bin")).unwrap();
    random_file(&env, "c.bin", 200 << 10, 4);
    snap(&env);
    random_file(&env, "a.bin", 200 << 10, 2);
    snap(&env);
    env
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    files_below(&repo.join("data"))
}

#[test]
fn forget_prune_is_prune() {
    let env = delete_and_repack_fixture();
    let twin = clone_repo(&env);

    let f = forget(&env, &["--keep-last", "1", "--prune"])
        .expect_code(0)
        .json();
    let p = prune_ok(&twin, &["--keep-last", "1"]);
    assert_eq!(f["snapshots"], p["snapshots"]);
    for field in [
        "snapshots_removed",
        "packs_deleted",
        "packs_repacked",
        "packs_written",
        "chunks_rewritten",
        "bytes_kept_as_bases",
    ] {
        assert_eq!(f[field], p[field], "{field}: {f:#}\n{p:#}");
    }
    assert!(num(&f, "bytes_freed") > 0, "{f:#}");
    assert_eq!(f["bytes_freed"], p["bytes_freed"]);
    assert_eq!(listed(&env), listed(&twin));
    assert_eq!(
        env.repo_state(),
        twin.repo_state(),
        "the two repositories differ"
    );
    assert_verifies_clean(&env, false);
    assert_verifies_clean(&twin, false);

    // --max-unused belongs to --prune.
    forget(&env, &["--keep-last", "1", "--max-unused", "10"])
        .expect_code(2)
        .stderr_has(&["--prune"]);
}

#[test]
fn prune_dry_run_prints_the_plan_that_prune_then_carries_out() {
    let env = delete_and_repack_fixture();
    let before = env.repo_state();
    let packs_before = packs(&env.repo);

    let run = env
        .tvault(["prune", "--keep-last", "1", "--dry-run"])
        .expect_code(0);
    let plan = prune_ok(&env, &["--keep-last", "1", "--dry-run"]);
    assert_eq!(env.repo_state(), before, "a dry run changed the repository");
    let (deleted, repacked) = (num(&plan, "packs_deleted"), num(&plan, "packs_repacked"));
    assert!(deleted >= 1 && repacked >= 1, "{plan:#}");
    assert_eq!(num(&plan, "packs_written"), 0);
    let to_free = num(&plan, "bytes_freed");
    assert!(to_free >= 2 * (200 << 10), "{plan:#}");
    let pack_count = if deleted == 1 {
        "1 pack".to_string()
    } else {
        format!("{deleted} packs")
    };
    let summary = format!(
        "3 snapshots removed, {pack_count} deleted, {repacked} repacked into 0, 0 leftover files removed; would free "
    );
    assert!(run.stdout.contains(&summary), "{summary}\n{run}");

    // The real prune does exactly that: the same decisions, the same packs gone.
    let real = prune_ok(&env, &["--keep-last", "1"]);
    assert_eq!(real["snapshots"], plan["snapshots"]);
    for field in [
        "snapshots_removed",
        "packs_deleted",
        "packs_repacked",
        "bytes_before",
    ] {
        assert_eq!(real[field], plan[field], "{field}: {real:#}\n{plan:#}");
    }
    let after = packs(&env.repo);
    let gone = packs_before.iter().filter(|p| !after.contains(p)).count() as u64;
    let new = after.iter().filter(|p| !packs_before.contains(p)).count() as u64;
    assert_eq!(gone, deleted + repacked, "packs gone");
    assert_eq!(new, num(&real, "packs_written"), "packs written");
    let freed = num(&real, "bytes_freed");
    assert!(
        freed.abs_diff(to_free) <= to_free / 10,
        "the plan said {to_free}, the prune freed {freed}"
    );
    assert_verifies_clean(&env, false);
}
