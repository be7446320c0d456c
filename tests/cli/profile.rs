//! Profiles of the config file (`--profile NAME`, `--config FILE`): their values fill what the
//! command line and the environment leave unset, only for the commands that take them; a bad
//! file stops every command before it does anything, naming the file, line and key.

use std::fs;
use std::path::PathBuf;

use crate::testenv::{args, Run, TestEnv, PASSWORD};

/// Writes the config file at its default location (`$XDG_CONFIG_HOME/tvault/config.toml`).
fn write_config(env: &TestEnv, text: &str) -> PathBuf {
    env.write("config/tvault/config.toml", text.as_bytes())
}

/// `tvault ARGS…` without `--repo` (the profile's repository, or the default one).
fn run(env: &TestEnv, a: &[&str]) -> Run {
    env.tvault_default_repo(a)
}

/// A profile `trainer` on the test repository: `src/`, tagged, `*.tmp` excluded, a host name,
/// and per-command metrics files.
fn trainer(env: &TestEnv, extra: &str) -> PathBuf {
    write_config(
        env,
        &format!(
            "# the training box\n\
             [profile.trainer]\n\
             repository = '{}'\n\
             paths = ['{}']\n\
             tags = ['nightly']\n\
             exclude = ['*.tmp']\n\
             host = 'trainer-01'\n\
             metrics-file = '{}/tvault-{{command}}.prom'\n\
             {extra}\n",
            env.repo.display(),
            env.src.display(),
            env.root.display(),
        ),
    )
}

fn files_of(env: &TestEnv, id: &str) -> Vec<String> {
    let out = env.tvault(["ls", id]).expect_code(0).stdout;
    out.lines().map(str::to_string).collect()
}

#[test]
fn a_profile_supplies_backups_repository_paths_tags_excludes_and_metrics() {
    let env = TestEnv::with_repo();
    env.write("src/model.bin", b"weights");
    env.write("src/step.tmp", b"partial");
    trainer(&env, "");
    run(&env, &["--profile", "trainer", "backup"]).expect_code(0);
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["tags"], serde_json::json!(["nightly"]));
    assert_eq!(snaps[0]["host"], "trainer-01");
    let files = files_of(&env, snaps[0]["id"].as_str().unwrap());
    assert!(files.contains(&"src/model.bin".to_string()), "{files:?}");
    assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");
    let metrics = fs::read_to_string(env.path("tvault-backup.prom")).unwrap();
    assert!(metrics.contains("command=\"backup\""), "{metrics}");
    // Commands that do not take a value ignore it: `snapshots` lists every host and tag.
    let listed = run(&env, &["--profile", "trainer", "--json", "snapshots"])
        .expect_code(0)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[test]
fn the_command_line_and_the_environment_override_the_profile() {
    let env = TestEnv::with_repo();
    env.write("src/model.bin", b"weights");
    env.write("src/step.tmp", b"partial");
    env.write("other/x.bin", b"other");
    // The profile's repository is elsewhere: --repo wins, as TVAULT_REPO does.
    write_config(
        &env,
        &format!(
            "[profile.trainer]\nrepository = '{}'\npaths = ['{}']\ntags = ['nightly']\n\
             exclude = ['*.tmp']\n",
            env.path("elsewhere").display(),
            env.src.display()
        ),
    );
    let repo = env.repo.display().to_string();
    let other = env.path("other").display().to_string();
    run(
        &env,
        &[
            "--profile",
            "trainer",
            "--repo",
            &repo,
            "backup",
            "--tag",
            "manual",
            "--exclude",
            "*.bin",
            &other,
        ],
    )
    .expect_code(0);
    let mut cmd = env.command();
    cmd.env("TVAULT_REPO", &repo)
        .args(["--profile", "trainer", "backup"]);
    let by_env = env.run_command(cmd).expect_code(0);
    by_env.stderr_has(&["TVAULT_REPO is set: it overrides repository of profile \"trainer\""]);
    assert!(!env.path("elsewhere").exists());

    let snaps = env.snapshots();
    assert_eq!(
        snaps.len(),
        2,
        "both backups went to the --repo/TVAULT_REPO repository"
    );
    // The flags replaced the profile's tags, excludes and paths.
    assert_eq!(snaps[0]["tags"], serde_json::json!(["manual"]));
    assert_eq!(files_of(&env, snaps[0]["id"].as_str().unwrap()), ["other"]);
    // Without flags, the profile's values.
    assert_eq!(snaps[1]["tags"], serde_json::json!(["nightly"]));
    assert_eq!(
        files_of(&env, snaps[1]["id"].as_str().unwrap()),
        ["src", "src/model.bin"]
    );
}

#[test]
fn the_profiles_retention_applies_to_forget_and_prune_unless_the_command_line_has_one() {
    let env = TestEnv::with_repo();
    trainer(&env, "[profile.trainer.retention]\nkeep-last = 3\n");
    for step in 0..4 {
        env.write("src/step.txt", format!("step {step}").as_bytes());
        run(&env, &["--profile", "trainer", "backup"]).expect_code(0);
    }
    let ids = |env: &TestEnv| -> Vec<String> {
        env.snapshots()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ids(&env);
    // Removing one snapshot by ID does not apply the policy too.
    run(&env, &["--profile", "trainer", "forget", &all[3]]).expect_code(0);
    assert_eq!(ids(&env), all[..3]);
    // A backup's snapshot more, then the profile's keep-last = 3.
    run(&env, &["--profile", "trainer", "backup"]).expect_code(0);
    run(&env, &["--profile", "trainer", "forget"]).expect_code(0);
    let kept = ids(&env);
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(!kept.contains(&all[0]), "the oldest went: {kept:?}");
    // prune applies it too (nothing more to remove) and writes its metrics.
    run(&env, &["--profile", "trainer", "prune"]).expect_code(0);
    assert_eq!(ids(&env), kept);
    assert!(env.path("tvault-prune.prom").is_file());
    // A --keep-* option replaces the whole policy.
    run(&env, &["--profile", "trainer", "prune", "--keep-last", "1"]).expect_code(0);
    assert_eq!(ids(&env), kept[2..]);
}

#[test]
fn an_unknown_key_stops_every_command_naming_the_file_line_and_key() {
    let env = TestEnv::with_repo();
    env.write("src/model.bin", b"weights");
    let config = trainer(&env, "s3-endpoint = 'https://s3.example.com'");
    let before = env.repo_state();
    let r = run(&env, &["--profile", "trainer", "backup"]).expect_code(1);
    r.stderr_has(&[
        &format!("config file {}, line 9", config.display()),
        "unknown key `s3-endpoint`",
        "`repository`",
        "`retention`",
    ]);
    assert_eq!(env.repo_state(), before, "nothing was run");
    // Also without --profile (the file is read for its `default` profile), and under --json.
    let r = env.tvault(["--json", "snapshots"]).expect_code(1);
    assert!(
        r.json()["error"].as_str().unwrap().contains("line 9"),
        "{r}"
    );
    // An unknown key in the retention table, likewise.
    trainer(&env, "[profile.trainer.retention]\nkeep-dayly = 7");
    run(&env, &["--profile", "trainer", "prune"])
        .expect_code(1)
        .stderr_has(&["line 10", "unknown key `keep-dayly`", "`keep-daily`"]);
    assert_eq!(env.repo_state(), before);
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_naming_its_line() {
    let env = TestEnv::with_repo();
    write_config(&env, "[profile.trainer]\n\ntags = 'nightly'\n");
    run(&env, &["--profile", "trainer", "snapshots"])
        .expect_code(1)
        .stderr_has(&["line 3", "invalid type", "sequence"]);
    write_config(&env, "[profile.trainer]\nlock-wait = 'soon'\n");
    run(&env, &["--profile", "trainer", "snapshots"])
        .expect_code(1)
        .stderr_has(&["line 2", "invalid duration \"soon\""]);
    write_config(&env, "[profile.trainer]\nthreads = 0\n");
    run(&env, &["--profile", "trainer", "snapshots"])
        .expect_code(1)
        .stderr_has(&["line 2", "invalid threads 0"]);
}

#[test]
fn an_unknown_profile_names_the_ones_the_file_has() {
    let env = TestEnv::with_repo();
    write_config(&env, "[profile.trainer]\n[profile.eval]\n");
    run(&env, &["--profile", "nightly", "snapshots"])
        .expect_code(1)
        .stderr_has(&["no profile \"nightly\"", "its profiles: eval, trainer"]);
    let mut cmd = env.command();
    cmd.env("TVAULT_PROFILE", "nightly").arg("snapshots");
    env.run_command(cmd)
        .expect_code(1)
        .stderr_has(&["its profiles: eval, trainer"]);
}

#[test]
fn a_config_file_named_explicitly_must_exist() {
    let env = TestEnv::with_repo();
    let missing = env.path("nowhere/config.toml").display().to_string();
    run(&env, &["--config", &missing, "snapshots"])
        .expect_code(1)
        .stderr_has(&["cannot read the config file", &missing]);
    let mut cmd = env.repo_command(["snapshots"]);
    cmd.env("TVAULT_CONFIG", &missing);
    env.run_command(cmd).expect_code(1).stderr_has(&[&missing]);
    // A file named explicitly is used: without --profile, its profile `default`.
    let named = env.write("named.toml", b"[profile.trainer]\n");
    let named = named.display().to_string();
    run(&env, &["--config", &named, "snapshots"])
        .expect_code(1)
        .stderr_has(&[
            "no profile \"default\"",
            "--profile NAME",
            "its profiles: trainer",
        ]);
    // --profile without any config file names the file it looked for.
    run(&env, &["--profile", "trainer", "snapshots"])
        .expect_code(1)
        .stderr_has(&["no config file", "config/tvault/config.toml"]);
}

#[test]
fn without_a_config_file_or_profile_everything_is_as_before() {
    let env = TestEnv::with_repo();
    env.write("src/model.bin", b"weights");
    env.backup(&[&env.src], &["--tag", "t"]);
    assert_eq!(env.snapshots()[0]["tags"], serde_json::json!(["t"]));
    // backup still needs paths: a usage error (exit 2), as before.
    env.tvault(["backup"])
        .expect_code(2)
        .stderr_has(&["required arguments were not provided", "<PATHS>"]);
    // A file whose profiles are not selected (no `default`) changes nothing.
    write_config(
        &env,
        &format!(
            "[profile.other]\nrepository = '{}'\n",
            env.path("x").display()
        ),
    );
    assert_eq!(env.snapshots().len(), 1);
    // The profile `default` applies without --profile.
    trainer(&env, "");
    let text = fs::read_to_string(env.path("config/tvault/config.toml")).unwrap();
    write_config(
        &env,
        &text.replace("[profile.trainer]", "[profile.default]"),
    );
    run(&env, &["backup"]).expect_code(0);
    assert_eq!(env.snapshots()[1]["tags"], serde_json::json!(["nightly"]));
}

#[test]
fn a_profiles_password_command_opens_an_encrypted_repository() {
    let env = TestEnv::with_repo();
    trainer(&env, &format!("password-command = 'printf %s {PASSWORD}'"));
    let without_password = |extra: &[&str]| {
        let mut cmd = env.command();
        cmd.env_remove("TVAULT_PASSWORD").args(extra);
        env.run_command(cmd)
    };
    without_password(&["--profile", "trainer", "--json", "snapshots"]).expect_code(0);
    // Without the profile there is no password.
    without_password(&["--repo", &env.repo.display().to_string(), "snapshots"])
        .expect_code(1)
        .stderr_has(&["no password was given"]);
    // TVAULT_PASSWORD comes before the profile (and says so): a wrong one exits 6.
    let mut cmd = env.command();
    cmd.env("TVAULT_PASSWORD", "wrong")
        .args(args!["--profile", "trainer", "snapshots"]);
    env.run_command(cmd)
        .expect_code(6)
        .stderr_has(&["TVAULT_PASSWORD is set: it overrides the password of profile"]);
}

#[test]
fn a_profiles_s3_settings_reach_the_s3_backend() {
    let env = TestEnv::new();
    // Nothing listens on port 1: every attempt is refused at once.
    write_config(
        &env,
        "[profile.bucket]\nrepository = 's3:http://127.0.0.1:1/tvault-test'\n\
         s3-region = 'garage'\nretry-attempts = 1\nretry-max-time = '5s'\n",
    );
    let s3 = |extra: &[(&str, &str)]| {
        let mut cmd = env.command();
        cmd.env("AWS_ACCESS_KEY_ID", "GKtest")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env_remove("TVAULT_RETRY_ATTEMPTS")
            .env_remove("TVAULT_RETRY_MAX_TIME")
            .args(["--profile", "bucket", "snapshots"]);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        env.run_command(cmd)
    };
    s3(&[])
        .expect_code(1)
        .stderr_has(&["gave up after 1 attempt "]);
    // The environment comes before the profile.
    s3(&[("TVAULT_RETRY_ATTEMPTS", "2")])
        .expect_code(1)
        .stderr_has(&[
            "gave up after 2 attempts",
            "TVAULT_RETRY_ATTEMPTS is set: it overrides retry-attempts of profile \"bucket\"",
        ]);
}

#[test]
fn a_profiles_hooks_run_around_backup_and_the_command_line_overrides_them() {
    let env = TestEnv::with_repo();
    env.write("src/model.bin", b"weights");
    let log = env.path("hooks.log");
    trainer(
        &env,
        &format!(
            "pre-hook = 'echo pre >> {0}'\npost-hook = 'echo \"post $TVAULT_STATUS\" >> {0}'\nhook-timeout = '1s'",
            log.display()
        ),
    );
    run(&env, &["--profile", "trainer", "backup"]).expect_code(0);
    assert_eq!(fs::read_to_string(&log).unwrap(), "pre\npost success\n");
    // The profile's time limit applies: a hanging pre-hook is killed after 1 s.
    let started = std::time::Instant::now();
    run(
        &env,
        &["--profile", "trainer", "backup", "--pre-hook", "sleep 30"],
    )
    .expect_code(1)
    .stderr_has(&["timed out"]);
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}

#[test]
fn a_profiles_dense_deltas_reach_backup() {
    let env = TestEnv::with_repo();
    trainer(&env, "dense-deltas = true");
    for step in 0..2 {
        let dir = env.src.join("ckpt");
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        env.checkpoint(
            "src/ckpt",
            tvault_workload::Scenario::Fulltrain,
            4 << 20,
            3,
            step,
        );
        run(&env, &["--profile", "trainer", "backup"]).expect_code(0);
    }
    let methods = crate::testenv::delta_methods(&env.open_repo());
    assert!(methods.iter().any(|&m| m <= 2), "dense XORs: {methods:?}");
}

#[test]
fn a_profiles_max_chain_reaches_backup_and_a_bad_one_names_its_key() {
    let env = TestEnv::with_repo();
    trainer(&env, "max-chain = 0");
    for step in 0..2 {
        let dir = env.src.join("ckpt");
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        let scenario = tvault_workload::Scenario::Finetune;
        env.checkpoint("src/ckpt", scenario, 2 << 20, 3, step);
        run(&env, &["--profile", "trainer", "backup"]).expect_code(0);
    }
    // 0: no chains at all (the same steps store deltas without the profile), also for an
    // import.
    let tar = env.path("step.tar");
    for step in 2..4 {
        fs::remove_dir_all(env.src.join("ckpt")).unwrap();
        let scenario = tvault_workload::Scenario::Finetune;
        env.checkpoint("src/ckpt", scenario, 2 << 20, 3, step);
        let status = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&env.src)
            .arg("ckpt")
            .status()
            .unwrap();
        assert!(status.success());
        let archive = tar.to_str().unwrap();
        run(
            &env,
            &["--profile", "trainer", "backup", "--from-tar", archive],
        )
        .expect_code(0);
    }
    assert_eq!(env.open_repo().index().deltas().count(), 0);
    trainer(&env, "max-chain = 65");
    run(&env, &["--profile", "trainer", "backup"])
        .expect_code(1)
        .stderr_has(&["invalid max-chain 65", "0 to 64"]);
}
