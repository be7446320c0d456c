//! The command line: clap definitions, converted once into the engine's option structs.
//! Nothing below this module knows clap or indicatif.

mod output;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::ops::{backup, restore};
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
    /// `restore` finished, but some files failed (damaged data).
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
            let repo = open(&repo_path, explicit.is_none(), &out)?;
            let opts = backup::BackupOptions {
                paths,
                tags,
                full,
                parent,
                host,
            };
            let progress = out.progress("backup");
            let report = backup::run(&repo, &opts, &progress)?;
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
            let repo = open(&repo_path, false, &out)?;
            let opts = restore::RestoreOptions {
                snapshot: id,
                target,
                include,
                overwrite,
            };
            let progress = out.progress("restore");
            let report = restore::run(&repo, &opts, &progress)?;
            drop(progress);
            Ok(out.restore(&report, &opts.target))
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
    Ok(Repository::open(path)?)
}
