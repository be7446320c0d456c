//! What a restic user types on the first day: `check`, `tag`, and the same JSON field (`id`)
//! for a snapshot's ID in every report (the older names kept beside it for a release).

use std::fs;

use serde_json::Value;

use crate::testenv::{args, random_bytes, text, TestEnv};

fn snapshot(env: &TestEnv, tags: &[&str]) -> String {
    env.write("src/ckpt/config.json", format!("{tags:?}").as_bytes());
    let mut extra = Vec::new();
    for t in tags {
        extra.extend(["--tag", t]);
    }
    let r = env.backup(&[&env.src.join("ckpt")], &extra);
    text(&r, "id")
}

#[test]
fn check_is_verify_under_restics_name() {
    let env = TestEnv::with_repo();
    snapshot(&env, &[]);
    let v = env
        .tvault(["--json", "check", "--read-data"])
        .expect_code(0)
        .json();
    assert_eq!(v["clean"], true);
    assert_eq!(v["read_data"], "all");
    // Damage is found the same way, with the same exit code.
    let pack = crate::testenv::files_below(&env.repo.join("data"))[0].clone();
    crate::testenv::flip_byte(&pack, 100);
    env.tvault(["check", "--read-data"]).expect_code(4);
    let help = env.tvault(["--help"]).expect_code(0);
    assert!(help.stdout.contains("check"), "{help}");
}

#[test]
fn tag_adds_and_removes_tags_and_says_the_new_id() {
    let env = TestEnv::with_repo();
    let first = snapshot(&env, &["hourly"]);
    let other = snapshot(&env, &["daily"]);
    let r = env
        .tvault([
            "--json",
            "tag",
            &first[..8],
            "--add",
            "keep",
            "--remove",
            "hourly",
        ])
        .expect_code(0)
        .json();
    assert_eq!(r["changed"], true);
    assert_eq!(text(&r, "old_id"), first);
    let new = text(&r, "id");
    assert_ne!(new, first);
    assert_eq!(r["tags"], serde_json::json!(["keep"]));
    let snaps = env.snapshots();
    let ids: Vec<String> = snaps.iter().map(|s| text(s, "id")).collect();
    assert!(
        ids.contains(&new) && ids.contains(&other) && !ids.contains(&first),
        "{ids:?}"
    );
    let tagged = snaps.iter().find(|s| text(s, "id") == new).unwrap();
    assert_eq!(tagged["tags"], serde_json::json!(["keep"]));
    // The retagged snapshot restores as before.
    let out = env.restore(&new);
    assert_eq!(
        fs::read(out.join("ckpt/config.json")).unwrap(),
        format!("{:?}", ["hourly"]).as_bytes()
    );
    // Human output names old -> new; a change that changes nothing keeps the ID.
    let run = env
        .tvault(["tag", &new[..8], "--add", "release"])
        .expect_code(0);
    assert!(run.stdout.contains(&format!("{} -> ", &new[..8])), "{run}");
    let newest = env
        .snapshots()
        .into_iter()
        .map(|s| text(&s, "id"))
        .find(|id| id != &other)
        .unwrap();
    let r = env
        .tvault(["--json", "tag", &newest, "--add", "keep"])
        .expect_code(0)
        .json();
    assert_eq!(r["changed"], false);
    assert_eq!(text(&r, "id"), newest);
    // Without --add/--remove, or with the same tag in both: a clear refusal, nothing changed.
    let before = env.repo_state();
    env.tvault(["tag", &newest]).expect_code(2);
    env.tvault(["tag", &newest, "--add", "x", "--remove", "x"])
        .expect_code(1)
        .stderr_has(&["both added and removed"]);
    assert_eq!(env.repo_state(), before);
}

/// Every report names a snapshot's ID `id`; `snapshot_id` and `snapshot`, the older names,
/// stay beside it for a release (README: deprecated). Regression (issue 10.3): they mixed.
#[test]
fn every_report_names_the_snapshot_id_id() {
    let env = TestEnv::with_repo();
    let id = snapshot(&env, &[]);
    let backup = env
        .tvault(args!["--json", "backup", env.src.join("ckpt")])
        .expect_code(0)
        .json();
    let second = text(&backup, "id");
    assert_eq!(backup["snapshot_id"], backup["id"]);

    let target = env.fresh_path("restore");
    let restore = env
        .tvault(args!["--json", "restore", &id, &target])
        .expect_code(0)
        .json();
    assert_eq!(text(&restore, "id"), id);
    assert_eq!(restore["snapshot_id"], restore["id"]);

    let tar = env.path("out.tar");
    let export = env
        .tvault(args!["--json", "restore", &id, "--tar", &tar])
        .expect_code(0)
        .json();
    assert_eq!(text(&export, "id"), id);
    assert_eq!(export["snapshot_id"], export["id"]);

    let show = env
        .tvault(["--json", "show", &second])
        .expect_code(0)
        .json();
    assert_eq!(text(&show, "id"), second);
    assert_eq!(show["snapshot"], show["id"]);

    let stats = env.tvault(["--json", "stats", &id]).expect_code(0).json();
    assert_eq!(text(&stats, "id"), id);
    let snaps = env.tvault(["--json", "snapshots"]).expect_code(0).json();
    assert_eq!(text(&snaps[0], "id"), id);
    let ls = env.tvault(["--json", "ls", &id]).expect_code(0).json();
    assert_eq!(text(&ls[0], "id"), id);

    // verify's affected snapshots: `id` whole, `snapshot` (deprecated) the short form it was.
    let pack = crate::testenv::files_below(&env.repo.join("data"))[0].clone();
    crate::testenv::flip_byte(&pack, 100);
    let v: Value = env
        .tvault(["--json", "verify", "--read-data"])
        .expect_code(4)
        .json();
    let affected = &v["problems"][0]["affected"][0];
    let full = text(affected, "id");
    assert_eq!(full.len(), 64, "{v:#}");
    assert_eq!(text(affected, "snapshot"), full[..8]);
    assert_eq!(text(&v["broken_snapshots"][0], "id").len(), 64, "{v:#}");
}

/// Regression (issue 10.4): "1 files". Counts agree with their noun in every summary line.
#[test]
fn summaries_say_1_file_not_1_files() {
    let env = TestEnv::with_repo();
    env.write("src/one/only.bin", b"just one file");
    let run = env
        .tvault(args!["backup", env.src.join("one")])
        .expect_code(0);
    assert!(run.stdout.contains(": 1 file (1 new"), "{run}");
    let id = text(&env.snapshots()[0], "id");
    let target = env.fresh_path("restore");
    let run = env.tvault(args!["restore", &id, &target]).expect_code(0);
    assert!(
        run.stdout.contains("1 file, 1 directory, 0 symlinks"),
        "{run}"
    );
    let run = env.tvault(["verify"]).expect_code(0);
    assert!(
        run.stdout
            .contains("checked 1 snapshot, 1 index file, 1 pack"),
        "{run}"
    );
    let stats = env.tvault(["stats", &id]).expect_code(0);
    assert!(stats.stdout.contains("1 file, 1 directory"), "{stats}");
    for out in [&run.stdout, &stats.stdout] {
        assert!(!out.contains("1 files") && !out.contains("(s)"), "{out}");
    }
}

/// `restore ID --tar - | head` (a reader that stops early) is the reader's choice, as for
/// `dump` and `snapshots`: exit 0, no error. Regression: it exited 1 with "Broken pipe".
#[test]
fn restore_tar_to_a_pipe_closed_early_exits_0() {
    use std::io::Read;
    let env = TestEnv::with_repo();
    env.write("src/ckpt/weights.bin", &random_bytes(4 << 20, 11));
    let id = snapshot(&env, &[]);
    let mut cmd = env.command();
    cmd.arg("--repo")
        .arg(&env.repo)
        .args(["restore", &id, "--tar", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut head = [0u8; 1000];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
