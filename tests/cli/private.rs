//! Repository files are private whatever the umask (issue 9.7): folders 0700 and files 0600,
//! so a 0600 checkpoint backed up under umask 022 never lands in a world-readable pack. A
//! repository directory its owner made group-accessible keeps group access (and no more).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::testenv::{args, files_below, set_mode, TestEnv, TVAULT};

/// Runs `tvault ARGS` under `umask`, through `sh` (changing the umask in the test process
/// would race with the other tests' threads).
fn tvault_under_umask(env: &TestEnv, umask: &str, a: Vec<OsString>) {
    let cmd = env.command();
    let mut script = format!("umask {umask} && exec \"$0\" --repo \"$1\"");
    for i in 0..a.len() {
        script.push_str(&format!(" \"${}\"", i + 2));
    }
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(script).arg(TVAULT).arg(&env.repo).args(&a);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.current_dir(&env.root);
    env.run_command(sh).expect_code(0);
}

/// Every folder and file of the repository, with its permission bits.
fn modes(repo: &Path) -> Vec<(String, u32)> {
    let mut out = vec![(
        "<repo>".to_string(),
        fs::metadata(repo).unwrap().permissions().mode() & 0o777,
    )];
    for entry in walkdir::WalkDir::new(repo).min_depth(1) {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        let rel = entry.path().strip_prefix(repo).unwrap();
        out.push((rel.display().to_string(), mode));
    }
    out
}

#[test]
fn repository_files_are_private_under_a_permissive_umask() {
    let env = TestEnv::new();
    fs::remove_dir(&env.repo).unwrap();
    let secret = env.write("src/ckpt/secret.bin", &vec![7u8; 300_000]);
    set_mode(&secret, 0o600);
    tvault_under_umask(&env, "000", args!["init"]);
    tvault_under_umask(&env, "022", args!["backup", &env.src]);
    let all = modes(&env.repo);
    assert!(files_below(&env.repo).len() >= 4, "{all:?}");
    for (path, mode) in &all {
        let dir = path == "<repo>" || env.repo.join(path).is_dir();
        let want = if dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path} has mode {mode:o}; all: {all:?}");
    }
}

#[test]
fn a_group_shared_repository_keeps_group_access_and_nothing_more() {
    let env = TestEnv::new();
    set_mode(&env.repo, 0o2770);
    env.write("src/ckpt/weights.bin", &vec![3u8; 300_000]);
    // umask 077 would take the group bits: tvault sets them back; 000 would give others
    // access: tvault never does.
    tvault_under_umask(&env, "077", args!["init"]);
    tvault_under_umask(&env, "000", args!["backup", &env.src]);
    for (path, mode) in modes(&env.repo).into_iter().skip(1) {
        let want = if env.repo.join(&path).is_dir() {
            0o770
        } else {
            0o660
        };
        assert_eq!(mode, want, "{path} has mode {mode:o}");
    }
}
