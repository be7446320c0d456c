//! `backup --settle D`: a file still being written is never silently dropped. It keeps the
//! parent snapshot's version (or, new, is listed as not yet stored), a checkpoint folder with a
//! settling file keeps the parent's version of all its files, the deferral is counted across
//! runs, and past `--settle-max` the snapshot is incomplete (exit 3) and the metrics say so.
//! A file that starts being rewritten after the walk (before or while the backup reads it)
//! is caught by the `TVAULT_TEST_PAUSE` hook at the exact instant, never by timing.
//! Times are set explicitly (`set_mtime`, rewritten manifests), never waited for.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::bad_input::s;
use crate::locks::{resume, spawn_paused, wait_paused};
use crate::testenv::{
    args, finish, num, set_mtime, sources_manifest, text, Manifest, Run, TestEnv,
};

/// Unix time `secs` seconds ago.
fn ago(secs: i64) -> i64 {
    chrono::Utc::now().timestamp() - secs
}

/// Writes `rel` below the temp dir with `bytes`, its mtime `age` seconds in the past.
fn write_aged(env: &TestEnv, rel: &str, bytes: &[u8], age: i64) -> PathBuf {
    let path = env.write(rel, bytes);
    set_mtime(&path, ago(age), 0);
    path
}

/// `expected` with the entries under `paths` taken from `older` (absent there: left out).
fn with_old(expected: &Manifest, older: &Manifest, paths: &[&str]) -> Manifest {
    let mut out: Manifest = expected
        .iter()
        .filter(|(p, _)| !paths.iter().any(|x| p.as_path() == Path::new(x)))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    for x in paths {
        if let Some(e) = older.get(Path::new(x)) {
            out.insert(PathBuf::from(x), e.clone());
        }
    }
    out
}

/// The `settling_details` entry of the file ending in `name`.
#[track_caller]
fn detail<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["settling_details"]
        .as_array()
        .unwrap_or_else(|| panic!("no settling_details: {r:#}"))
        .iter()
        .find(|d| text(d, "path").ends_with(name))
        .unwrap_or_else(|| panic!("{name} is not in settling_details: {r:#}"))
}

/// The sorted file names (last component) listed in `settling`.
fn settling_names(r: &Value) -> Vec<String> {
    let mut names: Vec<String> = r["settling"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = p.as_str().unwrap();
            p.rsplit('/').next().unwrap().to_string()
        })
        .collect();
    names.sort();
    names
}

/// Moves the start of every deferral recorded in snapshot `id` back by `secs` (as if that
/// snapshot had been taken that long ago); returns the manifest's new ID.
fn backdate_deferrals(env: &TestEnv, id: &str, secs: i64) -> String {
    env.rewrite_snapshot(id, |m| {
        let list = m["deferred"].as_array_mut().expect("deferrals recorded");
        assert!(!list.is_empty());
        for d in list {
            let since = d["since"]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>();
            let since = since.unwrap() - chrono::Duration::seconds(secs);
            d["since"] = json!(since);
        }
    })
}

#[test]
fn a_settling_file_keeps_its_parent_version_until_it_settles() {
    let env = TestEnv::with_repo();
    let run = env.path("src/run");
    let ckpt = write_aged(&env, "src/run/last.ckpt", b"step 100 weights", 3600);
    write_aged(&env, "src/run/log.txt", b"step 100\n", 3600);
    set_mtime(&run, ago(3600), 0);
    let step_100 = sources_manifest(&[&run]);
    env.backup(&[&run], &["--settle", "10m"]);

    // Step 200: the log is finished, the checkpoint is being rewritten right now.
    write_aged(&env, "src/run/log.txt", b"step 100\nstep 200\n", 1200);
    fs::write(&ckpt, b"step 200 weights, half writ").unwrap();
    let now = sources_manifest(&[&run]);
    let out = env.backup_run(&[&run], &["--settle", "10m"]).expect_code(0);
    let r = out.json();
    assert_eq!(r["complete"], true, "{out}");
    assert_eq!(settling_names(&r), ["last.ckpt"], "{out}");
    assert_eq!(
        num(&r, "files"),
        2,
        "the settling file is in the snapshot: {out}"
    );
    // The snapshot holds the parent's version of the checkpoint (bytes and mtime), the new log.
    let second = text(&r, "id");
    env.assert_restores(&second, &with_old(&now, &step_100, &["run/last.ckpt"]));
    let d = detail(&r, "run/last.ckpt");
    assert_eq!(d["kept_from_parent"], true, "{out}");
    assert_eq!(num(d, "deferred_seconds"), 0, "{out}");
    out.stderr_has(&[s(&fs::canonicalize(&ckpt).unwrap()), "--settle"]);

    // Still being written at the next run, an hour after it was first deferred: the version
    // carried over is carried over again, and the deferral counts from the first snapshot.
    let second = backdate_deferrals(&env, &second, 3600);
    let out = env
        .backup_run(&[&run], &["--settle", "10m", "--settle-max", "2h"])
        .expect_code(0);
    let r = out.json();
    let d = detail(&r, "run/last.ckpt");
    assert_eq!(d["kept_from_parent"], true, "{out}");
    assert!(num(d, "deferred_seconds") >= 3600, "{out}");
    assert!(
        num(d, "deferred_seconds") < 3600 + 60,
        "counted from the first deferral: {out}"
    );
    assert_eq!(r["parent"], json!(second), "{out}");
    env.assert_restores(
        &text(&r, "id"),
        &with_old(&now, &step_100, &["run/last.ckpt"]),
    );
    let human = env
        .tvault(args![
            "backup",
            &run,
            "--settle",
            "10m",
            "--settle-max",
            "2h"
        ])
        .expect_code(0);
    assert!(
        human
            .stdout
            .contains("1 kept at their version in the parent snapshot"),
        "{human}"
    );

    // Once finished, the next backup reads it (the parent's kept entry does not match it) and
    // stores the new content, not the stale chunks.
    set_mtime(&ckpt, ago(1200), 0);
    let now = sources_manifest(&[&run]);
    let r = env.backup(&[&run], &["--settle", "10m"]);
    assert_eq!(r["settling"], json!([]), "{r:#}");
    assert_eq!(r["settling_details"], json!([]), "{r:#}");
    assert_eq!(num(&r, "files_changed"), 1, "{r:#}");
    env.assert_restores(&text(&r, "id"), &now);
    let id = tvault_core::id::Id::from_hex(&text(&r, "id")).unwrap();
    let manifest = serde_json::to_value(env.open_repo().load_snapshot(&id).unwrap()).unwrap();
    assert!(
        manifest.get("deferred").is_none(),
        "no deferral left: {manifest:#}"
    );
}

#[test]
fn a_new_settling_file_is_listed_as_not_yet_stored() {
    let env = TestEnv::with_repo();
    let run = env.path("src/run");
    write_aged(&env, "src/run/log.txt", b"step 100\n", 3600);
    let fresh = env.write("src/run/last.ckpt", b"being written");
    let out = env.backup_run(&[&run], &["--settle", "10m"]).expect_code(0);
    let r = out.json();
    assert_eq!(r["complete"], true, "{out}");
    assert_eq!(settling_names(&r), ["last.ckpt"], "{out}");
    let d = detail(&r, "run/last.ckpt");
    assert_eq!(
        text(d, "path"),
        fs::canonicalize(&fresh).unwrap().display().to_string()
    );
    assert_eq!(d["kept_from_parent"], false, "{out}");
    assert_eq!(num(d, "deferred_seconds"), 0, "{out}");
    assert_eq!(num(&r, "files"), 1, "{out}");
    let human = env
        .tvault(args!["backup", &run, "--settle", "10m"])
        .expect_code(0);
    assert!(
        human.stdout.contains("1 not in any snapshot yet"),
        "{human}"
    );
}

#[test]
fn a_checkpoint_folder_with_a_settling_shard_keeps_the_parents_version_of_every_file() {
    let env = TestEnv::with_repo();
    let run = env.path("src/run");
    let step = |n: u32, age: i64| {
        for (name, body) in [
            ("model-00001-of-00002.safetensors", "shard 1"),
            ("model-00002-of-00002.safetensors", "shard 2"),
            ("model.safetensors.index.json", "index"),
            ("trainer_state.json", "state"),
        ] {
            let rel = format!("src/run/ckpt/{name}");
            write_aged(&env, &rel, format!("{body} of step {n}").as_bytes(), age);
        }
    };
    step(100, 3600);
    write_aged(&env, "src/run/ckpt/scheduler.pt", b"scheduler", 3600);
    write_aged(&env, "src/run/logs/a.txt", b"a at step 100", 3600);
    write_aged(&env, "src/run/logs/b.txt", b"b at step 100", 3600);
    let step_100 = sources_manifest(&[&run]);
    env.backup(&[&run], &["--settle", "10m"]);

    // Step 200: every file of the folder rewritten and finished except shard 2, still being
    // written; a new file, one gone. In the unrelated folder, one file finished, one not.
    step(200, 1200);
    fs::write(
        run.join("ckpt/model-00002-of-00002.safetensors"),
        b"shard 2 of st",
    )
    .unwrap();
    write_aged(&env, "src/run/ckpt/rng_state.pth", b"rng", 1200);
    fs::remove_file(run.join("ckpt/scheduler.pt")).unwrap();
    write_aged(&env, "src/run/logs/a.txt", b"a at step 200", 1200);
    env.write("src/run/logs/b.txt", b"b at step 2");
    let now = sources_manifest(&[&run]);

    let out = env.backup_run(&[&run], &["--settle", "10m"]).expect_code(0);
    let r = out.json();
    assert_eq!(r["complete"], true, "{out}");
    let folder = [
        "run/ckpt/model-00001-of-00002.safetensors",
        "run/ckpt/model-00002-of-00002.safetensors",
        "run/ckpt/model.safetensors.index.json",
        "run/ckpt/trainer_state.json",
        "run/ckpt/scheduler.pt",
        "run/ckpt/rng_state.pth",
    ];
    let mut expected = with_old(&now, &step_100, &folder);
    expected = with_old(&expected, &step_100, &["run/logs/b.txt"]);
    env.assert_restores(&text(&r, "id"), &expected);

    assert_eq!(
        settling_names(&r),
        [
            "b.txt",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "rng_state.pth",
            "scheduler.pt",
            "trainer_state.json",
        ],
        "{out}"
    );
    let ckpt = fs::canonicalize(run.join("ckpt")).unwrap();
    for name in folder {
        let d = detail(&r, name);
        assert_eq!(d["folder"], json!(s(&ckpt)), "{name}: {out}");
        let kept = !name.ends_with("rng_state.pth");
        assert_eq!(d["kept_from_parent"], kept, "{name}: {out}");
    }
    assert_eq!(detail(&r, "logs/b.txt")["folder"], Value::Null, "{out}");
    out.stderr_has(&[s(&ckpt), "model-00002-of-00002.safetensors"]);

    // A folder that never settles raises the alarm as a whole, still holding its last step.
    backdate_deferrals(&env, &text(&r, "id"), 3600);
    let out = env.backup_run(&[&run], &["--settle", "10m"]).expect_code(3);
    let r = out.json();
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "the folder and logs/b.txt: {out}");
    let problem = problems
        .iter()
        .map(|p| p.as_str().unwrap())
        .find(|p| p.starts_with("checkpoint folder"))
        .unwrap_or_else(|| panic!("{out}"));
    for needle in [
        s(&ckpt),
        "model-00002-of-00002.safetensors",
        "for 1 hour",
        "--settle-max 40 minutes",
    ] {
        assert!(problem.contains(needle), "{needle:?} not in {problem:?}");
    }
    env.assert_restores(&text(&r, "id"), &expected);

    // Once the shard is finished, the whole step is stored.
    set_mtime(
        &run.join("ckpt/model-00002-of-00002.safetensors"),
        ago(1200),
        0,
    );
    set_mtime(&run.join("logs/b.txt"), ago(1200), 0);
    let now = sources_manifest(&[&run]);
    let r = env.backup(&[&run], &["--settle", "10m"]);
    assert_eq!(r["settling"], json!([]), "{r:#}");
    env.assert_restores(&text(&r, "id"), &now);
}

#[test]
fn a_file_that_never_settles_makes_the_snapshot_incomplete_past_settle_max() {
    let env = TestEnv::with_repo();
    let run = env.path("src/run");
    let ckpt = write_aged(&env, "src/run/last.ckpt", b"step 100 weights", 3600);
    let step_100 = sources_manifest(&[&run]);
    env.backup(&[&run], &["--settle", "10m"]);
    fs::write(&ckpt, b"step 200 weights, half writ").unwrap();
    let r = env.backup(&[&run], &["--settle", "10m"]);
    let first_deferral = text(&r, "id");
    backdate_deferrals(&env, &first_deferral, 3600);

    // Still being written an hour later: past the default bound (4 × 10m), an alarm.
    let prom = env.path("backup.prom");
    let out = env
        .backup_run(&[&run], &["--settle", "10m", "--metrics-file", s(&prom)])
        .expect_code(3);
    let r = out.json();
    assert_eq!(r["complete"], false, "{out}");
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{out}");
    let problem = problems[0].as_str().unwrap();
    let canonical = fs::canonicalize(&ckpt).unwrap();
    for needle in [s(&canonical), "--settle-max 40 minutes", "after 1 hour"] {
        assert!(problem.contains(needle), "{needle:?} not in {problem:?}");
    }
    out.stderr_has(&["INCOMPLETE"]);
    // Nothing is dropped: the snapshot still holds the last version it had.
    env.assert_restores(&text(&r, "id"), &step_100);
    let metrics = fs::read_to_string(&prom).unwrap();
    let oldest = metrics
        .lines()
        .find(|l| l.starts_with("tvault_backup_oldest_deferral_seconds{"))
        .unwrap_or_else(|| panic!("no oldest deferral metric:\n{metrics}"));
    let secs: f64 = oldest.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((3600.0..3660.0).contains(&secs), "{oldest}");
    assert!(metrics.contains("tvault_backup_complete{"), "{metrics}");
    assert!(
        metrics.contains("tvault_last_run_success{command=\"backup\""),
        "{metrics}"
    );

    // A longer bound accepts it; with nothing deferred the metric is 0.
    env.backup(&[&run], &["--settle", "10m", "--settle-max", "2h"]);
    set_mtime(&ckpt, ago(1200), 0);
    env.backup_run(&[&run], &["--settle", "10m", "--metrics-file", s(&prom)])
        .expect_code(0);
    let metrics = fs::read_to_string(&prom).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tvault_backup_oldest_deferral_seconds{") && l.ends_with(" 0")),
        "{metrics}"
    );

    // --settle-max needs --settle, and may not be shorter than it.
    env.tvault(args!["backup", &run, "--settle-max", "1h"])
        .expect_code(2)
        .stderr_has(&["--settle"]);
    env.tvault(args![
        "backup",
        &run,
        "--settle",
        "10m",
        "--settle-max",
        "5m"
    ])
    .expect_code(1)
    .stderr_has(&["--settle-max 5 minutes", "--settle 10 minutes"]);
}

/// A trainer writing a new folder per step (`checkpoints/checkpoint-1000/` beside the finished
/// `checkpoint-500/`): the folder still being filled is not in the snapshot at all. Restored
/// empty, it would look like the newest checkpoint to a trainer resuming from the newest
/// folder. The finished step is stored; the backed-up path itself always stays.
#[test]
fn a_new_checkpoint_folder_still_being_written_is_left_out_whole() {
    let env = TestEnv::with_repo();
    let old = 3600;
    write_aged(
        &env,
        "src/run/checkpoint-500/model.safetensors",
        b"step 500",
        old,
    );
    write_aged(
        &env,
        "src/run/checkpoint-500/trainer_state.json",
        b"{}",
        old,
    );
    write_aged(
        &env,
        "src/run/checkpoint-1000/model.safetensors",
        b"step 1000",
        5,
    );
    write_aged(&env, "src/run/checkpoint-1000/sub/rng_state.pth", b"rng", 5);
    let run_dir = env.src.join("run");
    let r = env.backup(&[&run_dir], &["--settle", "10m"]);
    assert_eq!(settling_names(&r).len(), 2, "{r:#}");
    let out = env.restore(&text(&r, "id"));
    assert!(out.join("run/checkpoint-500/model.safetensors").exists());
    assert!(
        !out.join("run/checkpoint-1000").exists(),
        "an empty folder of a step being written was restored"
    );
    assert_eq!(num(&r, "dirs"), 2, "{r:#}");
    // A backup of the folder being written keeps the folder itself, empty.
    let step = env.src.join("run/checkpoint-1000");
    let r = env.backup(&[&step], &["--settle", "10m"]);
    let out = env.restore(&text(&r, "id"));
    assert!(out.join("checkpoint-1000").is_dir());
    assert!(fs::read_dir(out.join("checkpoint-1000"))
        .unwrap()
        .next()
        .is_none());
}

/// `backup --json --settle 10m RUN`, held at the test hook `point` while `meanwhile` runs (the
/// trainer starting its next step), then let go; its run.
fn backup_while(env: &TestEnv, run: &Path, point: &str, meanwhile: impl FnOnce()) -> Run {
    let a = args!["--json", "backup", run, "--settle", "10m"];
    let mut child = spawn_paused(env, point, a);
    wait_paused(env, point, &mut child);
    meanwhile();
    resume(env, point);
    finish(child, &format!("backup --settle 10m, paused at {point}"))
}

/// The walk finds step 200 settled (finished 20 minutes ago); before the backup reads it, the
/// trainer starts step 300: one file half rewritten in place, one replaced by a rename with
/// its mtime set back (as `cp -p` and rsync do), one deleted to be written anew, and shard 2
/// of a checkpoint folder half rewritten. Reading them would store torn or mixed files: each
/// keeps the parent's version, as a file modified within `--settle` does, and so does shard 1,
/// read complete but from the same folder.
#[test]
fn a_file_rewritten_between_the_walk_and_its_read_keeps_its_parent_version() {
    let env = TestEnv::with_repo();
    let run = env.path("src/run");
    let names = [
        "ckpt/model-00001-of-00002.safetensors",
        "ckpt/model-00002-of-00002.safetensors",
        "last.ckpt",
        "notes.txt",
        "weights.bin",
    ];
    let step = |n: u32, age: i64| {
        for name in names {
            let body = format!("{name} of step {n}");
            write_aged(&env, &format!("src/run/{name}"), body.as_bytes(), age);
        }
    };
    step(100, 3600);
    let step_100 = sources_manifest(&[&run]);
    env.backup(&[&run], &["--settle", "10m"]);
    step(200, 1200);
    let at_walk = sources_manifest(&[&run]);

    let out = backup_while(&env, &run, "backup-open", || {
        fs::write(run.join("last.ckpt"), b"last.ckpt of st").unwrap();
        let shard_2 = run.join("ckpt/model-00002-of-00002.safetensors");
        fs::write(shard_2, b"shard 2 of st").unwrap();
        let tmp = write_aged(&env, "src/weights.tmp", b"weights.bin of step 300", 1200);
        fs::rename(tmp, run.join("weights.bin")).unwrap();
        fs::remove_file(run.join("notes.txt")).unwrap();
    })
    .expect_code(0);
    let r = out.json();
    assert_eq!(r["complete"], true, "{out}");
    let mut expected_names: Vec<&str> = names
        .iter()
        .map(|n| n.rsplit('/').next().unwrap())
        .collect();
    expected_names.sort();
    assert_eq!(settling_names(&r), expected_names, "{out}");
    let ckpt = fs::canonicalize(run.join("ckpt")).unwrap();
    for name in names {
        let d = detail(&r, name);
        assert_eq!(d["kept_from_parent"], true, "{name}: {out}");
        let folder = name.starts_with("ckpt/").then(|| s(&ckpt));
        assert_eq!(d["folder"], json!(folder), "{name}: {out}");
    }
    // Shard 1, first in the walk's order, was checked before the trainer started, then read
    // whole; the files found changed are not read at all.
    let shard_1 = fs::metadata(run.join(names[0])).unwrap().len();
    assert_eq!(num(&r, "bytes_read"), shard_1, "{out}");
    let files: Vec<String> = names.iter().map(|n| format!("run/{n}")).collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    env.assert_restores(&text(&r, "id"), &with_old(&at_walk, &step_100, &files));
    out.stderr_has(&["last.ckpt: changed during this backup", s(&ckpt)]);
}

/// The trainer starts rewriting the file in place just before the backup opens it (after the
/// backup checked it against the walk), then while the backup reads it: what the backup reads
/// is half written, or half old and half new. Without `--settle` a file that changes while
/// read is read once more; with it, the file is being written, so it keeps the parent's
/// version at once.
#[test]
fn a_file_rewritten_as_it_is_opened_or_read_keeps_its_parent_version() {
    let env = TestEnv::with_repo();
    let run = env.path("src/run");
    let ckpt = write_aged(&env, "src/run/last.ckpt", b"step 100 weights", 3600);
    write_aged(&env, "src/run/log.txt", b"step 100\n", 3600);
    let step_100 = sources_manifest(&[&run]);
    env.backup(&[&run], &["--settle", "10m"]);

    for (point, step) in [("backup-open", 200), ("backup-opened", 300)] {
        let done = format!("step {step} weights");
        write_aged(&env, "src/run/last.ckpt", done.as_bytes(), 1200);
        let at_walk = sources_manifest(&[&run]);
        let torn = format!("step {} wei", step + 100);
        let out =
            backup_while(&env, &run, point, || fs::write(&ckpt, &torn).unwrap()).expect_code(0);
        let r = out.json();
        assert_eq!(r["complete"], true, "{point}: {out}");
        let read_once = torn.len() as u64;
        assert_eq!(num(&r, "bytes_read"), read_once, "not read again: {out}");
        assert_eq!(settling_names(&r), ["last.ckpt"], "{point}: {out}");
        let d = detail(&r, "last.ckpt");
        assert_eq!(d["kept_from_parent"], true, "{point}: {out}");
        env.assert_restores(
            &text(&r, "id"),
            &with_old(&at_walk, &step_100, &["run/last.ckpt"]),
        );
        out.stderr_has(&["last.ckpt: changed during this backup"]);
    }
}

/// A checkpoint folder is known by its marker files; one being rewritten (deleted and written
/// anew) is missing from the disk. The parent snapshot's file names still make the folder a
/// checkpoint folder, so it is kept whole at the parent's version, not settled file by file.
#[test]
fn a_checkpoint_folder_whose_marker_is_being_rewritten_is_kept_whole() {
    let env = TestEnv::with_repo();
    let run = env.path("src/run");
    for (name, body) in [
        ("model.safetensors", "model"),
        ("config.json", "config"),
        ("trainer_state.json", "state"),
    ] {
        let rel = format!("src/run/ckpt/{name}");
        write_aged(&env, &rel, format!("{body} of step 100").as_bytes(), 3600);
    }
    let step_100 = sources_manifest(&[&run]);
    env.backup(&[&run], &["--settle", "10m"]);

    // Step 200: the config is finished, the weights are being written, the trainer state is
    // gone until the trainer writes it again.
    write_aged(
        &env,
        "src/run/ckpt/config.json",
        b"config of step 200",
        1200,
    );
    env.write("src/run/ckpt/model.safetensors", b"model of st");
    fs::remove_file(run.join("ckpt/trainer_state.json")).unwrap();
    let now = sources_manifest(&[&run]);

    let out = env.backup_run(&[&run], &["--settle", "10m"]).expect_code(0);
    let r = out.json();
    assert_eq!(r["complete"], true, "{out}");
    let folder = [
        "run/ckpt/config.json",
        "run/ckpt/model.safetensors",
        "run/ckpt/trainer_state.json",
    ];
    env.assert_restores(&text(&r, "id"), &with_old(&now, &step_100, &folder));
    assert_eq!(
        settling_names(&r),
        ["config.json", "model.safetensors", "trainer_state.json"],
        "{out}"
    );
    let ckpt = fs::canonicalize(run.join("ckpt")).unwrap();
    for name in folder {
        let d = detail(&r, name);
        assert_eq!(d["folder"], json!(s(&ckpt)), "{name}: {out}");
        assert_eq!(d["kept_from_parent"], true, "{name}: {out}");
    }
}
