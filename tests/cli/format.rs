//! The repository format is a promise to users: a repository written by an earlier tvault
//! keeps opening, verifying and restoring. `tests/fixtures/repo-v1` was written by tvault 0.1
//! (format version 1) and is never regenerated; if this test fails, a change broke old
//! repositories (bump the format version and migrate or refuse them explicitly instead).
//!
//! The tree it holds (`fixture/`): `notes.txt` (mode 0640), `ramp.bin` (300 000 compressible
//! bytes: zstd blobs), `noise.bin` (200 000 xorshift bytes: raw blobs), `caf\xe9.txt` (a
//! Latin-1, non-UTF-8 name), `link -> notes.txt`, and an empty directory `empty_dir`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::testenv::{args, copy_dir, num, text, TestEnv};

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
