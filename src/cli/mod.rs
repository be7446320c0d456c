//! The command line: clap definitions, converted once into the engine's option structs.
//! Nothing below this module knows clap or indicatif.

mod output;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::ops::{backup, prune, restore, retention, verify};
use crate::repo::{lock, Repository};
use output::Out;

/// Exit codes, documented in the README.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The command failed (bad input, no repository, lock held, I/O error).
    pub const ERROR: u8 = 1;
    /// The command line itself is wrong (clap's code).
    pub const USAGE: u8 = 2;
    /// `backup` wrote a snapshot, but some files could not be stored in it.
    pub const INCOMPLETE: u8 = 3;
    /// `verify` found damage; `restore` finished but some files failed (damaged data).
    pub const DAMAGE: u8 = 4;
}

#[derive(Parser, Debug)]
#[command(
    name = "tvault",
    version,
    about = "Deduplicating backup for machine-learning model artifacts"
)]
pub struct Cli {
    /// Repository directory [default: $XDG_DATA_HOME/tvault/repo, else ~/.local/share/tvault/repo]
    #[arg(long, global = true, env = "TVAULT_REPO", value_name = "PATH")]
    repo: Option<PathBuf>,
    /// Print nothing but errors
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Print a machine-readable JSON report on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a repository
    Init,
    /// Back up files and directories into a new snapshot
    Backup {
        /// Files or directories; each is stored under its own name
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Tag the snapshot (repeatable)
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Read every file, even those unchanged since the parent snapshot
        #[arg(long)]
        full: bool,
        /// Parent snapshot [default: the latest with the same host and paths]
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// Host name to record [default: this machine's]
        #[arg(long)]
        host: Option<String>,
    },
    /// List snapshots, oldest first
    Snapshots,
    /// Restore a snapshot into a directory
    Restore {
        /// Snapshot ID or a unique prefix of it (at least 4 hex digits)
        id: String,
        /// Directory to restore into (created if missing; must be empty unless --overwrite)
        target: PathBuf,
        /// Restore only this path of the snapshot and what is below it (repeatable)
        #[arg(long, value_name = "PATH")]
        include: Vec<String>,
        /// Restore into a non-empty directory, replacing files in the way
        #[arg(long)]
        overwrite: bool,
    },
    /// Check the repository's integrity (exit 0 clean, 4 damage found, 1 could not check)
    Verify {
        /// Also read every pack and decode and re-hash every chunk
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Read only a subset: `n/m` (the n-th of m slices; m runs cover everything) or `P%`
        #[arg(long, value_name = "SPEC", value_parser = verify::ReadData::parse_subset)]
        read_data_subset: Option<verify::ReadData>,
    },
    /// Remove snapshots by a retention policy, then the data only they used
    Prune {
        /// Keep the N newest snapshots
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N hours that have one (UTC)
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: u32,
        /// Keep the newest snapshot of each of the last N days that have one (UTC)
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: u32,
        /// Keep the newest snapshot of each of the last N ISO weeks that have one
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: u32,
        /// Keep the newest snapshot of each of the last N months that have one
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: u32,
        /// Keep the newest snapshot of each of the last N years that have one
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_yearly: u32,
        /// Keep snapshots newer than DURATION before the newest one (e.g. 36h, 7d, 1y6m)
        #[arg(long, value_name = "DURATION", value_parser = retention::Within::parse)]
        keep_within: Option<retention::Within>,
        /// Keep snapshots with this tag (repeatable)
        #[arg(long, value_name = "TAG")]
        keep_tag: Vec<String>,
        /// Apply the policy only to snapshots with this tag (repeatable); others are kept
        #[arg(long = "tag", value_name = "TAG")]
        only_tags: Vec<String>,
        /// Remove this snapshot whatever the policy says (repeatable)
        #[arg(long, value_name = "ID")]
        forget: Vec<String>,
        /// Print what would be removed and freed, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Repack packs with more than this percentage of unused bytes
        #[arg(long, value_name = "PERCENT", default_value_t = prune::DEFAULT_MAX_UNUSED)]
        max_unused: f64,
        /// Allow a policy that removes every snapshot
        #[arg(long)]
        allow_remove_all: bool,
    },
    /// Remove stale locks left by crashed tvault processes
    Unlock {
        /// Remove every lock, also those of running processes
        #[arg(long)]
        all: bool,
    },
}

/// The documented default repository location.
pub fn default_repo() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("tvault/repo"))
}

/// Parses the command line, runs it, and returns the exit code.
pub fn run() -> Result<u8> {
    let cli = Cli::parse();
    let out = Out::new(cli.quiet, cli.json);
    let explicit = cli.repo.clone();
    let repo_path = match explicit.clone().or_else(default_repo) {
        Some(p) => p,
        None => anyhow::bail!("no repository given: pass --repo PATH or set TVAULT_REPO"),
    };
    match cli.command {
        Command::Init => {
            Repository::init(&repo_path)?;
            out.line(&format!(
                "created tvault repository at {}",
                repo_path.display()
            ));
            out.json(&serde_json::json!({ "repository": repo_path }));
            Ok(exit::SUCCESS)
        }
        Command::Backup {
            paths,
            tags,
            full,
            parent,
            host,
        } => {
            let mut repo = open(&repo_path, explicit.is_none(), &out)?;
            let opts = backup::BackupOptions {
                paths,
                tags,
                full,
                parent,
                host,
            };
            let progress = out.progress("backup");
            let report = backup::run(&mut repo, &opts, &progress)?;
            drop(progress);
            Ok(out.backup(&report))
        }
        Command::Snapshots => {
            let repo = open(&repo_path, false, &out)?;
            out.snapshots(&repo.snapshots()?);
            Ok(exit::SUCCESS)
        }
        Command::Restore {
            id,
            target,
            include,
            overwrite,
        } => {
            let mut repo = open(&repo_path, false, &out)?;
            let opts = restore::RestoreOptions {
                snapshot: id,
                target,
                include,
                overwrite,
            };
            let progress = out.progress("restore");
            let report = restore::run(&mut repo, &opts, &progress)?;
            drop(progress);
            Ok(out.restore(&report, &opts.target))
        }
        Command::Verify {
            read_data,
            read_data_subset,
        } => {
            let mut repo = open(&repo_path, false, &out)?;
            let mode = match (read_data, read_data_subset) {
                (true, _) => verify::ReadData::All,
                (false, Some(subset)) => subset,
                (false, None) => verify::ReadData::None,
            };
            let progress = out.progress("verify");
            let report = verify::run(&mut repo, mode, &progress)?;
            drop(progress);
            Ok(out.verify(&report))
        }
        Command::Prune {
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            keep_tag,
            only_tags,
            forget,
            dry_run,
            max_unused,
            allow_remove_all,
        } => {
            let mut repo = open(&repo_path, false, &out)?;
            let opts = prune::PruneOptions {
                policy: retention::KeepPolicy {
                    last: keep_last,
                    hourly: keep_hourly,
                    daily: keep_daily,
                    weekly: keep_weekly,
                    monthly: keep_monthly,
                    yearly: keep_yearly,
                    within: keep_within,
                    tags: keep_tag,
                },
                only_tags,
                forget,
                dry_run,
                max_unused,
                allow_remove_all,
            };
            let progress = out.progress("prune");
            let report = prune::run(&mut repo, &opts, &progress)?;
            drop(progress);
            out.prune(&report);
            Ok(exit::SUCCESS)
        }
        Command::Unlock { all } => {
            let repo = open(&repo_path, false, &out)?;
            let removed = lock::unlock(repo.backend(), all)?;
            for r in &removed {
                out.line(&format!("removed {r}"));
            }
            if removed.is_empty() {
                out.line("no stale locks");
            }
            out.json(&serde_json::json!({ "removed": removed }));
            Ok(exit::SUCCESS)
        }
    }
}

/// Opens the repository; the default location (and only that) is created on first backup.
fn open(path: &Path, create_default: bool, out: &Out) -> Result<Repository> {
    if create_default && !path.exists() {
        let repo = Repository::init(path)?;
        out.note(&format!(
            "created a new tvault repository at {} (the default location)",
            path.display()
        ));
        return Ok(repo);
    }
    let repo = Repository::open(path)?;
    for e in repo.index_problems() {
        out.warn(&format!(
            "{e}; chunks only it lists count as missing: run `tvault verify`"
        ));
    }
    Ok(repo)
}
