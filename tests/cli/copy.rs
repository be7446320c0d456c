//! `tvault copy` (issue 13, item 1): snapshots replicated into another repository, between
//! different keys, plaintext and encrypted, local and S3; metadata kept, `copied_from`
//! recorded, a second run copies nothing; only what the destination lacks is sent (nothing
//! read that an earlier copy already maps; deltas sent as deltas); a kill -9 mid-copy leaves no
//! snapshot and the rerun sends nothing that was kept; `--dry-run` writes nothing; a missing
//! destination and a wrong destination password fail clearly.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tvault_workload::Scenario;

use crate::s3::S3Env;
use crate::testenv::{
    args, finish, manifest, num, random_bytes, sources_manifest, spawn_piped, text, Manifest, Run,
    TestEnv, PASSWORD,
};

/// The destination's password (the source's is [`PASSWORD`]).
const TO_PASSWORD: &str = "destination-password";

/// A destination repository in a `TestEnv` of its own, encrypted with [`TO_PASSWORD`].
fn destination() -> TestEnv {
    let dst = TestEnv::new();
    at(&dst, args!["init"]).expect_code(0);
    dst
}

/// `tvault --repo DST ARGS…` with the destination's password.
fn at(dst: &TestEnv, a: Vec<OsString>) -> Run {
    let mut cmd = dst.repo_command(a);
    cmd.env("TVAULT_PASSWORD", TO_PASSWORD);
    dst.run_command(cmd)
}

/// `tvault --repo SRC --json copy --to DST EXTRA…`, the destination's password in
/// `TVAULT_TO_PASSWORD`.
fn copy_cmd(src: &TestEnv, dst: &Path, extra: &[&str]) -> std::process::Command {
    let mut a = args!["--json", "copy", "--to", dst];
    a.extend(extra.iter().map(OsString::from));
    let mut cmd = src.repo_command(a);
    cmd.env("TVAULT_TO_PASSWORD", TO_PASSWORD);
    cmd
}

/// A copy that must succeed; its report.
#[track_caller]
fn copy(src: &TestEnv, dst: &Path, extra: &[&str]) -> Value {
    src.run_command(copy_cmd(src, dst, extra))
        .expect_code(0)
        .json()
}

fn snapshots_at(dst: &TestEnv) -> Vec<Value> {
    let v = at(dst, args!["--json", "snapshots"]).expect_code(0).json();
    v.as_array().unwrap().clone()
}

#[track_caller]
fn verify_clean(dst: &TestEnv) {
    let run = at(dst, args!["--json", "verify", "--read-data"]).expect_code(0);
    assert_eq!(run.json()["problems"], serde_json::json!([]), "{run}");
}

#[track_caller]
fn assert_restores_at(dst: &TestEnv, id: &str, expected: &Manifest) {
    let target = dst.fresh_path("restore");
    at(dst, args!["restore", id, &target]).expect_code(0);
    crate::testenv::assert_manifest_eq(expected, &manifest(&target), &format!("copy {id}"));
}

/// Statuses of a copy report's snapshots, in order.
fn statuses(report: &Value) -> Vec<String> {
    let list = report["snapshots"].as_array().unwrap();
    list.iter().map(|s| text(s, "status")).collect()
}

/// A checkpoint folder with a notes file in `env`'s `src/run`; returns the folder.
fn checkpoint_step(env: &TestEnv, step: u32) -> PathBuf {
    let dir = env.root.join("src/run");
    env.checkpoint("src/run/ckpt", Scenario::Single, 512 << 10, 5, step);
    env.write("src/run/notes.txt", format!("step {step}\n").as_bytes());
    dir
}

#[test]
fn copy_between_differently_keyed_repositories_keeps_snapshots_and_a_second_run_copies_nothing() {
    let src = TestEnv::with_repo();
    let dir = checkpoint_step(&src, 0);
    let v0 = sources_manifest(&[&dir]);
    let s0 = src.backup(&[&dir], &["--tag", "v0", "--host", "trainer-a"]);
    src.write("src/run/notes.txt", b"step 0, evaluated\n");
    let v1 = sources_manifest(&[&dir]);
    let s1 = src.backup(&[&dir], &["--tag", "v1", "--host", "trainer-a"]);
    let dst = destination();

    // --tag selects; the other snapshot is left for the next run.
    let r = copy(&src, &dst.repo, &["--tag", "v0"]);
    assert_eq!(statuses(&r), ["copied"], "{r:#}");
    assert!(num(&r, "bytes_sent") > 256 << 10, "{r:#}");
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!(statuses(&r), ["skipped", "copied"], "{r:#}");
    // Only the changed notes file and the tree are new.
    assert!(num(&r["snapshots"][1], "chunks_sent") <= 3, "{r:#}");

    // Metadata kept, parents mapped to the copies, sources recorded; restores identical.
    let originals = src.snapshots();
    let copies = snapshots_at(&dst);
    assert_eq!(copies.len(), 2);
    for (o, c) in originals.iter().zip(&copies) {
        for field in [
            "time",
            "host",
            "paths",
            "tags",
            "kind",
            "complete",
            "total_bytes",
        ] {
            assert_eq!(o[field], c[field], "{field}: {o:#} vs {c:#}");
        }
        assert_eq!(c["copied_from"], o["id"], "{c:#}");
        assert_ne!(c["id"], o["id"], "another key names it otherwise");
    }
    assert_eq!(copies[0]["parent"], Value::Null);
    assert_eq!(copies[1]["parent"], copies[0]["id"]);
    assert_eq!(text(&s0, "id"), text(&originals[0], "id"));
    assert_eq!(text(&s1, "id"), text(&originals[1], "id"));
    assert_restores_at(&dst, &text(&copies[0], "id"), &v0);
    assert_restores_at(&dst, &text(&copies[1], "id"), &v1);

    // A second run copies nothing and writes nothing.
    let before = dst.repo_state();
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!(statuses(&r), ["skipped", "skipped"], "{r:#}");
    assert_eq!((num(&r, "chunks_sent"), num(&r, "bytes_read")), (0, 0));
    assert_eq!(r["snapshots"][1]["id"], copies[1]["id"]);
    assert_eq!(dst.repo_state(), before);

    // A new snapshot whose checkpoint is unchanged: the earlier copies tell the destination
    // IDs of its chunks, so only the changed file is read from the source.
    src.write("src/run/notes.txt", b"step 0, evaluated twice\n");
    src.backup(&[&dir], &["--tag", "v2", "--host", "trainer-a"]);
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!(statuses(&r), ["skipped", "skipped", "copied"], "{r:#}");
    assert!(num(&r, "bytes_read") < 4096, "read again: {r:#}");
    verify_clean(&dst);
}

#[test]
fn copy_from_plaintext_into_encrypted_and_back_skips_what_came_from_there() {
    let src = TestEnv::with_plain_repo();
    let dir = checkpoint_step(&src, 0);
    let v0 = sources_manifest(&[&dir]);
    src.backup(&[&dir], &[]);
    let dst = destination();
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!(statuses(&r), ["copied"], "{r:#}");
    let id = text(&r["snapshots"][0], "id");
    assert_restores_at(&dst, &id, &v0);
    verify_clean(&dst);
    // Nothing of the plaintext is readable in the destination.
    let marker = b"step 0";
    for f in crate::testenv::files_below(&dst.repo) {
        let bytes = fs::read(&f).unwrap();
        assert!(!bytes.windows(marker.len()).any(|w| w == marker), "{f:?}");
    }

    // Back into the plaintext source: refused unless asked for (the data would leave the
    // encryption); asked for, the copy records where it came from, so it is skipped.
    let before = src.repo_state();
    let mut cmd = dst.repo_command(args!["--json", "copy", "--to", &src.repo]);
    cmd.env("TVAULT_PASSWORD", TO_PASSWORD);
    let run = dst.run_command(cmd).expect_code(1);
    run.stderr_has(&[
        "is encrypted and the destination",
        &src.repo.display().to_string(),
        "--allow-plaintext-destination",
    ]);
    assert_eq!(
        src.repo_state(),
        before,
        "a refused copy wrote into the destination"
    );
    let mut cmd = dst.repo_command(args![
        "--json",
        "copy",
        "--to",
        &src.repo,
        "--allow-plaintext-destination"
    ]);
    cmd.env("TVAULT_PASSWORD", TO_PASSWORD);
    let r = dst.run_command(cmd).expect_code(0).json();
    assert_eq!(statuses(&r), ["skipped"], "{r:#}");
    assert_eq!(src.snapshots().len(), 1);
}

#[test]
fn copy_names_the_locked_destination_and_refuses_an_id_the_filters_exclude() {
    // Plaintext on both sides, so the test can forge a lock in the destination.
    let src = TestEnv::with_plain_repo();
    let dir = checkpoint_step(&src, 0);
    let id = text(&src.backup(&[&dir], &["--tag", "nightly"]), "id");
    let dst = TestEnv::with_plain_repo();
    let run = src
        .run_command(copy_cmd(&src, &dst.repo, &[&id, "--tag", "weekly"]))
        .expect_code(1);
    run.stderr_has(&["does not match --tag/--host/--path", &id[..8]]);

    // An exclusive lock (a prune) in the destination: the error says which repository.
    dst.forge_lock("ab", serde_json::json!({}));
    let run = src
        .run_command(copy_cmd(&src, &dst.repo, &[]))
        .expect_code(1);
    run.stderr_has(&[
        "destination repository",
        &dst.repo.display().to_string(),
        "unlock",
    ]);
    assert!(dst.snapshots().is_empty());
}

#[test]
fn copy_from_a_local_repository_into_s3() {
    let Some(s3) = S3Env::new("copy") else {
        println!("skipped: no S3 server");
        return;
    };
    s3.tvault(["init"]).expect_code(0);
    let src = TestEnv::with_repo();
    let dir = checkpoint_step(&src, 0);
    src.backup(&[&dir], &[]);
    checkpoint_step(&src, 1);
    src.backup(&[&dir], &[]);

    let url = s3.url();
    let copy_to_s3 = || {
        let mut cmd = s3.command_at(
            src.repo.to_str().unwrap(),
            args!["--json", "copy", "--to", &url],
        );
        cmd.env("TVAULT_TO_PASSWORD", PASSWORD);
        s3.env.run_command(cmd).expect_code(0).json()
    };
    let r = copy_to_s3();
    assert_eq!(statuses(&r), ["copied", "copied"], "{r:#}");
    assert_eq!(s3.snapshot_count(), 2);
    s3.verify_clean();
    s3.assert_restores(&text(&r["snapshots"][1], "id"), &dir);
    let r = copy_to_s3();
    assert_eq!(statuses(&r), ["skipped", "skipped"], "{r:#}");
    assert_eq!(num(&r, "chunks_sent"), 0);
}

/// Bytes of the blobs the destination's index files list (sealed, as `bytes_sent` counts).
fn indexed_bytes(dst: &TestEnv) -> (u64, usize) {
    let password = || Ok(TO_PASSWORD.as_bytes().to_vec());
    let repo = tvault_core::repo::Repository::open_local(&dst.repo, Some(&password)).unwrap();
    let mut bytes = 0;
    let mut packs = std::collections::HashSet::new();
    for file in repo.read_index_files().unwrap() {
        for (pack, entries) in file.packs.unwrap() {
            packs.insert(pack);
            bytes += entries.iter().map(|e| e.stored_len as u64).sum::<u64>();
        }
    }
    let on_disk = repo.list_packs().unwrap();
    let unindexed = on_disk
        .iter()
        .filter(|(h, _)| h.id().is_some_and(|id| !packs.contains(&id)))
        .count();
    (bytes, unindexed)
}

#[test]
fn copy_killed_mid_way_leaves_no_snapshot_and_the_rerun_sends_nothing_that_was_kept() {
    let src = TestEnv::with_repo();
    // 40 files of 48 KiB, each one chunk: packs of 64 KiB hold two.
    for i in 0..40 {
        src.write(format!("src/data/f{i:02}"), &random_bytes(48 << 10, i));
    }
    let dir = src.src.join("data");
    src.backup(&[&dir], &[]);
    let dst = destination();
    let pack_size = 64 << 10;
    dst.set_pack_size(pack_size);
    let total = num(&copy(&src, &dst.repo, &["--dry-run"]), "bytes_sent");

    // Held at the first index file written mid-snapshot, then killed.
    let hold = src.fresh_path("pause");
    fs::create_dir(&hold).unwrap();
    let mut cmd = copy_cmd(&src, &dst.repo, &[]);
    cmd.env(
        "TVAULT_TEST_PAUSE",
        format!("copy-indexed:{}", hold.display()),
    );
    let mut child = spawn_piped(cmd);
    let started = Instant::now();
    while !hold.join("copy-indexed.paused").exists() {
        if started.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "copy never wrote an index file mid-way\n{}",
                finish(child, "copy")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let killed = finish(child, "copy (killed)");
    assert!(!killed.status.success(), "{killed}");
    assert!(snapshots_at(&dst).is_empty(), "a snapshot of a killed copy");
    let (kept, unindexed) = indexed_bytes(&dst);
    assert!(
        kept >= pack_size as u64,
        "nothing kept: {kept} bytes indexed"
    );
    // In flight: at most the pack being stored and the one filling.
    assert!(
        unindexed <= 2,
        "{unindexed} packs on disk that no index names"
    );

    let r = copy(&src, &dst.repo, &[]);
    assert_eq!(statuses(&r), ["copied"], "{r:#}");
    let sent = num(&r, "bytes_sent");
    eprintln!("total {total}, kept {kept}, sent again {sent}");
    assert!(
        sent + kept <= total,
        "the rerun sent {sent} bytes besides the {kept} kept, of {total}"
    );
    verify_clean(&dst);
    assert_restores_at(
        &dst,
        &text(&r["snapshots"][0], "id"),
        &sources_manifest(&[&dir]),
    );
}

#[test]
fn copy_dry_run_writes_nothing_and_tells_what_a_copy_sends() {
    let src = TestEnv::with_repo();
    let dir = checkpoint_step(&src, 0);
    src.backup(&[&dir], &[]);
    let dst = destination();
    let before = dst.repo_state();
    let dry = copy(&src, &dst.repo, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(statuses(&dry), ["would_copy"], "{dry:#}");
    assert_eq!(dry["snapshots"][0]["id"], Value::Null);
    assert!(num(&dry, "bytes_sent") > 256 << 10, "{dry:#}");
    assert_eq!(
        dst.repo_state(),
        before,
        "the dry run changed the destination"
    );
    let mut cmd = src.repo_command(args!["copy", "--to", &dst.repo, "--dry-run"]);
    cmd.env("TVAULT_TO_PASSWORD", TO_PASSWORD);
    let human = src.run_command(cmd).expect_code(0);
    assert!(human.stdout.contains("would copy 1 snapshot"), "{human}");
    assert!(human.stdout.contains("nothing was written"), "{human}");
    assert_eq!(
        dst.repo_state(),
        before,
        "the dry run changed the destination"
    );
    let real = copy(&src, &dst.repo, &[]);
    assert_eq!(real["bytes_sent"], dry["bytes_sent"], "{real:#}");
    assert_eq!(real["chunks_sent"], dry["chunks_sent"], "{real:#}");
}

#[test]
fn copy_to_a_missing_destination_or_with_a_wrong_destination_password_fails_clearly() {
    let src = TestEnv::with_repo();
    let dir = checkpoint_step(&src, 0);
    src.backup(&[&dir], &[]);

    let missing = src.root.join("no-such-repo");
    let run = src
        .run_command(copy_cmd(&src, &missing, &[]))
        .expect_code(1);
    let init = format!("tvault init --repo {}", missing.display());
    run.stderr_has(&[&init]);
    assert!(!missing.exists(), "the destination was created");

    let dst = destination();
    let before = dst.repo_state();
    let mut cmd = copy_cmd(&src, &dst.repo, &[]);
    cmd.env("TVAULT_TO_PASSWORD", "not-the-password");
    let run = src.run_command(cmd).expect_code(6);
    run.stderr_has(&[
        "wrong password",
        "destination",
        &dst.repo.display().to_string(),
    ]);

    let mut cmd = copy_cmd(&src, &dst.repo, &[]);
    cmd.env_remove("TVAULT_TO_PASSWORD");
    let run = src.run_command(cmd).expect_code(1);
    run.stderr_has(&["TVAULT_TO_PASSWORD", "--to-password-file"]);
    assert_eq!(dst.repo_state(), before);

    // From a file, as --to-password-file gives it.
    let file = src.write("to-password", format!("{TO_PASSWORD}\n").as_bytes());
    let mut cmd = copy_cmd(
        &src,
        &dst.repo,
        &["--to-password-file", file.to_str().unwrap()],
    );
    cmd.env_remove("TVAULT_TO_PASSWORD");
    let r = src.run_command(cmd).expect_code(0).json();
    assert_eq!(statuses(&r), ["copied"], "{r:#}");
}

#[test]
fn copy_into_a_version_3_repository_stores_no_element_deltas_it_could_not_read() {
    let src = TestEnv::with_repo();
    let dir = src.root.join("src/ckpt");
    for step in 0..3 {
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        src.checkpoint("src/ckpt", Scenario::Finetune, 2 << 20, 7, step);
        src.backup(&[&dir], &[]);
    }
    assert!(crate::testenv::delta_methods(&src.open_repo()).contains(&4));
    // A destination an older tvault made and still uses: version 3.
    let dst = destination();
    let path = dst.repo.join("config");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["version"] = Value::from(3);
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    copy(&src, &dst.repo, &[]);
    let password = || Ok(TO_PASSWORD.as_bytes().to_vec());
    let repo = tvault_core::repo::Repository::open_local(&dst.repo, Some(&password)).unwrap();
    assert_eq!(repo.config().version, 3);
    let methods = crate::testenv::delta_methods(&repo);
    assert!(methods.iter().all(|&m| m <= 3), "{methods:?}");
    let copies = snapshots_at(&dst);
    assert_restores_at(&dst, &text(&copies[2], "id"), &sources_manifest(&[&dir]));
    verify_clean(&dst);
}

#[test]
fn copy_of_a_finetune_series_stays_as_small_as_the_source() {
    let src = TestEnv::with_repo();
    let dir = src.root.join("src/ckpt");
    let mut last = Manifest::new();
    for step in 0..4 {
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        src.checkpoint("src/ckpt", Scenario::Finetune, 2 << 20, 7, step);
        last = sources_manifest(&[&dir]);
        src.backup(&[&dir], &[]);
    }
    let dst = destination();
    let r = copy(&src, &dst.repo, &[]);
    assert_eq!(statuses(&r).len(), 4, "{r:#}");
    let stats = |run: Run| run.expect_code(0).json();
    let a = stats(src.tvault(["--json", "stats"]));
    let b = stats(at(&dst, args!["--json", "stats"]));
    let (sa, sb) = (num(&a, "stored_bytes"), num(&b, "stored_bytes"));
    eprintln!("stored: source {sa}, copy {sb}");
    assert!(sb * 100 <= sa * 115, "source {sa} bytes, copy {sb}: {b:#}");
    assert_eq!(b["by_encoding"]["xor-delta"], a["by_encoding"]["xor-delta"]);
    let copies = snapshots_at(&dst);
    assert_restores_at(&dst, &text(&copies[3], "id"), &last);
    verify_clean(&dst);
}

#[test]
fn copy_stopped_at_any_write_step_leaves_only_restorable_snapshots_and_the_rerun_completes() {
    let src = TestEnv::with_repo();
    for i in 0..4 {
        src.write(format!("src/data/f{i}"), &random_bytes(40 << 10, 100 + i));
    }
    let dir = src.src.join("data");
    let v0 = sources_manifest(&[&dir]);
    src.backup(&[&dir], &[]);
    src.write("src/data/f0", &random_bytes(40 << 10, 99));
    let v1 = sources_manifest(&[&dir]);
    src.backup(&[&dir], &[]);
    let versions = [v0, v1];
    let dst = destination();
    dst.set_pack_size(64 << 10);
    let saved = dst.save_repo();

    for n in 1..200 {
        dst.reset_repo(&saved);
        let mut cmd = copy_cmd(&src, &dst.repo, &[]);
        cmd.env("TVAULT_CRASH_AFTER_WRITES", n.to_string());
        let run = src.run_command(cmd);
        let completed = run.code() == Some(0);
        // Whatever is visible is restorable (structure here; data read below, after the
        // rerun), and the rerun completes the copy.
        // (Every third step, to keep the test short.)
        at(&dst, args!["verify"]).expect_code(0);
        if !completed && n % 3 != 0 {
            continue;
        }
        if !completed {
            let r = copy(&src, &dst.repo, &[]);
            assert_eq!(num(&r, "copied") + num(&r, "skipped"), 2, "{r:#}");
        }
        let copies = snapshots_at(&dst);
        assert_eq!(copies.len(), 2, "after write step {n}");
        verify_clean(&dst);
        for (c, expected) in copies.iter().zip(&versions) {
            assert_restores_at(&dst, &text(c, "id"), expected);
        }
        if completed {
            eprintln!("copy completed with the hook at write step {n}");
            assert!(n > 6, "completed at write step {n}: did the hook fire?");
            return;
        }
    }
    panic!("copy never completed");
}
