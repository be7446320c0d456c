//! The README's recipes run as written: the profile they share, the cron lines, the systemd
//! service, the nightly CI job and the Prometheus alert rules; and the Profiles section's
//! example is a valid config file. Only the example paths are replaced by temporary ones,
//! so a recipe that drifts from the CLI (a renamed flag, a changed exit code, a metric that is
//! no longer written) fails here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tvault_workload::Scenario;

use crate::testenv::{set_mtime, TestEnv};

/// The fenced code blocks of the README with the given language tag, in order.
fn blocks(lang: &str) -> Vec<String> {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(tag)) if tag.trim() == lang => current = Some(String::new()),
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// The README's config file example that holds `table`.
fn profile_block(table: &str) -> String {
    blocks("toml")
        .into_iter()
        .find(|b| b.contains(table))
        .unwrap_or_else(|| panic!("a toml block with {table}"))
}

struct Recipes {
    env: TestEnv,
    checkpoints: PathBuf,
    textfiles: PathBuf,
}

impl Recipes {
    /// A checkpoint directory as a training job leaves it: finished checkpoints (an hour old),
    /// a partial `*.tmp`, and one file still being written (modified just now).
    fn new() -> Recipes {
        let env = TestEnv::with_repo();
        let checkpoints = env.checkpoint("data/checkpoints", Scenario::Single, 1 << 20, 3, 0);
        let an_hour_ago = chrono::Utc::now().timestamp() - 3600;
        for entry in fs::read_dir(&checkpoints).unwrap() {
            set_mtime(&entry.unwrap().path(), an_hour_ago, 0);
        }
        let partial = env.write("data/checkpoints/step-900.safetensors.tmp", b"partial");
        set_mtime(&partial, an_hour_ago, 0);
        env.write(
            "data/checkpoints/step-1000.safetensors",
            b"being written right now",
        );
        // The encrypted repository's password, as the recipes read it.
        env.write(
            "password",
            format!("{}\n", crate::testenv::PASSWORD).as_bytes(),
        );
        let textfiles = env.root.join("textfiles");
        fs::create_dir(&textfiles).unwrap();
        let r = Recipes {
            env,
            checkpoints,
            textfiles,
        };
        // The recipes' profile, in the config file of the user who runs them.
        let config = profile_block("[profile.trainer]");
        r.env.write(
            "home/.config/tvault/config.toml",
            r.substitute(&config).as_bytes(),
        );
        r
    }

    fn substitute(&self, text: &str) -> String {
        text.replace("/usr/local/bin/tvault", env!("CARGO_BIN_EXE_tvault"))
            .replace("/backups/tvault", &self.env.repo.display().to_string())
            .replace(
                "/data/run1/checkpoints",
                &self.checkpoints.display().to_string(),
            )
            .replace(
                "/var/lib/node_exporter/textfile_collector",
                &self.textfiles.display().to_string(),
            )
            .replace(
                "/etc/tvault/password",
                &self.env.root.join("password").display().to_string(),
            )
            .replace("/var/tmp", &self.env.root.join("tmp").display().to_string())
    }

    /// Runs a shell script as cron or CI would: no terminal, a minimal environment.
    fn sh(&self, script: &str) -> (i32, String, String) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(self.substitute(script))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.env.root.join("home"))
            .current_dir(&self.env.root)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (
            out.status.code().unwrap_or(-1),
            text(out.stdout),
            text(out.stderr),
        )
    }

    fn metrics(&self, name: &str) -> String {
        fs::read_to_string(self.textfiles.join(name)).unwrap_or_default()
    }
}

/// The command part of a crontab line (after the five time fields).
fn cron_command(line: &str) -> &str {
    let mut rest = line.trim();
    for _ in 0..5 {
        rest = rest.split_once(char::is_whitespace).unwrap().1.trim_start();
    }
    rest
}

#[test]
fn readme_cron_lines_back_up_finished_checkpoints_and_prune() {
    let r = Recipes::new();
    let cron = blocks("cron");
    assert_eq!(cron.len(), 2, "the backup crontab block, then the drill's");
    let lines: Vec<&str> = cron[0].lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "a backup line and a prune line");

    let (code, out, err) = r.sh(cron_command(lines[0]));
    assert_eq!(code, 0, "backup recipe failed:\n{out}\n{err}");
    assert_eq!(out, "", "a quiet cron job prints nothing on stdout");
    let snaps = r.env.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["tags"], serde_json::json!(["hourly"]));
    // The finished files are in; the partial and the settling checkpoint are not.
    let restored = r.env.restore(snaps[0]["id"].as_str().unwrap());
    let names: Vec<String> = fs::read_dir(restored.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"model.safetensors".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    assert!(
        !names.contains(&"step-1000.safetensors".to_string()),
        "{names:?}"
    );
    let m = r.metrics("tvault-backup.prom");
    assert!(
        m.contains("tvault_last_run_success{command=\"backup\""),
        "{m}"
    );
    assert!(m.contains("tvault_backup_complete{"), "{m}");

    let (code, out, err) = r.sh(cron_command(lines[1]));
    assert_eq!(code, 0, "prune recipe failed:\n{out}\n{err}");
    assert_eq!(r.env.snapshots().len(), 1, "the only snapshot is kept");
    assert!(r
        .metrics("tvault-prune.prom")
        .contains("tvault_prune_bytes_freed{"));
}

#[test]
fn readme_weekly_drill_restores_the_newest_hourly_snapshot_and_writes_its_metrics() {
    let r = Recipes::new();
    let cron = blocks("cron");
    let lines: Vec<&str> = cron[1].lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one drill line");
    let drill = cron_command(lines[0]);
    let scratch = r.env.root.join("tmp");
    fs::create_dir(&scratch).unwrap();

    // Nothing backed up yet: the drill fails, so cron mails it.
    let (code, _, err) = r.sh(drill);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no snapshots"), "{err}");

    let ckpt = r.checkpoints.display().to_string();
    r.env
        .tvault(crate::testenv::args![
            "backup",
            "--tag",
            "hourly",
            "--exclude",
            "*.tmp",
            &ckpt
        ])
        .expect_code(0);
    let (code, out, err) = r.sh(drill);
    assert_eq!(code, 0, "drill recipe failed:\n{out}\n{err}");
    assert_eq!(out, "", "a quiet cron job prints nothing on stdout");
    let m = r.metrics("tvault-drill.prom");
    let success = format!(
        "tvault_drill_success{{command=\"drill\",repository=\"{}\"}} 1\n",
        r.env.repo.display()
    );
    assert!(m.contains(&success), "{m}");
    assert!(m.contains("tvault_drill_disk_writes{"), "{m}");
    assert!(m.contains("tvault_drill_rto_seconds{"), "{m}");
    assert!(m.contains("tvault_drill_rpo_seconds{"), "{m}");
    assert!(
        fs::read_dir(&scratch).unwrap().next().is_none(),
        "the scratch folder is removed"
    );
}

#[test]
fn readme_systemd_units_run_the_same_backup() {
    let r = Recipes::new();
    let ini = blocks("ini");
    assert_eq!(ini.len(), 2, "a service and a timer");
    let service = &ini[0];
    let field = |unit: &str, key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(field(service, "Type"), ["oneshot"]);
    assert!(
        field(&ini[1], "OnCalendar").len() == 1,
        "the timer has a schedule"
    );
    let env = field(service, "Environment").join(" ");
    let exec = field(service, "ExecStart");
    assert_eq!(exec.len(), 1);
    let (code, out, err) = r.sh(&format!("{env} {}", exec[0]));
    assert_eq!(code, 0, "service ExecStart failed:\n{out}\n{err}");
    assert_eq!(r.env.snapshots().len(), 1);
}

#[test]
fn readme_ci_job_passes_on_a_sound_repository_and_fails_on_damage() {
    let r = Recipes::new();
    let sh = blocks("sh");
    let job = sh
        .iter()
        .find(|b| b.contains("--read-data-subset"))
        .expect("the CI job block");
    // Nothing backed up yet: the freshness alarm must fire (exit 5), failing the job.
    let (code, _, err) = r.sh(job);
    assert_eq!(code, 5, "no snapshot yet must fail the job: {err}");

    let ckpt = r.checkpoints.display().to_string();
    r.env
        .tvault(crate::testenv::args![
            "backup",
            "--tag",
            "hourly",
            "--exclude",
            "*.tmp",
            &ckpt
        ])
        .expect_code(0);
    let (code, out, err) = r.sh(job);
    assert_eq!(code, 0, "a sound, fresh repository passes:\n{out}\n{err}");
    assert!(r
        .metrics("tvault-verify.prom")
        .contains("tvault_verify_problems{command=\"verify\""));

    // Damage every pack (truncate it): whatever tonight's slice is, the job must fail.
    for entry in walkdir::WalkDir::new(r.env.repo.join("data"))
        .into_iter()
        .flatten()
    {
        if entry.file_type().is_file() {
            let len = entry.metadata().unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(entry.path())
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
    }
    let (code, _, err) = r.sh(job);
    assert_eq!(code, 4, "damage must fail the job with exit 4: {err}");
    assert!(err.contains("DAMAGE") && err.contains("data/"), "{err}");
    assert!(r
        .metrics("tvault-verify.prom")
        .contains("tvault_last_run_success{command=\"verify\",repository="));
}

#[test]
fn readme_alert_rules_use_metrics_that_tvault_writes() {
    let r = Recipes::new();
    let ckpt = r.checkpoints.display().to_string();
    let prom = |name: &str| r.textfiles.join(name).display().to_string();
    r.env
        .tvault(crate::testenv::args![
            "backup",
            "--exclude",
            "*.tmp",
            "--metrics-file",
            prom("b.prom"),
            &ckpt
        ])
        .expect_code(0);
    r.env
        .tvault(crate::testenv::args![
            "verify",
            "--metrics-file",
            prom("v.prom")
        ])
        .expect_code(0);
    let written = r.metrics("b.prom") + &r.metrics("v.prom");
    let yaml = blocks("yaml").join("\n");
    let mut checked = 0;
    for expr in yaml.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tvault_") {
                assert!(
                    written.contains(&format!("{word}{{")),
                    "alert uses {word}, which tvault does not write"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "the alert rules reference tvault metrics");
}

#[test]
fn readme_profiles_example_is_a_valid_config_file() {
    let env = TestEnv::new();
    let config = env.write("config.toml", profile_block("[profile.cloud]").as_bytes());
    // A profile that is not there is named with those the file has, once the whole file has
    // been read: every key known, every value of its type and syntax.
    env.tvault_default_repo(crate::testenv::args![
        "--config",
        &config,
        "--profile",
        "none",
        "snapshots"
    ])
    .expect_code(1)
    .stderr_has(&["no profile \"none\"", "its profiles: cloud"]);
}

#[test]
fn readme_watch_unit_runs_one_cycle_of_the_same_watch() {
    let r = Recipes::new();
    let units = blocks("systemd");
    assert_eq!(units.len(), 1, "the tvault-watch service");
    let unit = &units[0];
    let field = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(field("Type"), ["simple"]);
    assert_eq!(field("Restart"), ["on-failure"]);
    assert_eq!(field("KillSignal"), ["SIGTERM"]);
    assert_eq!(field("TimeoutStopSec").len(), 1);
    let exec = field("ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(exec[0].contains(" watch "), "{}", exec[0]);
    // One cycle of it: the finished checkpoints are stored, the file being written is not.
    let once = exec[0].replacen(" watch ", " watch --once ", 1);
    let env = field("Environment").join(" ");
    let (code, out, err) = r.sh(&format!("{env} {once}"));
    assert_eq!(code, 0, "service ExecStart --once failed:\n{out}\n{err}");
    assert!(err.contains("tvault: watch: "), "{err}");
    let snaps = r.env.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["tags"][0], "watch");
}
