//! `tvault` processes beyond a plain run: commands to adjust before they run, runs in the
//! background (waited for with [`finish`]) and runs SIGKILLed after a delay.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{Run, TestEnv};

/// Spawns `cmd`, retrying while its binary is "busy": a copy of the binary just written by this
/// process can still be open for writing in a child that another test thread is forking.
pub fn spawn(cmd: &mut Command) -> Child {
    for _ in 0..100 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.expect("spawn tvault"),
        }
    }
    panic!("{:?} stayed busy", cmd.get_program());
}

/// Starts `cmd` in the background with its stdout and stderr piped (for [`finish`]).
pub fn spawn_piped(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn(&mut cmd)
}

/// Waits for a child started with piped output; what it did, described as `what`.
pub fn finish(child: Child, what: &str) -> Run {
    let out = child.wait_with_output().expect("wait for tvault");
    Run::from_output(what.to_string(), out)
}

impl TestEnv {
    /// `tvault --repo REPO ARGS…` as a command not yet run, to add environment or redirections.
    pub fn repo_command<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        self.command_at(&self.repo, args)
    }

    /// `tvault --repo REPO ARGS…` for another repository `repo`, not yet run.
    pub fn command_at<S: AsRef<OsStr>>(
        &self,
        repo: &Path,
        args: impl IntoIterator<Item = S>,
    ) -> Command {
        let mut cmd = self.command();
        cmd.arg("--repo").arg(repo).args(args);
        cmd
    }

    /// `tvault --repo REPO ARGS…` started in the background (see [`finish`]).
    pub fn spawn_tvault<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Child {
        spawn_piped(self.repo_command(args))
    }

    /// Runs `tvault --repo REPO ARGS…` (output discarded) and SIGKILLs it after `delay`; how it
    /// ended (it may have finished first).
    pub fn kill_after<S: AsRef<OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
        delay: Duration,
    ) -> ExitStatus {
        let mut cmd = self.repo_command(args);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = spawn(&mut cmd);
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap()
    }
}
