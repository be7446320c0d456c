//! Browsing a repository the way a restic or borg user expects to: `restore --target DIR`,
//! `latest` (the newest complete snapshot matching `--host/--path/--tag`), explicit duration
//! units (`min`, `mo`), and the `ls`, `dump`, `find` and `stats` commands.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::json;
use tvault_workload::Scenario;

use crate::testenv::{
    args, files_below, finish, manifest, num, safetensors_tensors, sources_manifest, text, Entry,
    TestEnv,
};

/// A small checkpoint directory `src/ckpt` (one safetensors file), plus a note, a
/// subdirectory and a symlink.
fn ckpt(env: &TestEnv, seed: u64) -> PathBuf {
    let dir = env.checkpoint("src/ckpt", Scenario::Single, 192 << 10, seed, 0);
    env.write("src/ckpt/notes/readme.txt", b"step 0: warm-up\n");
    let link = dir.join("current");
    if !link.exists() {
        symlink("notes/readme.txt", &link).unwrap();
    }
    dir
}

/// The one safetensors file below `dir`.
fn model_file(dir: &Path) -> PathBuf {
    files_below(dir)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .expect("a safetensors file in the checkpoint")
}

/// `p` relative to `src/`, as snapshots store it (`ckpt/...`).
fn stored(env: &TestEnv, p: &Path) -> String {
    p.strip_prefix(&env.src)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// restore --target

#[test]
fn restore_target_flag_restores_into_the_directory_and_never_writes_a_tar() {
    let env = TestEnv::with_repo();
    let dir = ckpt(&env, 1);
    let id = text(&env.backup(&[&dir], &[]), "id");
    let target = env.fresh_path("restored");
    env.tvault(args!["restore", &id, "--target", &target])
        .expect_code(0);
    assert!(
        target.is_dir(),
        "--target DIR is a directory, not a tar file"
    );
    crate::testenv::assert_manifest_eq(
        &sources_manifest(&[&dir]),
        &manifest(&target),
        "restore --target",
    );

    // Both spellings at once, or --target with --tar: a usage error that writes nothing.
    let other = env.fresh_path("other");
    env.tvault(args!["restore", &id, &other, "--target", &other])
        .expect_code(2);
    env.tvault(args!["restore", &id, "--tar", &other, "--target", &other])
        .expect_code(2);
    assert!(!other.exists());
}

// ---------------------------------------------------------------------------------------------
// latest

/// Three snapshots of `src/ckpt` with different content: the oldest on host `lab` tagged
/// `gold`, the middle one, and the newest made incomplete. Returns their IDs, oldest first.
fn three_snapshots(env: &TestEnv) -> (PathBuf, [String; 3]) {
    let dir = env.src.join("ckpt");
    let file = dir.join("weights.bin");
    let mut ids = Vec::new();
    for (i, extra) in [&["--host", "lab", "--tag", "gold"][..], &[], &[]]
        .iter()
        .enumerate()
    {
        env.write(&file, format!("version {i}").as_bytes());
        ids.push(text(&env.backup(&[&dir], extra), "id"));
    }
    ids[2] = env.rewrite_snapshot(&ids[2], |m| {
        m["problems"] = json!(["cannot read /x/ckpt/optimizer.pt: Permission denied"])
    });
    (file, ids.try_into().unwrap())
}

#[test]
fn latest_is_the_newest_complete_snapshot_matching_the_filters() {
    let env = TestEnv::with_plain_repo();
    let (_, ids) = three_snapshots(&env);
    let content = |dir: &Path| fs::read_to_string(dir.join("ckpt/weights.bin")).unwrap();

    // The newest is incomplete: `latest` is the middle one, said before anything is written.
    let target = env.fresh_path("latest");
    let run = env
        .tvault(args!["--json", "restore", "latest", &target])
        .expect_code(0);
    run.stderr_has(&[&format!("latest = {}", &ids[1][..8])]);
    assert_eq!(content(&target), "version 1");
    assert_eq!(run.json()["latest"]["id"], ids[1], "{run}");

    // Filters choose among the complete ones; --target works with it too.
    let target = env.fresh_path("gold");
    env.tvault(args![
        "restore", "latest", "--target", &target, "--tag", "gold"
    ])
    .expect_code(0)
    .stderr_has(&[&format!("latest = {}", &ids[0][..8]), "lab"]);
    assert_eq!(content(&target), "version 0");
    let target = env.fresh_path("lab");
    env.tvault(args!["restore", "latest", &target, "--host", "lab"])
        .expect_code(0);
    assert_eq!(content(&target), "version 0");
    let target = env.fresh_path("path");
    env.tvault(args![
        "restore",
        "latest",
        &target,
        "--path",
        env.src.join("ckpt")
    ])
    .expect_code(0);
    assert_eq!(content(&target), "version 1");

    // No match: exit 1, a clear message, nothing written.
    let target = env.fresh_path("none");
    env.tvault(args!["restore", "latest", &target, "--host", "nowhere"])
        .expect_code(1)
        .stderr_has(&["latest", "no complete snapshot", "--host nowhere"]);
    assert!(!target.exists());
    // Filters with an explicit ID would be silently ignored: refused.
    env.tvault(args!["restore", &ids[1], &target, "--tag", "gold"])
        .expect_code(1)
        .stderr_has(&["only choose which snapshot `latest` is"]);

    // diff, show and stats take it too, and say what it resolved to in their JSON.
    let diff = env
        .tvault(args!["--json", "diff", &ids[0], "latest"])
        .expect_code(0)
        .json();
    assert_eq!(
        (text(&diff, "to"), text(&diff["latest"], "id")),
        (ids[1].clone(), ids[1].clone())
    );
    assert_eq!(diff["changed"][0]["path"], "ckpt/weights.bin");
    let show = env
        .tvault(["--json", "show", "latest"])
        .expect_code(0)
        .json();
    assert_eq!(text(&show, "snapshot"), ids[1]);
    let stats = env
        .tvault(["--json", "stats", "latest"])
        .expect_code(0)
        .json();
    assert_eq!(text(&stats, "id"), ids[1]);
    assert_eq!(text(&stats["latest"], "short_id"), ids[1][..8]);
    // An explicit ID has no `latest` field.
    let show = env
        .tvault(["--json", "show", &ids[2]])
        .expect_code(0)
        .json();
    assert!(show.get("latest").is_none(), "{show:#}");
}

// ---------------------------------------------------------------------------------------------
// durations

#[test]
fn keep_within_minutes_keeps_the_last_minutes_and_the_plan_says_so() {
    let env = TestEnv::with_plain_repo();
    let dir = env.src.join("ckpt");
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for (i, minutes_ago) in [120, 40, 20, 0].into_iter().enumerate() {
        env.write(dir.join("f"), format!("{i}").as_bytes());
        let id = text(&env.backup(&[&dir], &[]), "id");
        let time = (now - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
        ids.push(env.rewrite_snapshot(&id, |m| m["time"] = json!(time)));
    }
    let kept = |extra: &[&str]| -> Vec<bool> {
        let mut a = vec!["--json", "prune", "--dry-run"];
        a.extend(extra);
        let report = env.tvault(a).expect_code(0).json();
        ids.iter()
            .map(|id| {
                let d = report["snapshots"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|d| d["id"] == *id)
                    .unwrap();
                d["keep"].as_bool().unwrap()
            })
            .collect()
    };
    assert_eq!(
        kept(&["--keep-within", "30min"]),
        [false, false, true, true]
    );
    assert_eq!(kept(&["--keep-within", "1h"]), [false, true, true, true]);
    // A bare `m` keeps its restic meaning here: months.
    assert_eq!(kept(&["--keep-within", "30m"]), [true, true, true, true]);

    let run = env
        .tvault(["prune", "--dry-run", "--keep-within", "30min"])
        .expect_code(0);
    assert!(run.stdout.contains("keep within 30 minutes"), "{run}");
    assert!(run.stdout.contains("[within 30min]"), "{run}");
    let run = env
        .tvault(["prune", "--dry-run", "--keep-within", "30m"])
        .expect_code(0);
    assert!(run.stdout.contains("keep within 30 months"), "{run}");

    // The fixed durations: `min` is minutes, `mo` refused with the way out.
    env.tvault(["--lock-wait", "1min", "snapshots"])
        .expect_code(0);
    env.tvault(["--lock-wait", "1mo", "snapshots"])
        .expect_code(2)
        .stderr_has(&["not a fixed duration", "30d"]);
    let help = env.tvault(["prune", "--help"]).expect_code(0);
    assert!(help.stdout.contains("m = months"), "{help}");
    let help = env.tvault(["backup", "--help"]).expect_code(0);
    assert!(help.stdout.contains("m = minutes"), "{help}");
}

#[test]
fn settle_summary_states_the_duration_in_words() {
    let env = TestEnv::with_repo();
    let dir = env.src.join("ckpt");
    env.write(dir.join("being-written.bin"), b"partial");
    let run = env
        .tvault(args!["backup", &dir, "--settle", "10m"])
        .expect_code(0);
    assert!(
        run.stdout.contains("modified less than 10 minutes ago"),
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------
// ls

#[test]
fn ls_lists_names_and_sizes_of_the_backed_up_tree() {
    let env = TestEnv::with_repo();
    let dir = ckpt(&env, 2);
    let id = text(&env.backup(&[&dir], &[]), "id");

    let listed = env.tvault(["--json", "ls", &id]).expect_code(0).json();
    let listed = listed.as_array().unwrap();
    let source = sources_manifest(&[&dir]);
    let mut from_ls: Vec<(String, u64)> = listed
        .iter()
        .filter(|e| e["path"] != "ckpt")
        .map(|e| (text(e, "path"), num(e, "size")))
        .collect();
    from_ls.sort();
    let mut from_disk: Vec<(String, u64)> = source
        .iter()
        .filter(|(p, _)| p.as_os_str() != "ckpt")
        .map(|(p, e)| {
            let size = match e {
                Entry::File { size, .. } => *size,
                _ => 0,
            };
            (p.to_str().unwrap().to_string(), size)
        })
        .collect();
    from_disk.sort();
    assert_eq!(from_ls, from_disk);
    let readme = listed
        .iter()
        .find(|e| e["path"] == "ckpt/notes/readme.txt")
        .unwrap();
    assert_eq!(text(readme, "kind"), "file");
    assert_eq!(text(readme, "id"), id);
    assert!(
        readme["mode"].is_u64() && readme["mtime"].is_string(),
        "{readme}"
    );
    let link = listed.iter().find(|e| e["path"] == "ckpt/current").unwrap();
    assert_eq!(
        (text(link, "kind"), text(link, "target")),
        ("symlink".into(), "notes/readme.txt".into())
    );

    // Below a path; one name per line; --long with permissions and sizes.
    let run = env.tvault(["ls", &id, "ckpt/notes"]).expect_code(0);
    assert_eq!(run.stdout, "ckpt/notes\nckpt/notes/readme.txt\n");
    let run = env
        .tvault(["ls", "--long", &id, "ckpt/notes/"])
        .expect_code(0);
    let line = run.stdout.lines().nth(1).unwrap();
    assert!(line.starts_with("-rw-r--r--"), "{run}");
    assert!(
        line.contains(" 16 ") && line.ends_with("ckpt/notes/readme.txt"),
        "{run}"
    );

    env.tvault(["ls", &id, "ckpt/nothing-here"])
        .expect_code(1)
        .stderr_has(&["ckpt/nothing-here", "not in snapshot"]);
}

// ---------------------------------------------------------------------------------------------
// dump

#[test]
fn dump_writes_a_file_or_one_tensor_byte_for_byte() {
    let env = TestEnv::with_repo();
    let dir = ckpt(&env, 3);
    let model = model_file(&dir);
    let id = text(&env.backup(&[&dir], &[]), "id");
    let path = stored(&env, &model);

    let (status, bytes, stderr) = env.tvault_bytes(["dump", &id, &path]);
    assert!(status.success(), "{stderr}");
    assert_eq!(bytes, fs::read(&model).unwrap());
    // `latest` works here too; the note goes to stderr, stdout holds only the file.
    let (status, bytes, stderr) = env.tvault_bytes(["dump", "latest", "ckpt/notes/readme.txt"]);
    assert!(status.success(), "{stderr}");
    assert_eq!(bytes, b"step 0: warm-up\n");
    assert!(
        stderr.contains(&format!("latest = {}", &id[..8])),
        "{stderr}"
    );

    // One tensor: exactly its byte range in the source file, a small one and a large one.
    let tensors = safetensors_tensors(&model);
    let smallest = tensors.iter().min_by_key(|t| t.len).unwrap();
    let largest = tensors.iter().max_by_key(|t| t.len).unwrap();
    for t in [smallest, largest] {
        let (status, bytes, stderr) = env.tvault_bytes(["dump", &id, &path, "--tensor", &t.name]);
        assert!(status.success(), "{}: {stderr}", t.name);
        assert_eq!(
            bytes,
            crate::testenv::read_at(&model, t.start, t.len as usize),
            "{}",
            t.name
        );
    }

    // Clear errors: unknown tensor (naming some that exist), not a model file, a directory, a
    // symlink, a path the snapshot does not have.
    env.tvault(["dump", &id, &path, "--tensor", "no.such.tensor"])
        .expect_code(1)
        .stderr_has(&["no.such.tensor", "no such tensor", &tensors[0].name]);
    env.tvault(["dump", &id, "ckpt/notes/readme.txt", "--tensor", "x"])
        .expect_code(1)
        .stderr_has(&["not a safetensors or GGUF file"]);
    env.tvault(["dump", &id, "ckpt/notes"])
        .expect_code(1)
        .stderr_has(&["ckpt/notes", "is a directory"]);
    env.tvault(["dump", &id, "ckpt/current"])
        .expect_code(1)
        .stderr_has(&["ckpt/current", "is a symlink"]);
    env.tvault(["dump", &id, "ckpt/missing"])
        .expect_code(1)
        .stderr_has(&["ckpt/missing", "not in snapshot"]);

    // A reader that goes away (`| head -c 10`) is not an error, and never a panic.
    let mut child = env.spawn_tvault(["dump", &id, &path]);
    drop(child.stdout.take());
    let run = finish(child, "dump, its reader gone");
    assert!(!run.stderr.contains("panicked"), "{run}");
    assert_eq!(run.code(), Some(0), "{run}");
}

// ---------------------------------------------------------------------------------------------
// find

#[test]
fn find_matches_names_and_paths_across_snapshots() {
    let env = TestEnv::with_repo();
    let dir = ckpt(&env, 4);
    let model = stored(&env, &model_file(&dir));
    let first = text(&env.backup(&[&dir], &["--tag", "a"]), "id");
    env.write("src/ckpt/notes/later.safetensors.txt", b"x");
    env.write("src/ckpt/step-2/model.safetensors", b"not really");
    let second = text(&env.backup(&[&dir], &["--tag", "b"]), "id");

    let found = |args: &[&str]| -> Vec<(String, String, u64)> {
        let mut a = vec!["--json", "find"];
        a.extend(args);
        let v = env.tvault(a).expect_code(0).json();
        v.as_array()
            .unwrap()
            .iter()
            .map(|f| {
                assert!(f["time"].is_string() && f["kind"].is_string(), "{f}");
                (text(f, "id"), text(f, "path"), num(f, "size"))
            })
            .collect()
    };
    let size = fs::metadata(env.src.join(&model)).unwrap().len();
    // A name pattern matches at any depth, in every snapshot, oldest first.
    assert_eq!(
        found(&["*.safetensors"]),
        vec![
            (first.clone(), model.clone(), size),
            (second.clone(), model.clone(), size),
            (second.clone(), "ckpt/step-2/model.safetensors".into(), 10),
        ]
    );
    // A pattern with `/` matches the whole stored path; filters choose snapshots.
    assert_eq!(
        found(&["ckpt/step-*/*", "--tag", "b"]),
        vec![(second.clone(), "ckpt/step-2/model.safetensors".into(), 10)]
    );
    assert_eq!(found(&["*.safetensors", "--tag", "a"]).len(), 1);
    assert!(found(&["nothing*"]).is_empty());

    let run = env.tvault(["find", "readme.txt"]).expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run}");
    assert!(
        lines[0].starts_with(&first[..8]) && lines[0].ends_with("ckpt/notes/readme.txt"),
        "{run}"
    );
    assert!(lines[1].starts_with(&second[..8]), "{run}");
    env.tvault(["find", "[oops"])
        .expect_code(1)
        .stderr_has(&["invalid pattern"]);
}

// ---------------------------------------------------------------------------------------------
// stats

#[test]
fn stats_agree_with_snapshots_and_the_packs_on_disk() {
    let env = TestEnv::with_repo();
    let dir = ckpt(&env, 5);
    let first = text(&env.backup(&[&dir], &[]), "id");
    // The same tree again: everything deduplicated.
    let second = text(&env.backup(&[&dir], &["--full"]), "id");
    let listed = env.snapshots();

    let one = env
        .tvault(["--json", "stats", &first])
        .expect_code(0)
        .json();
    assert_eq!(text(&one, "id"), first);
    assert_eq!(num(&one, "restore_size"), num(&listed[0], "total_bytes"));
    assert_eq!(num(&one, "files"), num(&listed[0], "files"));
    let by = one["by_encoding"].as_object().unwrap();
    assert!(!by.is_empty());
    for field in ["chunks", "plain_bytes", "stored_bytes"] {
        let sum: u64 = by.values().map(|b| num(b, field)).sum();
        assert_eq!(sum, num(&one, field), "{field}: {one:#}");
    }
    assert!(num(&one, "plain_bytes") <= num(&one, "restore_size"));
    assert!(
        num(&one, "stored_bytes") <= num(&one, "plain_bytes"),
        "{one:#}"
    );
    let ratio = one["dedup_ratio"].as_f64().unwrap();
    assert!(
        (ratio - num(&one, "restore_size") as f64 / num(&one, "plain_bytes") as f64).abs() < 1e-9
    );
    let two = env
        .tvault(["--json", "stats", &second])
        .expect_code(0)
        .json();
    assert_eq!(two["plain_bytes"], one["plain_bytes"]);

    let all = env.tvault(["--json", "stats"]).expect_code(0).json();
    assert_eq!(num(&all, "snapshots"), 2);
    let packs = files_below(&env.repo.join("data"));
    assert_eq!(num(&all, "packs"), packs.len() as u64);
    let on_disk: u64 = packs.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(num(&all, "pack_bytes"), on_disk);
    let restore: u64 = listed.iter().map(|s| num(s, "total_bytes")).sum();
    assert_eq!(num(&all, "restore_size"), restore);
    // Two identical snapshots: the repository holds each chunk once.
    assert_eq!(all["plain_bytes"], one["plain_bytes"]);
    assert!(
        all["dedup_ratio"].as_f64().unwrap() >= 2.0 * ratio - 1e-9,
        "{all:#}"
    );
    assert!(num(&all, "stored_bytes") < on_disk);

    let run = env.tvault(["stats", &first]).expect_code(0);
    assert!(run.stdout.contains("dedup"), "{run}");
}

/// A GGUF v3 file with no metadata and F32 tensors (name, values), at the default alignment
/// of 32: each tensor's data is followed by padding up to the next multiple of 32.
fn gguf(tensors: &[(&str, Vec<f32>)]) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut f = b"GGUF".to_vec();
    f.extend_from_slice(&3u32.to_le_bytes());
    f.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, values) in tensors {
        f.extend_from_slice(&(name.len() as u64).to_le_bytes());
        f.extend_from_slice(name.as_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&(values.len() as u64).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes()); // F32
        f.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + 4 * values.len() as u64).next_multiple_of(32);
    }
    f.resize(f.len().next_multiple_of(32), 0);
    let data_start = f.len() as u64;
    let mut ranges = Vec::new();
    for ((_, values), at) in tensors.iter().zip(offsets) {
        f.resize((data_start + at) as usize, 0);
        ranges.push((f.len() as u64, 4 * values.len() as u64));
        for v in values {
            f.extend_from_slice(&v.to_le_bytes());
        }
    }
    (f, ranges)
}

#[test]
fn dump_tensor_of_a_gguf_file_leaves_out_the_alignment_padding() {
    let env = TestEnv::with_repo();
    let values = |n: usize, k: f32| (0..n).map(|i| i as f32 * k).collect::<Vec<_>>();
    let (file, ranges) = gguf(&[
        ("tok_embd.weight", values(10, 1.5)),
        ("output.weight", values(8, -2.0)),
    ]);
    let path = env.write("src/model/tiny.gguf", &file);
    let id = text(&env.backup(&[&env.src.join("model")], &[]), "id");
    for (name, (start, len)) in ["tok_embd.weight", "output.weight"].iter().zip(ranges) {
        let (status, bytes, stderr) =
            env.tvault_bytes(["dump", &id, "model/tiny.gguf", "--tensor", name]);
        assert!(status.success(), "{name}: {stderr}");
        assert_eq!(bytes.len() as u64, len, "{name}: no padding");
        assert_eq!(
            bytes,
            crate::testenv::read_at(&path, start, len as usize),
            "{name}"
        );
    }
}
