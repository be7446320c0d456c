//! Unattended operation (cron, systemd timers, CI): `--exclude`/`--exclude-file`, `--settle`,
//! `--read-limit`, `--lock-wait`, the `snapshots` filters and the `--max-age` freshness alarm,
//! `diff` down to tensors, `--metrics-file` on backup, verify and prune, `completions` and
//! `man`, and the bad values of all these flags: each a clear error naming the value, the
//! documented exit code, and nothing changed. Tar export and import: `tar.rs`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tvault_workload::{ModelDims, Scenario};

use crate::bad_input::s;
use crate::locks::boot_and_namespace;
use crate::testenv::{
    args, bf16_model, finish, hostname, names_in, num, random_bytes, retrain_tensor,
    safetensors_tensors, set_mode, set_mtime, sources_manifest, text, Manifest, TestEnv,
};
use crate::verify::assert_fields;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Unix time now, in seconds.
fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Sets the mtime of `dir` and everything below it (symlinks excepted) an hour back, as files
/// a training job finished writing long ago.
fn finished_long_ago(dir: &Path) {
    let an_hour_ago = now_secs() - 3600;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        if !entry.path_is_symlink() {
            set_mtime(entry.path(), an_hour_ago, 0);
        }
    }
}

/// `expected` without `paths` and everything below them.
fn without(expected: &Manifest, paths: &[&str]) -> Manifest {
    expected
        .iter()
        .filter(|(p, _)| !paths.iter().any(|x| p.starts_with(x)))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// The IDs of a `snapshots --json` listing, in order.
fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|s| text(s, "id")).collect()
}

/// `tvault --json snapshots FILTER…`, which must exit 0; the IDs listed.
#[track_caller]
fn listed(env: &TestEnv, filter: &[&str]) -> Vec<String> {
    let mut a: Vec<OsString> = args!["--json", "snapshots"];
    a.extend(filter.iter().map(OsString::from));
    let run = env.tvault(a).expect_code(0);
    ids(run.json().as_array().expect("an array"))
}

/// Writes a lock file as a running `prune` with process `pid` on this host holds it, just
/// refreshed (so it is live while `pid` runs).
fn plant_live_lock(env: &TestEnv, pid: u32) -> PathBuf {
    env.forge_lock("ab", json!({ "pid": pid }))
}

/// A Prometheus textfile: metric name → (labels, value text). Every sample must be preceded
/// by its `# HELP` and `# TYPE … gauge` lines.
fn metrics(path: &Path) -> BTreeMap<String, (String, String)> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("metrics file {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, rest) = line.split_once('{').unwrap_or_else(|| panic!("{line}"));
        let (labels, value) = rest.split_once("} ").unwrap_or_else(|| panic!("{line}"));
        assert!(
            i >= 2
                && lines[i - 2].starts_with(&format!("# HELP {name} "))
                && lines[i - 1] == format!("# TYPE {name} gauge"),
            "{name} lacks its HELP and TYPE lines:\n{text}"
        );
        let old = out.insert(name.to_string(), (labels.to_string(), value.to_string()));
        assert!(old.is_none(), "{name} written twice:\n{text}");
    }
    out
}

/// A metric's value as a number.
#[track_caller]
fn value(m: &BTreeMap<String, (String, String)>, name: &str) -> f64 {
    let (_, v) = m
        .get(name)
        .unwrap_or_else(|| panic!("no metric {name} in {m:#?}"));
    v.parse()
        .unwrap_or_else(|e| panic!("{name} = {v:?} is not a number: {e}"))
}

/// Every metric the README documents for `command`, each labelled with the command and the
/// repository.
#[track_caller]
fn assert_documented_metrics(m: &BTreeMap<String, (String, String)>, command: &str, repo: &Path) {
    let own: &[&str] = match command {
        "backup" => &[
            "tvault_backup_bytes_read",
            "tvault_backup_bytes_added",
            "tvault_backup_files",
            "tvault_backup_complete",
            "tvault_backup_settling_files",
            "tvault_backup_oldest_deferral_seconds",
            "tvault_snapshots",
        ],
        "verify" => &[
            "tvault_verify_problems",
            "tvault_verify_bytes_read",
            "tvault_snapshots",
        ],
        "prune" => &[
            "tvault_prune_snapshots_removed",
            "tvault_prune_bytes_freed",
            "tvault_snapshots",
        ],
        _ => unreachable!(),
    };
    let labels = format!("command=\"{command}\",repository=\"{}\"", repo.display());
    for name in [
        "tvault_last_run_success",
        "tvault_last_run_timestamp_seconds",
        "tvault_last_success_timestamp_seconds",
        "tvault_duration_seconds",
    ]
    .iter()
    .chain(own)
    {
        let (l, _) = m
            .get(*name)
            .unwrap_or_else(|| panic!("no metric {name} for {command}: {m:#?}"));
        assert_eq!(l, &labels, "labels of {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// --exclude, --exclude-file

/// A checkpoint directory with partial `*.tmp` files at several depths, a directory named like
/// one, a cache and a log directory: 7 entries to exclude (directories count once, their
/// contents are not visited).
fn tree_with_clutter(env: &TestEnv) -> PathBuf {
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 61, 0);
    for (rel, content) in [
        ("step-900.safetensors.tmp", "partial"),
        ("run/step-950.tmp", "partial"),
        ("run/deep/x.tmp", "partial"),
        ("run/keep.tmpx", "not a tmp file"),
        ("run/#keep", "named like a comment"),
        (
            "partial.tmp/a.bin",
            "in a directory named like a partial file",
        ),
        ("partial.tmp/b.bin", "also"),
        ("cache/a.bin", "cached"),
        ("cache/sub/b.bin", "cached"),
        ("cache/sub/c.bin", "cached"),
        ("logs/train.log", "loss 1.9"),
        (
            "notes/cache/kept.txt",
            "a `cache` elsewhere is not `ckpt/cache`",
        ),
    ] {
        env.write(Path::new("src/ckpt").join(rel), content.as_bytes());
    }
    ckpt
}

/// What restoring the cluttered tree must give once the 7 entries are excluded: `ckpt/cache`
/// itself stays (only what is below it matches `ckpt/cache/**`), empty.
fn uncluttered(ckpt: &Path) -> Manifest {
    without(
        &sources_manifest(&[ckpt]),
        &[
            "ckpt/step-900.safetensors.tmp",
            "ckpt/run/step-950.tmp",
            "ckpt/run/deep/x.tmp",
            "ckpt/partial.tmp",
            "ckpt/cache/a.bin",
            "ckpt/cache/sub",
            "ckpt/logs",
        ],
    )
}

#[test]
fn exclude_names_at_any_depth_stored_paths_and_absolute_paths() {
    let env = TestEnv::with_repo();
    let ckpt = tree_with_clutter(&env);
    let logs = fs::canonicalize(&ckpt).unwrap().join("logs");
    let expected = uncluttered(&ckpt);
    assert!(expected.contains_key(Path::new("ckpt/cache")));

    let run = env
        .backup_run(
            &[&ckpt],
            &[
                "--exclude",
                "*.tmp",
                "--exclude",
                "ckpt/cache/**",
                "--exclude",
                s(&logs),
            ],
        )
        .expect_code(0);
    let r = run.json();
    assert_eq!(r["complete"], true, "{run}");
    assert_eq!(
        num(&r, "excluded"),
        7,
        "directories count once and are not descended: {run}"
    );
    env.assert_restores(&text(&r, "id"), &expected);

    // The human summary says how many entries the patterns left out.
    let run = env
        .tvault(args!["backup", &ckpt, "--exclude", "*.tmp"])
        .expect_code(0);
    assert!(
        run.stdout.contains("4 entries excluded by pattern"),
        "{run}"
    );
}

#[test]
fn exclude_file_ignores_comments_and_blank_lines_and_adds_to_exclude() {
    let env = TestEnv::with_repo();
    let ckpt = tree_with_clutter(&env);
    let logs = fs::canonicalize(&ckpt).unwrap().join("logs");
    // `#keep` would exclude `run/#keep` if the comment line were taken as a pattern.
    let list = env.write(
        "excludes.txt",
        format!(
            "# partial checkpoints\n*.tmp\n\n   \n#keep\n  ckpt/cache/**  \r\n  # logs, by absolute path\n{}\n",
            logs.display()
        )
        .as_bytes(),
    );
    let r = env.backup(&[&ckpt], &["--exclude-file", s(&list)]);
    assert_eq!(num(&r, "excluded"), 7, "{r:#}");
    env.assert_restores(&text(&r, "id"), &uncluttered(&ckpt));

    // Patterns from files and from the command line add up; several files too.
    let tmp_only = env.write("tmp.txt", b"*.tmp\n");
    let cache_only = env.write("cache.txt", b"ckpt/cache/**\n");
    let r = env.backup(
        &[&ckpt],
        &[
            "--exclude-file",
            s(&tmp_only),
            "--exclude-file",
            s(&cache_only),
            "--exclude",
            s(&logs),
        ],
    );
    assert_eq!(num(&r, "excluded"), 7, "{r:#}");
    env.assert_restores(&text(&r, "id"), &uncluttered(&ckpt));
}

// ---------------------------------------------------------------------------------------------
// --settle

#[test]
fn settle_leaves_a_file_being_written_for_the_next_backup() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 512 << 10, 62, 0);
    env.write("src/ckpt/tokenizer/vocab.txt", b"<s>\n</s>\n");
    finished_long_ago(&ckpt);
    let writing = env.write("src/ckpt/step-1000.safetensors", b"being written right now");
    let whole = sources_manifest(&[&ckpt]);
    let settled = without(&whole, &["ckpt/step-1000.safetensors"]);
    let files = whole
        .values()
        .filter(|e| matches!(e, crate::testenv::Entry::File { .. }))
        .count() as u64;

    let run = env
        .backup_run(&[&ckpt], &["--settle", "10m"])
        .expect_code(0);
    let r = run.json();
    assert_eq!(
        r["complete"], true,
        "settling files do not make it incomplete: {run}"
    );
    let settling = r["settling"].as_array().unwrap();
    assert_eq!(settling.len(), 1, "{run}");
    let canonical = fs::canonicalize(&writing).unwrap();
    assert!(
        settling[0].as_str().unwrap().contains(s(&canonical)),
        "{run}"
    );
    assert_eq!(num(&r, "files"), files - 1, "{run}");
    run.stderr_has(&[s(&canonical), "--settle"]);
    env.assert_restores(&text(&r, "id"), &settled);

    // The human summary says so too.
    let run = env
        .tvault(args!["backup", &ckpt, "--settle", "10m"])
        .expect_code(0);
    assert!(run.stdout.contains("left for the next backup"), "{run}");

    // Once the file is finished (its mtime an hour back), the next run takes it.
    set_mtime(&writing, now_secs() - 3600, 0);
    let whole = sources_manifest(&[&ckpt]);
    let r = env.backup(&[&ckpt], &["--settle", "10m"]);
    assert_eq!(r["settling"], json!([]), "{r:#}");
    assert_eq!(num(&r, "files"), files, "{r:#}");
    assert_eq!(num(&r, "files_new"), 1, "{r:#}");
    env.assert_restores(&text(&r, "id"), &whole);
}

// ---------------------------------------------------------------------------------------------
// --read-limit

#[test]
fn read_limit_caps_the_average_read_rate() {
    let env = TestEnv::with_repo();
    let data = random_bytes((12 * MIB) as usize, 63);
    env.write("src/big/weights.bin", &data);
    let big = env.src.join("big");
    let started = Instant::now();
    let r = env.backup(&[&big], &["--read-limit", "4MiB"]);
    let took = started.elapsed();
    assert_eq!(num(&r, "bytes_read"), 12 * MIB, "{r:#}");
    assert!(
        took >= Duration::from_secs(2),
        "12 MiB at 4 MiB/s took only {took:?}"
    );
    env.assert_restores(&text(&r, "id"), &sources_manifest(&[&big]));
    // Other spellings of a rate are accepted.
    for rate in ["1.5GB/s", "500M", "2GiB"] {
        env.backup(&[&big], &["--read-limit", rate]);
    }
}

// ---------------------------------------------------------------------------------------------
// --lock-wait

#[test]
fn lock_wait_gives_up_after_the_wait_and_succeeds_once_the_lock_is_released() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 64, 0);
    let lock = plant_live_lock(&env, std::process::id());

    // Without --lock-wait: refused at once, with the way out named.
    env.tvault(args!["backup", &ckpt])
        .expect_code(1)
        .stderr_has(&["locked", "prune", "--lock-wait"]);

    // A wait the holder outlasts: it gives up after waiting, and changes nothing.
    let before = env.repo_state();
    let started = Instant::now();
    let run = env.tvault(args!["--lock-wait", "2s", "backup", &ckpt]);
    let took = started.elapsed();
    assert_eq!(run.code(), Some(1), "{run}");
    run.stderr_has(&["locked", "prune", &format!("pid {}", std::process::id())]);
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert_eq!(env.repo_state(), before);
    assert!(lock.exists(), "a live lock is never broken");

    // A wait the holder releases within (the flag also goes after the subcommand).
    let started = Instant::now();
    let child = env.spawn_tvault(args!["--json", "backup", &ckpt, "--lock-wait", "60s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let while_held = env.snapshots();
    fs::remove_file(&lock).unwrap();
    let run = finish(child, "backup --lock-wait 60s").expect_code(0);
    assert!(while_held.is_empty(), "no backup while the lock is held");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let r = run.json();
    assert_eq!(ids(&env.snapshots()), [text(&r, "id")]);
    assert!(env.lock_files().is_empty());

    // Prune and verify wait the same way.
    let lock = plant_live_lock(&env, std::process::id());
    let prune = env.spawn_tvault(args!["--lock-wait", "60s", "prune", "--keep-last", "1"]);
    let verify = env.spawn_tvault(args!["--lock-wait", "60s", "verify"]);
    std::thread::sleep(Duration::from_millis(1000));
    fs::remove_file(&lock).unwrap();
    finish(prune, "prune --lock-wait 60s").expect_code(0);
    finish(verify, "verify --lock-wait 60s").expect_code(0);
}

#[test]
fn lock_wait_stops_waiting_when_the_holder_dies() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 65, 0);
    let mut holder = Command::new("sleep").arg("30").spawn().unwrap();
    // As a current tvault writes it: its PID is judged only with this boot and PID namespace.
    let (boot, ns) = boot_and_namespace();
    let lock = env.forge_lock(
        "ab",
        json!({"pid": holder.id(), "boot_id": boot, "pid_ns": ns}),
    );
    let started = Instant::now();
    let child = env.spawn_tvault(args!["--lock-wait", "60s", "backup", &ckpt]);
    std::thread::sleep(Duration::from_millis(1000));
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Its process is provably gone: the waiter removes the lock, says so, and goes on.
    let run = finish(child, "backup --lock-wait 60s");
    assert_eq!(run.code(), Some(0), "{run}");
    run.stderr_has(&["removed", "lock of `prune`", "gone"]);
    assert!(started.elapsed() < Duration::from_secs(30), "waited it out");
    assert!(!lock.exists());
    assert_eq!(env.snapshots().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// snapshots --tag/--host/--path, --max-age

#[test]
fn snapshots_filters_each_narrow_the_list_exactly() {
    let env = TestEnv::with_repo();
    let a = env.checkpoint("src/a", Scenario::Single, 64 << 10, 66, 0);
    let b = env.checkpoint("src/b", Scenario::Single, 64 << 10, 67, 0);
    let snap = |p: &Path, extra: &[&str]| text(&env.backup(&[p], extra), "id");
    let s1 = snap(&a, &["--tag", "hourly", "--host", "gpu-1"]);
    let s2 = snap(&a, &["--tag", "daily", "--host", "gpu-2"]);
    let s3 = snap(&b, &["--tag", "hourly", "--tag", "keep", "--host", "gpu-1"]);
    let s4 = snap(&b, &[]);
    let abs_b = fs::canonicalize(&b).unwrap();

    let cases: &[(&[&str], &[&String])] = &[
        (&[], &[&s1, &s2, &s3, &s4]),
        (&["--tag", "hourly"], &[&s1, &s3]),
        (&["--tag", "daily"], &[&s2]),
        (&["--tag", "daily", "--tag", "keep"], &[&s2, &s3]),
        (&["--tag", "weekly"], &[]),
        (&["--host", "gpu-1"], &[&s1, &s3]),
        (&["--host", "gpu-2"], &[&s2]),
        (&["--host", &hostname()], &[&s4]),
        (&["--host", "gpu"], &[]),
        // Relative (to the working directory), as stored, or with a trailing slash.
        (&["--path", "src/a"], &[&s1, &s2]),
        (&["--path", "src/a/"], &[&s1, &s2]),
        (&["--path", s(&abs_b)], &[&s3, &s4]),
        (&["--path", "src"], &[]),
        (
            &["--tag", "hourly", "--host", "gpu-1", "--path", "src/b"],
            &[&s3],
        ),
        (&["--tag", "daily", "--path", "src/b"], &[]),
    ];
    for (filter, want) in cases {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(listed(&env, filter), want, "snapshots {filter:?}");
    }

    // The JSON fields, and the human listing shows only what matches.
    let run = env
        .tvault(["--json", "snapshots", "--tag", "keep"])
        .expect_code(0);
    let list = run.json();
    let one = &list.as_array().unwrap()[0];
    assert_fields(
        one,
        &[
            "id",
            "short_id",
            "time",
            "host",
            "paths",
            "tags",
            "kind",
            "parent",
            "complete",
            "total_bytes",
            "bytes_added",
            "files",
        ],
    );
    assert_eq!(one["host"], "gpu-1");
    assert_eq!(one["tags"], json!(["hourly", "keep"]));
    assert_eq!(one["paths"], json!([s(&abs_b)]));
    let run = env.tvault(["snapshots", "--host", "gpu-2"]).expect_code(0);
    assert!(run.stdout.contains(&s2[..8]), "{run}");
    for other in [&s1, &s3, &s4] {
        assert!(!run.stdout.contains(&other[..8]), "{run}");
    }
}

#[test]
fn max_age_alarms_when_the_newest_complete_matching_snapshot_is_too_old() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 68, 0);
    let fresh = text(&env.backup(&[&ckpt], &["--tag", "hourly"]), "id");
    for bound in ["26h", "1h", "90s"] {
        env.tvault(["snapshots", "--tag", "hourly", "--max-age", bound])
            .expect_code(0);
    }

    // 30 hours old: stale for 26h, fresh enough for 2 days.
    let thirty_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(30)).to_rfc3339();
    let old = env.rewrite_snapshot(&fresh, |m| m["time"] = json!(thirty_hours_ago));
    let run = env
        .tvault(["--json", "snapshots", "--tag", "hourly", "--max-age", "26h"])
        .expect_code(5);
    run.stderr_has(&["STALE", &old[..8], "30h00m ago", "limit 26h00m"]);
    assert_eq!(ids(run.json().as_array().unwrap()), vec![old.clone()]);
    env.tvault(["snapshots", "--tag", "hourly", "--max-age", "2d"])
        .expect_code(0);
    env.tvault(["snapshots", "--max-age", "1d6h30m"])
        .expect_code(0);

    // A newer but incomplete snapshot does not count as fresh.
    let newer = text(&env.backup(&[&ckpt], &["--tag", "hourly"]), "id");
    let incomplete = env.rewrite_snapshot(&newer, |m| {
        m["problems"] = json!(["cannot read /x/ckpt/optimizer.pt: Permission denied"])
    });
    let listing = env.snapshots();
    assert_eq!(ids(&listing), [old.clone(), incomplete.clone()]);
    assert_eq!(listing[1]["complete"], false);
    env.tvault(["snapshots", "--tag", "hourly", "--max-age", "26h"])
        .expect_code(5)
        .stderr_has(&["STALE", &old[..8]]);

    // Nor does a fresh snapshot outside the filter; without the filter it does.
    env.backup(&[&ckpt], &["--tag", "daily"]);
    env.tvault(["snapshots", "--tag", "hourly", "--max-age", "26h"])
        .expect_code(5);
    env.tvault(["snapshots", "--max-age", "26h"]).expect_code(0);

    // Nothing matching at all is stale too.
    for filter in [["--tag", "weekly"], ["--host", "elsewhere"]] {
        let mut a: Vec<&str> = vec!["snapshots"];
        a.extend(filter);
        a.extend(["--max-age", "26h"]);
        env.tvault(a)
            .expect_code(5)
            .stderr_has(&["STALE", "no complete snapshot matches"]);
    }
}

// ---------------------------------------------------------------------------------------------
// diff

/// A ~3.5 MiB bf16 checkpoint whose tensors are each written from their own seed.
fn small_model(dir: &Path, seed: u64) -> PathBuf {
    let dims = ModelDims {
        vocab: 1024,
        hidden: 256,
        intermediate: 512,
        layers: 2,
    };
    bf16_model(dir, dims, seed)
}

#[test]
fn diff_names_added_removed_and_changed_files_down_to_the_tensor() {
    let env = TestEnv::with_repo();
    let ckpt = env.src.join("ckpt");
    let model = small_model(&ckpt, 69);
    env.write("src/ckpt/notes.txt", b"step 1000\n");
    env.write("src/ckpt/trainer_state.json", b"{\"step\": 1000}\n");
    let from = text(&env.backup(&[&ckpt], &[]), "id");

    // Step 2000: one tensor retrained in place, notes removed, an optimizer state added,
    // the trainer state rewritten (not a checkpoint), config.json only chmod-ed.
    let tensors = safetensors_tensors(&model);
    let t = tensors
        .iter()
        .find(|t| t.name == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    retrain_tensor(&model, t, 70);
    fs::remove_file(ckpt.join("notes.txt")).unwrap();
    let optimizer = env.write("src/ckpt/optimizer.pt", &[7u8; 5000]);
    env.write(
        "src/ckpt/trainer_state.json",
        b"{\"step\": 2000, \"loss\": 1.5}\n",
    );
    set_mode(&ckpt.join("config.json"), 0o600);
    let to = text(&env.backup(&[&ckpt], &[]), "id");

    let run = env
        .tvault(["--json", "diff", &from[..8], &to])
        .expect_code(0);
    let d = run.json();
    assert_fields(
        &d,
        &["from", "to", "added", "removed", "changed", "unchanged"],
    );
    assert_eq!(
        (text(&d, "from"), text(&d, "to")),
        (from.clone(), to.clone())
    );
    assert_eq!(
        d["added"],
        json!([{"path": "ckpt/optimizer.pt", "kind": "file", "size": 5000}]),
        "{run}"
    );
    assert_eq!(
        d["removed"],
        json!([{"path": "ckpt/notes.txt", "kind": "file", "size": 10}]),
        "{run}"
    );
    let model_len = fs::metadata(&model).unwrap().len();
    let state_len = fs::metadata(ckpt.join("trainer_state.json")).unwrap().len();
    assert_eq!(
        d["changed"],
        json!([
            {"path": "ckpt/config.json", "size_before": fs::metadata(ckpt.join("config.json")).unwrap().len(),
             "size_after": fs::metadata(ckpt.join("config.json")).unwrap().len(), "content": false},
            {"path": "ckpt/model.safetensors", "size_before": model_len, "size_after": model_len,
             "content": true, "tensors": {
                "changed": ["model.layers.1.mlp.up_proj.weight"], "added": [], "removed": [],
                "unchanged": tensors.len() - 1}},
            {"path": "ckpt/trainer_state.json", "size_before": 15, "size_after": state_len,
             "content": true},
        ]),
        "{run}"
    );
    // The directory `ckpt` itself (its mtime changed) is not reported.
    assert_eq!(num(&d, "unchanged"), 1, "{run}");
    assert!(optimizer.exists());

    // The human report: one line per file, the changed tensor named.
    let run = env.tvault(args!["diff", &from, &to]).expect_code(0);
    for line in [
        "-  ckpt/notes.txt  (10 B)",
        "+  ckpt/optimizer.pt  (4.88 KiB)",
        "m  ckpt/config.json",
        "M  ckpt/model.safetensors",
        &format!(
            "tensors: 1 changed, 0 added, 0 removed, {} unchanged",
            tensors.len() - 1
        ),
        "~ model.layers.1.mlp.up_proj.weight",
        "1 added, 1 removed, 3 changed",
    ] {
        assert!(run.stdout.contains(line), "no {line:?} in\n{run}");
    }

    // The same snapshot twice: nothing changed. Unknown IDs: exit 1 naming them.
    let same = env
        .tvault(args!["--json", "diff", &to, &to])
        .expect_code(0)
        .json();
    assert_eq!(
        (&same["added"], &same["removed"], &same["changed"]),
        (&json!([]), &json!([]), &json!([]))
    );
    env.tvault(args!["diff", &from, "deadbeef"])
        .expect_code(1)
        .stderr_has(&["deadbeef"]);
    env.tvault(args!["diff", &from]).expect_code(2);
}

// ---------------------------------------------------------------------------------------------
// --metrics-file

#[test]
fn backup_metrics_are_written_atomically_and_keep_the_last_success_on_failure() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 512 << 10, 71, 0);
    let textfiles = env.path("textfiles");
    fs::create_dir(&textfiles).unwrap();
    let prom = textfiles.join("tvault-backup.prom");

    let before = now_secs() as f64;
    let r = env.backup(&[&ckpt], &["--metrics-file", s(&prom)]);
    let after = now_secs() as f64 + 1.0;
    let m = metrics(&prom);
    assert_documented_metrics(&m, "backup", &env.repo);
    assert_eq!(value(&m, "tvault_last_run_success"), 1.0);
    let ran = value(&m, "tvault_last_run_timestamp_seconds");
    assert!(
        (before..=after).contains(&ran),
        "{ran} not in {before}..{after}"
    );
    assert_eq!(value(&m, "tvault_last_success_timestamp_seconds"), ran);
    assert!(value(&m, "tvault_duration_seconds") >= 0.0);
    assert_eq!(
        value(&m, "tvault_backup_bytes_read"),
        num(&r, "bytes_read") as f64
    );
    assert_eq!(
        value(&m, "tvault_backup_bytes_added"),
        num(&r, "bytes_added") as f64
    );
    assert!(value(&m, "tvault_backup_bytes_added") > 0.0);
    assert_eq!(value(&m, "tvault_backup_files"), num(&r, "files") as f64);
    assert_eq!(value(&m, "tvault_backup_complete"), 1.0);
    assert_eq!(value(&m, "tvault_snapshots"), 1.0);
    assert_eq!(
        names_in(&textfiles),
        ["tvault-backup.prom"],
        "no temporary file left"
    );
    let success_line = fs::read_to_string(&prom)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("tvault_last_success_timestamp_seconds{"))
        .unwrap()
        .to_string();

    // A failing run: success 0, the last success time kept exactly.
    std::thread::sleep(Duration::from_millis(20));
    let gone = env.path("src/not-there");
    env.tvault(args!["backup", &gone, "--metrics-file", &prom])
        .expect_code(1)
        .stderr_has(&[s(&gone)]);
    let m = metrics(&prom);
    assert_eq!(value(&m, "tvault_last_run_success"), 0.0);
    assert!(value(&m, "tvault_last_run_timestamp_seconds") > ran);
    assert!(
        fs::read_to_string(&prom).unwrap().contains(&success_line),
        "the last success time is kept"
    );
    assert_eq!(names_in(&textfiles), ["tvault-backup.prom"]);

    // The next success moves it on.
    let r = env.backup(&[&ckpt], &["--metrics-file", s(&prom)]);
    let m = metrics(&prom);
    assert_eq!(value(&m, "tvault_last_run_success"), 1.0);
    assert!(value(&m, "tvault_last_success_timestamp_seconds") > ran);
    assert_eq!(
        value(&m, "tvault_backup_bytes_read"),
        0.0,
        "unchanged: {r:#}"
    );
    assert_eq!(value(&m, "tvault_snapshots"), 2.0);
}

#[test]
fn verify_and_prune_metrics_report_problems_removals_and_failures() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 512 << 10, 72, 0);
    env.backup(&[&ckpt], &[]);
    env.write("src/ckpt/notes.txt", b"step 2000\n");
    env.backup(&[&ckpt], &[]);
    let textfiles = env.path("textfiles");
    fs::create_dir(&textfiles).unwrap();
    let (vprom, pprom) = (textfiles.join("verify.prom"), textfiles.join("prune.prom"));

    // Prune: one snapshot removed, one left.
    let run = env
        .tvault(args![
            "--json",
            "prune",
            "--keep-last",
            "1",
            "--metrics-file",
            &pprom
        ])
        .expect_code(0);
    let p = run.json();
    let m = metrics(&pprom);
    assert_documented_metrics(&m, "prune", &env.repo);
    assert_eq!(value(&m, "tvault_last_run_success"), 1.0);
    assert_eq!(value(&m, "tvault_prune_snapshots_removed"), 1.0);
    assert_eq!(
        value(&m, "tvault_prune_bytes_freed"),
        num(&p, "bytes_freed") as f64
    );
    assert_eq!(value(&m, "tvault_snapshots"), 1.0);
    assert_eq!(env.snapshots().len(), 1);

    // Verify: clean.
    env.tvault(args!["verify", "--read-data", "--metrics-file", &vprom])
        .expect_code(0);
    let m = metrics(&vprom);
    assert_documented_metrics(&m, "verify", &env.repo);
    assert_eq!(value(&m, "tvault_last_run_success"), 1.0);
    assert_eq!(value(&m, "tvault_verify_problems"), 0.0);
    assert!(value(&m, "tvault_verify_bytes_read") > 0.0);
    assert_eq!(value(&m, "tvault_snapshots"), 1.0);
    let last_success = m["tvault_last_success_timestamp_seconds"].1.clone();

    // Damage: every pack cut short. Verify fails (4) and says how many problems it found; the
    // last success time is the clean run's.
    std::thread::sleep(Duration::from_millis(20));
    for pack in crate::testenv::files_below(&env.repo.join("data")) {
        let len = fs::metadata(&pack).unwrap().len();
        set_mode(&pack, 0o644);
        fs::OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    let run = env
        .tvault(args!["--json", "verify", "--metrics-file", &vprom])
        .expect_code(4);
    let problems = run.json()["problems"].as_array().unwrap().len();
    assert!(problems > 0);
    let m = metrics(&vprom);
    assert_eq!(value(&m, "tvault_last_run_success"), 0.0);
    assert_eq!(value(&m, "tvault_verify_problems"), problems as f64);
    assert_eq!(m["tvault_last_success_timestamp_seconds"].1, last_success);
    assert!(value(&m, "tvault_last_run_timestamp_seconds") > last_success.parse::<f64>().unwrap());
    assert_eq!(names_in(&textfiles), ["prune.prom", "verify.prom"]);
}

#[test]
fn an_unwritable_metrics_path_fails_before_anything_is_done() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 73, 0);
    env.backup(&[&ckpt], &[]);
    env.write("src/ckpt/notes.txt", b"step 2000\n");
    env.backup(&[&ckpt], &[]);
    let before = env.repo_state();
    let config = ckpt.join("config.json");
    for bad in [
        env.path("no-such-dir/tvault.prom"),
        config.join("tvault.prom"), // below a regular file
    ] {
        for a in [
            args!["backup", &ckpt, "--metrics-file", &bad],
            args!["prune", "--keep-last", "1", "--metrics-file", &bad],
            args!["verify", "--read-data", "--metrics-file", &bad],
        ] {
            let run = env.tvault(a);
            assert_eq!(run.code(), Some(1), "{run}");
            run.stderr_has(&["cannot write the metrics file", s(&bad)]);
            assert_eq!(env.repo_state(), before, "{run}");
        }
    }
    assert!(!env.path("no-such-dir").exists());
    assert_eq!(env.snapshots().len(), 2);
}

#[test]
fn a_metrics_path_that_is_a_directory_fails_before_anything_is_done() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 74, 0);
    let textfiles = env.path("textfiles");
    let bad = textfiles.join("tvault.prom");
    fs::create_dir_all(&bad).unwrap();
    let before = env.repo_state();
    let run = env.tvault(args!["backup", &ckpt, "--metrics-file", &bad]);
    assert_eq!(run.code(), Some(1), "{run}");
    run.stderr_has(&["cannot write the metrics file", s(&bad)]);
    assert_eq!(env.repo_state(), before, "no snapshot written: {run}");
    assert_eq!(
        names_in(&textfiles),
        ["tvault.prom"],
        "no temporary file left"
    );
}

#[test]
fn metrics_record_a_run_that_fails_because_the_repository_is_gone() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 75, 0);
    let prom = env.path("tvault-backup.prom");
    let vprom = env.path("tvault-verify.prom");
    env.backup(&[&ckpt], &["--metrics-file", s(&prom)]);
    env.tvault(args!["verify", "--metrics-file", &vprom])
        .expect_code(0);
    fs::rename(&env.repo, env.path("repo-elsewhere")).unwrap();
    for (a, file) in [
        (args!["backup", &ckpt, "--metrics-file", &prom], &prom),
        (args!["verify", "--metrics-file", &vprom], &vprom),
    ] {
        let run = env.tvault(a);
        assert_eq!(run.code(), Some(1), "{run}");
        assert_eq!(
            value(&metrics(file), "tvault_last_run_success"),
            0.0,
            "the failed run is recorded: {run}"
        );
    }
}

#[test]
fn dry_run_prune_metrics_describe_the_repository_as_it_is() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 76, 0);
    env.backup(&[&ckpt], &[]);
    env.write("src/ckpt/notes.txt", b"step 2000\n");
    env.backup(&[&ckpt], &[]);
    let prom = env.path("tvault-prune.prom");
    env.tvault(args![
        "prune",
        "--dry-run",
        "--keep-last",
        "1",
        "--metrics-file",
        &prom
    ])
    .expect_code(0);
    assert_eq!(env.snapshots().len(), 2);
    let m = metrics(&prom);
    assert_eq!(
        value(&m, "tvault_snapshots"),
        2.0,
        "Snapshots in the repository"
    );
    assert_eq!(value(&m, "tvault_prune_snapshots_removed"), 0.0);
    assert_eq!(value(&m, "tvault_prune_bytes_freed"), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Bad values

#[test]
fn unparsable_durations_rates_and_missing_exclude_files_change_nothing() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 128 << 10, 77, 0);
    env.backup(&[&ckpt], &[]);
    let before = env.repo_state();
    let c = s(&ckpt);
    let usage: &[(&[&str], &str, &str)] = &[
        (&["backup", c, "--settle", "5x"], "'5x'", "--settle"),
        (&["backup", c, "--settle", "1.5h"], "'1.5h'", "--settle"),
        (&["backup", c, "--settle", "10"], "'10'", "--settle"),
        (&["--lock-wait", "abc", "backup", c], "'abc'", "--lock-wait"),
        (&["backup", c, "--lock-wait=-3s"], "'-3s'", "--lock-wait"),
        (
            &["backup", c, "--read-limit", "fast"],
            "'fast'",
            "--read-limit",
        ),
        (&["backup", c, "--read-limit", "0"], "'0'", "--read-limit"),
        (
            &["backup", c, "--read-limit", "10 parsecs"],
            "'10 parsecs'",
            "--read-limit",
        ),
        (&["snapshots", "--max-age", "1y"], "'1y'", "--max-age"),
        (&["snapshots", "--max-age", ""], "--max-age", "--max-age"),
    ];
    for (a, val, flag) in usage {
        let run = env.tvault(a.iter());
        assert_eq!(run.code(), Some(2), "{run}");
        run.stderr_has(&[val, flag]);
        assert!(run.stdout.is_empty(), "{run}");
        assert_eq!(env.repo_state(), before, "{run}");
    }
    // A wrong duration says what a right one looks like.
    env.tvault(["backup", c, "--settle", "5x"])
        .stderr_has(&["invalid duration", "10m"]);
    env.tvault(["backup", c, "--read-limit", "fast"])
        .stderr_has(&["invalid rate", "200MiB"]);

    // Exclude files and patterns: exit 1, naming them.
    let missing = env.path("excludes-missing.txt");
    env.tvault(args!["backup", &ckpt, "--exclude-file", &missing])
        .expect_code(1)
        .stderr_has(&["cannot read exclude file", s(&missing)]);
    env.tvault(args!["backup", &ckpt, "--exclude-file", &env.src])
        .expect_code(1)
        .stderr_has(&["cannot read exclude file", s(&env.src)]);
    env.tvault(["backup", c, "--exclude", "ckpt/["])
        .expect_code(1)
        .stderr_has(&["invalid --exclude pattern", "ckpt/["]);
    assert_eq!(env.repo_state(), before);
    assert_eq!(env.snapshots().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// completions, man

#[test]
fn completions_for_bash_zsh_and_fish_know_the_subcommands_and_flags() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        let run = env
            .tvault_default_repo(["completions", shell])
            .expect_code(0);
        assert!(run.stdout.len() > 1000, "{run}");
        for word in [
            "backup",
            "snapshots",
            "restore",
            "diff",
            "verify",
            "prune",
            "--exclude",
            "--settle",
            "--read-limit",
            "--metrics-file",
            "--from-tar",
            "--max-age",
            "--tar",
            "--lock-wait",
        ] {
            // fish spells long flags without their dashes (`-l settle`).
            let w = if shell == "fish" {
                word.trim_start_matches('-')
            } else {
                word
            };
            assert!(run.stdout.contains(w), "{shell} completion lacks {word}");
        }
    }
    let run = env
        .tvault_default_repo(["completions", "bash"])
        .expect_code(0);
    assert!(run.stdout.contains("complete"), "{run}");
    env.tvault_default_repo(["completions", "tcsh"])
        .expect_code(2)
        .stderr_has(&["tcsh"]);
    env.tvault_default_repo(["completions"]).expect_code(2);
    assert!(!env.path("xdg/tvault").exists(), "no repository created");
}

#[test]
fn man_prints_a_roff_page_listing_the_subcommands() {
    let env = TestEnv::new();
    let run = env.tvault_default_repo(["man"]).expect_code(0);
    let head: Vec<&str> = run.stdout.lines().take(5).collect();
    // clap_mangen defines the `Aq` string before `.TH`; nothing else may come first.
    assert!(
        head.iter()
            .take_while(|l| !l.starts_with(".TH"))
            .all(|l| l.starts_with(".ie") || l.starts_with(".el")),
        "{run}"
    );
    assert!(head.iter().any(|l| l.starts_with(".TH tvault 1")), "{run}");
    for needle in [
        ".SH NAME",
        ".SH SYNOPSIS",
        "tvault\\-backup",
        "Back up files and directories into a new snapshot",
        "tvault\\-diff",
        "\\-\\-lock\\-wait",
    ] {
        assert!(run.stdout.contains(needle), "no {needle:?}\n{run}");
    }
    assert!(!env.path("xdg/tvault").exists(), "no repository created");
}

#[test]
fn man_documents_the_options_of_backup() {
    let env = TestEnv::new();
    let run = env.tvault_default_repo(["man"]).expect_code(0);
    for flag in [
        "\\-\\-exclude",
        "\\-\\-settle",
        "\\-\\-read\\-limit",
        "\\-\\-metrics\\-file",
        "\\-\\-from\\-tar",
        "\\-\\-max\\-age",
    ] {
        assert!(run.stdout.contains(flag), "the man page lacks {flag}");
    }
}
