//! The repository format is a promise to users: a repository written by an earlier tvault
//! keeps opening, verifying and restoring. `tests/fixtures/repo-v1` was written by tvault 0.1
//! (format version 1) and is never regenerated; if this test fails, a change broke old
//! repositories (bump the format version and migrate or refuse them explicitly instead).
//!
//! `tests/fixtures/repo-v3` was written by the tvault of 2026-12-05 (format version 3,
//! encrypted with the tests' password): steps 0, 1 and 2 of `tvault-gen finetune fixture
//! --size 300KiB --seed 5`, each backed up with `--host fixture-host --tag fixture`, so it
//! holds chains of sparse-run deltas (method 3).
//!
//! The tree the version-1 fixture holds (`fixture/`): `notes.txt` (mode 0640), `ramp.bin` (300 000 compressible
//! bytes: zstd blobs), `noise.bin` (200 000 xorshift bytes: raw blobs), `caf\xe9.txt` (a
//! Latin-1, non-UTF-8 name), `link -> notes.txt`, and an empty directory `empty_dir`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::testenv::{args, copy_dir, delta_methods, num, sources_manifest, text, TestEnv};
use tvault_workload::Scenario;

const FIXTURE_SNAPSHOT: &str = "edf764eef2b30b91942c4587751c22f326371bb23fb0a4993ac180b96bf270ae";

fn ramp() -> Vec<u8> {
    (0..300_000u64)
        .map(|i| ((i * 31 + i / 1000) % 251) as u8)
        .collect()
}

fn noise() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(200_008);
    while out.len() < 200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(200_000);
    out
}

/// A copy of the fixture as the repository of `env` (commands write lock files, and the
/// fixture must stay as it was committed).
fn copy_v1_fixture(env: &TestEnv) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1");
    copy_dir(&fixture, &env.repo);
}

#[test]
fn format_v1_repository_still_opens_verifies_and_restores() {
    let env = TestEnv::new();
    copy_v1_fixture(&env);

    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(text(&snaps[0], "id"), FIXTURE_SNAPSHOT);
    assert_eq!(text(&snaps[0], "host"), "fixture-host");
    assert_eq!(snaps[0]["tags"], serde_json::json!(["fixture"]));
    assert_eq!(num(&snaps[0], "files"), 4);

    let report = env
        .tvault(args!["--json", "verify", "--read-data"])
        .expect_code(0)
        .json();
    assert_eq!(report["clean"], true, "{report:#}");
    assert_eq!(num(&report, "blobs_read"), 5, "{report:#}");

    let out = env.restore(&FIXTURE_SNAPSHOT[..8]);
    let dir = out.join("fixture");
    assert_eq!(
        fs::read(dir.join("notes.txt")).unwrap(),
        b"tvault repository format v1 fixture\n"
    );
    let mode = fs::metadata(dir.join("notes.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
    assert_eq!(fs::read(dir.join("ramp.bin")).unwrap(), ramp());
    assert_eq!(fs::read(dir.join("noise.bin")).unwrap(), noise());
    let latin1 = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    assert_eq!(fs::read(latin1).unwrap(), b"latin-1 name\n");
    assert_eq!(
        fs::read_link(dir.join("link")).unwrap(),
        Path::new("notes.txt")
    );
    assert!(dir.join("empty_dir").is_dir());
    assert_eq!(fs::read_dir(dir.join("empty_dir")).unwrap().count(), 0);
}

/// A version-1 repository stays version 1: new backups into it use only the encodings and the
/// chunking that version defines, so the tvault that wrote it can still read everything.
#[test]
fn backups_into_a_v1_repository_write_only_v1_encodings() {
    let env = TestEnv::new();
    copy_v1_fixture(&env);
    let ckpt = env.checkpoint("src/ckpt", tvault_workload::Scenario::Single, 2 << 20, 9, 0);
    let report = env.backup(&[&ckpt], &[]);
    assert!(num(&report, "bytes_added") > 0);

    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(
        config["version"], 1,
        "the config was not upgraded behind the user's back"
    );
    let repo = env.open_repo();
    let mut encodings = std::collections::BTreeSet::new();
    for file in repo.read_index_files().unwrap() {
        for (_, entries) in file.packs.unwrap() {
            encodings.extend(entries.iter().map(|e| e.encoding as u8));
        }
    }
    assert!(
        encodings.iter().all(|&e| e <= 1),
        "v1 defines encodings 0 and 1 only: {encodings:?}"
    );

    let id = text(&report, "id");
    env.assert_restores(&id, &crate::testenv::sources_manifest(&[&ckpt]));
    env.tvault(args!["verify", "--read-data"]).expect_code(0);
}

const V3_SIZE: u64 = 300 * 1024;

/// Restores snapshot `id` and compares its files' bytes with `expected`'s (the fixture's
/// mtimes are those of the day it was written).
fn assert_restores_bytes(env: &TestEnv, id: &str, expected: &Path) {
    let target = env.restore(id);
    for entry in fs::read_dir(expected).unwrap() {
        let path = entry.unwrap().path();
        let got = target.join("fixture").join(path.file_name().unwrap());
        assert!(
            fs::read(&got).unwrap() == fs::read(&path).unwrap(),
            "{got:?} differs"
        );
    }
    fs::remove_dir_all(&target).unwrap();
}

#[test]
fn format_v3_repository_restores_its_delta_chains_and_upgrades_to_v4_in_place() {
    let env = TestEnv::new();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v3"),
        &env.repo,
    );
    let step = |k: u32, rel: &str| env.checkpoint(rel, Scenario::Finetune, V3_SIZE, 5, k);
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 3);
    for (k, snap) in snaps.iter().enumerate() {
        let expected = step(k as u32, &format!("expected{k}/fixture"));
        assert_restores_bytes(&env, &text(snap, "id"), &expected);
    }
    let methods = delta_methods(&env.open_repo());
    assert!(
        !methods.is_empty() && methods.iter().all(|&m| m == 3),
        "{methods:?}"
    );

    // Until it is upgraded, a backup writes what version 3 defines (older builds read on).
    let ckpt = step(3, "src/fixture");
    env.backup(&[&ckpt], &[]);
    let methods = delta_methods(&env.open_repo());
    assert!(methods.iter().all(|&m| m <= 3), "{methods:?}");

    let up = env.tvault(args!["--json", "upgrade"]).expect_code(0).json();
    assert_eq!((num(&up, "from"), num(&up, "to")), (3, 4));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["version"], 4);
    assert_eq!(config["encryption"], "xchacha20poly1305", "{config}");
    let again = env.tvault(args!["--json", "upgrade"]).expect_code(0).json();
    assert_eq!((num(&again, "from"), num(&again, "to")), (4, 4));

    // The next step's deltas go on the version-3 chains, element by element.
    fs::remove_dir_all(&ckpt).unwrap();
    let ckpt = step(4, "src/fixture");
    let report = env.backup(&[&ckpt], &[]);
    let methods = delta_methods(&env.open_repo());
    assert!(methods.contains(&4) && methods.contains(&3), "{methods:?}");
    env.assert_restores(&text(&report, "id"), &sources_manifest(&[&ckpt]));
    for (k, snap) in snaps.iter().enumerate() {
        let expected = step(k as u32, &format!("again{k}/fixture"));
        assert_restores_bytes(&env, &text(snap, "id"), &expected);
    }
    env.tvault(args!["verify", "--read-data"]).expect_code(0);
}

#[test]
fn a_version_1_repository_is_not_upgraded_in_place_and_the_error_says_how_to_move() {
    let env = TestEnv::new();
    copy_v1_fixture(&env);
    let before = env.repo_state();
    env.tvault(args!["upgrade"]).expect_code(1).stderr_has(&[
        "version-1 repository",
        "tvault init",
        "tvault copy",
    ]);
    assert_eq!(env.repo_state(), before, "a refused upgrade wrote nothing");
}
