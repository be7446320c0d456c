//! Bad input: wrong paths, IDs, targets and repositories, unreadable, changing and special
//! source files, the default repository location. Every case must produce a message on stderr
//! that names the thing, the documented exit code, and leave the repository as it was (every
//! earlier snapshot still restores identical). Damaged repositories and locks: `damage.rs`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tvault_workload::Scenario;

use crate::testenv::{
    args, assert_manifest_eq, is_root, manifest, num, random_bytes, set_mode, sources_manifest,
    text, Manifest, TestEnv,
};

/// A repository holding two snapshots of a small checkpoint tree, with what each must restore to.
pub(crate) fn repo_with_snapshots() -> (TestEnv, Vec<(String, Manifest)>) {
    snapshots_in(TestEnv::with_repo())
}

/// [`repo_with_snapshots`] in a plaintext repository, for tests that forge or edit its files.
pub(crate) fn plain_repo_with_snapshots() -> (TestEnv, Vec<(String, Manifest)>) {
    snapshots_in(TestEnv::with_plain_repo())
}

fn snapshots_in(env: TestEnv) -> (TestEnv, Vec<(String, Manifest)>) {
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 31, 0);
    env.write("src/ckpt/notes.txt", b"step 1000\n");
    let mut snaps = Vec::new();
    snaps.push((
        text(&env.backup(&[&ckpt], &[]), "id"),
        sources_manifest(&[&ckpt]),
    ));
    env.write("src/ckpt/notes.txt", b"step 2000, loss 1.93\n");
    snaps.push((
        text(&env.backup(&[&ckpt], &[]), "id"),
        sources_manifest(&[&ckpt]),
    ));
    (env, snaps)
}

/// The repository still lists exactly these snapshots and each restores identical.
#[track_caller]
pub(crate) fn assert_undamaged(env: &TestEnv, snaps: &[(String, Manifest)]) {
    let mut listed: Vec<String> = env.snapshots().iter().map(|s| text(s, "id")).collect();
    let mut want: Vec<String> = snaps.iter().map(|(id, _)| id.clone()).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "the repository's snapshots changed");
    for (id, expected) in snaps {
        env.assert_restores(id, expected);
    }
}

/// A new repository whose commands run as a user who cannot read everything: root reads
/// anything, so when the tests run as root tvault runs as nobody, who owns the repository it
/// creates. Returns (env, whether the tests run as root).
pub(crate) fn repo_of_a_user_who_cannot_read_everything() -> (TestEnv, bool) {
    let mut env = TestEnv::new();
    let root = is_root();
    if root {
        env.run_as(65534, 65534);
        fs::remove_dir(&env.repo).unwrap();
    }
    env.init();
    (env, root)
}

/// The report of a backup of two readable files names exactly one problem: `path`, with
/// `says` in its message.
#[track_caller]
fn assert_one_problem_of_two_files(report: &Value, path: &Path, says: &str) {
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    let p = problems[0].as_str().unwrap();
    assert!(p.contains(s(path)) && p.contains(says), "{p}");
    assert_eq!(num(report, "files"), 2, "{report:#}");
}

/// A test path as `&str` (they are all UTF-8), for `stderr_has`.
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

#[test]
fn missing_backup_path_is_named_and_nothing_is_written() {
    let (env, snaps) = repo_with_snapshots();
    let before = env.repo_state();
    let missing = env.src.join("no-such-ckpt");
    env.tvault(args!["backup", &missing])
        .expect_code(1)
        .stderr_has(&[s(&missing), "No such file"]);
    // One good path beside a missing one: still refused as a whole.
    env.tvault(args!["backup", env.src.join("ckpt"), &missing])
        .expect_code(1)
        .stderr_has(&[s(&missing)]);
    assert_eq!(env.repo_state(), before);
    assert_undamaged(&env, &snaps);
}

#[test]
fn usage_errors_exit_2() {
    let (env, snaps) = repo_with_snapshots();
    let before = env.repo_state();
    for bad in [
        args!["backup"],
        args!["restore", &snaps[0].0],
        args!["frobnicate"],
        args!["backup", "--no-such-flag", env.src.join("ckpt")],
        args![],
    ] {
        let run = env.tvault(bad);
        assert_eq!(run.code(), Some(2), "{run}");
        assert!(run.stderr.to_lowercase().contains("usage"), "{run}");
    }
    assert_eq!(env.repo_state(), before);
    assert_undamaged(&env, &snaps);
}

#[test]
fn explicit_repo_without_repository_points_to_init() {
    let env = TestEnv::new(); // repo/ exists and is empty
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 32, 0);
    let nowhere = env.root.join("no/such/repo");
    for repo in [&env.repo, &nowhere] {
        for cmd in [
            args!["backup", &ckpt],
            args!["snapshots"],
            args!["restore", "abcd1234", env.root.join("out")],
            args!["unlock"],
        ] {
            let mut a = args!["--repo", repo];
            a.extend(cmd);
            env.tvault_default_repo(a).expect_code(1).stderr_has(&[
                "no tvault repository at",
                s(repo),
                "tvault init",
            ]);
        }
    }
    // Nothing was created, neither the repository nor the restore target.
    assert!(manifest(&env.repo).is_empty());
    assert!(!env.root.join("no").exists());
    assert!(!env.root.join("out").exists());
    // The same through TVAULT_REPO.
    let mut cmd = env.command();
    cmd.env("TVAULT_REPO", &nowhere).arg("snapshots");
    env.run_command(cmd)
        .expect_code(1)
        .stderr_has(&[s(&nowhere), "tvault init"]);
}

#[test]
fn repo_pointing_at_a_directory_with_files_is_refused_untouched() {
    let env = TestEnv::new();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 33, 0);
    env.write("repo/weights.bin", b"somebody's data");
    env.write("repo/notes/todo.txt", b"do not delete");
    let before = manifest(&env.repo);
    env.tvault(args!["backup", &ckpt])
        .expect_code(1)
        .stderr_has(&[s(&env.repo), "not a tvault repository", "refusing"]);
    env.tvault(["snapshots"])
        .expect_code(1)
        .stderr_has(&["not a tvault repository"]);
    env.tvault(["init"])
        .expect_code(1)
        .stderr_has(&[s(&env.repo), "not empty"]);
    assert_manifest_eq(&before, &manifest(&env.repo), "the directory's files");
}

#[test]
fn init_twice_is_refused_and_keeps_the_repository() {
    let (env, snaps) = repo_with_snapshots();
    let before = env.repo_state();
    env.tvault(["init"])
        .expect_code(1)
        .stderr_has(&[s(&env.repo), "already a tvault repository"]);
    assert_eq!(env.repo_state(), before);
    assert_undamaged(&env, &snaps);
}

/// Replaces the config, runs `check` on each command, then puts the config back.
fn with_config(env: &TestEnv, config: &[u8], check: impl Fn(crate::testenv::Run)) {
    let path = env.repo.join("config");
    let good = fs::read(&path).unwrap();
    fs::write(&path, config).unwrap();
    let before = env.repo_state();
    let ckpt = env.src.join("ckpt");
    for cmd in [
        args!["backup", &ckpt],
        args!["snapshots"],
        args!["restore", "abcd", env.root.join("out")],
    ] {
        check(env.tvault(cmd));
    }
    assert_eq!(
        env.repo_state(),
        before,
        "a refused repository was written to"
    );
    assert!(!env.root.join("out").exists());
    fs::write(&path, good).unwrap();
}

#[test]
fn unsupported_format_version_is_refused_by_number() {
    let (env, snaps) = repo_with_snapshots();
    let mut config: Value =
        serde_json::from_slice(&fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["version"], 4, "a repository of this build");
    config["version"] = json!(99);
    let bytes = serde_json::to_vec_pretty(&config).unwrap();
    with_config(&env, &bytes, |run| {
        run.expect_code(1)
            .stderr_has(&["version 99", "supports versions 1", s(&env.repo)]);
    });
    assert_undamaged(&env, &snaps);
}

#[test]
fn config_that_is_not_json_is_refused() {
    let (env, snaps) = repo_with_snapshots();
    let good = fs::read(env.repo.join("config")).unwrap();
    for bad in [&b"this is not json\n"[..], b"", &good[..good.len() / 2]] {
        with_config(&env, bad, |run| {
            run.expect_code(1)
                .stderr_has(&[s(&env.repo), "config does not parse"]);
        });
    }
    // Valid JSON, but not ours.
    with_config(&env, br#"{"format": "restic", "version": 2}"#, |run| {
        run.expect_code(1).stderr_has(&["not a tvault config"]);
    });
    assert_undamaged(&env, &snaps);
}

#[test]
fn restore_of_an_id_matching_nothing_exits_1() {
    let (env, snaps) = repo_with_snapshots();
    let before = env.repo_state();
    let unused = (0..16u8)
        .map(|d| format!("{d:x}").repeat(6))
        .find(|p| snaps.iter().all(|(id, _)| !id.starts_with(p.as_str())))
        .unwrap();
    let target = env.root.join("out");
    for id in [unused.clone(), unused.repeat(11)[..64].to_string()] {
        env.tvault(args!["restore", &id, &target])
            .expect_code(1)
            .stderr_has(&["no snapshot matches", &id, "tvault snapshots"]);
    }
    assert!(!target.exists(), "a failed restore created its target");
    assert_eq!(env.repo_state(), before);
    assert_undamaged(&env, &snaps);
}

#[test]
fn too_short_or_non_hex_prefix_is_rejected() {
    let (env, snaps) = repo_with_snapshots();
    let target = env.root.join("out");
    for id in [
        &snaps[0].0[..3],
        "",
        "zzzzzz",
        "12 34",
        &format!("{}g", &snaps[0].0[..5]),
    ] {
        env.tvault(args!["restore", id, &target])
            .expect_code(1)
            .stderr_has(&["at least 4"]);
    }
    // The same rule for --parent.
    env.tvault(args![
        "backup",
        env.src.join("ckpt"),
        "--parent",
        &snaps[0].0[..2]
    ])
    .expect_code(1)
    .stderr_has(&["at least 4"]);
    assert!(!target.exists());
    assert_undamaged(&env, &snaps);
}

#[test]
fn ambiguous_prefix_lists_every_candidate() {
    // Two snapshots sharing a 6-digit prefix would take ~16M backups to meet by chance, so a
    // copy of a manifest is stored under a name sharing the prefix. Resolution only looks at
    // names, which is what is tested here (the copy itself would fail its hash check on load).
    let (env, snaps) = repo_with_snapshots();
    let real = snaps[1].0.clone();
    let prefix = &real[..6];
    let twin = format!("{prefix}{}", "0".repeat(58));
    let twin = if twin == real {
        format!("{prefix}{}", "1".repeat(58))
    } else {
        twin
    };
    fs::copy(
        env.repo.join("snapshots").join(&real),
        env.repo.join("snapshots").join(&twin),
    )
    .unwrap();

    let repo = env.open_repo();
    match repo.resolve_snapshot(prefix) {
        Err(tvault_core::error::Error::AmbiguousSnapshot { candidates, .. }) => {
            let mut c = candidates.clone();
            c.sort();
            let mut want = vec![real.clone(), twin.clone()];
            want.sort();
            assert_eq!(c, want);
        }
        other => panic!("expected an ambiguity error, got {other:?}"),
    }
    // A longer prefix, and the full ID, are unique again.
    assert_eq!(repo.resolve_snapshot(&real[..20]).unwrap().to_hex(), real);
    assert_eq!(repo.resolve_snapshot(&real).unwrap().to_hex(), real);

    let target = env.root.join("out");
    env.tvault(args!["restore", prefix, &target])
        .expect_code(1)
        .stderr_has(&["ambiguous", &real, &twin]);
    assert!(!target.exists());
    // The real snapshot still restores by its full ID.
    env.assert_restores(&real, &snaps[1].1);
}

#[test]
fn restore_into_a_non_empty_target_needs_overwrite() {
    let (env, snaps) = repo_with_snapshots();
    let (id, expected) = &snaps[1];
    let target = env.root.join("target");
    env.write(
        "target/ckpt/notes.txt",
        b"stale notes from another run, longer than the real ones",
    );
    env.write("target/ckpt/model.safetensors", b"truncated garbage");
    env.write("target/unrelated.txt", b"keep me");
    let before = manifest(&target);

    env.tvault(args!["restore", id, &target])
        .expect_code(1)
        .stderr_has(&[s(&target), "not empty", "--overwrite"]);
    assert_manifest_eq(
        &before,
        &manifest(&target),
        "target after a refused restore",
    );

    env.tvault(args!["restore", id, &target, "--overwrite"])
        .expect_code(0);
    let mut want = expected.clone();
    want.insert(
        PathBuf::from("unrelated.txt"),
        before[Path::new("unrelated.txt")].clone(),
    );
    assert_manifest_eq(&want, &manifest(&target), "target after --overwrite");
    assert_undamaged(&env, &snaps);
}

#[test]
fn overwrite_never_writes_through_a_symlink_in_the_target() {
    let (env, snaps) = repo_with_snapshots();
    let (id, expected) = &snaps[1];
    // target/ckpt is a symlink to a directory outside the target.
    env.write("outside/notes.txt", b"must stay");
    let outside_before = manifest(&env.root.join("outside"));
    let target = env.root.join("target");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink("../outside", target.join("ckpt")).unwrap();

    env.tvault(args!["restore", id, &target, "--overwrite"])
        .expect_code(0);
    assert_manifest_eq(
        &outside_before,
        &manifest(&env.root.join("outside")),
        "the symlinked directory outside the target",
    );
    assert_manifest_eq(expected, &manifest(&target), "target");
}

#[test]
fn restore_target_that_is_a_file_is_refused() {
    let (env, snaps) = repo_with_snapshots();
    let target = env.write("target.bin", b"a file, not a directory");
    env.tvault(args!["restore", &snaps[0].0, &target, "--overwrite"])
        .expect_code(1)
        .stderr_has(&[s(&target), "not a directory"]);
    assert_eq!(fs::read(&target).unwrap(), b"a file, not a directory");
    assert_undamaged(&env, &snaps);
}

#[test]
fn two_sources_with_the_same_base_name_are_refused() {
    let (env, snaps) = repo_with_snapshots();
    let before = env.repo_state();
    let a = env.checkpoint("src/a/ckpt", Scenario::Single, 64 << 10, 34, 0);
    let b = env.checkpoint("src/b/ckpt", Scenario::Single, 64 << 10, 35, 0);
    env.tvault(args!["backup", &a, &b])
        .expect_code(1)
        .stderr_has(&[s(&a), s(&b), "both be stored as"]);
    assert_eq!(env.repo_state(), before);
    assert_undamaged(&env, &snaps);
}

#[test]
fn unreadable_source_file_makes_the_snapshot_incomplete() {
    let (env, _) = repo_of_a_user_who_cannot_read_everything();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 512 << 10, 36, 0);
    let secret = env.write("src/ckpt/optimizer.pt", b"no one may read this");
    let readable = sources_manifest(&[&ckpt]);
    set_mode(&secret, 0o000);
    let mut expected = readable.clone();
    expected.remove(Path::new("ckpt/optimizer.pt"));
    let run = env.tvault(args!["--json", "backup", &ckpt]).expect_code(3);
    run.stderr_has(&["INCOMPLETE", s(&secret)]);
    let report = run.json();
    assert_eq!(report["complete"], false);
    assert_one_problem_of_two_files(&report, &secret, "ermission denied");

    let snaps = env.snapshots();
    assert_eq!(snaps[0]["complete"], false);
    let listing = env.tvault(["snapshots"]).expect_code(0);
    assert!(listing.stdout.contains("full!"), "{listing}");
    // The readable files restore fine; the unreadable one is simply not there.
    env.assert_restores(&text(&report, "id"), &expected);

    // --quiet still reports the problem (cron mails stderr).
    let run = env.tvault(args!["--quiet", "backup", &ckpt]).expect_code(3);
    assert!(run.stdout.is_empty(), "{run}");
    run.stderr_has(&["INCOMPLETE", s(&secret)]);
    set_mode(&secret, 0o644);
}

#[test]
fn unreadable_source_directory_makes_the_snapshot_incomplete() {
    let (env, root) = repo_of_a_user_who_cannot_read_everything();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 46, 0);
    let locked = env.root.join("src/ckpt/private");
    env.write("src/ckpt/private/rng_state.pt", b"not for the backup user");
    // Unreadable for tvault: another user's private directory (when root), or one without
    // any permission (when not; then it must also be empty, see the ignored test below).
    let mut expected = sources_manifest(&[&ckpt]);
    if root {
        set_mode(&locked, 0o700);
    } else {
        fs::remove_file(locked.join("rng_state.pt")).unwrap();
        expected = sources_manifest(&[&ckpt]);
        set_mode(&locked, 0o000);
    }
    expected.remove(Path::new("ckpt/private/rng_state.pt"));
    if let Some(crate::testenv::Entry::Dir { mode, .. }) =
        expected.get_mut(Path::new("ckpt/private"))
    {
        *mode = if root { 0o700 } else { 0o000 };
    }

    let run = env.tvault(args!["--json", "backup", &ckpt]).expect_code(3);
    run.stderr_has(&["INCOMPLETE", s(&locked)]);
    let report = run.json();
    assert_one_problem_of_two_files(&report, &locked, "ermission denied");
    if root {
        // The directory itself is kept (empty), the rest restores identical.
        env.assert_restores(&text(&report, "id"), &expected);
    }
    set_mode(&locked, 0o755);
}

#[test]
fn restore_of_a_directory_without_read_permission_works_for_non_root() {
    let (env, root) = repo_of_a_user_who_cannot_read_everything();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 47, 0);
    let vault = env.root.join("src/ckpt/vault");
    fs::create_dir(&vault).unwrap();
    if root {
        env.write("src/ckpt/vault/key.bin", b"root can back this up");
    }
    let mut expected = sources_manifest(&[&ckpt]);
    set_mode(&vault, 0o000);
    if let Some(crate::testenv::Entry::Dir { mode, .. }) = expected.get_mut(Path::new("ckpt/vault"))
    {
        *mode = 0o000;
    }
    let id = if root {
        // Backed up by root (who reads anything), restored by nobody.
        let mut cmd = env.command_as_invoker();
        cmd.arg("--repo")
            .arg(&env.repo)
            .args(args!["--json", "backup", &ckpt]);
        let id = text(&env.run_command(cmd).expect_code(0).json(), "id");
        // Hand what root added to the repository over to its owner.
        for path in manifest(&env.repo).keys() {
            std::os::unix::fs::lchown(env.repo.join(path), Some(65534), Some(65534)).unwrap();
        }
        id
    } else {
        // Not readable, hence a problem, but the empty directory is in the snapshot.
        let run = env.tvault(args!["--json", "backup", &ckpt]).expect_code(3);
        text(&run.json(), "id")
    };
    let target = env.fresh_path("restore");
    let run = env.tvault(args!["restore", &id, &target]);
    set_mode(&vault, 0o755);
    if let Ok(m) = fs::symlink_metadata(target.join("ckpt/vault")) {
        if m.is_dir() {
            set_mode(&target.join("ckpt/vault"), 0o755);
        }
    }
    run.expect_code(0);
    let mut got = manifest(&target);
    if let Some(crate::testenv::Entry::Dir { mode, .. }) = got.get_mut(Path::new("ckpt/vault")) {
        *mode = 0o000;
    }
    assert_manifest_eq(&expected, &got, "restore by a non-root user");
}

#[test]
fn file_changing_while_read_is_left_out_of_the_snapshot() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 512 << 10, 37, 0);
    // A log-like file being appended to during the whole backup.
    let growing = env.src.join("ckpt/growing.bin");
    let data = random_bytes(64 << 20, 37);
    fs::write(&growing, &data).unwrap();
    drop(data);
    let mut expected = sources_manifest(&[&ckpt]);
    expected.remove(Path::new("ckpt/growing.bin"));

    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (stop, path) = (stop.clone(), growing.clone());
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            let mut appends = 0u64;
            while !stop.load(Ordering::SeqCst) {
                f.write_all(&[b'x'; 512]).unwrap();
                appends += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            appends
        })
    };
    let run = env.tvault(args!["--json", "backup", &ckpt]);
    stop.store(true, Ordering::SeqCst);
    let appends = appender.join().unwrap();
    assert!(
        appends > 2,
        "the file was not appended to during the backup"
    );
    let run = run.expect_code(3);
    let report = run.json();
    assert_eq!(report["complete"], false);
    assert_one_problem_of_two_files(&report, &growing, "changed while it was read");
    env.assert_restores(&text(&report, "id"), &expected);

    // Once it stops changing, the next backup stores it.
    let full = sources_manifest(&[&ckpt]);
    let next = env.backup(&[&ckpt], &[]);
    assert_eq!(next["complete"], true);
    env.assert_restores(&text(&next, "id"), &full);
}

#[test]
fn fifo_is_skipped_with_a_warning() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 38, 0);
    let fifo = ckpt.join("progress.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success());
    let expected: Manifest = sources_manifest(&[&ckpt])
        .into_iter()
        .filter(|(p, _)| p != Path::new("ckpt/progress.fifo"))
        .collect();

    // A reader of the FIFO would block forever; the backup must not open it.
    let run = env.tvault(args!["--json", "backup", &ckpt]).expect_code(0);
    run.stderr_has(&["warning", s(&fifo), "FIFO"]);
    let report = run.json();
    assert_eq!(report["complete"], true);
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report:#}");
    assert!(warnings[0].as_str().unwrap().contains(s(&fifo)));
    env.assert_restores(&text(&report, "id"), &expected);
}

#[test]
fn default_repository_is_created_by_backup_only() {
    let env = TestEnv::new();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 43, 0);
    let default = env.root.join("xdg/tvault/repo");

    // Other commands do not create it.
    let target = env.root.join("out");
    env.tvault_default_repo(args!["restore", "abcd", &target])
        .expect_code(1)
        .stderr_has(&["no tvault repository at", s(&default), "tvault init"]);
    env.tvault_default_repo(["snapshots"])
        .expect_code(1)
        .stderr_has(&[s(&default)]);
    assert!(!default.exists() && !target.exists());

    // backup creates it, and says where.
    let run = env
        .tvault_default_repo(args!["--json", "backup", &ckpt])
        .expect_code(0);
    run.stderr_has(&["created a new encrypted tvault repository", s(&default)]);
    assert!(default.join("config").is_file());
    let id = text(&run.json(), "id");
    let listed = env
        .tvault_default_repo(["--json", "snapshots"])
        .expect_code(0)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(text(&listed[0], "id"), id);
    // A second backup uses it without a word about creating anything.
    let run = env
        .tvault_default_repo(args!["backup", &ckpt])
        .expect_code(0);
    assert!(!run.stderr.contains("created"), "{run}");
    env.tvault_default_repo(args!["restore", &id, &target])
        .expect_code(0);
    assert_manifest_eq(&sources_manifest(&[&ckpt]), &manifest(&target), "restore");
    // Nothing went to the other candidate location.
    assert!(!env.root.join("home/.local").exists());
}

#[test]
fn default_repository_falls_back_to_home_without_xdg_data_home() {
    let env = TestEnv::new();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 44, 0);
    let default = env.root.join("home/.local/share/tvault/repo");
    for xdg in [None, Some("")] {
        let mut cmd = env.command();
        match xdg {
            None => cmd.env_remove("XDG_DATA_HOME"),
            Some(v) => cmd.env("XDG_DATA_HOME", v),
        };
        cmd.arg("backup").arg(&ckpt);
        env.run_command(cmd).expect_code(0);
    }
    assert!(default.join("config").is_file());
    let mut cmd = env.command();
    cmd.env_remove("XDG_DATA_HOME")
        .args(["--json", "snapshots"]);
    assert_eq!(
        env.run_command(cmd)
            .expect_code(0)
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(!env.root.join("xdg/tvault").exists());
}

/// Regression (issue 9.8): a config with `pack_size: 0` (one pack per blob) or an absurd one
/// was accepted; it is refused by name, and nothing is written.
#[test]
fn config_with_an_unusable_pack_size_or_level_is_refused() {
    let (env, snaps) = repo_with_snapshots();
    let good: Value = serde_json::from_slice(&fs::read(env.repo.join("config")).unwrap()).unwrap();
    for (field, value, says) in [
        ("pack_size", json!(0), "unsupported pack_size 0"),
        (
            "pack_size",
            json!(4_000_000_000u64),
            "unsupported pack_size",
        ),
        ("zstd_level", json!(99), "unsupported zstd_level 99"),
    ] {
        let mut config = good.clone();
        config[field] = value;
        let bytes = serde_json::to_vec_pretty(&config).unwrap();
        with_config(&env, &bytes, |run| {
            run.expect_code(1).stderr_has(&[s(&env.repo), says]);
        });
    }
    assert_undamaged(&env, &snaps);
}

/// Regression (issue 9.8): `prune --max-unused` took -5 and 200.
#[test]
fn prune_max_unused_outside_0_to_100_is_a_usage_error() {
    let (env, snaps) = repo_with_snapshots();
    let before = env.repo_state();
    for bad in ["-5", "200", "100.5", "lots"] {
        env.tvault(["prune".to_string(), format!("--max-unused={bad}")])
            .expect_code(2)
            .stderr_has(&["invalid percentage", "0 to 100"]);
    }
    assert_eq!(env.repo_state(), before);
    for ok in ["0", "100", "2.5%"] {
        env.tvault(["prune", "--dry-run", "--max-unused", ok])
            .expect_code(0);
    }
    assert_undamaged(&env, &snaps);
}

/// Regression (issue 10.4): a bare `tvault` printed only an error; it prints the help (exit
/// 2, as for any incomplete command line), and the man page has an EXIT STATUS section.
#[test]
fn bare_tvault_prints_help_and_the_man_page_lists_exit_codes() {
    let env = TestEnv::new();
    let run = env.run_command(env.command());
    assert_eq!(run.code(), Some(2), "{run}");
    let all = format!("{}{}", run.stdout, run.stderr);
    for needle in [
        "Usage: tvault",
        "backup",
        "restore",
        "verify",
        "Exit status",
    ] {
        assert!(all.contains(needle), "{needle:?} missing:\n{run}");
    }
    let man = env.tvault(["man"]).expect_code(0).stdout;
    let section = man
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .expect("an EXIT STATUS section");
    let section = section.split(".SH").next().unwrap();
    for code in 0..=5 {
        assert!(
            section.contains(&format!("\\fB{code}\\fR")),
            "code {code} missing: {section}"
        );
    }
    assert!(section.contains("incomplete") && section.contains("damage"));
    // The README's words on `latest`, durations and every command's JSON are in the man page.
    for (title, needles) in [
        (
            "SNAPSHOT IDS AND LATEST",
            &["newest *complete* snapshot", "--host H"][..],
        ),
        ("DURATIONS", &["min", "30 months"]),
        (
            "JSON OUTPUT",
            &[
                "\\fBbackup\\fR",
                "\\fBtag\\fR",
                "\\fBls\\fR",
                "exit_code",
                "deprecated",
            ],
        ),
    ] {
        let section = man
            .split(&format!(".SH \"{title}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no {title} section"));
        let section = section.split(".SH").next().unwrap();
        for n in needles {
            assert!(section.contains(n), "{title} lacks {n:?}: {section}");
        }
    }
}

/// Regression (issue 10.3): under `--json` an error printed nothing on stdout; it is a JSON
/// object with the message and the exit code (usage errors included), and stderr still says it.
#[test]
fn errors_under_json_are_json_objects_on_stdout() {
    let env = TestEnv::new();
    let missing = env.path("no-repo");
    let run = env
        .command()
        .args(["--json", "--repo"])
        .arg(&missing)
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&run.stdout).expect("stdout is JSON");
    assert_eq!(v["exit_code"], 1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no tvault repository"),
        "{v}"
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("no tvault repository"));

    let env = TestEnv::with_repo();
    let run = env
        .tvault(["--json", "restore", "abcdef12", "/tmp/x"])
        .expect_code(1);
    let v = run.json();
    assert_eq!(v["exit_code"], 1);
    assert!(v["error"].as_str().unwrap().contains("abcdef12"), "{run}");

    let run = env
        .tvault(["--json", "snapshots", "--no-such-option"])
        .expect_code(2);
    let v = run.json();
    assert_eq!(v["exit_code"], 2);
    assert!(
        v["error"].as_str().unwrap().contains("--no-such-option"),
        "{run}"
    );
    // Help is not an error: no JSON.
    let run = env.tvault(["--json", "snapshots", "--help"]).expect_code(0);
    assert!(run.stdout.contains("Usage"), "{run}");
}
