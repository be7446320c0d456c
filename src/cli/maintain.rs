//! The commands that check and clean the repository: `verify`, `prune`, `forget`, `repair`,
//! `unlock`, `upgrade`.

use anyhow::Result;

use super::commands::*;
use super::metrics::sample;
use super::{exit, measured, open, Ctx};
use tvault_core::ops::{prune, repair, verify};

pub(super) fn verify(ctx: &Ctx, args: VerifyArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    // Verify judges what the repository holds, never a local cache of it.
    let access = ctx.access.uncached();
    let VerifyArgs {
        read_data,
        read_data_subset,
        metrics_file,
    } = args;
    let mode = match (read_data, read_data_subset) {
        (true, _) => verify::ReadData::All,
        (false, Some(subset)) => subset,
        (false, None) => verify::ReadData::None,
    };
    measured(metrics_file, "verify", repo_path, || {
        let mut repo = open(repo_path, false, out, access)?;
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

pub(super) fn prune(ctx: &Ctx, args: PruneArgs) -> Result<u8> {
    let PruneArgs {
        policy,
        forget,
        max_unused,
        metrics_file,
    } = args;
    let opts = prune_options(policy, forget, max_unused);
    measured(metrics_file, "prune", &ctx.repo_path, || {
        let r = plan_and_execute(ctx, &opts, true)?;
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

/// `forget`: removes snapshot manifests only; with `--prune`, exactly what `prune` does.
pub(super) fn forget(ctx: &Ctx, args: ForgetArgs) -> Result<u8> {
    let ForgetArgs {
        ids,
        policy,
        prune,
        max_unused,
    } = args;
    let opts = prune_options(policy, ids, max_unused);
    plan_and_execute(ctx, &opts, prune)?;
    Ok(exit::SUCCESS)
}

fn prune_options(policy: PolicyArgs, forget: Vec<String>, max_unused: f64) -> prune::PruneOptions {
    prune::PruneOptions {
        policy: policy.keep.policy(),
        only_tags: policy.only_tags,
        forget,
        dry_run: policy.dry_run,
        max_unused,
        allow_remove_all: policy.allow_remove_all,
    }
}

/// Plans (holding the lock from here on), prints the plan of a dry run or executes it and
/// prints what was done. `collect`: prune (collect garbage); otherwise forget manifests only.
fn plan_and_execute(
    ctx: &Ctx,
    opts: &prune::PruneOptions,
    collect: bool,
) -> Result<prune::PruneReport> {
    let out = &ctx.out;
    let mut repo = open(&ctx.repo_path, false, out, ctx.access)?;
    let command = if collect { "prune" } else { "forget" };
    let progress = out.progress(command);
    let plan = if collect {
        prune::plan(&mut repo, opts, &progress)?
    } else {
        prune::plan_forget(&mut repo, opts)?
    };
    let r = if plan.is_dry_run() {
        plan.report()
    } else {
        prune::execute(&repo, plan, &progress)?
    };
    drop(progress);
    out.prune(&r, opts.policy.within);
    if let Some(why) = &r.refused {
        anyhow::bail!("{command} would refuse this plan: {why}");
    }
    Ok(r)
}

pub(super) fn repair(ctx: &Ctx, args: RepairArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    // Repair decides what is damaged from the repository itself, never a local cache of it.
    let access = ctx.access.uncached();
    let RepairArgs { what } = args;
    let mut repo = open(repo_path, false, out, access)?;
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

pub(super) fn unlock(ctx: &Ctx, args: UnlockArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    let access = ctx.access;
    let UnlockArgs { all } = args;
    let repo = open(repo_path, false, out, access)?;
    let removed = repo.unlock(all)?;
    for r in &removed {
        out.line(&format!("removed {r}"));
    }
    if removed.is_empty() {
        out.line("no stale locks");
    }
    out.json(&serde_json::to_value(super::output::UnlockJson {
        removed: &removed,
    })?);
    Ok(exit::SUCCESS)
}

pub(super) fn upgrade(ctx: &Ctx) -> Result<u8> {
    let out = &ctx.out;
    let mut repo = open(&ctx.repo_path, false, out, ctx.access)?;
    let up = repo.upgrade()?;
    if up.from == up.to {
        out.line(&format!(
            "the repository is already version {} (nothing to do)",
            up.to
        ));
    } else {
        out.line(&format!(
            "upgraded the repository from version {} to {}: new backups store fine-tuning \
             steps element by element and keep delta chains up to 64 steps; what it held \
             is unchanged. tvault builds that know only version {} can no longer open it",
            up.from, up.to, up.from
        ));
    }
    out.json(&serde_json::to_value(super::output::UpgradeJson {
        from: up.from,
        to: up.to,
    })?);
    Ok(exit::SUCCESS)
}

pub(super) fn key(ctx: &Ctx, args: KeyArgs) -> Result<u8> {
    let out = &ctx.out;
    let mut repo = open(&ctx.repo_path, false, out, ctx.access)?;
    match args.what {
        KeyCommand::List => {
            let keys = repo.keys()?;
            let mut json = Vec::new();
            for k in &keys {
                let mark = if k.current { "*" } else { " " };
                out.line(&format!(
                    "{mark} {}  created {}  argon2id m={} KiB t={} p={}",
                    k.id.short(),
                    k.created.format("%Y-%m-%d %H:%M:%S UTC"),
                    k.params.m_cost,
                    k.params.t_cost,
                    k.params.p_cost
                ));
                json.push(super::output::KeyJson {
                    id: k.id.to_hex(),
                    created: k.created,
                    current: k.current,
                    m_cost: k.params.m_cost,
                    t_cost: k.params.t_cost,
                    p_cost: k.params.p_cost,
                });
            }
            out.json(&serde_json::to_value(json)?);
        }
        KeyCommand::Add { new_password_file } => {
            let password = super::password::new_key(new_password_file.as_deref())?;
            let _lock = repo.lock(false, "key add")?;
            let id = repo.add_key(&password)?;
            out.line(&format!("added key {}", id.short()));
            out.json(&serde_json::json!({ "added": id.to_hex() }));
        }
        KeyCommand::Remove { id } => {
            let _lock = repo.lock(true, "key remove")?;
            let id = repo.resolve_key(&id)?;
            repo.remove_key(&id)?;
            out.line(&format!("removed key {}", id.short()));
            out.json(&serde_json::json!({ "removed": id.to_hex() }));
        }
        KeyCommand::Passwd { new_password_file } => {
            let password = super::password::new_key(new_password_file.as_deref())?;
            let old = repo.keys()?.into_iter().find(|k| k.current).map(|k| k.id);
            let _lock = repo.lock(true, "key passwd")?;
            let new = repo.change_password(&password)?;
            let old = old.map(|o| o.short()).unwrap_or_default();
            out.line(&format!(
                "changed the password: key {old} replaced by key {}",
                new.short()
            ));
            out.json(&serde_json::json!({ "removed": old, "added": new.to_hex() }));
        }
    }
    Ok(exit::SUCCESS)
}
