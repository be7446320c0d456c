//! Tar archives in and out: `restore ID --tar FILE|-` (plain, gzip by name, standard output,
//! `--include`, never replacing a file without `--overwrite`) extracts to the snapshot's tree,
//! and `backup --from-tar FILE|-` imports archives made by the system `tar` and by the `tar`
//! crate (non-UTF-8 and long names, symlinks, hard links, modes, mtimes, directories the
//! archive does not list) into a snapshot that restores to what `tar -x` extracts. Damaged and
//! unsafe archives (`..`, absolute paths) are refused with exit 1 and no snapshot.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tvault_workload::Scenario;

use crate::bad_input::{assert_undamaged, s};
use crate::testenv::{
    args, assert_manifest_eq, files_below, flip_byte, manifest, mtimes_in_seconds, names_in, num,
    random_bytes, set_mode, set_mtime, sources_manifest, spawn, text, Entry, Manifest, TestEnv,
};
use crate::verify::assert_fields;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A path from raw bytes (names need not be UTF-8).
fn bpath(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Runs the system `tar`, which must succeed.
#[track_caller]
fn system_tar(a: Vec<OsString>) {
    let out = Command::new("tar").args(&a).output().expect("run tar");
    assert!(
        out.status.success(),
        "tar {a:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extracts an archive file with the system `tar` (permissions and mtimes kept) into a fresh
/// directory; returns it.
fn extract(env: &TestEnv, archive: &Path) -> PathBuf {
    let dir = env.fresh_path("extracted");
    fs::create_dir(&dir).unwrap();
    system_tar(args!["-xpf", archive, "-C", &dir]);
    dir
}

/// A source tree with what a tar round trip must keep: a checkpoint, modes, nanosecond mtimes,
/// an empty directory, a non-UTF-8 name, a name over 100 bytes, symlinks (relative, absolute
/// and dangling, upwards) and a hard link.
fn rich_tree(env: &TestEnv, seed: u64) -> PathBuf {
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 1 << 20, seed, 0);
    let notes = env.write("src/ckpt/sub/notes.txt", b"step 1000, loss 1.93\n");
    set_mode(&notes, 0o600);
    set_mtime(&notes, 1_700_000_000, 123_456_789);
    let script = env.write("src/ckpt/sub/run.sh", b"#!/bin/sh\nexec train\n");
    set_mode(&script, 0o755);
    fs::create_dir(ckpt.join("empty")).unwrap();
    env.write(
        bpath(b"src/ckpt/caf\xe9-\xff.bin"),
        &random_bytes(3000, seed),
    );
    env.write(
        format!("src/ckpt/sub/{}.json", "long-name-".repeat(15)),
        b"{}\n",
    );
    std::os::unix::fs::symlink("model.safetensors", ckpt.join("latest")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", ckpt.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../config.json", ckpt.join("sub/up")).unwrap();
    fs::hard_link(ckpt.join("config.json"), ckpt.join("config-hardlink.json")).unwrap();
    ckpt
}

/// Total bytes of the files of a manifest.
fn file_bytes(m: &Manifest) -> u64 {
    m.values()
        .map(|e| match e {
            Entry::File { size, .. } => *size,
            _ => 0,
        })
        .sum()
}

/// The entry paths of a tar archive (gunzipped first when it starts with the gzip magic).
fn entry_paths(bytes: &[u8]) -> Vec<Vec<u8>> {
    let reader: Box<dyn Read + '_> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path_bytes().into_owned())
        .collect()
}

/// The relative paths of a manifest, as bytes.
fn manifest_paths(m: &Manifest) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = m
        .keys()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// restore --tar

#[test]
fn restore_tar_plain_tar_gz_and_tgz_extract_to_the_snapshot() {
    let env = TestEnv::with_repo();
    let ckpt = rich_tree(&env, 81);
    let expected = mtimes_in_seconds(&sources_manifest(&[&ckpt]));
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    let out = env.path("out");
    fs::create_dir(&out).unwrap();

    for (name, gzipped) in [
        ("ckpt.tar", false),
        ("ckpt.tar.gz", true),
        ("ckpt.tgz", true),
    ] {
        let file = out.join(name);
        let run = env
            .tvault(args!["--json", "restore", &id[..8], "--tar", &file])
            .expect_code(0);
        let r = run.json();
        assert_fields(&r, &["id", "snapshot_id", "entries", "bytes", "failed"]);
        assert_eq!(text(&r, "id"), id);
        assert_eq!(num(&r, "entries"), expected.len() as u64, "{run}");
        assert_eq!(num(&r, "bytes"), file_bytes(&expected), "{run}");
        let bytes = fs::read(&file).unwrap();
        assert_eq!(
            bytes.starts_with(&[0x1f, 0x8b]),
            gzipped,
            "{name}: gzip magic"
        );
        if !gzipped {
            assert_eq!(&bytes[257..262], b"ustar", "{name}: a tar header first");
        }
        assert_eq!(
            sorted(entry_paths(&bytes)),
            manifest_paths(&expected),
            "{name}"
        );
        let dir = extract(&env, &file);
        assert_manifest_eq(&expected, &manifest(&dir), name);
    }
    assert_eq!(
        names_in(&out),
        ["ckpt.tar", "ckpt.tar.gz", "ckpt.tgz"],
        "no temporary file left"
    );

    // The human line names the archive.
    let file = out.join("again.tar");
    let run = env
        .tvault(args!["restore", &id, "--tar", &file])
        .expect_code(0);
    assert!(
        run.stdout
            .contains(&format!("wrote snapshot {} to {}", &id[..8], s(&file))),
        "{run}"
    );
}

#[test]
fn restore_tar_to_standard_output_pipes_into_tar() {
    let env = TestEnv::with_repo();
    let ckpt = rich_tree(&env, 82);
    let expected = mtimes_in_seconds(&sources_manifest(&[&ckpt]));
    let id = text(&env.backup(&[&ckpt], &[]), "id");

    // `tvault restore ID --tar - | tar -x`, through a real pipe.
    let mut cmd = env.repo_command(["restore", id.as_str(), "--tar", "-"]);
    cmd.stdout(Stdio::piped());
    let mut producer = spawn(&mut cmd);
    let dir = env.fresh_path("piped");
    fs::create_dir(&dir).unwrap();
    let consumer = Command::new("tar")
        .args([
            OsStr::new("-xpf"),
            OsStr::new("-"),
            OsStr::new("-C"),
            dir.as_os_str(),
        ])
        .stdin(Stdio::from(producer.stdout.take().unwrap()))
        .status()
        .unwrap();
    assert!(producer.wait().unwrap().success());
    assert!(consumer.success());
    assert_manifest_eq(&expected, &manifest(&dir), "restore --tar - | tar -x");

    // --json and --include: standard output is still nothing but the archive.
    let (status, bytes, stderr) = env.tvault_bytes([
        "--json",
        "restore",
        id.as_str(),
        "--tar",
        "-",
        "--include",
        "ckpt/sub",
    ]);
    assert!(status.success(), "{status}: {stderr}");
    let want: Vec<Vec<u8>> = manifest_paths(&expected)
        .into_iter()
        .filter(|p| p == b"ckpt" || p.starts_with(b"ckpt/sub"))
        .collect();
    assert_eq!(sorted(entry_paths(&bytes)), want);
}

#[test]
fn restore_tar_include_takes_only_the_named_paths_and_their_parents() {
    let env = TestEnv::with_repo();
    let ckpt = rich_tree(&env, 83);
    let whole = mtimes_in_seconds(&sources_manifest(&[&ckpt]));
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    let file = env.path("part.tgz");
    env.tvault(args![
        "restore",
        &id,
        "--tar",
        &file,
        "--include",
        "ckpt/sub",
        "--include",
        "/ckpt/config.json/"
    ])
    .expect_code(0);
    let expected: Manifest = whole
        .iter()
        .filter(|(p, _)| {
            *p == Path::new("ckpt")
                || p.starts_with("ckpt/sub")
                || *p == Path::new("ckpt/config.json")
        })
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    assert!(expected.len() >= 6);
    assert_manifest_eq(&expected, &manifest(&extract(&env, &file)), "--include");

    // An include matching nothing: exit 1, no archive.
    let none = env.path("none.tar");
    env.tvault(args![
        "restore",
        &id,
        "--tar",
        &none,
        "--include",
        "ckpt/nope"
    ])
    .expect_code(1)
    .stderr_has(&["ckpt/nope", "matches nothing"]);
    assert!(!none.exists());
    assert_eq!(
        names_in(&env.root)
            .iter()
            .filter(|n| n.contains("none"))
            .count(),
        0
    );
}

#[test]
fn restore_tar_never_replaces_a_file_without_overwrite() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 84, 0);
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    let file = env.write("precious.tar.gz", b"an older archive");
    env.tvault(args!["restore", &id, "--tar", &file])
        .expect_code(1)
        .stderr_has(&[s(&file), "exists", "--overwrite"]);
    assert_eq!(fs::read(&file).unwrap(), b"an older archive");

    env.tvault(args!["restore", &id, "--tar", &file, "--overwrite"])
        .expect_code(0);
    let expected = mtimes_in_seconds(&sources_manifest(&[&ckpt]));
    assert_manifest_eq(&expected, &manifest(&extract(&env, &file)), "--overwrite");
    assert!(names_in(&env.root)
        .iter()
        .all(|n| !n.contains("tvault-tmp")));

    // --tar and a TARGET together, or neither: usage errors.
    let target = env.path("restored");
    env.tvault(args!["restore", &id, &target, "--tar", &file])
        .expect_code(2);
    env.tvault(args!["restore", &id]).expect_code(2);
    assert!(!target.exists());
}

#[test]
fn restore_tar_of_damaged_data_fails_and_leaves_no_archive() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 2 << 20, 85, 0);
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    // Damage the start of the largest pack: file data, not the tree stored after it.
    let pack = files_below(&env.repo.join("data"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(&pack, 200);
    let out = env.path("out");
    fs::create_dir(&out).unwrap();
    for name in ["ckpt.tar", "ckpt.tar.gz"] {
        let file = out.join(name);
        let run = env.tvault(args!["restore", &id, "--tar", &file]);
        assert_eq!(run.code(), Some(1), "{run}");
        run.stderr_has(&["cannot archive ckpt/", "damaged"]);
        assert!(!file.exists(), "{run}");
    }
    assert!(names_in(&out).is_empty(), "no temporary file left");
    // On standard output the archive cannot be taken back, but the exit code says it is bad.
    let (status, _, stderr) = env.tvault_bytes(["restore", id.as_str(), "--tar", "-"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot archive ckpt/"), "{stderr}");
}

#[test]
fn restore_tar_keeps_symlink_targets_byte_for_byte() {
    let env = TestEnv::with_repo();
    env.write("src/ckpt/a/b", b"weights");
    let ckpt = env.src.join("ckpt");
    for (name, target) in [("double", "a//b"), ("dot", "a/./b"), ("trailing", "a/")] {
        std::os::unix::fs::symlink(target, ckpt.join(name)).unwrap();
    }
    let expected = mtimes_in_seconds(&sources_manifest(&[&ckpt]));
    let id = text(&env.backup(&[&ckpt], &[]), "id");
    let file = env.path("links.tar");
    env.tvault(args!["restore", &id, "--tar", &file])
        .expect_code(0);
    let dir = extract(&env, &file);
    assert_manifest_eq(&expected, &manifest(&dir), "symlink targets");
    // `Path` equality ignores repeated slashes and `.`: compare the bytes.
    for (name, target) in [("double", "a//b"), ("dot", "a/./b"), ("trailing", "a/")] {
        let got = fs::read_link(dir.join("ckpt").join(name)).unwrap();
        assert_eq!(got.as_os_str().as_bytes(), target.as_bytes(), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// backup --from-tar

#[test]
fn from_tar_imports_archives_of_the_system_tar() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/legacy/ckpt", Scenario::Single, 512 << 10, 86, 0);
    let notes = env.write("src/legacy/ckpt/sub/notes.txt", b"step 1000\n");
    set_mode(&notes, 0o600);
    let script = env.write("src/legacy/ckpt/sub/run.sh", b"#!/bin/sh\n");
    set_mode(&script, 0o755);
    set_mode(&ckpt.join("sub"), 0o750);
    fs::create_dir(ckpt.join("empty")).unwrap();
    env.write(
        bpath(b"src/legacy/ckpt/caf\xe9.bin"),
        &random_bytes(2000, 86),
    );
    env.write(
        format!("src/legacy/ckpt/{}.txt", "x".repeat(140)),
        b"long\n",
    );
    std::os::unix::fs::symlink("model.safetensors", ckpt.join("latest")).unwrap();
    fs::hard_link(&notes, ckpt.join("notes-hardlink.txt")).unwrap();
    // Whole seconds (tar keeps no more), children before their directories.
    let mut all: Vec<PathBuf> = walkdir::WalkDir::new(&ckpt)
        .contents_first(true)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.path_is_symlink())
        .map(|e| e.into_path())
        .collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_650_000_000 + 60 * i as i64, 0);
    }
    let expected = sources_manifest(&[&ckpt]);
    let legacy = env.src.join("legacy");
    let (plain, gz) = (env.path("legacy.tar"), env.path("legacy.tar.gz"));
    system_tar(args!["-cf", &plain, "-C", &legacy, "ckpt"]);
    system_tar(args!["-czf", &gz, "-C", &legacy, "ckpt"]);
    let files = expected
        .values()
        .filter(|e| matches!(e, Entry::File { .. }))
        .count() as u64;

    for archive in [&plain, &gz] {
        let run = env
            .tvault(args![
                "--json",
                "backup",
                "--from-tar",
                archive,
                "--tag",
                "migrated",
                "--host",
                "old-box"
            ])
            .expect_code(0);
        let r = run.json();
        assert_eq!(r["complete"], true, "{run}");
        assert_eq!(num(&r, "files"), files, "{run}");
        assert_eq!(num(&r, "symlinks"), 1, "{run}");
        assert_eq!(num(&r, "total_bytes"), file_bytes(&expected), "{run}");
        let id = text(&r, "id");
        env.assert_restores(&id, &expected);
        let listed = env.snapshots();
        let snap = listed.iter().find(|s| text(s, "id") == id).unwrap();
        let abs = fs::canonicalize(archive).unwrap();
        assert_eq!(snap["paths"], json!([format!("tar:{}", abs.display())]));
        assert_eq!(snap["host"], "old-box");
        assert_eq!(snap["tags"], json!(["migrated"]));
    }
    // The imported snapshot is found by the path filter under its `tar:` name.
    let tar_path = format!("tar:{}", fs::canonicalize(&plain).unwrap().display());
    let run = env
        .tvault(["--json", "snapshots", "--path", tar_path.as_str()])
        .expect_code(0);
    assert_eq!(run.json().as_array().unwrap().len(), 1, "{run}");
}

/// An archive as other tools write them, made with the `tar` crate: a directory entry, files
/// with modes and mtimes, a non-UTF-8 name, a GNU long name, symlinks, a hard link, a FIFO (not
/// importable), a top-level file, and `unlisted/deeper/file.bin` whose directories have no
/// entries. The plain archive's bytes.
fn crate_archive() -> Vec<u8> {
    use tar::{EntryType, Header};
    let mut b = tar::Builder::new(Vec::new());
    let mut add =
        |kind: EntryType, path: &[u8], mode: u32, mtime: u64, data: &[u8], link: &[u8]| {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_size(data.len() as u64);
            if link.is_empty() {
                b.append_data(&mut h, bpath(path), data).unwrap();
            } else {
                b.append_link(&mut h, bpath(path), bpath(link)).unwrap();
            }
        };
    let weights = random_bytes(300_000, 87);
    add(
        EntryType::Directory,
        b"model/",
        0o750,
        1_600_000_000,
        &[],
        b"",
    );
    add(
        EntryType::Regular,
        b"model/weights.bin",
        0o640,
        1_600_000_100,
        &weights,
        b"",
    );
    add(
        EntryType::Regular,
        b"model/caf\xe9.bin",
        0o600,
        1_600_000_200,
        b"bytes",
        b"",
    );
    let long = format!("model/{}.json", "l".repeat(150));
    add(
        EntryType::Regular,
        long.as_bytes(),
        0o644,
        1_600_000_300,
        b"{}\n",
        b"",
    );
    add(
        EntryType::Symlink,
        b"model/latest",
        0o777,
        1_600_000_400,
        &[],
        b"weights.bin",
    );
    add(
        EntryType::Symlink,
        b"model/abs",
        0o777,
        1_600_000_400,
        &[],
        b"/nonexistent/abs-target",
    );
    add(
        EntryType::Link,
        b"model/weights-link.bin",
        0o640,
        1_600_000_100,
        &[],
        b"model/weights.bin",
    );
    add(
        EntryType::Fifo,
        b"model/pipe",
        0o644,
        1_600_000_500,
        &[],
        b"",
    );
    add(
        EntryType::Regular,
        b"unlisted/deeper/file.bin",
        0o644,
        1_600_000_600,
        b"deep\n",
        b"",
    );
    add(
        EntryType::Regular,
        b"README",
        0o444,
        1_600_000_700,
        b"an old backup\n",
        b"",
    );
    b.into_inner().unwrap()
}

#[test]
fn from_tar_imports_archives_of_other_tools_from_a_file_and_standard_input() {
    let env = TestEnv::with_repo();
    let bytes = crate_archive();
    let plain = env.write("old.tar", &bytes);
    let gz = gzip(&bytes);

    // What `tar -x` makes of the archive is the reference; the FIFO is not imported, and the
    // directories the archive does not list have no mode or mtime to compare.
    let mut expected = manifest(&extract(&env, &plain));
    assert!(matches!(
        expected.remove(Path::new("model/pipe")),
        Some(Entry::Other { .. })
    ));
    let unlisted = [Path::new("unlisted"), Path::new("unlisted/deeper")];
    for d in unlisted {
        assert!(matches!(expected.remove(d), Some(Entry::Dir { .. })));
    }
    assert!(expected.contains_key(bpath(b"model/caf\xe9.bin")));

    let from_file = env
        .tvault(args!["--json", "backup", "--from-tar", &plain])
        .expect_code(0);
    let from_stdin = env
        .tvault_with_stdin(["--json", "backup", "--from-tar", "-"], &gz)
        .expect_code(0);
    for (run, source) in [
        (
            &from_file,
            format!("tar:{}", fs::canonicalize(&plain).unwrap().display()),
        ),
        (&from_stdin, "tar:stdin".to_string()),
    ] {
        let r = run.json();
        assert_eq!(r["complete"], true, "{run}");
        assert_eq!(num(&r, "files"), 6, "{run}");
        assert_eq!(num(&r, "symlinks"), 2, "{run}");
        assert_eq!(num(&r, "dirs"), 3, "{run}");
        let warnings = r["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 1, "{run}");
        assert!(
            warnings[0].as_str().unwrap().contains("model/pipe"),
            "{run}"
        );
        let id = text(&r, "id");
        let target = env.restore(&id);
        let mut restored = manifest(&target);
        for d in unlisted {
            assert!(
                matches!(restored.remove(d), Some(Entry::Dir { .. })),
                "{d:?} is a directory"
            );
        }
        assert_manifest_eq(&expected, &restored, &source);
        let listed = env.snapshots();
        let snap = listed.iter().find(|s| text(s, "id") == id).unwrap();
        assert_eq!(snap["paths"], json!([source]));
    }
}

/// `backup --from-tar` of `bytes` (as a file, and on standard input) must fail with exit 1,
/// saying `what`, and leave the snapshots as they were.
#[track_caller]
fn assert_refused(env: &TestEnv, name: &str, bytes: &[u8], what: &[&str]) {
    let before: Vec<Value> = env.snapshots();
    let file = env.write(name, bytes);
    let run = env.tvault(args!["backup", "--from-tar", &file]);
    assert_eq!(run.code(), Some(1), "{run}");
    run.stderr_has(what).stderr_has(&[s(&file)]);
    let run = env.tvault_with_stdin(["backup", "--from-tar", "-"], bytes);
    assert_eq!(run.code(), Some(1), "{run}");
    run.stderr_has(what);
    assert_eq!(env.snapshots(), before, "{name}: snapshots changed");
    assert!(env.lock_files().is_empty());
}

/// A plain archive: a good file, then an entry written with raw header fields (no checks).
fn archive_with_raw_entry(kind: tar::EntryType, name: &[u8], link: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let good = random_bytes(200_000, 88);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_size(good.len() as u64);
    b.append_data(&mut h, "ckpt/good.bin", &good[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"pwned\n"
    } else {
        b""
    };
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn from_tar_refuses_damaged_and_unsafe_archives_and_writes_no_snapshot() {
    let (env, snaps) = crate::bad_input::repo_with_snapshots();
    let good = crate_archive();
    let unsafe_entry = ["absolute path or `..`", "refusing to import"];
    let damaged = ["not a readable tar archive", "no snapshot was written"];
    use tar::EntryType::{Link, Regular, Symlink};

    assert_refused(&env, "noise.tar", &random_bytes(10_000, 89), &damaged);
    assert_refused(&env, "cut.tar", &good[..good.len() / 2], &damaged);
    let gz = gzip(&good);
    assert_refused(&env, "cut.tar.gz", &gz[..gz.len() / 2], &damaged);
    assert_refused(
        &env,
        "noise.tar.gz",
        &gzip(&random_bytes(10_000, 90)),
        &damaged,
    );
    for (name, kind, path, link) in [
        ("dotdot.tar", Regular, &b"ckpt/../../evil.txt"[..], &b""[..]),
        ("dotdot-start.tar", Regular, b"../evil.txt", b""),
        ("dotdot-end.tar", Regular, b"ckpt/..", b""),
        ("absolute.tar", Regular, b"/tmp/tvault-evil.txt", b""),
        ("symlink-up.tar", Symlink, b"../up", b"x"),
        (
            "hardlink-out.tar",
            Link,
            b"ckpt/passwd",
            b"../../etc/passwd",
        ),
        ("hardlink-abs.tar", Link, b"ckpt/passwd", b"/etc/passwd"),
    ] {
        assert_refused(
            &env,
            name,
            &archive_with_raw_entry(kind, path, link),
            &unsafe_entry,
        );
    }
    assert!(!Path::new("/tmp/tvault-evil.txt").exists());
    // A hard link to a file the archive does not hold.
    assert_refused(
        &env,
        "hardlink-missing.tar",
        &archive_with_raw_entry(Link, b"ckpt/l", b"ckpt/missing.bin"),
        &["hard link", "missing file"],
    );

    // No such archive: exit 1 naming it.
    let missing = env.path("missing.tar");
    env.tvault(args!["backup", "--from-tar", &missing])
        .expect_code(1)
        .stderr_has(&["cannot read archive", s(&missing)]);
    // --from-tar takes no paths and none of the options about reading a directory.
    let file = env.write("ok.tar", &good);
    for extra in [
        args![&env.src],
        args!["--exclude", "*.tmp"],
        args!["--settle", "10m"],
        args!["--read-limit", "10MiB"],
        args!["--full"],
    ] {
        let mut a = args!["backup", "--from-tar", &file];
        a.extend(extra);
        env.tvault(a).expect_code(2);
    }

    // The refused imports left at most unused data: the repository verifies clean and every
    // earlier snapshot restores as it was.
    let run = env
        .tvault(["--json", "verify", "--read-data"])
        .expect_code(0);
    assert_eq!(run.json()["problems"], json!([]), "{run}");
    assert_undamaged(&env, &snaps);
}

#[test]
fn from_tar_refuses_an_empty_input() {
    let (env, _) = crate::bad_input::repo_with_snapshots();
    assert_refused(
        &env,
        "empty.tar",
        b"",
        &["not a readable tar archive", "no snapshot was written"],
    );
}

/// Regression (issue 9.8): an archive holding `link -> /somewhere` and then `link/file` was
/// refused as "not a readable tar archive"; it must say what is wrong with it.
#[test]
fn from_tar_names_an_entry_below_a_symlink_of_the_same_archive() {
    let (env, _) = crate::bad_input::repo_with_snapshots();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "ckpt/out", "/tmp").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(6);
    b.append_data(&mut h, "ckpt/out/evil.txt", &b"pwned\n"[..])
        .unwrap();
    assert_refused(
        &env,
        "through-link.tar",
        &b.into_inner().unwrap(),
        &[
            "\"ckpt/out/evil.txt\" below \"ckpt/out\"",
            "symlink",
            "refusing to import",
        ],
    );
}

/// Regression (issue 9.8): an archive with two entries for one path imported the last one
/// without a word.
#[test]
fn from_tar_warns_about_duplicate_entries_and_imports_the_last() {
    let env = TestEnv::with_repo();
    let mut b = tar::Builder::new(Vec::new());
    for content in [&b"first version\n"[..], b"second version\n"] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, "ckpt/config.json", content).unwrap();
    }
    let file = env.write("dup.tar", &b.into_inner().unwrap());
    let run = env
        .tvault(args!["--json", "backup", "--from-tar", &file])
        .expect_code(0);
    run.stderr_has(&["several entries for \"ckpt/config.json\"", "last one"]);
    let report = run.json();
    assert!(
        report["warnings"].to_string().contains("several entries"),
        "{report}"
    );
    let out = env.restore(&text(&report, "id"));
    assert_eq!(
        fs::read(out.join("ckpt/config.json")).unwrap(),
        b"second version\n"
    );
}

/// Bytes of the model in the checkpoints of the model-aware import tests.
const MODEL: u64 = 2 << 20;

/// Writes step `step` of a fine-tuning checkpoint into `src/ckpt` and returns it with an
/// archive of it made by the `tar` crate (entries under `ckpt/`) and what a restore of the
/// imported archive must give.
fn finetune_step_archive(env: &TestEnv, scenario: Scenario, step: u32) -> (Vec<u8>, Manifest) {
    let dir = env.root.join("src/ckpt");
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    env.checkpoint("src/ckpt", scenario, MODEL, 7, step);
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all("ckpt", &dir).unwrap();
    let expected = mtimes_in_seconds(&sources_manifest(&[&dir]));
    (b.into_inner().unwrap(), expected)
}

/// Regression (issue 14.5): `--from-tar` stored every entry chunked by content alone, so the
/// tensors of a checkpoint in an archive got neither byte planes nor deltas. The tensors of a
/// safetensors file are now found from the head of its entry: byte planes for the first
/// step, and deltas against it (by tensor identity) for the next step's archive, plain or
/// gzipped, from a file or standard input.
#[test]
fn from_tar_stores_checkpoint_tensors_as_byte_planes_and_later_steps_as_deltas() {
    for (first_gz, second_gz) in [(false, true), (true, false)] {
        let env = TestEnv::with_repo();
        let (bytes, first) = finetune_step_archive(&env, Scenario::Finetune, 0);
        let file = env.write("step0.tar", &if first_gz { gzip(&bytes) } else { bytes });
        let run = env
            .tvault(args!["--json", "backup", "--from-tar", &file])
            .expect_code(0);
        let r = run.json();
        let planes = num(&r["stored"], "byte_planes");
        assert!(
            planes * 10 >= MODEL * 9,
            "the model's tensors should be stored as byte planes (gzip {first_gz}): {run}"
        );
        let first_id = text(&r, "id");

        let (bytes, second) = finetune_step_archive(&env, Scenario::Finetune, 1);
        let input = if second_gz { gzip(&bytes) } else { bytes };
        let run = env
            .tvault_with_stdin(["--json", "backup", "--from-tar", "-"], &input)
            .expect_code(0);
        let r = run.json();
        let (delta, added) = (num(&r["stored"], "delta"), num(&r, "bytes_added"));
        let keyframes = num(&r["stored"], "byte_planes_stored");
        assert!(
            delta > MODEL * 3 / 4,
            "the next step should be stored as deltas (gzip {second_gz}): {run}"
        );
        assert!(
            (added - keyframes) * 100 <= MODEL * 4,
            "the next step added {added} bytes: {run}"
        );
        env.assert_restores(&first_id, &first);
        env.assert_restores(&text(&r, "id"), &second);
    }
}

/// A PyTorch zip has its directory at its end, so its tensors cannot be found from the head of
/// its entry; an entry small enough to hold in memory is read whole first and gets byte planes.
#[test]
fn from_tar_finds_the_tensors_of_a_small_pytorch_zip() {
    let env = TestEnv::with_repo();
    let (bytes, expected) = finetune_step_archive(&env, Scenario::Torchzip, 0);
    let file = env.write("torch.tar", &bytes);
    let run = env
        .tvault(args!["--json", "backup", "--from-tar", &file])
        .expect_code(0);
    let r = run.json();
    assert!(
        num(&r["stored"], "byte_planes") * 10 >= MODEL * 9,
        "the storages of a torch.save checkpoint should be stored as byte planes: {run}"
    );
    env.assert_restores(&text(&r, "id"), &expected);
}
