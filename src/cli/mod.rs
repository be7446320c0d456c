//! The command line: clap definitions, converted once into the engine's option structs.
//! Nothing below this module knows clap or indicatif.

mod args;
mod metrics;
mod output;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use metrics::{sample, MetricsFile, Sample};
use output::Out;
use tvault_core::ops::select::{self, Latest, Resolved, SnapshotFilter};
use tvault_core::ops::{
    backup, diff, dump, export, find, import, ls, prune, repair, restore, retention, stats, verify,
};
use tvault_core::repo::{lock, Repository};

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

/// The exit codes, as `--help` and the man page's EXIT STATUS section print them.
const EXIT_STATUS_HELP: &str = "Exit status:
  0  success
  1  error: nothing was done, or the command stopped (bad input, no repository, lock held,
     I/O error, disk full)
  2  the command line is wrong (unknown option, missing argument)
  3  backup: the snapshot was written but is incomplete (some files could not be stored)
  4  verify: damage found; restore: finished, but some files could not be restored
  5  snapshots --max-age: no complete snapshot matching the filters is recent enough";

#[derive(Parser, Debug)]
#[command(
    name = "tvault",
    version,
    about = "Deduplicating backup for machine-learning model artifacts",
    arg_required_else_help = true,
    after_help = EXIT_STATUS_HELP
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
    /// Wait up to DURATION for a lock held by another tvault (e.g. 10m; m = minutes) instead of
    /// failing
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
        #[arg(long, value_name = "FILE", conflicts_with_all = ["full", "parent", "exclude", "exclude_file", "settle", "settle_max", "read_limit"])]
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
        /// Files modified within DURATION are still being written: they keep their version from
        /// the parent snapshot (a new one waits), and a checkpoint folder with such a file keeps
        /// the parent's version of all its files; all are listed, and a later backup takes them (e.g. 10m; m = minutes)
        #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
        settle: Option<std::time::Duration>,
        /// A file or checkpoint folder deferred by --settle for longer than DURATION makes the
        /// snapshot incomplete (exit 3) [default: 4 × --settle]
        #[arg(long, value_name = "DURATION", value_parser = args::parse_duration, requires = "settle")]
        settle_max: Option<std::time::Duration>,
        /// Read file content at most this fast on average (e.g. 200MiB, per second)
        #[arg(long, value_name = "RATE", value_parser = args::parse_rate)]
        read_limit: Option<u64>,
        /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
        #[arg(long, value_name = "FILE")]
        metrics_file: Option<PathBuf>,
        /// Say what would be read and added: files are read, chunked and compressed as a
        /// backup would, but nothing is stored and no snapshot is written
        #[arg(long, conflicts_with_all = ["from_tar", "metrics_file"])]
        dry_run: bool,
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
        /// (e.g. 26h; m = minutes)
        #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
        max_age: Option<Duration>,
    },
    /// Restore a snapshot into a directory, or as a tar archive with --tar
    Restore {
        /// Snapshot ID, a unique prefix of it (at least 4 hex digits), or `latest`
        id: String,
        /// Directory to restore into (created if missing; must be empty unless --overwrite)
        #[arg(required_unless_present_any = ["tar", "target_dir"], conflicts_with_all = ["tar", "target_dir"])]
        target: Option<PathBuf>,
        /// Directory to restore into, restic's spelling of TARGET
        #[arg(long = "target", value_name = "DIR", conflicts_with = "tar")]
        target_dir: Option<PathBuf>,
        /// Write a tar archive to FILE instead (gzip for .tar.gz/.tgz; `-` for standard output)
        #[arg(long, value_name = "FILE")]
        tar: Option<PathBuf>,
        /// Restore only this path of the snapshot and what is below it (repeatable)
        #[arg(long, value_name = "PATH")]
        include: Vec<String>,
        /// Restore into a non-empty directory, replacing files in the way (or replace FILE)
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        latest: LatestFilter,
    },
    /// Show what changed between two snapshots, down to the tensors of checkpoint files
    Diff {
        /// The older snapshot (ID, unique prefix or `latest`)
        from: String,
        /// The newer snapshot (ID, unique prefix or `latest`)
        to: String,
        #[command(flatten)]
        latest: LatestFilter,
    },
    /// Show how a snapshot's bytes are stored per file (unchanged since its parent, delta,
    /// whole), and with --tensors which tensors a training step changed
    Show {
        /// The snapshot (ID, unique prefix or `latest`)
        snapshot: String,
        /// Also list each tensor of model files: unchanged, delta, new or changed
        #[arg(long)]
        tensors: bool,
        #[command(flatten)]
        latest: LatestFilter,
    },
    /// List the files, directories and symlinks of a snapshot (below PATH)
    Ls {
        /// The snapshot (ID, unique prefix or `latest`)
        id: String,
        /// Only this path of the snapshot and what is below it, e.g. ckpt/step-1000
        #[arg(id = "snapshot_path", value_name = "PATH")]
        path: Option<String>,
        /// Also show kind and permissions, size and mtime (UTC)
        #[arg(long, short)]
        long: bool,
        #[command(flatten)]
        latest: LatestFilter,
    },
    /// Write one file of a snapshot to standard output, without restoring the snapshot
    Dump {
        /// The snapshot (ID, unique prefix or `latest`)
        id: String,
        /// The file's path in the snapshot, as `tvault ls` prints it
        #[arg(id = "snapshot_path", value_name = "PATH")]
        path: String,
        /// Write only this tensor's raw bytes (safetensors and GGUF files)
        #[arg(long, value_name = "NAME")]
        tensor: Option<String>,
        #[command(flatten)]
        latest: LatestFilter,
    },
    /// Find files and directories matching GLOB in every snapshot
    Find {
        /// `*.safetensors` matches names at any depth, `ckpt/step-*/model.safetensors` whole
        /// paths as stored
        #[arg(value_name = "GLOB")]
        pattern: String,
        /// Only snapshots with this tag (repeatable: any of them)
        #[arg(long, value_name = "TAG")]
        tag: Vec<String>,
        /// Only snapshots of this host
        #[arg(long)]
        host: Option<String>,
        /// Only snapshots that backed up this path
        #[arg(long, value_name = "PATH")]
        path: Option<PathBuf>,
    },
    /// Sizes of a snapshot (restore size, distinct chunks, stored bytes, dedup, encodings), or
    /// without ID of the whole repository
    Stats {
        /// The snapshot (ID, unique prefix or `latest`)
        id: Option<String>,
        #[command(flatten)]
        latest: LatestFilter,
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
        /// Keep snapshots newer than DURATION before the newest one (e.g. 36h, 7d, 1y6m, 90min;
        /// m = months, as in restic; min = minutes)
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
        #[arg(long, value_name = "PERCENT", default_value_t = prune::DEFAULT_MAX_UNUSED, value_parser = args::parse_percent)]
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

/// The man page's EXIT STATUS section (clap_mangen has none of its own).
fn render_exit_status(page: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(page, ".SH \"EXIT STATUS\"")?;
    for line in EXIT_STATUS_HELP.lines().skip(1) {
        let line = line.trim();
        match line.split_once("  ") {
            Some((code, text)) if code.chars().all(|c| c.is_ascii_digit()) => {
                writeln!(page, ".TP\n\\fB{code}\\fR\n{}", text.trim())?
            }
            _ => writeln!(page, "{line}")?,
        }
    }
    Ok(())
}

/// Which snapshot `latest` names: the newest complete one matching these filters.
#[derive(clap::Args, Debug)]
struct LatestFilter {
    /// With `latest`: only snapshots with this tag (repeatable: any of them)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// With `latest`: only snapshots of this host
    #[arg(long)]
    host: Option<String>,
    /// With `latest`: only snapshots that backed up this path
    #[arg(long, value_name = "PATH")]
    path: Option<PathBuf>,
}

impl LatestFilter {
    fn filter(self) -> SnapshotFilter {
        SnapshotFilter::new(self.tags, self.host, self.path)
    }
}

/// Resolves snapshot arguments (`latest` among them) and says on stderr, before anything is
/// written, which snapshot `latest` is.
fn resolve(
    repo: &Repository,
    out: &Out,
    specs: &[&str],
    filter: LatestFilter,
) -> Result<(Vec<Resolved>, Option<Latest>)> {
    let resolved = select::resolve(repo, specs, &filter.filter())?;
    let latest = resolved.iter().find_map(|r| r.latest.clone());
    if let Some(l) = &latest {
        out.note(&l.to_string());
    }
    Ok((resolved, latest))
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

/// Whether this run reports in JSON (set once the command line is parsed).
static JSON_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a failed run's error: on stderr, and under `--json` also as a JSON object on stdout.
pub fn print_error(err: &anyhow::Error) {
    let json = JSON_MODE.load(std::sync::atomic::Ordering::SeqCst);
    output::print_error(json, &format!("{err:#}"), exit::ERROR);
}

/// Parses the command line, runs it, and returns the exit code.
pub fn run() -> Result<u8> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Under --json, a wrong command line is a JSON error too (help and --version are
            // not errors and print as usual).
            let json = std::env::args_os().any(|a| a == "--json");
            if json
                && e.use_stderr()
                && e.kind() != clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            {
                let text = e.render().to_string();
                let message = text
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                let value = serde_json::json!({ "error": message, "exit_code": exit::USAGE });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serialises")
                );
            }
            e.exit()
        }
    };
    JSON_MODE.store(cli.json, std::sync::atomic::Ordering::SeqCst);
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
            settle_max,
            read_limit,
            metrics_file,
            dry_run,
        } => {
            for file in &exclude_file {
                exclude.extend(tvault_core::ops::Excludes::read_file(file)?);
            }
            let opts = backup::BackupOptions {
                paths,
                tags,
                full,
                parent,
                host,
                excludes: exclude,
                settle,
                settle_max,
                read_limit,
                dry_run,
            };
            measured(metrics_file, "backup", &repo_path, || {
                // A dry run never creates the default repository.
                let create = explicit.is_none() && !dry_run;
                let mut repo = open(&repo_path, create, &out, lock_wait)?;
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
                        "tvault_backup_settling_files",
                        "Files whose current version the last backup deferred (--settle)",
                        r.settling_details.len() as f64,
                    ),
                    sample(
                        "tvault_backup_oldest_deferral_seconds",
                        "How long the longest-deferred file has been deferred by --settle (0: none)",
                        r.settling_details
                            .iter()
                            .map(|f| f.deferred_seconds)
                            .max()
                            .unwrap_or(0) as f64,
                    ),
                    sample(
                        "tvault_snapshots",
                        "Snapshots in the repository",
                        repo.snapshot_ids()?.len() as f64,
                    ),
                ];
                Ok((out.backup(&r, opts.settle), samples))
            })
        }
        Command::Snapshots {
            tag,
            host,
            path,
            max_age,
        } => {
            let repo = open(&repo_path, false, &out, lock_wait)?;
            let shown = select::matching(&repo, &SnapshotFilter::new(tag, host, path))?;
            out.snapshots(&shown);
            match max_age {
                Some(max) => Ok(out.freshness(&shown, max)),
                None => Ok(exit::SUCCESS),
            }
        }
        Command::Restore {
            id,
            target,
            target_dir,
            tar,
            include,
            overwrite,
            latest,
        } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let (resolved, latest) = resolve(&repo, &out, &[&id], latest)?;
            let id = resolved[0].id.to_hex();
            if let Some(tar) = tar {
                let dest = if tar.as_os_str() == "-" {
                    export::TarTarget::Stdout
                } else {
                    export::TarTarget::File(&tar)
                };
                let to_stdout = matches!(dest, export::TarTarget::Stdout);
                let report = export::run(&mut repo, &id, &include, dest, overwrite)?;
                if !to_stdout {
                    out.json(&serde_json::to_value(output::WithLatest {
                        report: &report,
                        latest: latest.as_ref(),
                    })?);
                    out.line(&format!(
                        "wrote snapshot {} to {}: {} entries, {} of file content",
                        &report.snapshot_id[..tvault_core::id::SHORT_LEN],
                        tar.display(),
                        report.entries,
                        indicatif::HumanBytes(report.bytes)
                    ));
                }
                return Ok(out.failed_files(&report.failed, "left out of the archive"));
            }
            let opts = restore::RestoreOptions {
                snapshot: id,
                target: target
                    .or(target_dir)
                    .expect("clap requires TARGET or --target without --tar"),
                include,
                overwrite,
            };
            let progress = out.progress("restore");
            let report = restore::run(&mut repo, &opts, &progress)?;
            drop(progress);
            Ok(out.restore(&report, &opts.target, latest.as_ref()))
        }
        Command::Diff { from, to, latest } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let (ids, latest) = resolve(&repo, &out, &[&from, &to], latest)?;
            let (from, to) = (ids[0].id.to_hex(), ids[1].id.to_hex());
            let report = diff::run(&mut repo, &from, &to)?;
            out.diff(&report, latest.as_ref());
            Ok(exit::SUCCESS)
        }
        Command::Show {
            snapshot,
            tensors,
            latest,
        } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let (ids, latest) = resolve(&repo, &out, &[&snapshot], latest)?;
            let report = tvault_core::ops::show::run(&mut repo, &ids[0].id.to_hex(), tensors)?;
            out.show(&report, latest.as_ref());
            Ok(exit::SUCCESS)
        }
        Command::Ls {
            id,
            path,
            long,
            latest,
        } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let (ids, _) = resolve(&repo, &out, &[&id], latest)?;
            let opts = ls::LsOptions {
                snapshot: ids[0].id,
                path,
            };
            out.ls(&ls::run(&mut repo, &opts)?, long);
            Ok(exit::SUCCESS)
        }
        Command::Dump {
            id,
            path,
            tensor,
            latest,
        } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let (ids, _) = resolve(&repo, &out, &[&id], latest)?;
            let opts = dump::DumpOptions {
                snapshot: ids[0].id,
                path,
                tensor,
            };
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            match dump::run(&mut repo, &opts, &mut stdout) {
                Ok(_) => Ok(exit::SUCCESS),
                // A reader that stops early (`tvault dump ID f | head -c 100`) is its choice.
                Err(tvault_core::error::Error::Io { err, .. })
                    if err.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(exit::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Find {
            pattern,
            tag,
            host,
            path,
        } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let opts = find::FindOptions {
                pattern,
                filter: SnapshotFilter::new(tag, host, path),
            };
            out.find(&find::run(&mut repo, &opts)?);
            Ok(exit::SUCCESS)
        }
        Command::Stats { id, latest } => {
            let mut repo = open(&repo_path, false, &out, lock_wait)?;
            let specs: Vec<&str> = id.as_deref().into_iter().collect();
            let (ids, latest) = resolve(&repo, &out, &specs, latest)?;
            match ids.first() {
                Some(r) => {
                    let mut report = stats::snapshot(&mut repo, &r.id)?;
                    report.latest = latest;
                    out.snapshot_stats(&report);
                }
                None => out.repo_stats(&stats::repository(&mut repo)?),
            }
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
            let top = clap_mangen::Man::new(cmd.clone());
            top.render_title(&mut page)?;
            top.render_name_section(&mut page)?;
            top.render_synopsis_section(&mut page)?;
            top.render_description_section(&mut page)?;
            top.render_options_section(&mut page)?;
            top.render_subcommands_section(&mut page)?;
            render_exit_status(&mut page)?;
            top.render_version_section(&mut page)?;
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
                out.prune(&r, opts.policy.within);
                if let Some(why) = &r.refused {
                    anyhow::bail!("prune would refuse this plan: {why}");
                }
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
    repo.set_notice(out.note_sink());
    for e in repo.index_problems() {
        out.warn(&format!(
            "{e}; chunks only it lists count as missing: run `tvault verify`"
        ));
    }
    Ok(repo)
}
