//! The command line: `commands` holds the clap definitions; `run` parses them and hands each
//! command to its handler (`backup`, `browse`, `maintain`, `drill`, `docs`), which converts its arguments
//! once into the engine's option structs and prints the engine's report through `output`.
//! Nothing below this module knows clap or indicatif.

mod args;
mod backup;
mod browse;
mod commands;
mod copy;
mod docs;
mod drill;
mod hooks;
mod maintain;
mod metrics;
mod output;
mod password;
mod profile;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches};

use commands::{Cli, Command, LatestFilter};
use metrics::{MetricsFile, Sample};
use output::Out;
use tvault_core::ops::select::{self, Latest, Resolved};
use tvault_core::repo::{cache, location, Repository};

/// What every command's handler gets: the output, the repository's location (given, or the
/// default), and how to reach it.
pub(crate) struct Ctx {
    out: Out,
    repo_path: PathBuf,
    /// The repository as given (`--repo`/`TVAULT_REPO`); `None`: the default location.
    explicit: Option<PathBuf>,
    access: Access,
}

/// How a command reaches its repository: the global options that are not about output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Access {
    lock_wait: Duration,
    /// `--no-cache`: read everything from the repository itself.
    no_cache: bool,
    /// `--limit-upload`, in bytes per second.
    limit_upload: Option<u64>,
}

impl Access {
    /// The same, reading everything from the repository (verify, repair).
    fn uncached(self) -> Access {
        Access {
            no_cache: true,
            ..self
        }
    }
}

/// Exit codes, documented in the README.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The command failed (bad input, no repository, lock held, I/O error).
    pub const ERROR: u8 = 1;
    /// The command line itself is wrong (clap's code).
    pub const USAGE: u8 = 2;
    /// `backup` wrote a snapshot, but some files could not be stored in it.
    pub const INCOMPLETE: u8 = 3;
    /// `verify` or `drill` found damage; `restore` finished but some files failed (damaged data).
    pub const DAMAGE: u8 = 4;
    /// `snapshots --max-age`: no complete snapshot as recent as required; `drill --max-rpo`
    /// and `--max-rto`: an objective missed.
    pub const STALE: u8 = 5;
    /// A wrong password: no key of the encrypted repository opens with it.
    pub const PASSWORD: u8 = 6;
}

/// The exit code of a failed run: [`exit::PASSWORD`] for a wrong password, else
/// [`exit::ERROR`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let wrong = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<tvault_core::error::Error>(),
            Some(tvault_core::error::Error::WrongPassword { .. })
        )
    });
    if wrong {
        exit::PASSWORD
    } else {
        exit::ERROR
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
    output::print_error(json, &format!("{err:#}"), exit_code(err));
}

/// A wrong command line: clap's message and exit code 2 (under `--json` also a JSON error).
fn usage_error(e: clap::Error) -> ! {
    // Under --json, a wrong command line is a JSON error too (help and --version are not
    // errors and print as usual).
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
        let value = output::ErrorJson {
            error: message,
            exit_code: exit::USAGE,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
    }
    e.exit()
}

/// Parses the command line, fills what it leaves unset from the profile, runs it, and returns
/// the exit code.
pub fn run() -> Result<u8> {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| usage_error(e));
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| usage_error(e));
    JSON_MODE.store(cli.json, std::sync::atomic::Ordering::SeqCst);
    let notes = profile::apply(&mut cli, &matches)?;
    if let Some(e) = profile::missing_paths(&cli) {
        usage_error(e);
    }
    if let Some(n) = cli.threads {
        tvault_core::set_worker_threads(n.into())?;
    }
    let out = Out::new(cli.quiet, cli.json);
    notes.iter().for_each(|n| out.note(n));
    password::set(password::PasswordOpts {
        file: cli.password_file.clone(),
        command: cli.password_command.clone(),
    });
    let explicit = cli.repo.clone();
    let access = Access {
        lock_wait: cli.lock_wait.unwrap_or_default(),
        no_cache: cli.no_cache,
        limit_upload: cli.limit_upload,
    };
    let repo_path = match explicit.clone().or_else(default_repo) {
        Some(p) => p,
        None => anyhow::bail!("no repository given: pass --repo PATH or set TVAULT_REPO"),
    };
    let ctx = Ctx {
        out,
        repo_path,
        explicit,
        access,
    };
    match cli.command {
        Command::Init(args) => backup::init(&ctx, args),
        Command::Backup(args) => backup::backup(&ctx, args),
        Command::Watch(args) => watch::watch(&ctx, args),
        Command::Snapshots(args) => browse::snapshots(&ctx, args),
        Command::Restore(args) => browse::restore(&ctx, args),
        Command::Diff(args) => browse::diff(&ctx, args),
        Command::Show(args) => browse::show(&ctx, args),
        Command::Ls(args) => browse::ls(&ctx, args),
        Command::Dump(args) => browse::dump(&ctx, args),
        Command::Find(args) => browse::find(&ctx, args),
        Command::Stats(args) => browse::stats(&ctx, args),
        Command::Verify(args) => maintain::verify(&ctx, args),
        Command::Drill(args) => drill::drill(&ctx, args),
        Command::Tag(args) => backup::tag(&ctx, args),
        Command::Prune(args) => maintain::prune(&ctx, args),
        Command::Forget(args) => maintain::forget(&ctx, args),
        Command::Repair(args) => maintain::repair(&ctx, args),
        Command::Unlock(args) => maintain::unlock(&ctx, args),
        Command::Key(args) => maintain::key(&ctx, args),
        Command::Copy(args) => copy::copy(&ctx, args),
        Command::Upgrade => maintain::upgrade(&ctx),
        Command::Completions(args) => docs::completions(args),
        Command::Man => docs::man(),
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

/// Opens the repository (asking for its password only if it is encrypted); the default
/// location (and only that) is created, encrypted, on first backup.
fn open(path: &Path, create_default: bool, out: &Out, access: Access) -> Result<Repository> {
    let mut repo = if create_default && !location::is_remote(path) && !path.exists() {
        let password = password::for_new_repository(path)?;
        let repo = Repository::init_local(path, Some(&password))?;
        out.note(&format!(
            "created a new encrypted tvault repository at {} (the default location); keep its \
             password: without it nothing can be restored",
            path.display()
        ));
        repo
    } else {
        let cache = if access.no_cache {
            None
        } else {
            cache::default_root()
        };
        location::open(path, cache.as_deref(), Some(&|| password::current(path)))?
    };
    repo.set_lock_wait(access.lock_wait);
    if let Some(rate) = access.limit_upload {
        repo.limit_uploads(rate);
    }
    repo.set_notice(out.note_sink());
    for e in repo.index_problems() {
        out.warn(&format!(
            "{e}; chunks only it lists count as missing: run `tvault verify`"
        ));
    }
    Ok(repo)
}
