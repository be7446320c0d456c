//! `tvault drill` (a measured restore rehearsal: report, JSON, metrics, scratch folder, exit
//! codes for damage and missed objectives) and the resumable restore (`restore --overwrite`
//! run again keeps files already whole and identical, checked chunk by chunk).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tvault_workload::Scenario;

use crate::locks::{spawn_paused, wait_paused};
use crate::testenv::{
    args, assert_manifest_eq, flip_byte, manifest, num, set_mode, set_mtime, sources_manifest,
    text, Entry, TestEnv,
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
