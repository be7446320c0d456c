//! `tvault drill` (a measured restore rehearsal: report, JSON, metrics, scratch folder, exit
//! codes for damage and missed objectives) and the resumable restore (`restore --overwrite`
//! run again keeps files already whole and identical, checked chunk by chunk).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{json, Value};
use tvault_workload::Scenario;

use crate::damage::two_packs;
use crate::locks::{spawn_paused, wait_paused};
use crate::testenv::{
    args, assert_manifest_eq, flip_byte, manifest, num, random_bytes, set_mode, set_mtime,
    sources_manifest, text, Entry, TestEnv,
};

/// A repository with one snapshot of `src/ckpt` (a model, a shard and a small JSON file);
/// returns the env, the checkpoint folder and the snapshot ID.
fn one_snapshot(env: TestEnv) -> (TestEnv, std::path::PathBuf, String) {
    let ckpt = env.checkpoint("src/ckpt/model", Scenario::Single, 384 << 10, 81, 0);
    let ckpt = ckpt.parent().unwrap().to_path_buf();
    env.checkpoint("src/ckpt/shard", Scenario::Single, 128 << 10, 82, 0);
    env.write("src/ckpt/trainer_state.json", b"{\"step\": 1000}");
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    (env, ckpt, id)
}

/// The file sizes of everything below `dir`, summed.
fn bytes_below(dir: &Path) -> u64 {
    crate::testenv::files_below(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// The numbers of files and directories of a backup of `ckpt` (its own folder included).
fn counts(ckpt: &Path) -> (u64, u64) {
    let m = sources_manifest(&[ckpt]);
    let files = m
        .values()
        .filter(|e| matches!(e, Entry::File { .. }))
        .count();
    let dirs = m
        .values()
        .filter(|e| matches!(e, Entry::Dir { .. }))
        .count();
    (files as u64, dirs as u64)
}

/// `name{labels} value` of a metrics file, as a number.
fn gauge(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn drill_restores_the_newest_complete_snapshot_into_a_hashing_sink_and_reports_rto_and_rpo() {
    let (env, ckpt, first) = one_snapshot(TestEnv::with_repo());
    let size = bytes_below(&ckpt);
    let (files, dirs) = counts(&ckpt);
    // A newer snapshot that is incomplete is not the one drilled, nor the RPO's.
    let newer = text(&env.backup(&[&ckpt], &[]), "id");
    env.rewrite_snapshot(&newer, |m| {
        m["problems"] = json!(["cannot read /x/ckpt/optimizer.pt: Permission denied"])
    });

    let metrics = env.path("drill.prom");
    let run = env
        .tvault(args!["--json", "drill", "--metrics-file", &metrics])
        .expect_code(0);
    let r = run.json();
    assert_eq!(text(&r, "id"), first, "{run}");
    assert_eq!(r["latest"]["id"], json!(first));
    assert_eq!(r["disk_writes"], false);
    assert_eq!(r["scratch"], Value::Null);
    assert_eq!(num(&r, "files"), files, "{r:#}");
    assert_eq!(num(&r, "dirs"), dirs, "{r:#}");
    assert_eq!(num(&r, "bytes"), size);
    assert_eq!(num(&r, "files_checked"), files);
    assert_eq!(num(&r, "bytes_checked"), size);
    assert!(r["restore_seconds"].as_f64().unwrap() > 0.0, "{r:#}");
    let throughput = r["throughput_bytes_per_second"].as_f64().unwrap();
    let expected = size as f64 / r["restore_seconds"].as_f64().unwrap();
    assert!((throughput - expected).abs() < 1.0, "{r:#}");
    assert_eq!(r["rpo"]["id"], json!(first));
    let age = r["rpo"]["age_seconds"].as_f64().unwrap();
    assert!((0.0..120.0).contains(&age), "{r:#}");
    assert_eq!(r["damaged"], json!([]));
    assert_eq!(r["errors"], json!([]));
    assert_eq!(r["rto_exceeded"], false);
    assert_eq!(r["rpo_exceeded"], false);

    let m = fs::read_to_string(&metrics).unwrap();
    assert!(m.contains("# TYPE tvault_drill_rto_seconds gauge\n"), "{m}");
    assert!(
        m.contains("tvault_drill_success{command=\"drill\",repository="),
        "{m}"
    );
    assert_eq!(gauge(&m, "tvault_drill_success"), 1.0);
    assert_eq!(gauge(&m, "tvault_last_run_success"), 1.0);
    assert_eq!(gauge(&m, "tvault_drill_disk_writes"), 0.0);
    assert_eq!(gauge(&m, "tvault_drill_bytes_checked"), size as f64);
    assert!(gauge(&m, "tvault_drill_rto_seconds") > 0.0);
    assert!(gauge(&m, "tvault_drill_throughput_bytes_per_second") > 0.0);
    let rpo = gauge(&m, "tvault_drill_rpo_seconds");
    assert!((0.0..120.0).contains(&rpo), "{m}");
    assert!(gauge(&m, "tvault_last_run_timestamp_seconds") > 1.7e9);

    // The human report says what the time leaves out.
    let run = env.tvault(["drill"]).expect_code(0);
    assert!(run.stdout.contains("hashing sink"), "{run}");
    assert!(run.stdout.contains("leaves them out"), "{run}");
    assert!(run.stdout.contains("RTO "), "{run}");
    assert!(run.stdout.contains("RPO "), "{run}");
    assert!(run.stdout.contains(&first[..8]), "{run}");
    // Quiet prints nothing on success (cron mails what is printed).
    let run = env.tvault(["--quiet", "drill"]).expect_code(0);
    assert_eq!(run.stdout, "", "{run}");
    assert_eq!(run.stderr, "", "{run}");
}

#[test]
fn drill_with_target_restores_to_disk_reads_back_and_removes_its_scratch_folder() {
    let (env, ckpt, id) = one_snapshot(TestEnv::with_repo());
    let size = bytes_below(&ckpt);
    // A read-only directory in the snapshot must not keep the scratch folder from going.
    set_mode(&ckpt.join("shard"), 0o555);
    let id2 = text(&env.backup(&[&ckpt], &[]), "id");
    set_mode(&ckpt.join("shard"), 0o755);

    let dir = env.path("drills");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("unrelated.txt"), b"stays").unwrap();
    let run = env
        .tvault(args!["--json", "drill", &id2[..10], "--target", &dir])
        .expect_code(0);
    let r = run.json();
    assert_eq!(text(&r, "id"), id2);
    assert_eq!(r["disk_writes"], true);
    let scratch = text(&r, "scratch");
    assert!(Path::new(&scratch).starts_with(&dir), "{r:#}");
    assert_eq!(num(&r, "files_checked"), counts(&ckpt).0, "{r:#}");
    assert_eq!(num(&r, "bytes_checked"), size);
    assert!(r["restore_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["check_seconds"].as_f64().is_some());
    assert_eq!(
        crate::testenv::names_in(&dir),
        vec!["unrelated.txt".to_string()],
        "the scratch folder is removed, nothing else"
    );

    let run = env
        .tvault(args!["drill", &id[..8], "--target", &dir])
        .expect_code(0);
    assert!(run.stdout.contains("to disk in"), "{run}");
    assert!(!run.stdout.contains("hashing sink"), "{run}");
    assert_eq!(crate::testenv::names_in(&dir).len(), 1);

    env.tvault(args!["drill", "--target", env.path("nowhere")])
        .expect_code(1)
        .stderr_has(&["nowhere"]);
}

#[test]
fn drill_on_a_damaged_pack_exits_4_naming_the_file_chunk_and_pack() {
    let (env, snaps, pack, offset, len) = two_packs();
    flip_byte(&pack, offset + len / 2);
    let pack_name = pack.file_name().unwrap().to_string_lossy().to_string();
    let damaged = "ckpt/model_b/model.safetensors";

    let run = env.tvault(args!["--json", "drill"]).expect_code(4);
    run.stderr_has(&["DAMAGE", damaged, &pack_name]);
    let r = run.json();
    let list = r["damaged"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{r:#}");
    let msg = list[0].as_str().unwrap();
    assert!(msg.starts_with(damaged) && msg.contains("chunk"), "{msg}");
    assert_eq!(num(&r, "files_checked"), num(&r, "files"));

    // Restoring to disk: the same, and the scratch folder is gone.
    let dir = env.path("drills");
    fs::create_dir(&dir).unwrap();
    let metrics = env.path("drill.prom");
    env.tvault(args!["drill", "--target", &dir, "--metrics-file", &metrics])
        .expect_code(4)
        .stderr_has(&["DAMAGE", damaged, &pack_name]);
    assert!(crate::testenv::names_in(&dir).is_empty());
    let m = fs::read_to_string(&metrics).unwrap();
    assert_eq!(gauge(&m, "tvault_drill_success"), 0.0);
    assert_eq!(gauge(&m, "tvault_drill_damaged_files"), 1.0);

    // The first snapshot does not need the damaged pack.
    env.tvault(args!["drill", &snaps[0].0]).expect_code(0);
}

#[test]
fn drill_of_a_snapshot_whose_tree_pack_is_lost_exits_4_naming_the_pack() {
    let (env, snaps, pack, _, _) = two_packs();
    // The second snapshot's tree and model_b are in this pack.
    fs::remove_file(&pack).unwrap();
    let pack_name = pack.file_name().unwrap().to_string_lossy().to_string();
    let dir = env.path("drills");
    fs::create_dir(&dir).unwrap();
    for target in [None, Some(&dir)] {
        let mut a = args!["--json", "drill", &snaps[1].0];
        if let Some(d) = target {
            a.extend(args!["--target", d]);
        }
        let run = env.tvault(a).expect_code(4);
        run.stderr_has(&["DAMAGE", &snaps[1].0[..8], &pack_name]);
        assert_eq!(run.json()["damaged"].as_array().unwrap().len(), 1, "{run}");
    }
    assert!(crate::testenv::names_in(&dir).is_empty());
    env.tvault(args!["drill", &snaps[0].0]).expect_code(0);
}

#[test]
fn drill_max_rpo_exits_5_when_the_newest_complete_snapshot_is_too_old() {
    let (env, _, id) = one_snapshot(TestEnv::with_repo());
    let thirty_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(30)).to_rfc3339();
    let old = env.rewrite_snapshot(&id, |m| m["time"] = json!(thirty_hours_ago));
    let metrics = env.path("drill.prom");
    let run = env
        .tvault(args![
            "--json",
            "drill",
            "--max-rpo",
            "26h",
            "--metrics-file",
            &metrics
        ])
        .expect_code(5);
    run.stderr_has(&[
        "STALE",
        "RPO exceeded",
        &old[..8],
        "1 day 6 hours",
        "limit 1 day 2 hours",
    ]);
    let r = run.json();
    assert_eq!(r["rpo_exceeded"], true);
    assert_eq!(r["max_rpo_seconds"], json!(26.0 * 3600.0));
    let age = r["rpo"]["age_seconds"].as_f64().unwrap();
    assert!(age >= 30.0 * 3600.0, "{r:#}");
    let m = fs::read_to_string(&metrics).unwrap();
    assert_eq!(gauge(&m, "tvault_drill_success"), 0.0);
    assert!(gauge(&m, "tvault_drill_rpo_seconds") >= 30.0 * 3600.0);

    env.tvault(["drill", "--max-rpo", "2d"]).expect_code(0);
    // A fresh snapshot meets it again.
    env.backup(&[&env.src.join("ckpt")], &[]);
    env.tvault(["drill", "--max-rpo", "26h"]).expect_code(0);
}

#[test]
fn drill_max_rto_exits_5_when_the_restore_takes_longer() {
    let (env, _, _) = one_snapshot(TestEnv::with_repo());
    let run = env
        .tvault(["--json", "drill", "--max-rto", "0s"])
        .expect_code(5);
    run.stderr_has(&["RTO EXCEEDED", "limit 0 seconds", "without disk writes"]);
    assert_eq!(run.json()["rto_exceeded"], true);
    env.tvault(["drill", "--max-rto", "1h", "--max-rpo", "1h"])
        .expect_code(0);
}

#[test]
fn drill_of_an_empty_repository_says_there_is_nothing_to_drill() {
    let env = TestEnv::with_repo();
    env.tvault(["drill"])
        .expect_code(1)
        .stderr_has(&["no snapshots", "tvault backup"]);
}

// ---------------------------------------------------------------------------------------------
// Resumable restore

/// Inode and mtime of every file below `dir`.
fn inodes(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    crate::testenv::files_below(dir)
        .into_iter()
        .map(|p| {
            let ino = fs::metadata(&p).unwrap().ino();
            (p, ino)
        })
        .collect()
}

#[test]
fn restore_again_keeps_identical_files_and_restores_a_same_size_file_with_one_byte_changed() {
    let (env, ckpt, id) = one_snapshot(TestEnv::with_repo());
    let expected = sources_manifest(&[&ckpt]);
    let target = env.restore(&id);
    let before = inodes(&target);

    // One byte changed, same size and mtime: only a chunk-by-chunk check can see it.
    let changed = target.join("ckpt/model/model.safetensors");
    let mtime = fs::metadata(&changed).unwrap().mtime();
    flip_byte(&changed, 1000);
    set_mtime(&changed, mtime, 0);
    // Metadata off on a kept file is put right.
    let kept = target.join("ckpt/trainer_state.json");
    set_mode(&kept, 0o600);
    set_mtime(&kept, 1_000_000, 0);

    let run = env
        .tvault(args!["--json", "restore", &id, &target, "--overwrite"])
        .expect_code(0);
    let r = run.json();
    let changed_size = fs::metadata(&changed).unwrap().len();
    assert_eq!(num(&r, "files"), 1, "{r:#}");
    assert_eq!(num(&r, "bytes_written"), changed_size, "{r:#}");
    let files = counts(&ckpt).0;
    assert_eq!(num(&r, "files_kept"), files - 1, "{r:#}");
    assert_eq!(
        num(&r, "bytes_kept"),
        bytes_below(&ckpt) - changed_size,
        "{r:#}"
    );
    assert_manifest_eq(&expected, &manifest(&target), "restore over a restore");
    for (path, ino) in before {
        let now = fs::metadata(&path).unwrap().ino();
        if path == changed {
            assert_ne!(now, ino, "the changed file is restored anew");
        } else {
            assert_eq!(now, ino, "{}: rewritten though identical", path.display());
        }
    }
    let human = env
        .tvault(args!["restore", &id, &target, "--overwrite"])
        .expect_code(0);
    assert!(
        human.stdout.contains(&format!("kept {files} files")),
        "{human}"
    );
}

#[test]
fn a_killed_restore_run_again_restores_only_the_files_it_had_not_finished() {
    let (env, ckpt, id) = one_snapshot(TestEnv::with_repo());
    let expected = sources_manifest(&[&ckpt]);
    let target = env.fresh_path("restore");

    // Stopped after its first file, then killed.
    let mut child = spawn_paused(&env, "restore-file", args!["restore", &id, &target]);
    wait_paused(&env, "restore-file", &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let done: Vec<_> = crate::testenv::files_below(&target)
        .into_iter()
        .filter(|p| {
            !p.strip_prefix(&target)
                .unwrap()
                .to_string_lossy()
                .starts_with(".tvault-restore-")
        })
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    let first = done[0].clone();
    let first_ino = fs::metadata(&first).unwrap().ino();
    let first_size = fs::metadata(&first).unwrap().len();
    // A partial file left in the staging folder, as a kill in the middle of a file leaves it.
    let staging = fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tvault-restore-")
        })
        .expect("the killed restore's staging folder");
    fs::write(staging.join("1"), b"half a file").unwrap();
    // And one of a killed restore of another snapshot.
    let other = target.join(".tvault-restore-0123abcd");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("0"), b"another half").unwrap();

    let run = env
        .tvault(args!["--json", "restore", &id, &target, "--overwrite"])
        .expect_code(0);
    let r = run.json();
    assert_eq!(num(&r, "files_kept"), 1, "{r:#}");
    assert_eq!(num(&r, "bytes_kept"), first_size, "{r:#}");
    assert_eq!(num(&r, "files"), counts(&ckpt).0 - 1, "{r:#}");
    assert_eq!(
        num(&r, "bytes_written"),
        bytes_below(&ckpt) - first_size,
        "{r:#}"
    );
    assert_eq!(
        fs::metadata(&first).unwrap().ino(),
        first_ino,
        "the finished file was rewritten"
    );
    // Byte-identical, metadata included, and no staging leftovers.
    assert_manifest_eq(&expected, &manifest(&target), "resumed restore");
}

/// A snapshot of one file of random bytes with an all-zero stretch in the middle (holes when
/// restored); returns the env, the folder backed up and the snapshot ID.
fn one_big_file() -> (TestEnv, std::path::PathBuf, String) {
    let env = TestEnv::with_repo();
    let mut data = random_bytes(2 << 20, 91);
    // Longer than the largest chunk: some chunks are all zeros.
    data.splice(1 << 20..1 << 20, vec![0u8; 6 << 20]);
    let file = env.write("src/big/weights.bin", &data);
    let dir = file.parent().unwrap().to_path_buf();
    let id = text(&env.backup(&[&dir], &[]), "id");
    (env, dir, id)
}

#[test]
fn a_restore_killed_inside_a_file_resumes_it_from_the_chunks_already_written() {
    let (env, dir, id) = one_big_file();
    let expected = sources_manifest(&[&dir]);
    let size = bytes_below(&dir);
    let target = env.fresh_path("restore");

    // Killed after its first chunk is written: the file is only in the staging folder.
    let mut child = spawn_paused(&env, "restore-chunk", args!["restore", &id, &target]);
    wait_paused(&env, "restore-chunk", &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!target.join("big/weights.bin").exists());

    let run = env
        .tvault(args!["--json", "restore", &id, &target, "--overwrite"])
        .expect_code(0);
    let r = run.json();
    assert_eq!(num(&r, "files"), 1, "{r:#}");
    assert_eq!(num(&r, "bytes_written"), size, "{r:#}");
    let resumed = num(&r, "bytes_resumed");
    assert!(resumed > 0 && resumed < size, "{r:#}");
    assert_manifest_eq(&expected, &manifest(&target), "resumed file");
    assert!(
        !target
            .join(format!(".tvault-restore-{}", &id[..8]))
            .exists(),
        "the staging folder is removed"
    );
    let human = env
        .tvault(args!["restore", &id, &target, "--overwrite"])
        .expect_code(0);
    assert!(human.stdout.contains("kept 1 file"), "{human}");
}

#[test]
fn a_leftover_in_the_staging_folder_is_trusted_only_where_it_hashes_right_zeros_included() {
    let (env, dir, id) = one_big_file();
    let expected = sources_manifest(&[&dir]);
    let size = bytes_below(&dir);
    // A leftover with the right bytes except where the file has its zeros (a restore with other
    // --include paths or a power cut could leave that): those chunks are read and their zeros
    // written, not left as holes over the wrong bytes.
    let mut leftover = fs::read(dir.join("weights.bin")).unwrap();
    leftover[1 << 20..7 << 20].copy_from_slice(&random_bytes(6 << 20, 92));
    let target = env.fresh_path("restore");
    let staging = target.join(format!(".tvault-restore-{}", &id[..8]));
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("0"), &leftover).unwrap();

    let run = env
        .tvault(args!["--json", "restore", &id, &target, "--overwrite"])
        .expect_code(0);
    let r = run.json();
    let resumed = num(&r, "bytes_resumed");
    assert!(resumed > 0 && resumed <= size - (6 << 20), "{r:#}");
    assert_manifest_eq(
        &expected,
        &manifest(&target),
        "restore over a wrong leftover",
    );
}
