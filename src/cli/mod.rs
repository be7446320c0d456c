//! The command line: clap definitions, converted once into the engine's option structs.
//! Nothing below this module knows clap or indicatif.

mod args;
mod metrics;
mod output;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::ops::{backup, diff, export, import, prune, repair, restore, retention, verify};
use crate::repo::{lock, Repository};
use metrics::{sample, MetricsFile, Sample};
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
    /// `snapshots --max-age`: no complete snapshot as recent as required.
    pub const STALE: u8 = 5;
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
    /// Wait up to DURATION for a lock held by another tvault (e.g. 10m) instead of failing
    #[arg(long, global = true, value_name = "DURATION", value_parser = args::parse_duration)]
    lock_wait: Option<std::time::Duration>,
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
        #[arg(required_unless_present = "from_tar", conflicts_with = "from_tar")]
        paths: Vec<PathBuf>,
        /// Import a tar or tar.gz archive (`-`: standard input) as the snapshot, keeping names,
        /// modes and mtimes
        #[arg(long, value_name = "FILE", conflicts_with_all = ["full", "parent", "exclude", "exclude_file", "settle", "read_limit"])]
        from_tar: Option<PathBuf>,
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
        /// Leave out files and directories matching GLOB (repeatable): `*.tmp` matches names
        /// at any depth, `ckpt/cache/**` paths as stored, `/abs/path` absolute paths
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Read exclusion patterns from FILE, one per line (`#` starts a comment)
        #[arg(long, value_name = "FILE")]
        exclude_file: Vec<PathBuf>,
        /// Skip files modified within DURATION (still being written); the next backup takes them
        #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
        settle: Option<std::time::Duration>,
        /// Read file content at most this fast on average (e.g. 200MiB, per second)
        #[arg(long, value_name = "RATE", value_parser = args::parse_rate)]
        read_limit: Option<u64>,
        /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
        #[arg(long, value_name = "FILE")]
        metrics_file: Option<PathBuf>,
    },
    /// List snapshots, oldest first; with --max-age, alarm when the newest is too old
    Snapshots {
        /// Only snapshots with this tag (repeatable: any of them)
        #[arg(long, value_name = "TAG")]
        tag: Vec<String>,
        /// Only snapshots of this host
        #[arg(long)]
        host: Option<String>,
        /// Only snapshots that backed up this path
        #[arg(long, value_name = "PATH")]
        path: Option<PathBuf>,
        /// Exit with code 5 unless the newest complete snapshot shown is younger than DURATION
        #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
        max_age: Option<Duration>,
    },
    /// Restore a snapshot into a directory, or as a tar archive with --tar
    Restore {
        /// Snapshot ID or a unique prefix of it (at least 4 hex digits)
        id: String,
        /// Directory to restore into (created if missing; must be empty unless --overwrite)
        #[arg(required_unless_present = "tar", conflicts_with = "tar")]
        target: Option<PathBuf>,
        /// Write a tar archive to FILE instead (gzip for .tar.gz/.tgz; `-` for standard output)
        #[arg(long, value_name = "FILE")]
        tar: Option<PathBuf>,
        /// Restore only this path of the snapshot and what is below it (repeatable)
        #[arg(long, value_name = "PATH")]
        include: Vec<String>,
        /// Restore into a non-empty directory, replacing files in the way (or replace FILE)
        #[arg(long)]
        overwrite: bool,
    },
    /// Show what changed between two snapshots, down to the tensors of checkpoint files
    Diff {
        /// The older snapshot (ID or unique prefix)
        from: String,
        /// The newer snapshot (ID or unique prefix)
        to: String,
    },
    /// Show how a snapshot's bytes are stored per file (unchanged since its parent, delta,
    /// whole), and with --tensors which tensors a training step changed
    Show {
        /// The snapshot (ID or unique prefix)
        snapshot: String,
        /// Also list each tensor of model files: unchanged, delta, new or changed
        #[arg(long)]
        tensors: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) with every subcommand's options, e.g.
    /// `tvault man > /usr/local/share/man/man1/tvault.1`
    Man,
    /// Check the repository's integrity (exit 0 clean, 4 damage found, 1 could not check)
    Verify {
        /// Also read every pack and decode and re-hash every chunk
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Read only a subset: `n/m` (the n-th of m slices; m runs cover everything) or `P%`
        #[arg(long, value_name = "SPEC", value_parser = verify::ReadData::parse_subset)]
        read_data_subset: Option<verify::ReadData>,
        /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
        #[arg(long, value_name = "FILE")]
        metrics_file: Option<PathBuf>,
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
        /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
        #[arg(long, value_name = "FILE")]
        metrics_file: Option<PathBuf>,
    },
    /// Repair the index: `repair index` rebuilds it from packs no index lists; `repair packs`
    /// drops damaged chunks so that the next backup of the same data stores them again
    Repair {
        #[command(subcommand)]
        what: RepairCommand,
    },
    /// Remove stale locks left by crashed tvault processes
    Unlock {
        /// Remove every lock, also those of running processes
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RepairCommand {
    /// Rebuild index entries from the packs that no readable index file lists (their trailers)
    Index {
        /// Print what would be recovered, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Read every pack and drop damaged chunks (and deltas that need them) from the index, so
    /// that the next backup of the same content stores them again
    Packs {
        /// Print what would be dropped, change nothing
        #[arg(long)]
        dry_run: bool,
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
    let lock_wait = cli.lock_wait.unwrap_or_default();
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
            from_tar,
            tags,
            full,
            parent,
            host,
            mut exclude,
            exclude_file,
            settle,
            read_limit,
            metrics_file,
        } => {
            for file in &exclude_file {
                exclude.extend(crate::ops::Excludes::read_file(file)?);
            }
            let opts = backup::BackupOptions {
                paths,
                tags,
                full,
                parent,
                host,
                excludes: exclude,
                settle,
                read_limit,
            };
            measured(metrics_file, "backup", &repo_path, || {
                let mut repo = open(&repo_path, explicit.is_none(), &out, lock_wait)?;
                let progress = out.progress("backup");
                let r = match &from_tar {
                    Some(archive) => {
                        let opts = import::ImportOptions {
                            archive: archive.clone(),
                            tags: opts.tags.clone(),
                            host: opts.host.clone(),
                        };
                        import::run(&mut repo, &opts, &progress)?
                    }
                    None => backup::run(&mut repo, &opts, &progress)?,
                };
                drop(progress);
                let m = &r.snapshot.summary;
                let samples = vec![
                    sample(
                        "tvault_backup_bytes_read",
                        "File content read by the last backup",
                        m.bytes_read as f64,
                    ),
                    sample(
                        "tvault_backup_bytes_added",
                        "Bytes the last backup added to the repository",
                        m.bytes_added as f64,
                    ),
                    sample(
                        "tvault_backup_files",
                        "Files in the last snapshot",
                        m.files as f64,
                    ),
                    sample(
                        "tvault_backup_complete",
                        "1 if the last snapshot holds every file",
                        u8::from(r.snapshot.is_complete()),
                    ),
                    sample(
                        "tvault_snapshots",
                        "Snapshots in the repository",
                        repo.snapshot_ids()?.len() as f64,
                    ),
                ];
                Ok((out.backup(&r), samples))
            })
        }
        Command::Snapshots {
            tag,
            host,
            path,
            max_age,
        } => {
            let repo = open(&repo_path, false, &out, lock_wait)?;
            // Paths are stored resolved; resolve the filter the same way when it exists here.
            let path = path.map(|p| std::fs::canonicalize(&p).unwrap_or(p).display().to_string());
            let shown: Vec<_> = repo
                .snapshots()?
                .into_iter()
                .filter(|(_, s)| tag.is_empty() || s.tags.iter().any(|t| tag.contains(t)))
                .filter(|(_, s)| host.as_ref().is_none_or(|h| &s.host == h))
                .filter(|(_, s)| path.as_ref().is_none_or(|p| s.paths.contains(p)))
                .collect();
            out.snapshots(&shown);
            match max_age {
                Some(max) => Ok(out.freshness(&shown, max)),
                None => Ok(exit::SUCCESS),
            }
        }
        Command::Restore {
            id,
            target,
            tar,
            include,
            overwrite,
        } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            if let Some(tar) = tar {
                let dest = if tar.as_os_str() == "-" {
                    export::TarTarget::Stdout
                } else {
                    export::TarTarget::File(&tar)
                };
                let to_stdout = matches!(dest, export::TarTarget::Stdout);
                let report = export::run(&mut repo, &id, &include, dest, overwrite)?;
                if !to_stdout {
                    out.json(&serde_json::to_value(&report)?);
                    out.line(&format!(
                        "wrote snapshot {} to {}: {} entries, {} of file content",
                        &report.snapshot_id[..crate::id::SHORT_LEN],
                        tar.display(),
                        report.entries,
                        indicatif::HumanBytes(report.bytes)
                    ));
                }
                return Ok(out.failed_files(&report.failed, "left out of the archive"));
            }
            let opts = restore::RestoreOptions {
                snapshot: id,
                target: target.expect("clap requires TARGET without --tar"),
                include,
                overwrite,
            };
            let progress = out.progress("restore");
            let report = restore::run(&mut repo, &opts, &progress)?;
            drop(progress);
            Ok(out.restore(&report, &opts.target))
        }
        Command::Diff { from, to } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let report = diff::run(&mut repo, &from, &to)?;
            out.diff(&report);
            Ok(exit::SUCCESS)
        }
        Command::Show { snapshot, tensors } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let report = crate::ops::show::run(&mut repo, &snapshot, tensors)?;
            out.show(&report);
            Ok(exit::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Rendered to memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "tvault", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(exit::SUCCESS)
        }
        Command::Man => {
            // The top page, then one page per subcommand with its options (global options
            // propagated into each), in one roff stream.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            cmd.build();
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("tvault-{}", sub.get_name());
                let sub = sub.clone().name(name).version(env!("CARGO_PKG_VERSION"));
                clap_mangen::Man::new(sub).render(&mut page)?;
            }
            std::io::Write::write_all(&mut std::io::stdout(), &page)?;
            Ok(exit::SUCCESS)
        }
        Command::Verify {
            read_data,
            read_data_subset,
            metrics_file,
        } => {
            let mode = match (read_data, read_data_subset) {
                (true, _) => verify::ReadData::All,
                (false, Some(subset)) => subset,
                (false, None) => verify::ReadData::None,
            };
            measured(metrics_file, "verify", &repo_path, || {
                let mut repo = open(&repo_path, false, &out, lock_wait)?;
                let progress = out.progress("verify");
                let r = verify::run(&mut repo, mode, &progress)?;
                drop(progress);
                let samples = vec![
                    sample(
                        "tvault_verify_problems",
                        "Problems the last verify found (0 = clean)",
                        r.problems.len() as f64,
                    ),
                    sample(
                        "tvault_verify_bytes_read",
                        "Pack bytes the last verify read",
                        r.bytes_read as f64,
                    ),
                    sample(
                        "tvault_snapshots",
                        "Snapshots in the repository",
                        r.snapshots as f64,
                    ),
                ];
                Ok((out.verify(&r), samples))
            })
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
            metrics_file,
        } => {
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
            measured(metrics_file, "prune", &repo_path, || {
                let mut repo = open(&repo_path, false, &out, lock_wait)?;
                let progress = out.progress("prune");
                let r = prune::run(&mut repo, &opts, &progress)?;
                drop(progress);
                out.prune(&r);
                // A dry run changes nothing: its metrics describe the repository as it is.
                let (removed, freed, remaining) = if r.dry_run {
                    (0, 0, r.snapshots.len())
                } else {
                    let kept = r.snapshots.iter().filter(|d| d.keep).count();
                    (r.snapshots_removed, r.bytes_freed, kept)
                };
                let samples = vec![
                    sample(
                        "tvault_prune_snapshots_removed",
                        "Snapshots the last prune removed",
                        removed as f64,
                    ),
                    sample(
                        "tvault_prune_bytes_freed",
                        "Bytes the last prune freed",
                        freed as f64,
                    ),
                    sample(
                        "tvault_snapshots",
                        "Snapshots in the repository",
                        remaining as f64,
                    ),
                ];
                Ok((exit::SUCCESS, samples))
            })
        }
        Command::Repair { what } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let progress = out.progress("repair");
            match what {
                RepairCommand::Index { dry_run } => {
                    let r = repair::index(&mut repo, dry_run, &progress)?;
                    drop(progress);
                    Ok(out.repair_index(&r))
                }
                RepairCommand::Packs { dry_run } => {
                    let r = repair::packs(&mut repo, dry_run, &progress)?;
                    drop(progress);
                    Ok(out.repair_packs(&r))
                }
            }
        }
        Command::Unlock { all } => {
            let repo = open(&repo_path, false, &out, lock_wait)?;
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

/// Runs a command; with `--metrics-file`, writes its metrics afterwards, also when it failed
/// (the file is checked before the command starts, so a bad path changes nothing).
fn measured(
    file: Option<PathBuf>,
    command: &'static str,
    repo: &Path,
    run: impl FnOnce() -> Result<(u8, Vec<Sample>)>,
) -> Result<u8> {
    let metrics = file
        .map(|p| MetricsFile::prepare(&p, command, repo))
        .transpose()?;
    let started = std::time::Instant::now();
    let result = run();
    if let Some(m) = metrics {
        let (success, samples) = match &result {
            Ok((code, samples)) => (*code == exit::SUCCESS, samples.as_slice()),
            Err(_) => (false, &[][..]),
        };
        if let Err(e) = m.write(success, started.elapsed(), samples) {
            if result.is_ok() {
                return Err(e);
            }
            eprintln!("tvault: warning: {e:#}");
        }
    }
    result.map(|(code, _)| code)
}

/// Opens the repository; the default location (and only that) is created on first backup.
fn open(path: &Path, create_default: bool, out: &Out, lock_wait: Duration) -> Result<Repository> {
    if create_default && !path.exists() {
        let mut repo = Repository::init(path)?;
        out.note(&format!(
            "created a new tvault repository at {} (the default location)",
            path.display()
        ));
        repo.set_lock_wait(lock_wait);
        return Ok(repo);
    }
    let mut repo = Repository::open(path)?;
    repo.set_lock_wait(lock_wait);
    for e in repo.index_problems() {
        out.warn(&format!(
            "{e}; chunks only it lists count as missing: run `tvault verify`"
        ));
    }
    Ok(repo)
}
