//! The command line as clap sees it: the global options, one variant per command, and each
//! command's arguments as a struct of its own (converted into the engine's option structs by
//! the command's handler in `run/`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::args;
use tvault_core::ops::select::SnapshotFilter;
use tvault_core::ops::{prune, retention, verify};

/// The exit codes, as `--help` and the man page's EXIT STATUS section print them.
pub const EXIT_STATUS_HELP: &str = "Exit status:
  0  success
  1  error: nothing was done, or the command stopped (bad input, no repository, lock held,
     I/O error, disk full)
  2  the command line is wrong (unknown option, missing argument)
  3  backup (and watch --once): the snapshot was written but is incomplete (some files could not be stored)
  4  verify, drill: damage found; restore: finished, but some files could not be restored
  5  snapshots --max-age: no complete snapshot matching the filters is recent enough;
     drill: --max-rpo or --max-rto exceeded
  6  wrong password: no key of the encrypted repository opens with it (nothing was written)";

#[derive(Parser, Debug)]
#[command(
    name = "tvault",
    version,
    about = "Deduplicating backup for machine-learning model artifacts",
    arg_required_else_help = true,
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// Repository directory [default: $XDG_DATA_HOME/tvault/repo, else ~/.local/share/tvault/repo],
    /// or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX] (credentials: AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials; AWS_REGION; transient S3 errors are retried
    /// up to TVAULT_RETRY_ATTEMPTS=6 times within TVAULT_RETRY_MAX_TIME=120 seconds)
    #[arg(long, global = true, env = "TVAULT_REPO", value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// Print nothing but errors
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print a machine-readable JSON report on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Wait up to DURATION for a lock held by another tvault (e.g. 10m; m = minutes) instead of
    /// failing
    #[arg(long, global = true, value_name = "DURATION", value_parser = args::parse_duration)]
    pub lock_wait: Option<std::time::Duration>,
    /// Do not use the local cache of a remote repository's indexes, snapshots and trees
    /// ($XDG_CACHE_HOME/tvault, else ~/.cache/tvault); read everything from the repository
    #[arg(long, global = true, env = "TVAULT_NO_CACHE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub no_cache: bool,
    /// Upload at most RATE bytes per second on average (e.g. 50MiB, 1.5GB; to the repository)
    #[arg(long, global = true, env = "TVAULT_LIMIT_UPLOAD", value_name = "RATE", value_parser = args::parse_rate)]
    pub limit_upload: Option<u64>,
    /// Worker threads for chunking, hashing, compression and decoding [default: one per
    /// core]; 1 keeps a backup to one core beside a training job
    #[arg(long, global = true, env = "TVAULT_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Read the repository password from FILE (one trailing newline is ignored) [else
    /// --password-command, else TVAULT_PASSWORD, else a prompt on a terminal]
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "password_command"
    )]
    pub password_file: Option<PathBuf>,
    /// Run CMD (with sh -c) and use its standard output as the repository password, e.g. a
    /// secret manager: `pass show tvault`
    #[arg(long, global = true, value_name = "CMD")]
    pub password_command: Option<String>,
    #[command(flatten)]
    pub profile: super::profile::ProfileArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository (encrypted unless --no-encryption)
    Init(InitArgs),
    /// Back up files and directories into a new snapshot
    Backup(BackupArgs),
    /// Back up directories continuously: a snapshot at start, then one each time changes
    /// have settled (a checkpoint is snapshotted whole or not at all)
    Watch(super::watch::WatchArgs),
    /// List snapshots, oldest first; with --max-age, alarm when the newest is too old
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot into a directory, or as a tar archive with --tar
    Restore(RestoreArgs),
    /// Show what changed between two snapshots, down to the tensors of checkpoint files
    Diff(DiffArgs),
    /// Show how a snapshot's bytes are stored per file (unchanged since its parent, delta,
    /// whole), and with --tensors which tensors a training step changed
    Show(ShowArgs),
    /// List the files, directories and symlinks of a snapshot (below PATH)
    Ls(LsArgs),
    /// Write one file of a snapshot to standard output, without restoring the snapshot
    Dump(DumpArgs),
    /// Find files and directories matching GLOB in every snapshot
    Find(FindArgs),
    /// Sizes of a snapshot (restore size, distinct chunks, stored bytes, dedup, encodings), or
    /// without ID of the whole repository
    Stats(StatsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the man page (roff) with every subcommand's options, e.g.
    /// `tvault man > /usr/local/share/man/man1/tvault.1`
    Man,
    /// Check the repository's integrity (exit 0 clean, 4 damage found, 1 could not check);
    /// `check` is restic's name for it
    #[command(visible_alias = "check")]
    Verify(VerifyArgs),
    /// Rehearse a restore and measure it: restore a snapshot (default: the newest complete
    /// one) through the restore pipeline, check every chunk, report its restore time (RTO)
    /// and the newest snapshot's age (RPO) (exit 0 fine, 4 damage, 5 objective missed, 1
    /// could not check)
    Drill(DrillArgs),
    /// Add or remove a snapshot's tags (its ID changes: the ID is the hash of the manifest)
    Tag(TagArgs),
    /// Remove snapshots by a retention policy, then the data only they used
    Prune(PruneArgs),
    /// Remove snapshots by a retention policy (or ID), keeping their data until the next
    /// prune (or with --prune, prune now)
    Forget(ForgetArgs),
    /// Repair the index: `repair index` rebuilds it from packs no index lists; `repair packs`
    /// drops damaged chunks so that the next backup of the same data stores them again
    Repair(RepairArgs),
    /// Remove stale locks left by crashed tvault processes
    Unlock(UnlockArgs),
    /// Manage the keys (passwords) of an encrypted repository: list, add, remove, passwd
    Key(KeyArgs),
    /// Copy snapshots into another repository (--to REPO2), sending only what it lacks; a
    /// second run copies nothing
    Copy(super::copy::CopyArgs),
    /// Raise the repository to the newest format this tvault writes (version 4: smaller
    /// fine-tuning steps); what it holds stays as it is, and older tvault builds can no
    /// longer open it
    Upgrade,
}

/// `tvault init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Create a plaintext repository: only for one on a volume that is already encrypted
    /// and never leaves it (anyone who can read the repository reads the data)
    #[arg(long)]
    pub no_encryption: bool,
}

/// `tvault key`.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub what: KeyCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the keys (the one this password opens is marked)
    List,
    /// Add a key with a new password (from --new-password-file, TVAULT_NEW_PASSWORD or a prompt)
    Add {
        /// Read the new password from FILE
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key (not the last one, nor the one this password opens)
    Remove {
        /// The key's ID (or a unique prefix of at least 4 hex digits), as `key list` shows it
        id: String,
    },
    /// Change the password of the key this password opens
    Passwd {
        /// Read the new password from FILE
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

/// `tvault backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files or directories; each is stored under its own name [default: `paths` of the
    /// profile; required without one]
    #[arg(conflicts_with = "from_tar")]
    pub paths: Vec<PathBuf>,
    /// Import a tar or tar.gz archive (`-`: standard input) as the snapshot, keeping names,
    /// modes and mtimes
    #[arg(long, value_name = "FILE", conflicts_with_all = ["full", "parent", "exclude", "exclude_file", "settle", "settle_max", "read_limit", "dense_deltas"])]
    pub from_tar: Option<PathBuf>,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub full: bool,
    /// Also store tensor blocks that changed everywhere (full training: weights and optimizer
    /// state) as XORs with earlier blocks when smaller: ~20 % smaller steps, but restoring such
    /// a step reads and decodes about twice as much
    #[arg(long)]
    pub dense_deltas: bool,
    /// Bound delta chains to N links after their keyframe (0 to 64: the format's bound and the
    /// default, 32 in repositories older than version 4; a dense delta counts 4, so below 4
    /// there are none): restoring a late step of a long series decodes at most N deltas per
    /// block, and each step stores about 1/(N+1) of its blocks whole again. Not kept: a backup
    /// without it lets chains grow again (see the README, "Deltas and restore speed")
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=64))]
    pub max_chain: Option<u8>,
    /// Parent snapshot [default: the latest with the same host and paths]
    #[arg(long, value_name = "ID")]
    pub parent: Option<String>,
    /// Host name to record [default: this machine's]
    #[arg(long)]
    pub host: Option<String>,
    /// Leave out files and directories matching GLOB (repeatable): `*.tmp` matches names
    /// at any depth, `ckpt/cache/**` paths as stored, `/abs/path` absolute paths
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read exclusion patterns from FILE, one per line (`#` starts a comment)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Files modified within DURATION are still being written: they keep their version from
    /// the parent snapshot (a new one waits), and a checkpoint folder with such a file keeps
    /// the parent's version of all its files; all are listed, and a later backup takes them (e.g. 10m; m = minutes)
    #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
    pub settle: Option<std::time::Duration>,
    /// A file or checkpoint folder deferred by --settle for longer than DURATION makes the
    /// snapshot incomplete (exit 3) [default: 4 × --settle]
    #[arg(long, value_name = "DURATION", value_parser = args::parse_duration, requires = "settle")]
    pub settle_max: Option<std::time::Duration>,
    /// Read file content at most this fast on average (e.g. 200MiB, per second)
    #[arg(long, value_name = "RATE", value_parser = args::parse_rate)]
    pub read_limit: Option<u64>,
    /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Say what would be read and added: files are read, chunked and compressed as a
    /// backup would, but nothing is stored and no snapshot is written
    #[arg(long, conflicts_with_all = ["from_tar", "metrics_file"])]
    pub dry_run: bool,
    #[command(flatten)]
    pub hooks: super::hooks::HookArgs,
}

/// `tvault snapshots`.
#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots with this tag (repeatable: any of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots that backed up this path
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Exit with code 5 unless the newest complete snapshot shown is younger than DURATION
    /// (e.g. 26h; m = minutes)
    #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
    pub max_age: Option<Duration>,
}

/// `tvault restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot ID, a unique prefix of it (at least 4 hex digits), or `latest`
    pub id: String,
    /// Directory to restore into (created if missing; must be empty unless --overwrite)
    #[arg(required_unless_present_any = ["tar", "target_dir"], conflicts_with_all = ["tar", "target_dir"])]
    pub target: Option<PathBuf>,
    /// Directory to restore into, restic's spelling of TARGET
    #[arg(long = "target", value_name = "DIR", conflicts_with = "tar")]
    pub target_dir: Option<PathBuf>,
    /// Write a tar archive to FILE instead (gzip for .tar.gz/.tgz; `-` for standard output)
    #[arg(long, value_name = "FILE")]
    pub tar: Option<PathBuf>,
    /// Restore only this path of the snapshot and what is below it (repeatable)
    #[arg(long, value_name = "PATH")]
    pub include: Vec<String>,
    /// Restore into a non-empty directory, replacing files in the way (or replace FILE)
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub latest: LatestFilter,
}

/// `tvault diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot (ID, unique prefix or `latest`)
    pub from: String,
    /// The newer snapshot (ID, unique prefix or `latest`)
    pub to: String,
    #[command(flatten)]
    pub latest: LatestFilter,
}

/// `tvault show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The snapshot (ID, unique prefix or `latest`)
    pub snapshot: String,
    /// Also list each tensor of model files: unchanged, delta, new or changed
    #[arg(long)]
    pub tensors: bool,
    #[command(flatten)]
    pub latest: LatestFilter,
}

/// `tvault ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// The snapshot (ID, unique prefix or `latest`)
    pub id: String,
    /// Only this path of the snapshot and what is below it, e.g. ckpt/step-1000
    #[arg(id = "snapshot_path", value_name = "PATH")]
    pub path: Option<String>,
    /// Also show kind and permissions, size and mtime (UTC)
    #[arg(long, short)]
    pub long: bool,
    #[command(flatten)]
    pub latest: LatestFilter,
}

/// `tvault dump`.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The snapshot (ID, unique prefix or `latest`)
    pub id: String,
    /// The file's path in the snapshot, as `tvault ls` prints it
    #[arg(id = "snapshot_path", value_name = "PATH")]
    pub path: String,
    /// Write only this tensor's raw bytes (safetensors and GGUF files)
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    #[command(flatten)]
    pub latest: LatestFilter,
}

/// `tvault find`.
#[derive(Args, Debug)]
pub struct FindArgs {
    /// `*.safetensors` matches names at any depth, `ckpt/step-*/model.safetensors` whole
    /// paths as stored
    #[arg(value_name = "GLOB")]
    pub pattern: String,
    /// Only snapshots with this tag (repeatable: any of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots that backed up this path
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
}

/// `tvault stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The snapshot (ID, unique prefix or `latest`)
    pub id: Option<String>,
    #[command(flatten)]
    pub latest: LatestFilter,
}

/// `tvault completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `tvault verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Also read every pack and decode and re-hash every chunk
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read only a subset: `n/m` (the n-th of m slices; m runs cover everything) or `P%`
    #[arg(long, value_name = "SPEC", value_parser = verify::ReadData::parse_subset)]
    pub read_data_subset: Option<verify::ReadData>,
    /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
}

/// `tvault drill`.
#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Snapshot ID, a unique prefix of it (at least 4 hex digits), or `latest` [default:
    /// latest, the newest complete snapshot]
    pub id: Option<String>,
    /// Restore to disk, into a scratch folder made inside DIR and removed afterwards, and read
    /// it back [default: through the restore pipeline into a hashing sink: no disk writes, so
    /// the measured time leaves them out]
    #[arg(long, value_name = "DIR")]
    pub target: Option<PathBuf>,
    /// Exit with code 5 when the measured restore time exceeds DURATION (e.g. 30m; m = minutes)
    #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
    pub max_rto: Option<Duration>,
    /// Exit with code 5 unless the newest complete snapshot is younger than DURATION (e.g. 26h)
    #[arg(long, value_name = "DURATION", value_parser = args::parse_duration)]
    pub max_rpo: Option<Duration>,
    /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    #[command(flatten)]
    pub latest: LatestFilter,
}

/// The `--keep-*` rules of a retention policy (`prune`, `forget`, `watch`).
#[derive(Args, Debug)]
pub struct KeepArgs {
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one (UTC)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one (UTC)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep snapshots newer than DURATION before the newest one (e.g. 36h, 7d, 1y6m, 90min;
    /// m = months, as in restic; min = minutes)
    #[arg(long, value_name = "DURATION", value_parser = retention::Within::parse)]
    pub keep_within: Option<retention::Within>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    pub keep_tag: Vec<String>,
}

impl KeepArgs {
    pub fn policy(self) -> retention::KeepPolicy {
        retention::KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            tags: self.keep_tag,
        }
    }
}

/// The retention policy of `prune` and `forget`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Apply the policy only to snapshots with this tag (repeatable); others are kept
    #[arg(long = "tag", value_name = "TAG")]
    pub only_tags: Vec<String>,
    /// Print what would be removed and freed, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a policy that removes every snapshot
    #[arg(long)]
    pub allow_remove_all: bool,
}

/// `tvault prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Remove this snapshot whatever the policy says (repeatable)
    #[arg(long, value_name = "ID")]
    pub forget: Vec<String>,
    /// Repack packs with more than this percentage of unused bytes
    #[arg(long, value_name = "PERCENT", default_value_t = prune::DEFAULT_MAX_UNUSED, value_parser = args::parse_percent)]
    pub max_unused: f64,
    /// Write Prometheus textfile metrics of this run to FILE (atomically), also on failure
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
}

/// `tvault forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove whatever the policy says (IDs or unique prefixes)
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Then collect garbage, as `tvault prune` with the same options does
    #[arg(long)]
    pub prune: bool,
    /// With --prune: repack packs with more than this percentage of unused bytes
    #[arg(long, value_name = "PERCENT", default_value_t = prune::DEFAULT_MAX_UNUSED, value_parser = args::parse_percent, requires = "prune")]
    pub max_unused: f64,
}

/// `tvault repair`.
#[derive(Args, Debug)]
pub struct RepairArgs {
    #[command(subcommand)]
    pub what: RepairCommand,
}

/// `tvault unlock`.
#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove every lock, also those of running processes
    #[arg(long)]
    pub all: bool,
}

/// Which snapshot `latest` names: the newest complete one matching these filters.
#[derive(clap::Args, Debug)]
pub struct LatestFilter {
    /// With `latest`: only snapshots with this tag (repeatable: any of them)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// With `latest`: only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// With `latest`: only snapshots that backed up this path
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
}

impl LatestFilter {
    pub fn filter(self) -> SnapshotFilter {
        SnapshotFilter::new(self.tags, self.host, self.path)
    }
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
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

/// `tvault tag`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["add", "remove"])))]
pub struct TagArgs {
    /// The snapshot (ID, unique prefix or `latest`)
    pub id: String,
    /// Add this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    pub add: Vec<String>,
    /// Remove this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    pub remove: Vec<String>,
    #[command(flatten)]
    pub latest: LatestFilter,
}
