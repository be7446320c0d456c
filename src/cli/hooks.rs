//! `--pre-hook CMD` and `--post-hook CMD` of `backup` and `watch`: the user's commands run
//! with `sh -c` around a backup, with the run described in their environment:
//!
//! | variable | pre | post |
//! | --- | --- | --- |
//! | `TVAULT_HOOK` | `pre` | `post` |
//! | `TVAULT_REPOSITORY` | the repository (as given) | same |
//! | `TVAULT_STATUS` | | `success`, `incomplete` (exit 3) or `failed` |
//! | `TVAULT_SNAPSHOT_ID` | | the new snapshot's ID (empty when none was written) |
//! | `TVAULT_BYTES_ADDED` | | bytes the backup added to the repository (0 when failed) |
//! | `TVAULT_EXIT_CODE` | | the backup's exit code (0, 3, 1, …) |
//! | `TVAULT_ERROR` | | why the backup failed (empty otherwise) |
//!
//! A hook's standard output and error go to tvault's standard error, each line prefixed with
//! `[pre-hook] ` or `[post-hook] ` (the journal, under systemd). A hook that runs longer than
//! `--hook-timeout` is killed with its whole process group (so what `sh -c` started dies too)
//! and counts as failed. A failing pre-hook stops the backup before anything is opened or
//! written (exit 1); the post-hook runs after every backup, failed ones included, so it can
//! alert; a failing post-hook is a warning and leaves the exit code alone (the snapshot is
//! written either way).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::args::describe_duration;

/// The hook options of `backup` and `watch`.
#[derive(clap::Args, Debug, Clone)]
pub struct HookArgs {
    /// Run CMD (with sh -c) before the backup; if it fails (non-zero exit) the backup does not
    /// run (exit 1). Its environment: TVAULT_HOOK=pre, TVAULT_REPOSITORY
    #[arg(long, value_name = "CMD")]
    pub pre_hook: Option<String>,
    /// Run CMD (with sh -c) after the backup, also after a failed one. Its environment:
    /// TVAULT_HOOK=post, TVAULT_REPOSITORY, TVAULT_STATUS (success, incomplete, failed),
    /// TVAULT_SNAPSHOT_ID, TVAULT_BYTES_ADDED, TVAULT_EXIT_CODE, TVAULT_ERROR; if it fails,
    /// tvault warns (the exit code stays the backup's)
    #[arg(long, value_name = "CMD")]
    pub post_hook: Option<String>,
    /// Kill a hook (with everything it started) that runs longer than DURATION, and count it
    /// as failed (e.g. 30s, 10m; m = minutes)
    #[arg(long, value_name = "DURATION", value_parser = super::args::parse_duration, default_value = "5m")]
    pub hook_timeout: Duration,
}

impl HookArgs {
    /// The hooks of a run against the repository at `repo`.
    pub fn hooks(self, repo: &std::path::Path) -> Hooks {
        Hooks {
            pre: self.pre_hook,
            post: self.post_hook,
            timeout: self.hook_timeout,
            repository: repo.display().to_string(),
        }
    }
}

/// The hooks of a run and where its repository is.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Duration,
    pub repository: String,
}

/// How a backup ended, for the post-hook.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub snapshot_id: Option<String>,
    pub bytes_added: u64,
}

impl Hooks {
    /// Runs the pre-hook (if any); an error, naming the hook, when it fails or times out.
    pub fn pre(&self) -> Result<()> {
        let Some(cmd) = &self.pre else { return Ok(()) };
        let env = [("TVAULT_HOOK", "pre".to_string()), self.repo_var()];
        if let Err(why) = run("pre-hook", cmd, &env, self.timeout) {
            bail!("{why}; the backup was not started (nothing was written)");
        }
        Ok(())
    }

    /// Runs the post-hook (if any) after a backup that ended as `result` (its exit code, or
    /// the error that stopped it); a failure is a warning on stderr.
    pub fn post(&self, result: &Result<u8>, outcome: &Outcome) {
        let Some(cmd) = &self.post else { return };
        let (status, code, error) = match result {
            Ok(0) => ("success", 0, String::new()),
            Ok(3) => ("incomplete", 3, String::new()),
            Ok(code) => ("failed", *code, String::new()),
            Err(e) => ("failed", super::exit_code(e), format!("{e:#}")),
        };
        let failed = status == "failed";
        let env = [
            ("TVAULT_HOOK", "post".to_string()),
            self.repo_var(),
            ("TVAULT_STATUS", status.to_string()),
            (
                "TVAULT_SNAPSHOT_ID",
                outcome.snapshot_id.clone().unwrap_or_default(),
            ),
            (
                "TVAULT_BYTES_ADDED",
                if failed { 0 } else { outcome.bytes_added }.to_string(),
            ),
            ("TVAULT_EXIT_CODE", code.to_string()),
            ("TVAULT_ERROR", error),
        ];
        if let Err(why) = run("post-hook", cmd, &env, self.timeout) {
            eprintln!("tvault: warning: {why}");
        }
    }

    fn repo_var(&self) -> (&'static str, String) {
        ("TVAULT_REPOSITORY", self.repository.clone())
    }
}

/// Runs `sh -c CMD` in a process group of its own with `env` added, its output prefixed with
/// `[NAME] ` on stderr, killed (the group) after `timeout`. `Err`: why it failed, in words.
fn run(name: &str, cmd: &str, env: &[(&str, String)], timeout: Duration) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // A hook is the user's script, but it has no use for the repository's passwords, and
        // an `env` dumped while debugging it must not leak them.
        .env_remove("TVAULT_PASSWORD")
        .env_remove("TVAULT_TO_PASSWORD")
        .env_remove("TVAULT_NEW_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{name} `{cmd}` could not be started: {e}"))?;
    // Each stream is copied line by line by a thread of its own; `done` says when both end.
    let (done, ended) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let prefix = format!("[{name}] ");
        let done = done.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                eprintln!("{prefix}{}", String::from_utf8_lossy(&line));
            }
            let _ = done.send(());
        });
    }
    drop(done);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(child.id());
                let _ = child.wait();
                // What it printed before it was killed (its streams close as the group dies).
                for _ in 0..2 {
                    if ended.recv_timeout(Duration::from_secs(1)).is_err() {
                        break;
                    }
                }
                return Err(format!(
                    "{name} `{cmd}` timed out: still running after {} (--hook-timeout), killed",
                    describe_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{name} `{cmd}`: waiting for it failed: {e}")),
        }
    };
    // Its output, to the end. A process it left running in the background (`cmd &`) may
    // hold the streams open: waited for a second at most, then its lines go on being copied
    // while tvault runs.
    let grace = Instant::now() + Duration::from_secs(1);
    for _ in 0..2 {
        if ended
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
            .is_err()
        {
            break;
        }
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(format!("{name} `{cmd}` failed with exit code {code}")),
        (None, Some(sig)) => Err(format!("{name} `{cmd}` was killed by signal {sig}")),
        (None, None) => Err(format!("{name} `{cmd}` failed ({status})")),
    }
}

/// SIGKILLs the process group `pgid` (the hook's shell and everything it started).
fn kill_group(pgid: u32) {
    let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}
