//! The commands that write snapshots: `init`, `backup` (also `--from-tar` and `--dry-run`,
//! with backup's metrics and hooks) and `tag`; `watch` is in `watch.rs`.

use anyhow::Result;

use super::commands::*;
use super::hooks::Outcome;
use super::metrics::sample;
use super::{exit, measured, open, resolve, Ctx};
use tvault_core::ops::{backup, import, tag};
use tvault_core::repo::location;

pub(super) fn init(ctx: &Ctx, args: InitArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let password = if args.no_encryption {
        None
    } else {
        Some(super::password::for_new_repository(repo_path)?)
    };
    location::init(repo_path, password.as_deref())?;
    if password.is_some() {
        out.line(&format!(
            "created encrypted tvault repository at {} (keep its password: without it nothing \
             can be restored; `tvault key add` adds another)",
            repo_path.display()
        ));
    } else {
        out.line(&format!(
            "created tvault repository at {} (not encrypted)",
            repo_path.display()
        ));
    }
    out.json(&serde_json::to_value(super::output::InitJson {
        repository: repo_path,
        encrypted: password.is_some(),
    })?);
    Ok(exit::SUCCESS)
}

pub(super) fn backup(ctx: &Ctx, args: BackupArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let explicit = &ctx.explicit;
    let access = ctx.access;
    let BackupArgs {
        paths,
        from_tar,
        tags,
        full,
        dense_deltas,
        max_chain,
        parent,
        host,
        mut exclude,
        exclude_file,
        settle,
        settle_max,
        read_limit,
        metrics_file,
        dry_run,
        hooks,
    } = args;
    let hooks = hooks.hooks(repo_path);
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
        skip_if_unchanged: false,
        dense_deltas,
        max_chain,
    };
    let mut outcome = Outcome::default();
    let result = measured(metrics_file, "backup", repo_path, || {
        hooks.pre()?;
        // A dry run never creates the default repository.
        let create = explicit.is_none() && !dry_run;
        let mut repo = open(repo_path, create, out, access)?;
        let progress = out.progress("backup");
        let r = match &from_tar {
            Some(archive) => {
                let opts = import::ImportOptions {
                    archive: archive.clone(),
                    tags: opts.tags.clone(),
                    host: opts.host.clone(),
                    max_chain,
                };
                import::run(&mut repo, &opts, &progress)?
            }
            None => backup::run(&mut repo, &opts, &progress)?,
        };
        drop(progress);
        let m = &r.snapshot.summary;
        outcome = Outcome {
            snapshot_id: (!r.dry_run).then(|| r.snapshot_id.to_hex()),
            bytes_added: m.bytes_added,
        };
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
    });
    hooks.post(&result, &outcome);
    result
}

pub(super) fn tag(ctx: &Ctx, args: TagArgs) -> Result<u8> {
    let TagArgs {
        id,
        add,
        remove,
        latest,
    } = args;
    let mut repo = open(&ctx.repo_path, false, &ctx.out, ctx.access)?;
    let (ids, _) = resolve(&repo, &ctx.out, &[&id], latest)?;
    let opts = tag::TagOptions {
        snapshot: ids[0].id,
        add,
        remove,
    };
    let r = tag::run(&mut repo, &opts)?;
    ctx.out.tag(&r);
    Ok(exit::SUCCESS)
}
