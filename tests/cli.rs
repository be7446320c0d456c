//! The integration test binary: runs the built `tvault` against temporary repositories.
//!
//! Every test gets its own [`testenv::TestEnv`] (a temp dir with `src/` and `repo/`), passes
//! `--repo` explicitly (or points `HOME`/`XDG_DATA_HOME` into the temp dir when it tests the
//! default location), and never touches the real default repository.

#[path = "cli/testenv.rs"]
mod testenv;

#[path = "cli/bad_input.rs"]
mod bad_input;
#[path = "cli/browse.rs"]
mod browse;
#[path = "cli/copy.rs"]
mod copy;
#[path = "cli/crash.rs"]
mod crash;
#[path = "cli/damage.rs"]
mod damage;
#[path = "cli/delta.rs"]
mod delta;
#[path = "cli/drill.rs"]
mod drill;
#[path = "cli/encryption.rs"]
mod encryption;
#[path = "cli/forget.rs"]
mod forget;
#[path = "cli/format.rs"]
mod format;
#[path = "cli/hooks.rs"]
mod hooks;
#[path = "cli/incremental.rs"]
mod incremental;
#[path = "cli/locks.rs"]
mod locks;
#[path = "cli/private.rs"]
mod private;
#[path = "cli/profile.rs"]
mod profile;
#[path = "cli/progress.rs"]
mod progress;
#[path = "cli/prune.rs"]
mod prune;
#[path = "cli/recipes.rs"]
mod recipes;
#[path = "cli/repair.rs"]
mod repair;
#[path = "cli/restic_habits.rs"]
mod restic_habits;
#[path = "cli/roundtrip.rs"]
mod roundtrip;
#[path = "cli/s3.rs"]
mod s3;
#[path = "cli/settle.rs"]
mod settle;
#[path = "cli/tar.rs"]
mod tar;
#[path = "cli/tensor_bases.rs"]
mod tensor_bases;
#[path = "cli/torchzip.rs"]
mod torchzip;
#[path = "cli/unattended.rs"]
mod unattended;
#[path = "cli/verify.rs"]
mod verify;
#[path = "cli/watch.rs"]
mod watch;
