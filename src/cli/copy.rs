//! `tvault copy`: its arguments, opening the destination (with its own password), and the
//! report, human and `--json` (the engine's `CopyReport`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::HumanBytes;

use super::output::plural;
use super::{exit, open, password, Ctx};
use tvault_core::ops::copy::{self, CopyReport, CopyStatus};
use tvault_core::ops::select::SnapshotFilter;
use tvault_core::repo::{cache, location, Repository};

/// `tvault copy`.
#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// Snapshots to copy (IDs, unique prefixes or `latest`; the filters apply to them too)
    /// [default: every snapshot that matches the filters]
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// The destination repository: a directory or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]; it
    /// must exist (`tvault init --repo REPO2`)
    #[arg(long, value_name = "REPO2")]
    pub to: PathBuf,
    /// Only snapshots with this tag (repeatable: any of them)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots that backed up this path
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Print what would be copied and sent; write nothing to the destination
    #[arg(long)]
    pub dry_run: bool,
    /// Read the destination's password from FILE (one trailing newline is ignored) [else
    /// --to-password-command, else TVAULT_TO_PASSWORD, else a prompt on a terminal]
    #[arg(long, value_name = "FILE", conflicts_with = "to_password_command")]
    pub to_password_file: Option<PathBuf>,
    /// Run CMD (with sh -c) and use its standard output as the destination's password
    #[arg(long, value_name = "CMD")]
    pub to_password_command: Option<String>,
    /// Allow copying from an encrypted repository into a plaintext one (whoever can read the
    /// destination then reads the data)
    #[arg(long)]
    pub allow_plaintext_destination: bool,
}

pub(super) fn copy(ctx: &Ctx, args: CopyArgs) -> Result<u8> {
    let out = &ctx.out;
    let mut src = open(&ctx.repo_path, false, out, ctx.access)?;
    let mut dst = open_destination(ctx, &args)?;
    if src.encrypted() && !dst.encrypted() && !args.allow_plaintext_destination {
        anyhow::bail!(
            "the source {} is encrypted and the destination {} is not: the copies would be \
             readable by whoever can read the destination; copy into an encrypted repository \
             (`tvault init --repo REPO2`), or add --allow-plaintext-destination if that is what \
             you want",
            src.location().display(),
            dst.location().display()
        );
    }
    let opts = copy::CopyOptions {
        snapshots: args.ids,
        filter: SnapshotFilter::new(args.tags, args.host, args.path),
        dry_run: args.dry_run,
    };
    let progress = out.progress("copy");
    let report = copy::run(&mut src, &mut dst, &opts, &progress)?;
    drop(progress);
    print(ctx, &report);
    Ok(exit::SUCCESS)
}

/// The destination, which must exist, opened with its own password; `--limit-upload` applies
/// to it (the repository copy writes to).
fn open_destination(ctx: &Ctx, args: &CopyArgs) -> Result<Repository> {
    let path = &args.to;
    let password = || {
        password::destination(
            path,
            args.to_password_file.as_deref(),
            args.to_password_command.as_deref(),
        )
    };
    let cache = match ctx.access.no_cache {
        true => None,
        false => cache::default_root(),
    };
    let mut repo = location::open(path, cache.as_deref(), Some(&password))
        .with_context(|| format!("the destination repository {}", path.display()))?;
    repo.set_lock_wait(ctx.access.lock_wait);
    if let Some(rate) = ctx.access.limit_upload {
        repo.limit_uploads(rate);
    }
    repo.set_notice(ctx.out.note_sink());
    for e in repo.index_problems() {
        ctx.out.warn(&format!(
            "destination {}: {e}; chunks only it lists count as missing and are sent again",
            path.display()
        ));
    }
    Ok(repo)
}

fn print(ctx: &Ctx, r: &CopyReport) {
    let out = &ctx.out;
    out.json(&serde_json::to_value(r).expect("report serialises"));
    for s in &r.snapshots {
        let when = s.time.format("%Y-%m-%d %H:%M:%S");
        let what = format!(
            "{}  {when}  {}  {}",
            s.source_short_id,
            s.host,
            s.paths.join(" ")
        );
        out.line(&match s.status {
            CopyStatus::Skipped => format!(
                "skipped    {what}  (already in the destination as {})",
                s.short_id.as_deref().unwrap_or("?")
            ),
            CopyStatus::Copied => format!(
                "copied     {what}  → {}  ({}, {} sent)",
                s.short_id.as_deref().unwrap_or("?"),
                plural(s.chunks_sent, "chunk"),
                HumanBytes(s.bytes_sent)
            ),
            CopyStatus::WouldCopy => format!(
                "would copy {what}  ({}, {} to send)",
                plural(s.chunks_sent, "chunk"),
                HumanBytes(s.bytes_sent)
            ),
        });
    }
    let (verb, sent) = match r.dry_run {
        true => ("would copy", "would send"),
        false => ("copied", "sent"),
    };
    out.line(&format!(
        "{verb} {} to {}, skipped {} already there; {sent} {}, {} (read {} from the source)",
        plural(r.copied, "snapshot"),
        r.destination,
        r.skipped,
        plural(r.chunks_sent, "chunk"),
        HumanBytes(r.bytes_sent),
        HumanBytes(r.bytes_read),
    ));
    if r.dry_run {
        out.line("dry run: nothing was written to the destination");
    }
}
