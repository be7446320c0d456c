//! Backup then restore gives back exactly the tree that was backed up: content, permission bits,
//! mtimes to the nanosecond, symlinks (also dangling ones), empty files and directories,
//! non-UTF-8 names; by full ID or by prefix, whole or `--include`d, one source or several.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tvault_workload::Scenario;

use crate::testenv::{
    args, assert_manifest_eq, assert_same_tree, finish, hostname, manifest, num, set_mode,
    set_mtime, sources_manifest, text, Entry, TestEnv,
};

/// A checkpoint directory with everything a restore has to get right. Returns its path.
fn awkward_tree(env: &TestEnv) -> PathBuf {
    let ckpt = env.src.join("ckpt");
    // Realistic checkpoints: a bf16 model, a fine-tuned one a step later, a re-saved one.
    env.checkpoint("src/ckpt/model", Scenario::Single, 2 << 20, 7, 0);
    env.checkpoint("src/ckpt/sub/finetune", Scenario::Finetune, 1 << 20, 7, 1);
    env.checkpoint("src/ckpt/sub/resaved", Scenario::Resave, 512 << 10, 7, 1);

    env.write("src/ckpt/empty.bin", b"");
    fs::create_dir_all(ckpt.join("sub/deeper/empty_dir")).unwrap();
    fs::create_dir_all(ckpt.join("private")).unwrap();
    env.write("src/ckpt/private/token", b"hf_not_a_real_token\n");
    set_mode(&ckpt.join("private/token"), 0o600);
    set_mode(&ckpt.join("private"), 0o700);

    let notes = env.write("src/ckpt/sub/notes.txt", b"lr=3e-4 warmup=2000\n");
    set_mode(&notes, 0o600);
    let script = env.write(
        "src/ckpt/run.sh",
        b"#!/bin/sh\nexec python train.py \"$@\"\n",
    );
    set_mode(&script, 0o755);
    let ro = env.write("src/ckpt/readonly.json", b"{\"frozen\": true}\n");
    set_mode(&ro, 0o444);

    // Non-UTF-8 names, for a file and for a directory with a file in it.
    let odd = ckpt.join(OsStr::from_bytes(b"w\xffx"));
    fs::write(&odd, b"bytes under a name that is not UTF-8").unwrap();
    let odd_dir = ckpt.join(OsStr::from_bytes(b"d\xfe\xfd"));
    fs::create_dir(&odd_dir).unwrap();
    fs::write(odd_dir.join(OsStr::from_bytes(b"inner\x80")), b"x").unwrap();

    symlink("sub/notes.txt", ckpt.join("link_rel")).unwrap();
    symlink("../nowhere/missing.bin", ckpt.join("link_dangling")).unwrap();
    symlink("../model", ckpt.join("sub/link_dir")).unwrap();
    symlink(OsStr::from_bytes(b"w\xffx"), ckpt.join("link_odd")).unwrap();

    // Old mtimes with nanoseconds, one of them before 1970.
    let old = env.write("src/ckpt/old.bin", b"written long ago");
    set_mtime(&old, 1_000_000_000, 123_456_789);
    let ancient = env.write("src/ckpt/ancient.bin", b"before the epoch");
    set_mtime(&ancient, -31_536_000, 250_000_001);
    set_mtime(
        &ckpt.join("sub/deeper/empty_dir"),
        1_200_000_000,
        987_654_321,
    );
    set_mtime(&ckpt.join("sub/deeper"), 1_300_000_000, 1);
    ckpt
}

#[test]
fn roundtrip_preserves_content_modes_mtimes_symlinks_and_odd_names() {
    let env = TestEnv::with_repo();
    let ckpt = awkward_tree(&env);
    let expected = sources_manifest(&[&ckpt]);
    // The comparison would be meaningless if the tree did not hold what it claims to.
    let key = |s: &[u8]| PathBuf::from(OsStr::from_bytes(s));
    assert!(matches!(expected[&key(b"ckpt/w\xffx")], Entry::File { .. }));
    assert!(
        matches!(expected[&key(b"ckpt/old.bin")], Entry::File { mtime_ns, .. } if mtime_ns == 1_000_000_000_123_456_789)
    );
    assert!(matches!(
        expected[&key(b"ckpt/readonly.json")],
        Entry::File { mode: 0o444, .. }
    ));
    assert!(matches!(
        expected[&key(b"ckpt/link_dangling")],
        Entry::Symlink { .. }
    ));

    let report = env.backup(&[&ckpt], &[]);
    assert_eq!(text(&report, "kind"), "full");
    assert_eq!(report["parent"], serde_json::Value::Null);
    assert_eq!(report["complete"], true);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["warnings"], serde_json::json!([]));
    let count = |f: fn(&Entry) -> bool| expected.values().filter(|e| f(e)).count() as u64;
    let files = count(|e| matches!(e, Entry::File { .. }));
    assert_eq!(num(&report, "files"), files);
    assert_eq!(num(&report, "files_new"), files);
    assert_eq!(
        num(&report, "dirs"),
        count(|e| matches!(e, Entry::Dir { .. }))
    );
    assert_eq!(num(&report, "symlinks"), 4);
    let total: u64 = expected
        .values()
        .map(|e| match e {
            Entry::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    assert!(
        total > 3 << 20,
        "the tree should hold a few MiB, has {total}"
    );
    assert_eq!(num(&report, "total_bytes"), total);
    assert_eq!(num(&report, "bytes_read"), total);
    assert!(num(&report, "bytes_added") > 0);

    let id = text(&report, "id");
    let target = env.fresh_path("restore");
    let run = env
        .tvault(args!["--json", "restore", &id, &target])
        .expect_code(0);
    let restored = run.json();
    assert_eq!(text(&restored, "id"), id);
    assert_eq!(num(&restored, "files"), files);
    assert_eq!(num(&restored, "symlinks"), 4);
    assert_eq!(num(&restored, "bytes_written"), total);
    assert_eq!(restored["failed"], serde_json::json!([]));
    assert_manifest_eq(&expected, &manifest(&target), "restored tree");
}

#[test]
fn restore_accepts_a_unique_six_digit_prefix_in_any_case() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 3, 0);
    let expected = sources_manifest(&[&ckpt]);
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    env.assert_restores(&id[..6], &expected);
    env.assert_restores(&id[..6].to_ascii_uppercase(), &expected);
    // The JSON report names the full ID the prefix resolved to.
    let target = env.fresh_path("restore");
    let r = env
        .tvault(args!["--json", "restore", &id[..6], &target])
        .expect_code(0)
        .json();
    assert_eq!(text(&r, "id"), id);
}

#[test]
fn restore_include_restores_only_that_subtree_and_its_parents() {
    let env = TestEnv::with_repo();
    let ckpt = awkward_tree(&env);
    let all = sources_manifest(&[&ckpt]);
    let id = text(&env.backup(&[&ckpt], &[]), "id");

    let target = env.fresh_path("restore");
    let r = env
        .tvault(args![
            "--json",
            "restore",
            &id,
            &target,
            "--include",
            "ckpt/sub"
        ])
        .expect_code(0)
        .json();
    let under = |p: &Path| p == Path::new("ckpt") || p.starts_with("ckpt/sub");
    let expected: crate::testenv::Manifest = all
        .iter()
        .filter(|(p, _)| under(p))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    assert!(expected.len() > 5 && expected.len() < all.len());
    assert_manifest_eq(&expected, &manifest(&target), "--include ckpt/sub");
    assert_eq!(
        num(&r, "files"),
        expected
            .values()
            .filter(|e| matches!(e, Entry::File { .. }))
            .count() as u64
    );

    // A trailing slash names the same subtree; a path that matches nothing is an error that
    // says how paths look.
    let target2 = env.fresh_path("restore");
    env.tvault(args!["restore", &id, &target2, "--include", "ckpt/sub/"])
        .expect_code(0);
    assert_manifest_eq(&expected, &manifest(&target2), "--include ckpt/sub/");
    let target3 = env.fresh_path("restore");
    env.tvault(args!["restore", &id, &target3, "--include", "sub"])
        .expect_code(1)
        .stderr_has(&["\"sub\" matches nothing", "ckpt"]);
    // A prefix of a name is not a path prefix: "ckpt/su" must not select "ckpt/sub".
    env.tvault(args!["restore", &id, &target3, "--include", "ckpt/su"])
        .expect_code(1);
}

#[test]
fn backup_of_two_sources_restores_each_under_its_base_name() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 512 << 10, 11, 0);
    let tok = env.root.join("elsewhere/tokenizer");
    env.write("elsewhere/tokenizer/tokenizer.json", b"{\"vocab\": {}}");
    env.write("elsewhere/tokenizer/merges.txt", b"a b\n");
    let expected = sources_manifest(&[&ckpt, &tok]);

    let report = env.backup(&[&ckpt, &tok], &[]);
    assert_eq!(num(&report, "files"), 4);
    let id = text(&report, "id");
    let target = env.restore(&id);
    assert_same_tree(&ckpt, &target.join("ckpt"));
    assert_same_tree(&tok, &target.join("tokenizer"));
    assert_manifest_eq(&expected, &manifest(&target), "both sources");

    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 1);
    let mut want = vec![
        fs::canonicalize(&ckpt).unwrap().display().to_string(),
        fs::canonicalize(&tok).unwrap().display().to_string(),
    ];
    want.sort();
    assert_eq!(snaps[0]["paths"], serde_json::json!(want));
}

#[test]
fn a_single_file_source_restores_as_that_file() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 5, 0);
    let model = ckpt.join("model.safetensors");
    let expected = sources_manifest(&[&model]);
    let id = text(&env.backup(&[&model], &[]), "id");
    env.assert_restores(&id, &expected);
}

#[test]
fn snapshots_json_describes_each_snapshot() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 5, 0);
    let first = env.backup(&[&ckpt], &["--tag", "epoch-1", "--tag", "nightly"]);
    let second = env.backup(&[&ckpt], &[]);
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 2, "{snaps:#?}");
    let (a, b) = (&snaps[0], &snaps[1]);
    assert_eq!(text(a, "id"), text(&first, "id"), "oldest first");
    assert_eq!(text(b, "id"), text(&second, "id"));
    assert_eq!(text(a, "short_id"), text(a, "id")[..8]);
    assert_eq!(text(a, "host"), hostname());
    assert_eq!(a["tags"], serde_json::json!(["epoch-1", "nightly"]));
    assert_eq!(b["tags"], serde_json::json!([]));
    assert_eq!(text(a, "kind"), "full");
    assert_eq!(text(b, "kind"), "incremental");
    assert_eq!(b["parent"], a["id"]);
    assert_eq!(a["complete"], true);
    assert_eq!(num(a, "files"), 2);
    assert_eq!(num(a, "total_bytes"), num(&first, "total_bytes"));
    assert_eq!(num(a, "bytes_added"), num(&first, "bytes_added"));
    assert!(a["time"].as_str().is_some_and(|t| t.starts_with("20")));

    // The human listing shows both short IDs and the tags.
    let human = env.tvault(["snapshots"]).expect_code(0);
    for s in [a, b] {
        assert!(human.stdout.contains(&text(s, "short_id")), "{human}");
    }
    assert!(human.stdout.contains("epoch-1,nightly"), "{human}");
}

#[test]
fn quiet_commands_print_nothing_on_success() {
    let env = TestEnv::new();
    let run = env.tvault(["--quiet", "init"]).expect_code(0);
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 5, 0);
    let run = env.tvault(args!["--quiet", "backup", &ckpt]).expect_code(0);
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("", ""),
        "{run}"
    );
    let id = text(&env.snapshots()[0], "id");
    let target = env.fresh_path("restore");
    let run = env
        .tvault(args!["-q", "restore", &id, &target])
        .expect_code(0);
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("", ""),
        "{run}"
    );
    // Without --quiet, a backup says what it saved.
    let run = env.tvault(args!["backup", &ckpt]).expect_code(0);
    assert!(
        run.stdout.contains("snapshot ") && run.stdout.contains("saved"),
        "{run}"
    );
}

#[test]
fn setuid_setgid_and_sticky_bits_survive() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 8, 0);
    let tool = env.write("src/ckpt/bin/tool", b"#!/bin/sh\n");
    set_mode(&tool, 0o4755);
    let shared = env.write("src/ckpt/bin/shared", b"group data");
    set_mode(&shared, 0o2750);
    let scratch = ckpt.join("scratch");
    fs::create_dir(&scratch).unwrap();
    set_mode(&scratch, 0o1777);
    let expected = sources_manifest(&[&ckpt]);
    assert!(matches!(
        expected[Path::new("ckpt/bin/tool")],
        Entry::File { mode: 0o4755, .. }
    ));
    assert!(matches!(
        expected[Path::new("ckpt/scratch")],
        Entry::Dir { mode: 0o1777, .. }
    ));
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    env.assert_restores(&id, &expected);
}

#[test]
fn include_of_a_single_file_restores_it_and_its_parent_dirs() {
    let env = TestEnv::with_repo();
    let ckpt = awkward_tree(&env);
    let all = sources_manifest(&[&ckpt]);
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    let target = env.fresh_path("restore");
    env.tvault(args![
        "restore",
        &id,
        &target,
        "--include",
        "ckpt/sub/finetune/model.safetensors"
    ])
    .expect_code(0);
    let expected: crate::testenv::Manifest = all
        .into_iter()
        .filter(|(p, _)| {
            [
                "ckpt",
                "ckpt/sub",
                "ckpt/sub/finetune",
                "ckpt/sub/finetune/model.safetensors",
            ]
            .iter()
            .any(|k| p == Path::new(k))
        })
        .collect();
    assert_eq!(expected.len(), 4);
    assert_manifest_eq(&expected, &manifest(&target), "--include of one file");
}

#[test]
fn restore_handles_file_names_of_the_maximum_length() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 9, 0);
    let long = format!("{}.safetensors", "x".repeat(255 - ".safetensors".len()));
    assert_eq!(long.len(), 255);
    env.write(
        Path::new("src/ckpt").join(&long),
        b"a name as long as Linux allows",
    );
    let expected = sources_manifest(&[&ckpt]);
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    env.assert_restores(&id, &expected);
}

#[test]
fn restore_keeps_a_file_named_like_a_restore_temporary() {
    // Such a file exists whenever a directory that once received a killed restore is backed up.
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 10, 0);
    env.write(
        "src/ckpt/.config.json.tvault-restore",
        b"leftover of an earlier restore",
    );
    let expected = sources_manifest(&[&ckpt]);
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    env.assert_restores(&id, &expected);
}

#[test]
fn repository_inside_a_source_is_not_backed_up() {
    // `tvault --repo ~/ckpt/.tvault backup ~/ckpt` must not store the repository in itself.
    let env = TestEnv::new();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 12, 0);
    let repo = ckpt.join(".tvault");
    env.tvault_at(&repo, ["init"]).expect_code(0);
    let mut expected = sources_manifest(&[&ckpt]);
    expected.retain(|p, _| !p.starts_with("ckpt/.tvault"));

    let run = env
        .tvault_at(&repo, args!["--json", "backup", &ckpt])
        .expect_code(0);
    run.stderr_has(&[repo.to_str().unwrap(), "repository"]);
    let report = run.json();
    assert_eq!(num(&report, "files"), 2, "{report:#}");
    let id = text(&report, "id");
    let target = env.fresh_path("restore");
    env.tvault_at(&repo, args!["restore", &id, &target])
        .expect_code(0);
    // The restored tree lacks the repository, and ckpt's mtime is the one it had (which
    // includes the repository's creation).
    assert_manifest_eq(
        &expected,
        &manifest(&target),
        "restore without the repository",
    );
}

#[test]
fn skipped_repository_is_listed_in_json_warnings() {
    let env = TestEnv::new();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 13, 0);
    let repo = ckpt.join(".tvault");
    env.tvault_at(&repo, ["init"]).expect_code(0);
    let report = env
        .tvault_at(&repo, args!["--json", "backup", &ckpt])
        .expect_code(0)
        .json();
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains(repo.to_str().unwrap())),
        "{report:#}"
    );
}

/// `tvault snapshots | head -1`: a reader that stops early is not an error, and never a panic.
#[test]
fn output_into_a_closed_pipe_exits_cleanly() {
    let env = TestEnv::with_repo();
    env.write("src/ckpt/a.txt", b"a");
    let ckpt = env.src.join("ckpt");
    for i in 0..3 {
        env.tvault(args!["backup", &ckpt, "--tag", format!("t{i}")])
            .expect_code(0);
    }
    for cmd in [&["snapshots"][..], &["man"][..]] {
        let mut child = env.spawn_tvault(cmd);
        drop(child.stdout.take()); // the reader is gone before tvault writes
        let run = finish(child, &format!("{cmd:?}, its reader gone"));
        assert!(!run.stderr.contains("panicked"), "{run}");
        assert_eq!(run.code(), Some(0), "{run}");
    }
}

#[test]
fn one_worker_thread_stores_and_restores_what_many_do() {
    // `--threads 1` (or TVAULT_THREADS) changes where the work runs, never what is stored.
    let env = TestEnv::with_repo();
    let ckpt = awkward_tree(&env);
    let one = env.backup(&[&ckpt], &["--threads", "1"]);
    assert!(num(&one, "bytes_added") > 0);
    let target = env.fresh_path("restore");
    let mut cmd = env.repo_command(args!["restore", text(&one, "id"), &target]);
    cmd.env("TVAULT_THREADS", "1");
    env.run_command(cmd).expect_code(0);
    assert_same_tree(&ckpt, &target.join("ckpt"));
    // Every chunk the default pool makes is one the single thread already stored.
    let many = env.backup(&[&ckpt], &["--full"]);
    assert_eq!(num(&many, "bytes_added"), 0, "{many:#}");
    env.tvault(["--threads", "0", "snapshots"])
        .expect_code(2)
        .stderr_has(&["--threads"]);
}
