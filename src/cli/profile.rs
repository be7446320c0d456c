//! Profiles: named sets of option values in a TOML config file, chosen by `--profile NAME`
//! (`TVAULT_PROFILE`; else the profile `default`, when the file has one). The file is
//! `--config FILE` (`TVAULT_CONFIG`), else `$XDG_CONFIG_HOME/tvault/config.toml`, else
//! `~/.config/tvault/config.toml`; a missing file is no error unless it or the profile was named.
//!
//! Precedence, for each option separately: command line > environment variable > profile >
//! built-in default. The profile fills what clap left unset after parsing ([`apply`]: an
//! option's `value_source` is neither the command line nor the environment); a list given on the
//! command line (`--tag`, `--exclude`) replaces the profile's list. Values reach only the commands
//! that take them: retention only prune and forget (and only when the command line gives no
//! `--keep-*` option and no snapshot ID), paths, excludes, tags and host only backup.
//!
//! S3 settings go through the environment variables the S3 backend reads (`AWS_REGION`,
//! `AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`, `TVAULT_RETRY_*`), set only when unset; secrets
//! (access keys) have no key here: they stay in the environment or the credentials file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::{Deserialize, Deserializer};

use super::args;
use super::commands::{BackupArgs, Cli, Command, PolicyArgs};
use tvault_core::ops::retention;

/// The global options that choose the config file and the profile.
#[derive(clap::Args, Debug, Default)]
pub struct ProfileArgs {
    /// Read profiles from FILE [default: $XDG_CONFIG_HOME/tvault/config.toml, else
    /// ~/.config/tvault/config.toml; a missing default file is no error]
    #[arg(long, global = true, env = "TVAULT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Take the options not given on the command line or in the environment from this profile
    /// of the config file ([profile.NAME]) [default: the profile `default`, if there is one]
    #[arg(long, global = true, env = "TVAULT_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
}

/// The config file: `[profile.NAME]` tables, nothing else.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    profile: BTreeMap<String, Profile>,
}

/// One profile; each key is the long option of the same name (`tags`: `--tag`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Profile {
    repository: Option<PathBuf>,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
    s3_region: Option<String>,
    s3_credentials_profile: Option<String>,
    s3_credentials_file: Option<PathBuf>,
    retry_attempts: Option<u32>,
    retry_max_time: Option<Dur>,
    lock_wait: Option<Dur>,
    limit_upload: Option<Rate>,
    threads: Option<Threads>,
    no_cache: Option<bool>,
    paths: Option<Vec<PathBuf>>,
    exclude: Option<Vec<String>>,
    exclude_file: Option<Vec<PathBuf>>,
    tags: Option<Vec<String>>,
    host: Option<String>,
    settle: Option<Dur>,
    settle_max: Option<Dur>,
    read_limit: Option<Rate>,
    dense_deltas: Option<bool>,
    max_chain: Option<MaxChain>,
    metrics_file: Option<PathBuf>,
    pre_hook: Option<String>,
    post_hook: Option<String>,
    hook_timeout: Option<Dur>,
    retention: Option<Retention>,
}

/// `[profile.NAME.retention]`: the `--keep-*` options of prune and forget.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Retention {
    #[serde(default)]
    keep_last: u32,
    #[serde(default)]
    keep_hourly: u32,
    #[serde(default)]
    keep_daily: u32,
    #[serde(default)]
    keep_weekly: u32,
    #[serde(default)]
    keep_monthly: u32,
    #[serde(default)]
    keep_yearly: u32,
    keep_within: Option<Within>,
    #[serde(default)]
    keep_tag: Vec<String>,
}

/// A string value checked by the same parser as its command-line option, so that a bad one is
/// reported with its line.
macro_rules! parsed {
    ($name:ident, $t:ty, $parse:expr) => {
        #[derive(Debug, Clone, Copy)]
        struct $name($t);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $parse(&text).map($name).map_err(serde::de::Error::custom)
            }
        }
    };
}
parsed!(Dur, Duration, args::parse_duration);
parsed!(Rate, u64, args::parse_rate);
parsed!(Within, retention::Within, retention::Within::parse);

/// An integer value in the same range as its command-line option, so that a bad one is
/// reported with its line.
macro_rules! ranged {
    ($name:ident, $t:ty, $key:literal, $lo:literal..=$hi:literal) => {
        #[derive(Debug, Clone, Copy)]
        struct $name($t);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match i64::deserialize(d)? {
                    n @ $lo..=$hi => Ok($name(n as $t)),
                    n => Err(serde::de::Error::custom(format!(
                        concat!("invalid ", $key, " {}: use ", $lo, " to ", $hi),
                        n
                    ))),
                }
            }
        }
    };
}
ranged!(Threads, u16, "threads", 1..=1024);
ranged!(MaxChain, u8, "max-chain", 0..=64);

/// The config file's default location.
fn default_file() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let dir = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(dir.join("tvault/config.toml"))
}

/// Parses a config file's text; errors name the file, line and column.
fn parse(path: &Path, text: &str) -> Result<ConfigFile> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().replace("unknown field", "unknown key");
        let Some(span) = e.span() else {
            return anyhow::anyhow!("config file {}: {message}", path.display());
        };
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
        let source = text.lines().nth(line - 1).unwrap_or_default().trim();
        anyhow::anyhow!(
            "config file {}, line {line}, column {column}: {message}\n  {line} | {source}",
            path.display()
        )
    })
}

/// The selected profile with its name and file, if any applies.
fn load(sel: &ProfileArgs) -> Result<Option<(String, Profile, PathBuf)>> {
    let path = match (&sel.config, &sel.profile) {
        (Some(p), _) => p.clone(),
        (None, named) => match default_file() {
            Some(p) => p,
            None if named.is_some() => bail!(
                "--profile needs a config file, and neither HOME nor XDG_CONFIG_HOME is set: \
                 pass --config FILE"
            ),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && sel.config.is_none() => {
            if let Some(name) = &sel.profile {
                bail!(
                    "profile {name:?} was asked for, but there is no config file {}: create \
                     it with a [profile.{name}] table, or pass --config FILE",
                    path.display()
                );
            }
            return Ok(None);
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the config file {}", path.display()))
        }
    };
    let mut file = parse(&path, &text)?;
    let name = sel.profile.clone().unwrap_or_else(|| "default".into());
    let Some(mut profile) = file.profile.remove(&name) else {
        // The default file without a `default` profile: nothing applies. A file named
        // explicitly is there to be used.
        if sel.profile.is_none() && sel.config.is_none() {
            return Ok(None);
        }
        let names: Vec<&str> = file.profile.keys().map(String::as_str).collect();
        let has = if names.is_empty() {
            "it has no profiles".to_string()
        } else {
            format!("its profiles: {}", names.join(", "))
        };
        let hint = if sel.profile.is_none() {
            " (pass --profile NAME)"
        } else {
            ""
        };
        bail!(
            "no profile {name:?} in the config file {}{hint}; {has}",
            path.display()
        );
    };
    if profile.password_file.is_some() && profile.password_command.is_some() {
        bail!(
            "profile {name:?} in {} has both password-file and password-command: keep one",
            path.display()
        );
    }
    profile.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    Ok(Some((name, profile, path)))
}

impl Profile {
    /// `~/…` is below `HOME`; other relative paths are relative to the config file's folder.
    fn resolve_paths(&mut self, base: &Path) {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let fix = |p: &mut PathBuf| {
            if let (Ok(rest), Some(h)) = (p.strip_prefix("~"), &home) {
                *p = h.join(rest);
            } else if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(r) = &mut self.repository {
            if !r.to_string_lossy().starts_with("s3:") {
                fix(r);
            }
        }
        let singles = [
            &mut self.password_file,
            &mut self.s3_credentials_file,
            &mut self.metrics_file,
        ];
        singles.into_iter().flatten().for_each(fix);
        for list in [&mut self.paths, &mut self.exclude_file]
            .into_iter()
            .flatten()
        {
            list.iter_mut().for_each(fix);
        }
    }
}

/// Fills the options of `cli` that neither the command line nor the environment set from the
/// selected profile. Returns notes for the user: which profile values the environment
/// overrode.
pub fn apply(cli: &mut Cli, m: &ArgMatches) -> Result<Vec<String>> {
    if matches!(cli.command, Command::Completions(_) | Command::Man) {
        return Ok(Vec::new());
    }
    let Some((name, mut p, path)) = load(&cli.profile)? else {
        return Ok(Vec::new());
    };
    let mut notes = Vec::new();
    let mut note_env = |key: &str, env: &str| {
        notes.push(format!(
            "{env} is set: it overrides {key} of profile {name:?} ({})",
            path.display()
        ))
    };
    let source = |id: &str| m.value_source(id);
    let unset = |id: &str| {
        !matches!(
            source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let from_env = |id: &str| source(id) == Some(ValueSource::EnvVariable);

    // Global options.
    let by_env = [
        ("repo", "repository", "TVAULT_REPO", p.repository.is_some()),
        (
            "limit_upload",
            "limit-upload",
            "TVAULT_LIMIT_UPLOAD",
            p.limit_upload.is_some(),
        ),
        ("threads", "threads", "TVAULT_THREADS", p.threads.is_some()),
        (
            "no_cache",
            "no-cache",
            "TVAULT_NO_CACHE",
            p.no_cache.is_some(),
        ),
    ];
    for (id, key, var, in_profile) in by_env {
        if in_profile && from_env(id) {
            note_env(key, var);
        }
    }
    fill(&mut cli.repo, p.repository.take(), unset("repo"));
    fill(
        &mut cli.lock_wait,
        p.lock_wait.map(|d| d.0),
        unset("lock_wait"),
    );
    fill(
        &mut cli.limit_upload,
        p.limit_upload.map(|r| r.0),
        unset("limit_upload"),
    );
    fill(&mut cli.threads, p.threads.map(|t| t.0), unset("threads"));
    if let (Some(v), true) = (p.no_cache, unset("no_cache")) {
        cli.no_cache = v;
    }
    let password_given = cli.password_file.is_some() || cli.password_command.is_some();
    let profile_password = p.password_file.is_some() || p.password_command.is_some();
    if !password_given && profile_password {
        if std::env::var_os("TVAULT_PASSWORD").is_some() {
            note_env("the password", "TVAULT_PASSWORD");
        } else {
            cli.password_file = p.password_file.take();
            cli.password_command = p.password_command.take();
        }
    }
    let seconds = |d: Dur| d.0.as_secs().to_string();
    let s3 = [
        ("s3-region", "AWS_REGION", p.s3_region.take()),
        (
            "s3-credentials-profile",
            "AWS_PROFILE",
            p.s3_credentials_profile.take(),
        ),
        (
            "s3-credentials-file",
            "AWS_SHARED_CREDENTIALS_FILE",
            p.s3_credentials_file
                .take()
                .map(|f| f.display().to_string()),
        ),
        (
            "retry-attempts",
            "TVAULT_RETRY_ATTEMPTS",
            p.retry_attempts.map(|n| n.to_string()),
        ),
        (
            "retry-max-time",
            "TVAULT_RETRY_MAX_TIME",
            p.retry_max_time.map(seconds),
        ),
    ];
    for (key, var, value) in s3 {
        let Some(value) = value else { continue };
        let set = |v: &&str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
        let region = if var == "AWS_REGION" {
            "AWS_DEFAULT_REGION"
        } else {
            var
        };
        match [var, region].into_iter().find(set) {
            Some(env) => note_env(key, env),
            // Before any thread is started: `run` calls this first.
            None => std::env::set_var(var, value),
        }
    }

    // The options of the command.
    let metrics = |command: &str| {
        p.metrics_file
            .as_ref()
            .map(|f| PathBuf::from(f.to_string_lossy().replace("{command}", command)))
    };
    match &mut cli.command {
        Command::Backup(a) => {
            if !a.dry_run {
                fill(&mut a.metrics_file, metrics("backup"), true);
            }
            hooks(&mut a.hooks, &mut p, m.subcommand_matches("backup"));
            backup(a, &mut p);
        }
        Command::Watch(a) => {
            hooks(&mut a.hooks, &mut p, m.subcommand_matches("watch"));
            fill_list(&mut a.tags, p.tags.take());
            fill(&mut a.host, p.host.take(), true);
            fill_list(&mut a.exclude, p.exclude.take());
            fill_list(&mut a.exclude_file, p.exclude_file.take());
            fill(&mut a.read_limit, p.read_limit.map(|r| r.0), true);
            a.dense_deltas |= p.dense_deltas.unwrap_or(false);
            fill(&mut a.max_chain, p.max_chain.map(|n| n.0), true);
        }
        Command::Verify(a) => fill(&mut a.metrics_file, metrics("verify"), true),
        Command::Prune(a) => {
            fill(&mut a.metrics_file, metrics("prune"), true);
            if a.forget.is_empty() {
                retain(
                    &mut a.policy,
                    p.retention.take(),
                    m.subcommand_matches("prune"),
                );
            }
        }
        Command::Forget(a) if a.ids.is_empty() => retain(
            &mut a.policy,
            p.retention.take(),
            m.subcommand_matches("forget"),
        ),
        _ => {}
    }
    Ok(notes)
}

/// Sets an option from the profile when it is unset (`None`: the profile has no value).
fn fill<T>(slot: &mut Option<T>, value: Option<T>, unset: bool) {
    if unset && slot.is_none() {
        if let Some(v) = value {
            *slot = Some(v);
        }
    }
}

/// Fills an empty list (no option of it given) from the profile.
fn fill_list<T>(slot: &mut Vec<T>, value: Option<Vec<T>>) {
    if slot.is_empty() {
        *slot = value.unwrap_or_default();
    }
}

/// The hooks of backup and watch (`hook-timeout` unless given on the command line).
fn hooks(a: &mut super::hooks::HookArgs, p: &mut Profile, m: Option<&ArgMatches>) {
    fill(&mut a.pre_hook, p.pre_hook.take(), true);
    fill(&mut a.post_hook, p.post_hook.take(), true);
    let given = m.and_then(|m| m.value_source("hook_timeout")) == Some(ValueSource::CommandLine);
    if let (false, Some(t)) = (given, p.hook_timeout.take()) {
        a.hook_timeout = t.0;
    }
}

/// backup's options; those that `--from-tar` refuses stay unset for an import.
fn backup(a: &mut BackupArgs, p: &mut Profile) {
    fill_list(&mut a.tags, p.tags.take());
    fill(&mut a.host, p.host.take(), true);
    fill(&mut a.max_chain, p.max_chain.map(|n| n.0), true);
    if a.from_tar.is_some() {
        return;
    }
    fill_list(&mut a.paths, p.paths.take());
    fill_list(&mut a.exclude, p.exclude.take());
    fill_list(&mut a.exclude_file, p.exclude_file.take());
    fill(&mut a.read_limit, p.read_limit.map(|r| r.0), true);
    a.dense_deltas |= p.dense_deltas.unwrap_or(false);
    fill(&mut a.settle, p.settle.map(|d| d.0), true);
    if a.settle.is_some() {
        fill(&mut a.settle_max, p.settle_max.map(|d| d.0), true);
    }
}

/// The profile's retention policy, as a whole, when the command line gives no `--keep-*`.
fn retain(policy: &mut PolicyArgs, retention: Option<Retention>, m: Option<&ArgMatches>) {
    const KEEP: [&str; 8] = [
        "keep_last",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        "keep_within",
        "keep_tag",
    ];
    let given = m.is_some_and(|m| {
        KEEP.iter()
            .any(|id| m.value_source(id) == Some(ValueSource::CommandLine))
    });
    let Some(r) = retention.filter(|_| !given) else {
        return;
    };
    policy.keep.keep_last = r.keep_last;
    policy.keep.keep_hourly = r.keep_hourly;
    policy.keep.keep_daily = r.keep_daily;
    policy.keep.keep_weekly = r.keep_weekly;
    policy.keep.keep_monthly = r.keep_monthly;
    policy.keep.keep_yearly = r.keep_yearly;
    policy.keep.keep_within = r.keep_within.map(|w| w.0);
    policy.keep.keep_tag = r.keep_tag;
}

/// backup without paths (from the command line or the profile) and without `--from-tar`: the
/// usage error clap gave before profiles could supply them.
pub fn missing_paths(cli: &Cli) -> Option<clap::Error> {
    match &cli.command {
        Command::Backup(a) if a.paths.is_empty() && a.from_tar.is_none() => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            cmd.build();
            let backup = cmd.find_subcommand_mut("backup")?;
            Some(backup.error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the following required arguments were not provided:\n  <PATHS>... (or \
                 `paths` in the profile)",
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<ConfigFile> {
        parse(Path::new("/etc/tvault/config.toml"), text)
    }

    #[test]
    fn a_profile_parses_with_every_kind_of_value() {
        let c = parsed(
            r#"
            [profile.trainer]
            repository = "s3:https://s3.example.com/bucket/tvault"
            password-command = "pass show tvault"
            exclude = ["*.tmp", "wandb/"]
            tags = ["nightly"]
            lock-wait = "30m"
            limit-upload = "20MiB"
            threads = 2
            no-cache = true
            [profile.trainer.retention]
            keep-daily = 7
            keep-within = "36h"
            "#,
        )
        .unwrap();
        let p = &c.profile["trainer"];
        assert_eq!(p.tags.as_deref(), Some(&["nightly".to_string()][..]));
        assert_eq!(p.lock_wait.unwrap().0, Duration::from_secs(1800));
        assert_eq!(p.limit_upload.unwrap().0, 20 << 20);
        assert_eq!(p.threads.unwrap().0, 2);
        let r = p.retention.as_ref().unwrap();
        assert_eq!((r.keep_daily, r.keep_last), (7, 0));
        assert_eq!(r.keep_within.unwrap().0.hours, 36);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let e = parsed("[profile.a]\ntags = [\"x\"]\ns3-endpoint = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/tvault/config.toml, line 3"), "{e}");
        assert!(e.contains("unknown key `s3-endpoint`"), "{e}");
        assert!(e.contains("`repository`"), "{e}");
        let e = parsed("[profile.a]\n\nlock-wait = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("invalid duration"),
            "{e}"
        );
        let e = parsed("[profile.a]\nthreads = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parsed("[profile.a.retention]\nkeep-dayly = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("keep-daily"), "{e}");
    }

    #[test]
    fn relative_paths_are_below_the_config_folder() {
        let mut p = Profile {
            repository: Some("repo".into()),
            paths: Some(vec!["/abs".into(), "rel".into()]),
            ..Profile::default()
        };
        p.resolve_paths(Path::new("/etc/tvault"));
        assert_eq!(p.repository.unwrap(), PathBuf::from("/etc/tvault/repo"));
        assert_eq!(
            p.paths.unwrap(),
            [PathBuf::from("/abs"), PathBuf::from("/etc/tvault/rel")]
        );
        let mut s3 = Profile {
            repository: Some("s3:http://h/bucket".into()),
            ..Profile::default()
        };
        s3.resolve_paths(Path::new("/etc/tvault"));
        assert_eq!(s3.repository.unwrap(), PathBuf::from("s3:http://h/bucket"));
    }
}
