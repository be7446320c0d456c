//! `tvault drill`: the restore rehearsal (`ops::drill`) with its objectives. Exit 4 when the
//! snapshot cannot be restored whole (damage, named), 1 when the drill could not check, 5 when
//! the measured restore time exceeds `--max-rto` or the newest complete snapshot is older than
//! `--max-rpo`, else 0; `--metrics-file` writes the measurements as Prometheus gauges.

use std::time::Duration;

use anyhow::Result;
use indicatif::{HumanBytes, HumanDuration};
use serde::Serialize;

use super::commands::DrillArgs;
use super::metrics::{sample, Sample};
use super::output::{plural, WithLatest};
use super::{exit, measured, open, Ctx};
use tvault_core::ops::drill::{self, DrillReport};
use tvault_core::ops::select::{self, Latest, LATEST};

/// `drill --json`: the engine's report, what `latest` was, and the objectives.
#[derive(Serialize)]
struct DrillJson<'a> {
    #[serde(flatten)]
    report: WithLatest<'a, DrillReport>,
    max_rto_seconds: Option<f64>,
    max_rpo_seconds: Option<f64>,
    rto_exceeded: bool,
    rpo_exceeded: bool,
}

pub(super) fn drill(ctx: &Ctx, args: DrillArgs) -> Result<u8> {
    let out = &ctx.out;
    let repo_path = &ctx.repo_path;
    // Like verify, a drill judges what the repository holds (and a restore after a disaster
    // starts without a cache).
    let access = ctx.access.uncached();
    let DrillArgs {
        id,
        target,
        max_rto,
        max_rpo,
        metrics_file,
        latest,
    } = args;
    measured(metrics_file, "drill", repo_path, || {
        let mut repo = open(repo_path, false, out, access)?;
        if repo.snapshot_ids()?.is_empty() {
            anyhow::bail!(
                "repository {} has no snapshots: nothing to drill; take one with `tvault backup`",
                repo_path.display()
            );
        }
        let filter = latest.filter();
        let spec = id.as_deref().unwrap_or(LATEST);
        let resolved = select::resolve(&repo, &[spec], &filter)?.remove(0);
        if let Some(l) = &resolved.latest {
            out.note(&l.to_string());
        }
        let opts = drill::DrillOptions {
            snapshot: resolved.id,
            target,
            filter,
        };
        let progress = out.progress("drill");
        let r = drill::run(&mut repo, &opts, &progress)?;
        drop(progress);
        let code = report(out, &r, resolved.latest.as_ref(), max_rto, max_rpo);
        Ok((code, samples(&r, code)))
    })
}

/// Prints the report; the exit code.
fn report(
    out: &super::output::Out,
    r: &DrillReport,
    latest: Option<&Latest>,
    max_rto: Option<Duration>,
    max_rpo: Option<Duration>,
) -> u8 {
    let rto_exceeded = max_rto.is_some_and(|m| r.restore_seconds > m.as_secs_f64());
    let rpo_exceeded = max_rpo.is_some_and(|m| match &r.rpo {
        Some(rpo) => rpo.age_seconds > m.as_secs_f64(),
        None => true,
    });
    out.json(
        &serde_json::to_value(DrillJson {
            report: WithLatest { report: r, latest },
            max_rto_seconds: max_rto.map(|d| d.as_secs_f64()),
            max_rpo_seconds: max_rpo.map(|d| d.as_secs_f64()),
            rto_exceeded,
            rpo_exceeded,
        })
        .expect("report serialises"),
    );
    let short = &r.id[..tvault_core::id::SHORT_LEN];
    let into = match &r.scratch {
        Some(dir) => format!("to disk in {} (removed)", dir.display()),
        None => "through the restore pipeline into a hashing sink (no disk writes: the time \
                 leaves them out)"
            .to_string(),
    };
    out.line(&format!(
        "drilled snapshot {short} ({}): restored {}, {}, {}, {} {into}",
        r.time.format("%Y-%m-%d %H:%M:%S UTC"),
        plural(r.files, "file"),
        plural(r.dirs, "directory"),
        plural(r.symlinks, "symlink"),
        HumanBytes(r.bytes),
    ));
    out.line(&format!(
        "RTO {:.2} s: measured restore time ({}/s){}",
        r.restore_seconds,
        HumanBytes(r.throughput_bytes_per_second as u64),
        if r.disk_writes {
            ""
        } else {
            ", without disk writes"
        }
    ));
    let read_back = if r.disk_writes {
        format!(", read back from disk in {:.2} s", r.check_seconds)
    } else {
        String::new()
    };
    out.line(&format!(
        "checked {}, {}: every chunk matches its ID{read_back}",
        plural(r.files_checked, "file"),
        HumanBytes(r.bytes_checked)
    ));
    match &r.rpo {
        Some(rpo) => out.line(&format!(
            "RPO {}: the newest complete snapshot is {} from {}",
            HumanDuration(Duration::from_secs_f64(rpo.age_seconds)),
            &rpo.id[..tvault_core::id::SHORT_LEN],
            rpo.time.format("%Y-%m-%d %H:%M:%S UTC"),
        )),
        None => out.line("RPO: no complete snapshot matches"),
    }

    // Problems are printed even with --quiet: cron and CI must show them.
    if !r.damaged.is_empty() {
        eprintln!(
            "tvault: DAMAGE: {} of snapshot {short} cannot be restored whole:",
            plural(r.damaged.len(), "file")
        );
        for d in &r.damaged {
            eprintln!("  {d}");
        }
        eprintln!("  (`tvault verify --read-data` names every damaged pack and snapshot)");
    }
    if !r.errors.is_empty() {
        eprintln!(
            "tvault: the drill could not check {}:",
            plural(r.errors.len(), "file")
        );
        for e in &r.errors {
            eprintln!("  {e}");
        }
    }
    if let (true, Some(m)) = (rto_exceeded, max_rto) {
        eprintln!(
            "tvault: RTO EXCEEDED: restoring snapshot {short} took {:.2} s, limit {} ({})",
            r.restore_seconds,
            super::args::describe_duration(m),
            if r.disk_writes {
                "to disk"
            } else {
                "without disk writes"
            }
        );
    }
    if let (true, Some(m)) = (rpo_exceeded, max_rpo) {
        match &r.rpo {
            Some(rpo) => eprintln!(
                "tvault: STALE: RPO exceeded: the newest complete snapshot {} is {} old, limit {}",
                &rpo.id[..tvault_core::id::SHORT_LEN],
                super::args::describe_duration(Duration::from_secs_f64(rpo.age_seconds)),
                super::args::describe_duration(m)
            ),
            None => eprintln!("tvault: STALE: RPO exceeded: no complete snapshot matches"),
        }
    }
    if !r.damaged.is_empty() {
        exit::DAMAGE
    } else if !r.errors.is_empty() {
        exit::ERROR
    } else if rto_exceeded || rpo_exceeded {
        exit::STALE
    } else {
        exit::SUCCESS
    }
}

/// The drill's gauges (beside the run's own: success, timestamps, duration).
fn samples(r: &DrillReport, code: u8) -> Vec<Sample> {
    let mut s = vec![
        sample(
            "tvault_drill_success",
            "1 if the last drill restored and checked everything and met its objectives",
            u8::from(code == exit::SUCCESS),
        ),
        sample(
            "tvault_drill_rto_seconds",
            "Measured restore time of the last drill's snapshot (its RTO)",
            r.restore_seconds,
        ),
        sample(
            "tvault_drill_throughput_bytes_per_second",
            "File bytes the last drill restored per second",
            r.throughput_bytes_per_second,
        ),
        sample(
            "tvault_drill_disk_writes",
            "1 if the last drill restored to disk (--target), 0 through a hashing sink",
            u8::from(r.disk_writes),
        ),
        sample(
            "tvault_drill_bytes_checked",
            "File bytes the last drill restored and re-hashed",
            r.bytes_checked as f64,
        ),
        sample(
            "tvault_drill_files_checked",
            "Files the last drill restored and re-hashed",
            r.files_checked as f64,
        ),
        sample(
            "tvault_drill_damaged_files",
            "Files the last drill could not restore whole",
            r.damaged.len() as f64,
        ),
        sample(
            "tvault_drill_snapshot_timestamp_seconds",
            "Unix time of the snapshot the last drill restored",
            r.time.timestamp() as f64,
        ),
    ];
    if let Some(rpo) = &r.rpo {
        s.push(sample(
            "tvault_drill_rpo_seconds",
            "Age of the newest complete snapshot when the last drill ran (its RPO)",
            rpo.age_seconds,
        ));
    }
    s
}
