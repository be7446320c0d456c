//! `tvault watch DIR...`: continuous backup. A cycle is an incremental backup with `--settle`
//! (see `ops/settle.rs`: a file modified less than the settle time ago, or a model file not
//! complete yet, keeps its version from the previous snapshot, and so does its whole
//! checkpoint folder) that writes no snapshot when nothing changed. The first cycle runs at
//! start (it picks up what changed while watch was down); then watch sleeps on one channel fed
//! by the file system watcher (`notify`: inotify on Linux, recursive) and the signal thread:
//!
//! - a burst of events is coalesced: the next cycle runs once nothing has changed for the
//!   settle time, or at the latest [`max_wait`] after the first change (so a file written
//!   without pause, a log, does not hold snapshots back forever);
//! - when a cycle deferred files, another runs when the last of them has settled (its mtime
//!   plus the settle time), so each checkpoint lands within settle + backup time; a model file
//!   deferred only for being incomplete waits for its next write event;
//! - events of the repository itself (a repository inside a watched folder) and pure reads
//!   (our own backup's among them) are ignored;
//! - SIGTERM or SIGINT: idle, watch exits at once; during a cycle it finishes the snapshot
//!   first; a second signal abandons it at the next file (no snapshot is written, the lock is
//!   released). Exit 0 either way.
//!
//! After each snapshot, the `--keep-*` policy (if any) forgets the snapshots of the same host
//! and paths it does not keep (never the one just written); `--prune` then prunes too, only
//! after cycles that forgot something. Each cycle logs one line on stderr; `--once` runs one
//! cycle and exits with backup's exit code (and prints backup's report).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use indicatif::HumanBytes;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tvault_core::error::Error;
use tvault_core::ops::backup::{self, BackupOptions, BackupReport};
use tvault_core::ops::prune::{self, PruneOptions};
use tvault_core::ops::retention::{self, Candidate, KeepPolicy};
use tvault_core::progress::{NoProgress, Progress};
use tvault_core::repo::{cache, location, Repository};

use super::args::{parse_duration, parse_rate};
use super::hooks::{HookArgs, Hooks, Outcome};
use super::output::CliProgress;
use super::{exit, open, Ctx};

/// `tvault watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Directories (or files) to back up and watch; each is stored under its own name
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// A file is settled once unmodified for DURATION and, for safetensors, GGUF and zip
    /// files, complete; until then it (and a checkpoint folder holding it) keeps its version
    /// from the previous snapshot (e.g. 30s, 2m; m = minutes)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub settle: Duration,
    /// A file or checkpoint folder deferred for longer than DURATION makes the snapshot
    /// incomplete [default: 4 × --settle]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub settle_max: Option<Duration>,
    /// Run one cycle and exit with backup's exit code (for tests and cron)
    #[arg(long)]
    pub once: bool,
    /// Tag the snapshots (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Host name to record [default: this machine's]
    #[arg(long)]
    pub host: Option<String>,
    /// Leave out files and directories matching GLOB (repeatable), as backup does
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read exclusion patterns from FILE, one per line (`#` starts a comment)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Read file content at most this fast on average (e.g. 200MiB, per second)
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub read_limit: Option<u64>,
    /// Also store tensor blocks that changed everywhere as XORs with earlier blocks, as
    /// backup does
    #[arg(long)]
    pub dense_deltas: bool,
    /// Bound delta chains to N links, as backup does
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=64))]
    pub max_chain: Option<u8>,
    #[command(flatten)]
    pub keep: super::commands::KeepArgs,
    /// After a cycle whose --keep-* policy forgot snapshots, also prune (collect their data)
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub hooks: HookArgs,
}

/// Stop signals received (SIGTERM, SIGINT): 1 = finish the current cycle and stop, 2 or more =
/// abandon it.
static STOPS: AtomicUsize = AtomicUsize::new(0);

fn stops() -> usize {
    STOPS.load(Ordering::SeqCst)
}

/// What wakes the loop.
enum Wake {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// The longest a burst of changes is coalesced: 4 × settle, at least a minute.
pub fn max_wait(settle: Duration) -> Duration {
    (settle * 4).max(Duration::from_secs(60))
}

/// Backup's progress, quieter: deferrals are watch's normal business (each cycle's line
/// counts them), so `--settle` remarks are not repeated every cycle; and a second stop signal
/// abandons the backup.
struct CycleProgress(CliProgress);

impl Progress for CycleProgress {
    fn start(&self, files: u64, bytes: u64) {
        self.0.start(files, bytes)
    }
    fn file(&self, path: &str) {
        self.0.file(path)
    }
    fn bytes(&self, n: u64) {
        self.0.bytes(n)
    }
    fn added(&self, total: u64) {
        self.0.added(total)
    }
    fn phase(&self, what: &str) {
        self.0.phase(what)
    }
    fn warn(&self, message: &str) {
        if !message.contains("(--settle)") {
            self.0.warn(message)
        }
    }
    fn finish(&self) {
        self.0.finish()
    }
    fn abandoned(&self) -> bool {
        stops() >= 2
    }
}

pub(super) fn watch(ctx: &Ctx, args: WatchArgs) -> Result<u8> {
    let WatchArgs {
        paths,
        settle,
        settle_max,
        once,
        tags,
        host,
        mut exclude,
        exclude_file,
        read_limit,
        dense_deltas,
        max_chain,
        keep,
        prune,
        hooks,
    } = args;
    if settle.is_zero() {
        bail!("--settle 0s would snapshot files while they are written: give a settle time, e.g. --settle 30s");
    }
    for file in &exclude_file {
        exclude.extend(tvault_core::ops::Excludes::read_file(file)?);
    }
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot catch SIGTERM and SIGINT")?;
    let quiet_note = ctx.out.note_sink();
    let stop = tx.clone();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            match STOPS.fetch_add(1, Ordering::SeqCst) {
                0 => quiet_note("watch: stopping (once the snapshot in progress, if any, is written; signal again to abandon it)"),
                1 => quiet_note("watch: abandoning the snapshot in progress"),
                _ => {}
            }
            let _ = stop.send(Wake::Stop);
        }
    });
    // The watcher starts before the first cycle, so nothing written during it goes unseen.
    let mut sources = Vec::new();
    for p in &paths {
        sources.push(
            std::fs::canonicalize(p).with_context(|| format!("cannot watch {}", p.display()))?,
        );
    }
    let _watcher = match once {
        true => None,
        false => Some(start_watcher(&sources, tx)?),
    };
    let mut ignored: Vec<PathBuf> = cache::default_root().into_iter().collect();
    let repo = open(&ctx.repo_path, ctx.explicit.is_none(), &ctx.out, ctx.access)?;
    if !location::is_remote(&ctx.repo_path) {
        ignored.extend(std::fs::canonicalize(&ctx.repo_path).ok());
    }
    let mut w = Cycles {
        ctx,
        repo,
        opts: BackupOptions {
            paths,
            tags,
            host,
            excludes: exclude,
            settle: Some(settle),
            settle_max,
            read_limit,
            skip_if_unchanged: true,
            dense_deltas,
            max_chain,
            ..BackupOptions::default()
        },
        policy: keep.policy(),
        prune,
        hooks: hooks.hooks(&ctx.repo_path),
        once,
    };

    if once {
        return match w.cycle().0 {
            Err(e) if abandoned(&e) => Ok(exit::SUCCESS),
            other => other,
        };
    }
    // The first cycle runs at once.
    let mut retry = Some(Instant::now());
    // The first and the last change since the last cycle started.
    let mut burst: Option<(Instant, Instant)> = None;
    while stops() == 0 {
        let by_events = burst.map(|(first, last)| (last + settle).min(first + max_wait(settle)));
        let due = [by_events, retry].into_iter().flatten().min();
        let now = Instant::now();
        if due.is_some_and(|d| d <= now) {
            burst = None;
            let (result, again) = w.cycle();
            retry = match result {
                Ok(_) => again.map(|d| Instant::now() + d),
                Err(e) if abandoned(&e) => break,
                // Logged by the cycle; tried again later (the repository may be back by then).
                Err(_) => Some(Instant::now() + settle.max(Duration::from_secs(30))),
            };
            continue;
        }
        let wake = match due {
            None => rx.recv().ok(),
            Some(d) => match rx.recv_timeout(d - now) {
                Ok(wake) => Some(wake),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => None,
            },
        };
        match wake {
            None => bail!("the file system watcher stopped"),
            Some(Wake::Stop) => break,
            Some(Wake::Fs(Ok(event))) if !relevant(&event, &ignored) => {}
            Some(Wake::Fs(result)) => {
                if let Err(e) = result {
                    ctx.out
                        .warn(&format!("watch: {e}; taking a snapshot to be sure"));
                }
                let now = Instant::now();
                burst = Some((burst.map_or(now, |(first, _)| first), now));
            }
        }
    }
    Ok(exit::SUCCESS)
}

fn abandoned(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|e| matches!(e.downcast_ref::<Error>(), Some(Error::Abandoned)))
}

/// Watches every source recursively; events go to `tx`.
fn start_watcher(
    sources: &[PathBuf],
    tx: mpsc::Sender<Wake>,
) -> Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(Wake::Fs(event));
    })
    .context("cannot start the file system watcher")?;
    for source in sources {
        watcher
            .watch(source, RecursiveMode::Recursive)
            .map_err(|e| match e.kind {
                notify::ErrorKind::MaxFilesWatch => anyhow::anyhow!(
                    "cannot watch {}: too many directories for inotify; raise the limit (sysctl fs.inotify.max_user_watches=524288)",
                    source.display()
                ),
                _ => anyhow::anyhow!("cannot watch {}: {e}", source.display()),
            })?;
    }
    Ok(watcher)
}

/// Whether an event may mean new content: not a pure read (a write's close counts), and not
/// only below `ignored` (the repository, the cache).
fn relevant(event: &notify::Event, ignored: &[PathBuf]) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    event.paths.is_empty()
        || event
            .paths
            .iter()
            .any(|p| !ignored.iter().any(|i| p.starts_with(i)))
}

/// What every cycle needs.
struct Cycles<'a> {
    ctx: &'a Ctx,
    repo: Repository,
    opts: BackupOptions,
    policy: KeepPolicy,
    prune: bool,
    hooks: Hooks,
    once: bool,
}

impl Cycles<'_> {
    /// One cycle, hooks around it: backup's exit code (or why it failed, logged here), and
    /// when to run again for the files it deferred.
    fn cycle(&mut self) -> (Result<u8>, Option<Duration>) {
        let mut outcome = Outcome::default();
        let mut again = None;
        let result = self.snapshot(&mut outcome, &mut again);
        if let Err(e) = &result {
            if !abandoned(e) || stops() < 2 {
                eprintln!("tvault: watch: {} cycle failed: {e:#}", now());
            } else {
                self.ctx.out.note(&format!("watch: {} {e:#}", now()));
            }
        }
        self.hooks.post(&result, &outcome);
        (result, again)
    }

    fn snapshot(&mut self, outcome: &mut Outcome, again: &mut Option<Duration>) -> Result<u8> {
        self.hooks.pre()?;
        let progress = CycleProgress(self.ctx.out.progress("backup"));
        let r = backup::run(&mut self.repo, &self.opts, &progress)?;
        drop(progress);
        let settle = self.opts.settle.unwrap_or_default();
        *outcome = Outcome {
            snapshot_id: Some(r.snapshot_id.to_hex()),
            bytes_added: if r.unchanged {
                0
            } else {
                r.snapshot.summary.bytes_added
            },
        };
        *again = retry_after(&r, settle);
        self.log(&r, *again);
        let code = match self.once {
            true => self.ctx.out.backup(&r, Some(settle)),
            false if r.snapshot.is_complete() => exit::SUCCESS,
            false => exit::INCOMPLETE,
        };
        if !r.unchanged {
            if let Err(e) = self.retain(&r) {
                self.ctx.out.warn(&format!(
                    "watch: retention after snapshot {}: {e:#}",
                    r.snapshot_id.short()
                ));
            }
        }
        Ok(code)
    }

    /// The cycle's line: when it ended (the snapshot's completion time), the snapshot, bytes
    /// added and read, how many files it deferred.
    fn log(&self, r: &BackupReport, again: Option<Duration>) {
        let m = &r.snapshot.summary;
        let deferred = r.settling_details.len();
        let next = match again.filter(|_| !self.once) {
            Some(d) => format!("; next cycle in {:.1}s", d.as_secs_f64()),
            None => String::new(),
        };
        let line = if r.unchanged {
            format!(
                "no change since snapshot {}: nothing written, {deferred} deferred{next}",
                r.snapshot_id.short()
            )
        } else {
            format!(
                "snapshot {} saved: {} added, {} read, {} files, {deferred} deferred, took {:.2}s{next}",
                r.snapshot_id.short(),
                HumanBytes(m.bytes_added),
                HumanBytes(m.bytes_read),
                m.files,
                m.duration_ms as f64 / 1000.0,
            )
        };
        self.ctx.out.note(&format!("watch: {} {line}", now()));
        if !r.snapshot.is_complete() && !self.once {
            eprintln!(
                "tvault: watch: snapshot {} is INCOMPLETE:",
                r.snapshot_id.short()
            );
            for p in &r.snapshot.problems {
                eprintln!("  {p}");
            }
        }
    }

    /// Forgets (with `--prune`, prunes) the snapshots of this snapshot's host and paths that
    /// the policy does not keep; never `r`'s own.
    fn retain(&mut self, r: &BackupReport) -> Result<()> {
        if self.policy.is_empty() {
            return Ok(());
        }
        let snaps = self.repo.snapshots()?;
        let group: Vec<_> = snaps
            .iter()
            .filter(|(_, s)| s.host == r.snapshot.host && s.paths == r.snapshot.paths)
            .collect();
        let candidates: Vec<Candidate> = group
            .iter()
            .map(|(id, s)| Candidate {
                time: s.time,
                tags: s.tags.clone(),
                tiebreak: id.to_hex(),
            })
            .collect();
        let forget: Vec<String> = group
            .iter()
            .zip(retention::apply(&self.policy, &candidates))
            .filter(|((id, _), keep)| keep.is_empty() && *id != r.snapshot_id)
            .map(|((id, _), _)| id.to_hex())
            .collect();
        if forget.is_empty() {
            return Ok(());
        }
        let opts = PruneOptions {
            forget,
            ..PruneOptions::default()
        };
        let report = match self.prune {
            true => prune::run(&mut self.repo, &opts, &NoProgress)?,
            false => prune::forget(&mut self.repo, &opts, &NoProgress)?,
        };
        let freed = match self.prune {
            true => format!(", pruned: {} freed", HumanBytes(report.bytes_freed)),
            false => String::new(),
        };
        self.ctx.out.note(&format!(
            "watch: {} retention forgot {} snapshot(s){freed}",
            now(),
            report.snapshots_removed
        ));
        Ok(())
    }
}

/// When to look again at the files a cycle deferred: once the last of them to settle by its
/// mtime has (a little after). `None` when none waits for its mtime (a model file deferred
/// only for being incomplete waits for its next write).
fn retry_after(r: &BackupReport, settle: Duration) -> Option<Duration> {
    let now = SystemTime::now();
    r.settling_details
        .iter()
        .filter_map(|f| {
            let modified = std::fs::symlink_metadata(Path::new(&f.path))
                .ok()?
                .modified()
                .ok()?;
            let age = now.duration_since(modified).unwrap_or_default();
            settle.checked_sub(age)
        })
        .max()
        .map(|d| d + Duration::from_millis(100))
}

/// Now, to the millisecond (UTC), as each line of the log starts.
fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
