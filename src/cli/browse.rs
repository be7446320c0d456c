//! The commands that read snapshots: `snapshots`, `restore` (to a directory or a tar), `diff`,
//! `show`, `ls`, `dump`, `find` and `stats`.

use anyhow::Result;

use super::commands::*;
use super::output;
use super::{exit, open, resolve, Ctx};
use tvault_core::ops::select;
use tvault_core::ops::select::SnapshotFilter;
use tvault_core::ops::{diff, dump, export, find, ls, restore, stats};

pub(super) fn snapshots(ctx: &Ctx, args: SnapshotsArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let SnapshotsArgs {
        tag,
        host,
        path,
        max_age,
    } = args;
    let repo = open(repo_path, false, out, access)?;
    let shown = select::matching(&repo, &SnapshotFilter::new(tag, host, path))?;
    out.snapshots(&shown);
    match max_age {
        Some(max) => Ok(out.freshness(&shown, max)),
        None => Ok(exit::SUCCESS),
    }
}

pub(super) fn restore(ctx: &Ctx, args: RestoreArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let RestoreArgs {
        id,
        target,
        target_dir,
        tar,
        include,
        overwrite,
        latest,
    } = args;
    let mut repo = open(repo_path, false, out, access)?;
    let (resolved, latest) = resolve(&repo, out, &[&id], latest)?;
    let id = resolved[0].id.to_hex();
    if let Some(tar) = tar {
        let dest = if tar.as_os_str() == "-" {
            export::TarTarget::Stdout
        } else {
            export::TarTarget::File(&tar)
        };
        let to_stdout = matches!(dest, export::TarTarget::Stdout);
        let report = match export::run(&mut repo, &id, &include, dest, overwrite) {
            Ok(r) => r,
            // A reader that stops early (`tvault restore ID --tar - | tar -t | head`).
            Err(tvault_core::error::Error::Io { err, .. })
                if to_stdout && err.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                return Ok(exit::SUCCESS)
            }
            Err(e) => return Err(e.into()),
        };
        if !to_stdout {
            out.json(&output::with_deprecated_id(
                serde_json::to_value(output::WithLatest {
                    report: &report,
                    latest: latest.as_ref(),
                })?,
                "snapshot_id",
            ));
            out.line(&format!(
                "wrote snapshot {} to {}: {}, {} of file content",
                &report.id[..tvault_core::id::SHORT_LEN],
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

pub(super) fn diff(ctx: &Ctx, args: DiffArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let DiffArgs { from, to, latest } = args;
    let mut repo = open(repo_path, false, out, access)?;
    let (ids, latest) = resolve(&repo, out, &[&from, &to], latest)?;
    let (from, to) = (ids[0].id.to_hex(), ids[1].id.to_hex());
    let report = diff::run(&mut repo, &from, &to)?;
    out.diff(&report, latest.as_ref());
    Ok(exit::SUCCESS)
}

pub(super) fn show(ctx: &Ctx, args: ShowArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let ShowArgs {
        snapshot,
        tensors,
        latest,
    } = args;
    let mut repo = open(repo_path, false, out, access)?;
    let (ids, latest) = resolve(&repo, out, &[&snapshot], latest)?;
    let report = tvault_core::ops::show::run(&mut repo, &ids[0].id.to_hex(), tensors)?;
    out.show(&report, latest.as_ref());
    Ok(exit::SUCCESS)
}

pub(super) fn ls(ctx: &Ctx, args: LsArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let LsArgs {
        id,
        path,
        long,
        latest,
    } = args;
    let mut repo = open(repo_path, false, out, access)?;
    let (ids, _) = resolve(&repo, out, &[&id], latest)?;
    let opts = ls::LsOptions {
        snapshot: ids[0].id,
        path,
    };
    out.ls(&ls::run(&mut repo, &opts)?, long);
    Ok(exit::SUCCESS)
}

pub(super) fn dump(ctx: &Ctx, args: DumpArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let DumpArgs {
        id,
        path,
        tensor,
        latest,
    } = args;
    let mut repo = open(repo_path, false, out, access)?;
    let (ids, _) = resolve(&repo, out, &[&id], latest)?;
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

pub(super) fn find(ctx: &Ctx, args: FindArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let FindArgs {
        pattern,
        tag,
        host,
        path,
    } = args;
    let mut repo = open(repo_path, false, out, access)?;
    let opts = find::FindOptions {
        pattern,
        filter: SnapshotFilter::new(tag, host, path),
    };
    out.find(&find::run(&mut repo, &opts)?);
    Ok(exit::SUCCESS)
}

pub(super) fn stats(ctx: &Ctx, args: StatsArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let StatsArgs { id, latest } = args;
    let mut repo = open(repo_path, false, out, access)?;
    let specs: Vec<&str> = id.as_deref().into_iter().collect();
    let (ids, latest) = resolve(&repo, out, &specs, latest)?;
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
