//! Encryption at rest, through the binary (issue 12): nothing readable in the repository,
//! every kind of tampering detected and named (never a wrong byte restored), keys and
//! passwords, and a wrong password that fails before anything is written.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tvault_workload::Scenario;

use crate::testenv::{
    args, files_below, flip_byte, hostname, safetensors_tensors, text, Run, TestEnv, PASSWORD,
};

/// A marker string in the backed-up data, in a file of a distinctive path.
const MARKER: &[u8] = b"tvault-plaintext-marker-7d1e";
const SECRET_DIR: &str = "secret-project-dir";
/// The host name the backups record (this machine's may be too short to search for).
const HOST: &str = "trainer-host-5b3e";

/// An encrypted repository (the default) with two snapshots of a checkpoint and a notes file
/// holding [`MARKER`]; the checkpoint's directory and the snapshot IDs.
fn encrypted_repo() -> (TestEnv, PathBuf, Vec<String>) {
    encrypted_repo_in(TestEnv::with_repo())
}

/// [`encrypted_repo`] in `env`'s repository (e.g. one with small packs).
fn encrypted_repo_in(env: TestEnv) -> (TestEnv, PathBuf, Vec<String>) {
    let ckpt = env.checkpoint(
        format!("src/{SECRET_DIR}/ckpt"),
        Scenario::Single,
        512 << 10,
        7,
        0,
    );
    let dir = ckpt.parent().unwrap().to_path_buf();
    env.write(format!("src/{SECRET_DIR}/notes.txt"), &MARKER.repeat(1000));
    let s1 = text(&env.backup(&[&dir], &["--host", HOST]), "id");
    env.checkpoint(
        format!("src/{SECRET_DIR}/ckpt"),
        Scenario::Single,
        512 << 10,
        7,
        1,
    );
    let s2 = text(&env.backup(&[&dir], &["--host", HOST]), "id");
    (env, dir, vec![s1, s2])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `tvault` with the environment changed by `edit` (e.g. another password).
fn run_with(
    env: &TestEnv,
    args: Vec<OsString>,
    edit: impl FnOnce(&mut std::process::Command),
) -> Run {
    let mut cmd = env.repo_command(args);
    edit(&mut cmd);
    env.run_command(cmd)
}

fn with_password(env: &TestEnv, password: &str, args: Vec<OsString>) -> Run {
    run_with(env, args, |c| {
        c.env("TVAULT_PASSWORD", password);
    })
}

#[test]
fn the_repository_and_its_cache_hold_no_tensor_name_path_host_or_data_in_the_clear() {
    let (env, dir, snaps) = encrypted_repo();
    let config: Value =
        serde_json::from_slice(&fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["version"], 4);
    assert_eq!(config["encryption"], "xchacha20poly1305");
    let tensor = safetensors_tensors(&dir.join("ckpt/model.safetensors"))
        .into_iter()
        .map(|t| t.name)
        .max_by_key(|n| n.len())
        .unwrap();
    let host = hostname();
    let mut needles: Vec<&[u8]> = vec![
        tensor.as_bytes(),
        SECRET_DIR.as_bytes(),
        b"model.safetensors",
        MARKER,
        HOST.as_bytes(),
    ];
    // This machine's name too (locks hold it), unless too short to tell from chance.
    if host.len() >= 6 {
        needles.push(host.as_bytes());
    }
    // The cache directory (used for S3 repositories) too, wherever it is.
    let mut files = files_below(&env.repo);
    files.extend(files_below(&env.root.join("cache")));
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let bytes = fs::read(file).unwrap();
        for n in &needles {
            assert!(
                !contains(&bytes, n),
                "{} holds {:?} in the clear",
                file.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    // And it all reads back: the notes and the checkpoint, byte for byte.
    let out = env.restore(&snaps[1]);
    let notes = out.join(SECRET_DIR).join("notes.txt");
    assert_eq!(fs::read(notes).unwrap(), MARKER.repeat(1000));
    env.tvault(["verify", "--read-data"]).expect_code(0);
}

/// What verify --read-data reports: (kind, file) of each problem.
fn problems(env: &TestEnv) -> Vec<(String, String, String)> {
    let run = env
        .tvault(["--json", "verify", "--read-data"])
        .expect_code(4);
    run.json()["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (text(p, "kind"), text(p, "file"), text(p, "message")))
        .collect()
}

fn objects(env: &TestEnv, folder: &str) -> Vec<PathBuf> {
    let mut all = files_below(&env.repo.join(folder));
    all.sort();
    all
}

fn key_of(env: &TestEnv, path: &Path) -> String {
    path.strip_prefix(&env.repo).unwrap().display().to_string()
}

#[test]
fn a_flipped_byte_in_any_object_is_an_authentication_error_that_names_it() {
    // Each kind in a fresh repository: the damage of one must not hide another.
    for folder in ["snapshots", "index", "data"] {
        let (env, dir, snaps) = encrypted_repo();
        let victim = objects(&env, folder)[0].clone();
        let len = fs::metadata(&victim).unwrap().len();
        flip_byte(&victim, len / 2);
        let found = problems(&env);
        let key = key_of(&env, &victim);
        assert!(
            found.iter().any(|(_, file, _)| *file == key),
            "{folder}: {key} not named in {found:?}"
        );
        if folder == "data" {
            // A blob that does not authenticate is never restored: its file fails, by name,
            // and every file that is written is right.
            let target = env.fresh_path("restore");
            let run = env.tvault(args!["restore", &snaps[1], &target]);
            if run.code() != Some(0) {
                assert!(
                    run.stderr.contains("damaged") || run.stderr.contains("authenticate"),
                    "{run}"
                );
            }
            restored_files_are_right(&target, &dir);
        }
    }
}

#[test]
fn truncated_swapped_and_foreign_objects_are_detected_and_named() {
    let (env, _, snaps) = encrypted_repo();
    // Truncate an index file: named.
    let index = objects(&env, "index")[0].clone();
    let bytes = fs::read(&index).unwrap();
    fs::write(&index, &bytes[..bytes.len() - 5]).unwrap();
    let found = problems(&env);
    assert!(
        found
            .iter()
            .any(|(k, f, _)| k == "corrupt_index" && *f == key_of(&env, &index)),
        "{found:?}"
    );
    fs::write(&index, &bytes).unwrap();
    env.tvault(["verify"]).expect_code(0);

    // Swap the two snapshot manifests: neither authenticates under the other's name.
    let (a, b) = (
        env.repo.join("snapshots").join(&snaps[0]),
        env.repo.join("snapshots").join(&snaps[1]),
    );
    let (ba, bb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    fs::write(&a, &bb).unwrap();
    fs::write(&b, &ba).unwrap();
    let found = problems(&env);
    for s in &snaps {
        let key = format!("snapshots/{s}");
        assert!(
            found.iter().any(|(k, f, m)| k == "corrupt_snapshot"
                && *f == key
                && m.contains("authenticate")),
            "{key} not named in {found:?}"
        );
    }
    let target = env.fresh_path("restore");
    env.tvault(args!["restore", &snaps[1], &target])
        .expect_code(1)
        .stderr_has(&[&snaps[1], "authenticate"]);
    assert!(!target.exists() || files_below(&target).is_empty());
    fs::write(&a, &ba).unwrap();
    fs::write(&b, &bb).unwrap();

    // Objects of another repository (another key) put under this one's names: a manifest
    // and an index file of the other, each in place of one of ours.
    let (other, _, other_snaps) = encrypted_repo();
    let ours = env.repo.join("snapshots").join(&snaps[0]);
    fs::copy(other.repo.join("snapshots").join(&other_snaps[0]), &ours).unwrap();
    let our_index = objects(&env, "index")[0].clone();
    fs::copy(&objects(&other, "index")[0], &our_index).unwrap();
    let found = problems(&env);
    assert!(
        found
            .iter()
            .any(|(k, f, _)| k == "corrupt_snapshot" && *f == key_of(&env, &ours)),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(k, f, _)| k == "corrupt_index" && *f == key_of(&env, &our_index)),
        "{found:?}"
    );
}

#[test]
fn a_pack_of_another_repository_is_damage_and_no_wrong_byte_is_restored() {
    let (env, dir, snaps) = encrypted_repo();
    let (other, _, _) = encrypted_repo();
    // Same data, another key: every pack of ours replaced by the other's largest one.
    let theirs = objects(&other, "data")
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    for ours in objects(&env, "data") {
        fs::copy(&theirs, &ours).unwrap();
    }
    let found = problems(&env);
    assert!(
        found
            .iter()
            .any(|(k, f, _)| k == "damaged_pack" || f.starts_with("data/")),
        "{found:?}"
    );
    let target = env.fresh_path("restore");
    let run = env.tvault(args!["--json", "restore", &snaps[1], &target]);
    assert_ne!(run.code(), Some(0), "{run}");
    restored_files_are_right(&target, &dir);
}

/// Every file restored below `target` (from the latest snapshot of `source`) equals its source.
fn restored_files_are_right(target: &Path, source: &Path) {
    if !target.exists() {
        return;
    }
    let root = target.join(source.file_name().unwrap());
    for f in files_below(target) {
        let rel = f.strip_prefix(&root).unwrap();
        let want = fs::read(source.join(rel)).unwrap();
        assert!(
            fs::read(&f).unwrap() == want,
            "{} restored wrong",
            f.display()
        );
    }
}

#[test]
fn two_keys_open_the_repository_and_passwd_retires_the_old_password() {
    let env = TestEnv::with_repo();
    env.write("src/a.txt", b"hello");
    env.backup(&[&env.src], &[]);
    run_with(&env, args!["key", "add"], |c| {
        c.env("TVAULT_NEW_PASSWORD", "second");
    })
    .expect_code(0);
    let keys = env.tvault(["--json", "key", "list"]).expect_code(0).json();
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys:#}");
    with_password(&env, "second", args!["snapshots"]).expect_code(0);
    env.tvault(["snapshots"]).expect_code(0);

    // The key in use and the last key are never removed.
    let current = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap();
    let other = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap();
    env.tvault(args!["key", "remove", &text(current, "id")[..8]])
        .expect_code(1)
        .stderr_has(&["this password opened"]);

    // passwd: the new password opens it, the old one no longer does.
    let file = env.write("new-password", b"third\n");
    env.tvault(args!["key", "passwd", "--new-password-file", &file])
        .expect_code(0);
    env.tvault(["snapshots"])
        .expect_code(6)
        .stderr_has(&["wrong password"]);
    with_password(&env, "third", args!["snapshots"]).expect_code(0);
    with_password(&env, "second", args!["key", "remove", &text(other, "id")])
        .expect_code(1)
        .stderr_has(&["this password opened"]);
    // Remove the key of "second" with "third"; then "third" is the last key.
    with_password(&env, "third", args!["key", "remove", &text(other, "id")]).expect_code(0);
    with_password(&env, "second", args!["snapshots"]).expect_code(6);
    let last = with_password(&env, "third", args!["--json", "key", "list"])
        .expect_code(0)
        .json();
    let last = text(&last[0], "id");
    let run = run_with(&env, args!["key", "remove", &last], |c| {
        c.env("TVAULT_PASSWORD", "third");
    });
    run.expect_code(1);
    assert_eq!(files_below(&env.repo.join("keys")).len(), 1);
}

#[test]
fn a_wrong_password_fails_with_its_own_code_before_any_write() {
    let (env, dir, snaps) = encrypted_repo();
    let before = env.repo_state();
    for a in [
        args!["backup", &dir],
        args!["snapshots"],
        args!["restore", &snaps[0], env.root.join("out")],
        args!["prune", "--keep-last", "1"],
        args!["key", "add"],
        args!["unlock", "--all"],
        args!["verify"],
    ] {
        let run = run_with(&env, a, |c| {
            c.env("TVAULT_PASSWORD", "not the password")
                .env("TVAULT_NEW_PASSWORD", "x");
        });
        run.expect_code(6).stderr_has(&["wrong password"]);
    }
    assert_eq!(
        env.repo_state(),
        before,
        "a wrong password changed the repository"
    );
    assert!(!env.root.join("out").exists());
    with_password(&env, PASSWORD, args!["verify"]).expect_code(0);
}

#[test]
fn without_any_password_source_the_error_says_the_three_ways() {
    let env = TestEnv::new();
    let run = run_with(&env, args!["init"], |c| {
        c.env_remove("TVAULT_PASSWORD");
    });
    run.expect_code(1).stderr_has(&[
        "TVAULT_PASSWORD",
        "--password-file",
        "--password-command",
        "--no-encryption",
    ]);
    assert!(!env.repo.join("config").exists());
    // A password file or a command: both work, one trailing newline ignored.
    let file = env.write("pw", b"from-a-file\n");
    run_with(&env, args!["--password-file", &file, "init"], |c| {
        c.env_remove("TVAULT_PASSWORD");
    })
    .expect_code(0);
    env.write("src/x", b"x");
    run_with(
        &env,
        args!["--password-command", "echo from-a-file", "backup", &env.src],
        |c| {
            c.env_remove("TVAULT_PASSWORD");
        },
    )
    .expect_code(0);
    run_with(&env, args!["snapshots"], |c| {
        c.env_remove("TVAULT_PASSWORD");
    })
    .expect_code(1)
    .stderr_has(&[
        "encrypted",
        "TVAULT_PASSWORD",
        "--password-file",
        "--password-command",
    ]);
    run_with(
        &env,
        args!["--password-command", "exit 3", "snapshots"],
        |c| {
            c.env_remove("TVAULT_PASSWORD");
        },
    )
    .expect_code(1)
    .stderr_has(&["--password-command", "failed"]);
}

#[test]
fn no_encryption_makes_a_plaintext_repository_on_purpose() {
    let env = TestEnv::new();
    env.init_plain();
    let config: Value =
        serde_json::from_slice(&fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["version"], 4);
    assert_eq!(config["encryption"], "none");
    env.write("src/x", MARKER);
    env.backup(&[&env.src], &[]);
    // No password needed, and key management says why there is none.
    run_with(&env, args!["snapshots"], |c| {
        c.env_remove("TVAULT_PASSWORD");
    })
    .expect_code(0);
    env.tvault(["key", "list"])
        .expect_code(1)
        .stderr_has(&["not encrypted"]);
}

#[test]
fn a_truncated_pack_and_two_swapped_packs_are_named_and_never_restored_wrong() {
    let env = TestEnv::with_repo();
    env.set_pack_size(64 << 10);
    let (env, dir, snaps) = encrypted_repo_in(env);
    let packs = objects(&env, "data");
    assert!(packs.len() >= 2, "{packs:?}");
    let (a, b) = (packs[0].clone(), packs[1].clone());
    let (ba, bb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    fs::write(&a, &bb).unwrap();
    fs::write(&b, &ba).unwrap();
    let found = problems(&env);
    for p in [&a, &b] {
        let key = key_of(&env, p);
        assert!(
            found.iter().any(|(_, f, _)| *f == key),
            "{key} not named in {found:?}"
        );
    }
    let target = env.fresh_path("restore");
    let run = env.tvault(args!["restore", &snaps[1], &target]);
    assert_ne!(run.code(), Some(0), "{run}");
    restored_files_are_right(&target, &dir);
    fs::write(&a, &ba).unwrap();
    fs::write(&b, &bb).unwrap();
    env.tvault(["verify", "--read-data"]).expect_code(0);

    fs::write(&a, &ba[..ba.len() / 2]).unwrap();
    let found = problems(&env);
    let key = key_of(&env, &a);
    assert!(
        found.iter().any(|(_, f, _)| *f == key),
        "{key} not named in {found:?}"
    );
    let target = env.fresh_path("restore");
    env.tvault(args!["restore", &snaps[1], &target]);
    restored_files_are_right(&target, &dir);
}
