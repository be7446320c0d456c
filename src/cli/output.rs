//! What the CLI prints: progress bars (only on a terminal), one-line human summaries, and the
//! `--json` reports. The JSON field names are a stable interface, documented in the README.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::exit;
use crate::id::Id;
use crate::ops::backup::BackupReport;
use crate::ops::diff::DiffReport;
use crate::ops::prune::PruneReport;
use crate::ops::repair::{RepairIndexReport, RepairPacksReport};
use crate::ops::restore::RestoreReport;
use crate::ops::verify::{Heal, VerifyReport};
use crate::progress::Progress;
use crate::snapshot::{Snapshot, SnapshotKind};

/// Prints a line on stdout. A closed pipe (`tvault snapshots | head`) is the reader's choice,
/// not a failure: everything the command had to do is done by the time it prints, so it exits 0
/// (as ripgrep does) instead of panicking like `println!`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

pub struct Out {
    quiet: bool,
    json: bool,
}

impl Out {
    pub fn new(quiet: bool, json: bool) -> Out {
        Out { quiet, json }
    }

    /// A human line on stdout (not with --quiet or --json).
    pub fn line(&self, text: &str) {
        if !self.quiet && !self.json {
            outln!("{text}");
        }
    }

    /// A remark on stderr (not with --quiet).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("tvault: {text}");
        }
    }

    /// A warning on stderr, even with --quiet (it may mean data is at risk).
    pub fn warn(&self, text: &str) {
        eprintln!("tvault: warning: {text}");
    }

    pub fn json(&self, value: &serde_json::Value) {
        if self.json {
            let mut stdout = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut stdout, value);
            let _ = writeln!(stdout);
        }
    }

    pub fn progress(&self, verb: &'static str) -> CliProgress {
        let bar = if !self.quiet && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {wide_msg} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} [{bar:30}]",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(verb);
            Some(bar)
        } else {
            None
        };
        CliProgress {
            bar,
            quiet: self.quiet,
        }
    }

    pub fn backup(&self, r: &BackupReport) -> u8 {
        let s = &r.snapshot;
        let m = &s.summary;
        self.json(&json!({
            "snapshot_id": r.snapshot_id.to_hex(),
            "kind": s.kind,
            "parent": s.parent.map(|p| p.to_hex()),
            "complete": s.is_complete(),
            "problems": s.problems,
            "warnings": r.warnings,
            "settling": r.settling,
            "excluded": r.excluded,
            "files": m.files,
            "dirs": m.dirs,
            "symlinks": m.symlinks,
            "total_bytes": m.total_bytes,
            "files_new": m.files_new,
            "files_changed": m.files_changed,
            "files_unchanged": m.files_unchanged,
            "bytes_read": m.bytes_read,
            "bytes_added": m.bytes_added,
            "chunks_added": m.chunks_added,
            "duration_ms": m.duration_ms,
            "stored": m.stored,
        }));
        let parent = match (s.kind, s.parent) {
            (SnapshotKind::Incremental, Some(p)) => format!("incremental, parent {}", p.short()),
            _ => "full".to_string(),
        };
        self.line(&format!(
            "snapshot {} saved ({parent}): {} files ({} new, {} changed, {} unchanged), {} read, {} added, {}",
            r.snapshot_id.short(),
            m.files,
            m.files_new,
            m.files_changed,
            m.files_unchanged,
            HumanBytes(m.bytes_read),
            HumanBytes(m.bytes_added),
            secs(m.duration_ms),
        ));
        let st = &m.stored;
        if st.deduplicated + st.byte_planes + st.zstd + st.raw + st.delta > 0 {
            let ratio = |plain: u64, stored: u64| {
                if plain == 0 {
                    String::new()
                } else {
                    format!(" -> {}", HumanBytes(stored))
                }
            };
            self.line(&format!(
                "  content: {} deduplicated, {} delta-encoded{}, {} byte-planes{}, {} zstd{}, {} raw",
                HumanBytes(st.deduplicated),
                HumanBytes(st.delta),
                ratio(st.delta, st.delta_stored),
                HumanBytes(st.byte_planes),
                ratio(st.byte_planes, st.byte_planes_stored),
                HumanBytes(st.zstd),
                ratio(st.zstd, st.zstd_stored),
                HumanBytes(st.raw),
            ));
        }
        if r.excluded > 0 {
            self.line(&format!("  {} entries excluded by pattern", r.excluded));
        }
        if !r.settling.is_empty() {
            self.line(&format!(
                "  {} recently modified file(s) left for the next backup (--settle)",
                r.settling.len()
            ));
        }
        if s.is_complete() {
            return exit::SUCCESS;
        }
        // Even with --quiet: cron must mail this.
        eprintln!(
            "tvault: snapshot {} is INCOMPLETE: {} file(s) or folder(s) could not be stored",
            r.snapshot_id.short(),
            s.problems.len()
        );
        if self.quiet {
            for p in &s.problems {
                eprintln!("  {p}");
            }
        }
        exit::INCOMPLETE
    }

    pub fn snapshots(&self, all: &[(Id, Snapshot)]) {
        self.json(&serde_json::Value::Array(
            all.iter()
                .map(|(id, s)| {
                    json!({
                        "id": id.to_hex(),
                        "short_id": id.short(),
                        "time": s.time,
                        "host": s.host,
                        "paths": s.paths,
                        "tags": s.tags,
                        "kind": s.kind,
                        "parent": s.parent.map(|p| p.to_hex()),
                        "complete": s.is_complete(),
                        "total_bytes": s.summary.total_bytes,
                        "bytes_added": s.summary.bytes_added,
                        "files": s.summary.files,
                    })
                })
                .collect(),
        ));
        if self.json || self.quiet {
            return;
        }
        outln!(
            "{:<9} {:<20} {:<12} {:<12} {:>10} {:>10}  {:<10} paths",
            "ID",
            "time (UTC)",
            "host",
            "kind",
            "size",
            "added",
            "tags"
        );
        for (id, s) in all {
            let kind = match (s.kind, s.is_complete()) {
                (SnapshotKind::Full, true) => "full",
                (SnapshotKind::Incremental, true) => "incremental",
                (SnapshotKind::Full, false) => "full!",
                (SnapshotKind::Incremental, false) => "incremental!",
            };
            outln!(
                "{:<9} {:<20} {:<12} {:<12} {:>10} {:>10}  {:<10} {}",
                id.short(),
                s.time.format("%Y-%m-%d %H:%M:%S"),
                s.host,
                kind,
                HumanBytes(s.summary.total_bytes).to_string(),
                HumanBytes(s.summary.bytes_added).to_string(),
                s.tags.join(","),
                s.paths.join(" "),
            );
        }
        if all.iter().any(|(_, s)| !s.is_complete()) {
            outln!("(! = incomplete: some files could not be stored)");
        }
    }

    /// The alarm for backups that silently stopped: is the newest complete snapshot recent?
    pub fn freshness(&self, shown: &[(Id, Snapshot)], max_age: std::time::Duration) -> u8 {
        let newest = shown.iter().rev().find(|(_, s)| s.is_complete());
        let Some((id, s)) = newest else {
            eprintln!("tvault: STALE: no complete snapshot matches the filter");
            return exit::STALE;
        };
        let age = chrono::Utc::now()
            .signed_duration_since(s.time)
            .to_std()
            .unwrap_or_default();
        if age <= max_age {
            return exit::SUCCESS;
        }
        eprintln!(
            "tvault: STALE: the newest complete snapshot is {} from {} ({}h{:02}m ago, limit {}h{:02}m)",
            id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S UTC"),
            age.as_secs() / 3600,
            age.as_secs() / 60 % 60,
            max_age.as_secs() / 3600,
            max_age.as_secs() / 60 % 60,
        );
        exit::STALE
    }

    pub fn restore(&self, r: &RestoreReport, target: &Path) -> u8 {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        self.line(&format!(
            "restored snapshot {} into {}: {} files, {} directories, {} symlinks, {} in {}",
            &r.snapshot_id[..crate::id::SHORT_LEN],
            target.display(),
            r.files,
            r.dirs,
            r.symlinks,
            HumanBytes(r.bytes_written),
            secs(r.duration_ms),
        ));
        self.failed_files(&r.failed, "could not be restored")
    }

    /// Names the files a restore could not write (even with --quiet); exit 4 when there are any.
    pub fn failed_files(&self, failed: &[String], what: &str) -> u8 {
        if failed.is_empty() {
            return exit::SUCCESS;
        }
        eprintln!("tvault: {} file(s) {what}:", failed.len());
        for f in failed {
            eprintln!("  {f}");
        }
        exit::DAMAGE
    }
}

impl Out {
    pub fn show(&self, r: &crate::ops::show::ShowReport) {
        use crate::ops::show::Storage;
        self.json(&serde_json::to_value(r).expect("report serialises"));
        let describe = |s: &Storage| {
            let mut parts = vec![format!("{} unchanged", HumanBytes(s.unchanged))];
            for (name, plain, stored) in [
                ("delta", s.delta, s.delta_stored),
                ("byte-planes", s.byte_planes, s.byte_planes_stored),
                ("zstd", s.zstd, s.zstd_stored),
                ("raw", s.raw, s.raw),
            ] {
                if plain > 0 {
                    parts.push(format!(
                        "{} {name} -> {}",
                        HumanBytes(plain),
                        HumanBytes(stored)
                    ));
                }
            }
            if s.missing > 0 {
                parts.push(format!("{} chunk(s) MISSING from the index", s.missing));
            }
            parts.join(", ")
        };
        let parent = r
            .parent
            .as_deref()
            .map_or("none".to_string(), |p| p[..8].to_string());
        self.line(&format!("snapshot {} (parent {parent})", &r.snapshot[..8]));
        for f in &r.files {
            self.line(&format!(
                "  {}  {}: {}",
                f.path,
                HumanBytes(f.size),
                describe(&f.storage)
            ));
            let Some(tensors) = &f.tensors else { continue };
            let unchanged = tensors.iter().filter(|t| t.status == "unchanged").count();
            self.line(&format!(
                "    tensors: {} changed, {unchanged} unchanged",
                tensors.len() - unchanged
            ));
            for t in tensors.iter().filter(|t| t.status != "unchanged") {
                self.line(&format!(
                    "    {:<9} {} {}{:?}  {}/{} blocks changed, stored {}",
                    t.status,
                    t.name,
                    t.dtype,
                    t.shape,
                    t.blocks_changed,
                    t.blocks,
                    HumanBytes(t.storage.stored())
                ));
            }
        }
        self.line(&format!(
            "  total: {} ({} stored for what changed)",
            describe(&r.total),
            HumanBytes(r.total.stored())
        ));
    }

    pub fn diff(&self, r: &DiffReport) {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        for f in &r.removed {
            self.line(&format!("-  {}  ({})", f.path, HumanBytes(f.size)));
        }
        for f in &r.added {
            self.line(&format!("+  {}  ({})", f.path, HumanBytes(f.size)));
        }
        for c in &r.changed {
            let what = if c.content { "M " } else { "m " };
            self.line(&format!(
                "{what} {}  ({} -> {})",
                c.path,
                HumanBytes(c.size_before),
                HumanBytes(c.size_after)
            ));
            if let Some(t) = &c.tensors {
                self.line(&format!(
                    "     tensors: {} changed, {} added, {} removed, {} unchanged",
                    t.changed.len(),
                    t.added.len(),
                    t.removed.len(),
                    t.unchanged
                ));
                const SHOWN: usize = 50;
                for (mark, names) in [("~", &t.changed), ("+", &t.added), ("-", &t.removed)] {
                    for name in names.iter().take(SHOWN) {
                        self.line(&format!("       {mark} {name}"));
                    }
                    if names.len() > SHOWN {
                        self.line(&format!(
                            "       … and {} more (see --json)",
                            names.len() - SHOWN
                        ));
                    }
                }
            }
        }
        self.line(&format!(
            "{} added, {} removed, {} changed (M content, m metadata only), {} unchanged",
            r.added.len(),
            r.removed.len(),
            r.changed.len(),
            r.unchanged
        ));
    }

    pub fn verify(&self, r: &VerifyReport) -> u8 {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        let read = if r.packs_read > 0 {
            format!(
                ", read {} packs ({})",
                r.packs_read,
                HumanBytes(r.bytes_read)
            )
        } else {
            String::new()
        };
        let summary = format!(
            "checked {} snapshots, {} index files, {} packs{read} in {}",
            r.snapshots,
            r.index_files,
            r.packs,
            secs(r.duration_ms)
        );
        if r.reclaimable_packs > 0 {
            self.line(&format!(
                "{} unused pack(s), {}, can be reclaimed with `tvault prune`",
                r.reclaimable_packs,
                HumanBytes(r.reclaimable_bytes)
            ));
        }
        if r.clean {
            self.line(&format!("{summary}: no problems"));
            return exit::SUCCESS;
        }
        // Damage is printed even with --quiet: CI and cron must show it.
        if !self.json {
            eprintln!(
                "tvault: DAMAGE: {} problem(s) found; {summary}",
                r.problems.len()
            );
            for p in &r.problems {
                eprintln!("  [{}] {}: {}", kind_name(p), p.file, p.message);
                const SHOWN: usize = 20;
                for a in p.affected.iter().take(SHOWN) {
                    eprintln!("      snapshot {}: {}", a.snapshot, a.path);
                }
                if p.affected.len() > SHOWN {
                    eprintln!("      … and {} more (see --json)", p.affected.len() - SHOWN);
                }
            }
            for b in &r.broken_snapshots {
                eprintln!(
                    "  snapshot {}: {} path(s) cannot be restored; {}",
                    b.snapshot,
                    b.files,
                    heal_advice(b.heal)
                );
            }
        }
        exit::DAMAGE
    }

    pub fn prune(&self, r: &PruneReport) {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        for d in &r.snapshots {
            self.line(&format!(
                "{:<6} {}  {}  {:<12} {}  [{}]",
                if d.keep { "keep" } else { "remove" },
                d.short_id,
                d.time.format("%Y-%m-%d %H:%M:%S"),
                d.host,
                d.tags.join(","),
                d.reasons.join(", "),
            ));
        }
        let verb = if r.dry_run { "would free" } else { "freed" };
        self.line(&format!(
            "{} snapshot(s) removed, {} pack(s) deleted, {} repacked into {}, {} leftover file(s) removed; {verb} {} of {}",
            r.snapshots_removed,
            r.packs_deleted,
            r.packs_repacked,
            r.packs_written,
            r.leftovers_deleted,
            HumanBytes(r.bytes_freed),
            HumanBytes(r.bytes_before),
        ));
        if r.dry_run {
            self.line("dry run: nothing was changed");
        }
    }
}

impl Out {
    pub fn repair_index(&self, r: &RepairIndexReport) -> u8 {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        let verb = if r.dry_run {
            "would recover"
        } else {
            "recovered"
        };
        self.line(&format!(
            "scanned {} packs: {verb} {} entries of {} pack(s) that no index listed; {} index file(s) written, {} corrupt one(s) removed",
            r.packs_scanned,
            r.entries_recovered,
            r.packs_recovered,
            r.index_files_written.len(),
            r.index_files_removed.len(),
        ));
        if r.dry_run {
            self.line("dry run: nothing was changed");
        }
        if r.unreadable_packs.is_empty() {
            return exit::SUCCESS;
        }
        if !self.json {
            eprintln!(
                "tvault: DAMAGE: {} pack(s) cannot be read; their chunks stay lost:",
                r.unreadable_packs.len()
            );
            for u in &r.unreadable_packs {
                eprintln!("  {}: {}", u.file, u.message);
            }
        }
        exit::DAMAGE
    }

    pub fn repair_packs(&self, r: &RepairPacksReport) -> u8 {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        if r.damaged_packs.is_empty() {
            self.line(&format!(
                "read {} packs ({}): no damage, nothing to repair",
                r.packs_read,
                HumanBytes(r.bytes_read)
            ));
            return exit::SUCCESS;
        }
        for d in &r.chunks_dropped {
            self.line(&format!(
                "drop chunk {} in {}: {}",
                d.chunk, d.pack, d.reason
            ));
        }
        if r.dry_run {
            self.line(&format!(
                "would drop {} damaged chunk(s) and rewrite {} pack(s) without them",
                r.chunks_dropped.len(),
                r.damaged_packs.len(),
            ));
            self.line("dry run: nothing was changed");
        } else {
            self.line(&format!(
                "dropped {} damaged chunk(s) of {} pack(s); {} pack(s) written with what was sound",
                r.chunks_dropped.len(),
                r.damaged_packs.len(),
                r.packs_written,
            ));
            if let Some(record) = &r.record {
                self.line(&format!("recorded in {record}"));
            }
            self.line(
                "back up the same data again: snapshots that need these chunks heal when their \
                 content is stored again (`tvault verify` says which are still broken)",
            );
        }
        exit::SUCCESS
    }
}

/// What to do about a broken snapshot, truthfully: verify cannot see the sources, so a
/// snapshot heals only if a backup stores the same content again.
fn heal_advice(heal: Heal) -> &'static str {
    match heal {
        Heal::RepairIndex => {
            "packs that no index lists may hold its chunks: run `tvault repair index`"
        }
        Heal::RepairPacks => {
            "run `tvault repair packs`, then back up the same data: it heals if that content is \
             stored again, else it stays broken"
        }
        Heal::Backup => {
            "its chunks are in no index (dropped as damaged): it heals when a backup stores the \
             same content again, and stays broken if that data exists nowhere any more"
        }
        Heal::Never => "its tree or manifest is damaged: it stays broken",
    }
}

fn kind_name(p: &crate::ops::verify::Problem) -> String {
    serde_json::to_value(p.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Draws a bar on a terminal; otherwise only prints warnings.
pub struct CliProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress for CliProgress {
    fn start(&self, _files: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }
    fn file(&self, path: &str) {
        if let Some(b) = &self.bar {
            b.set_message(path.to_string());
        }
    }
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn warn(&self, message: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("tvault: warning: {message}")),
            None => eprintln!("tvault: warning: {message}"),
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for CliProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}
