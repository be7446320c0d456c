//! The crash hooks: a command stopped at each of its write steps in turn (the
//! `TVAULT_CRASH_AFTER_WRITES` hook) or SIGKILLed after each of several delays, every time
//! followed by the caller's check of what it left behind.

use std::ffi::OsStr;
use std::fs;
use std::ops::ControlFlow;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::{copy_dir, Run, TestEnv};

/// How the crash hook stops a command.
pub const SIGABRT: i32 = 6;
/// How `Child::kill` stops a command.
pub const SIGKILL: i32 = 9;

/// Whether a process ended by SIGKILL.
pub fn was_killed(status: ExitStatus) -> bool {
    status.signal() == Some(SIGKILL)
}

impl TestEnv {
    /// `tvault --repo REPO ARGS…` with the crash hook set to `n`: it aborts after its `n`th
    /// write step, unless it finishes first.
    pub fn tvault_crashing<S: AsRef<OsStr>>(
        &self,
        n: u32,
        args: impl IntoIterator<Item = S>,
    ) -> Run {
        let mut cmd = self.repo_command(args);
        cmd.env("TVAULT_CRASH_AFTER_WRITES", n.to_string());
        self.run_command(cmd)
    }

    /// Like [`TestEnv::tvault_crashing`], and the hook must have stopped the command (SIGABRT).
    #[track_caller]
    pub fn crash_after<S: AsRef<OsStr>>(&self, n: u32, args: impl IntoIterator<Item = S>) -> Run {
        let run = self.tvault_crashing(n, args);
        assert_eq!(run.status.signal(), Some(SIGABRT), "{run}");
        run
    }

    /// A copy of the repository as it is now, for [`TestEnv::reset_repo`].
    pub fn save_repo(&self) -> PathBuf {
        let saved = self.fresh_path("saved-repo");
        copy_dir(&self.repo, &saved);
        saved
    }

    /// Replaces the repository (if any) by a copy of `saved`.
    pub fn reset_repo(&self, saved: &Path) {
        if self.repo.exists() {
            fs::remove_dir_all(&self.repo).unwrap();
        }
        copy_dir(saved, &self.repo);
    }
}

/// Runs `tvault --repo REPO ARGS…` with the crash hook at N = 1, 2, …, each time on a fresh
/// copy of the repository `saved`, until a run completes (exits 0) or `check` breaks off.
/// Every run that does not complete must have been stopped by the hook (SIGABRT). `check(n,
/// &run)` follows every run, completed or not. Returns the N of the last run; panics when no
/// run completed within `max` write steps.
#[track_caller]
pub fn crash_at_every_write_step<S: AsRef<OsStr>>(
    env: &TestEnv,
    saved: &Path,
    args: &[S],
    max: u32,
    mut check: impl FnMut(u32, &Run) -> ControlFlow<()>,
) -> u32 {
    for n in 1..=max {
        env.reset_repo(saved);
        let run = env.tvault_crashing(n, args);
        let completed = run.code() == Some(0);
        if !completed {
            assert_eq!(
                run.status.signal(),
                Some(SIGABRT),
                "crash at write step {n}: {run}"
            );
        }
        if check(n, &run).is_break() || completed {
            return n;
        }
    }
    panic!(
        "tvault {} never completed within {max} write steps",
        shown(args)
    );
}

/// Runs `tvault --repo REPO ARGS…` once per delay of `delays`, SIGKILLed after that delay
/// (output discarded). `before()` runs before each run (to reset or record the repository);
/// `check(delay, status, what before() returned)` after it, and may break off. A run that
/// finished before the kill must have succeeded. Returns how many runs were killed.
#[track_caller]
pub fn sigkill_at_delays<S: AsRef<OsStr>, T>(
    env: &TestEnv,
    args: &[S],
    delays: impl IntoIterator<Item = Duration>,
    mut before: impl FnMut() -> T,
    mut check: impl FnMut(Duration, ExitStatus, T) -> ControlFlow<()>,
) -> u32 {
    let mut killed = 0;
    for delay in delays {
        let state = before();
        let status = env.kill_after(args, delay);
        if was_killed(status) {
            killed += 1;
        } else {
            assert!(
                status.success(),
                "tvault {} killed after {delay:?}: it failed on its own: {status}",
                shown(args)
            );
        }
        if check(delay, status, state).is_break() {
            break;
        }
    }
    killed
}

/// `ARGS…` as one line, for messages.
fn shown<S: AsRef<OsStr>>(args: &[S]) -> String {
    let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    args.join(" ")
}
