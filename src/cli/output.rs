//! What the CLI prints: progress bars (only on a terminal), one-line human summaries, and the
//! `--json` reports. The JSON field names are a stable interface, documented in the README.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::exit;
use tvault_core::id::{Id, SHORT_LEN};
use tvault_core::ops::backup::BackupReport;
use tvault_core::ops::diff::DiffReport;
use tvault_core::ops::find::Found;
use tvault_core::ops::ls::{mode_string, LsEntry};
use tvault_core::ops::prune::PruneReport;
use tvault_core::ops::repair::{RepairIndexReport, RepairPacksReport};
use tvault_core::ops::restore::RestoreReport;
use tvault_core::ops::select::Latest;
use tvault_core::ops::stats::{ChunkTotals, RepoStats, SnapshotStats};
use tvault_core::ops::verify::{Heal, VerifyReport};
use tvault_core::progress::Progress;
use tvault_core::snapshot::{Snapshot, SnapshotKind};

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

/// Whether a JSON report went to stdout: an error after it is not printed as a second
/// JSON document.
static JSON_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `{"error": MESSAGE, "exit_code": N}`: a failed command's JSON.
#[derive(serde::Serialize)]
pub struct ErrorJson<'a> {
    pub error: &'a str,
    pub exit_code: u8,
}

/// Under `--json`, an error is a JSON object on stdout (unless a report was printed already);
/// on stderr it is always the plain message.
pub fn print_error(json: bool, message: &str, exit_code: u8) {
    eprintln!("tvault: error: {message}");
    if json && !JSON_WRITTEN.load(std::sync::atomic::Ordering::SeqCst) {
        let value = ErrorJson {
            error: message,
            exit_code,
        };
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer_pretty(&mut stdout, &value);
        let _ = writeln!(stdout);
    }
}

/// `init --json`.
#[derive(serde::Serialize)]
pub struct InitJson<'a> {
    pub repository: &'a Path,
    pub encrypted: bool,
}

/// `key list --json`: one entry per key slot.
#[derive(serde::Serialize)]
pub struct KeyJson {
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub current: bool,
    /// Argon2id memory (KiB), passes and lanes.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

/// `unlock --json`.
#[derive(serde::Serialize)]
pub struct UnlockJson<'a> {
    pub removed: &'a [String],
}

/// `upgrade --json`.
#[derive(serde::Serialize)]
pub struct UpgradeJson {
    pub from: u32,
    pub to: u32,
}

/// `backup --json`: the engine's report as the README documents it.
#[derive(serde::Serialize)]
struct BackupJson<'a> {
    /// `null` for `--dry-run`.
    id: Option<String>,
    /// Deprecated name of `id`.
    snapshot_id: Option<String>,
    dry_run: bool,
    kind: SnapshotKind,
    parent: Option<String>,
    complete: bool,
    problems: &'a [String],
    warnings: &'a [String],
    settling: &'a [String],
    settling_details: &'a [tvault_core::ops::settle::SettlingFile],
    excluded: u64,
    /// files, dirs, symlinks, total_bytes, files_new/changed/unchanged, bytes_read,
    /// bytes_added, chunks_added, duration_ms, stored.
    #[serde(flatten)]
    summary: &'a tvault_core::snapshot::Summary,
}

/// One element of `snapshots --json`.
#[derive(serde::Serialize)]
struct SnapshotJson<'a> {
    id: String,
    short_id: String,
    time: chrono::DateTime<chrono::Utc>,
    host: &'a str,
    paths: &'a [String],
    tags: &'a [String],
    kind: SnapshotKind,
    parent: Option<String>,
    complete: bool,
    total_bytes: u64,
    bytes_added: u64,
    files: u64,
    /// A copy's source snapshot (`copy`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    copied_from: Option<String>,
}

pub struct Out {
    quiet: bool,
    json: bool,
}

/// A report with, when its snapshot was given as `latest`, what `latest` resolved to.
#[derive(serde::Serialize)]
pub struct WithLatest<'a, T: serde::Serialize> {
    #[serde(flatten)]
    pub report: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<&'a Latest>,
}

fn with_latest<T: serde::Serialize>(report: &T, latest: Option<&Latest>) -> serde_json::Value {
    serde_json::to_value(WithLatest { report, latest }).expect("report serialises")
}

/// Adds a report's snapshot ID (`id`) under the name an earlier release gave it
/// (`snapshot_id`, `snapshot`): kept for one release, documented as deprecated.
pub fn with_deprecated_id(mut v: serde_json::Value, old: &str) -> serde_json::Value {
    if let Some(obj) = v.as_object_mut() {
        if let Some(id) = obj.get("id").cloned() {
            obj.insert(old.to_string(), id);
        }
    }
    v
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

    /// [`Out::note`] as a value the engine can keep, for remarks from inside a command.
    pub fn note_sink(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let quiet = self.quiet;
        move |text| {
            if !quiet {
                eprintln!("tvault: {text}");
            }
        }
    }

    /// A warning on stderr, even with --quiet (it may mean data is at risk).
    pub fn warn(&self, text: &str) {
        eprintln!("tvault: warning: {text}");
    }

    pub fn json(&self, value: &serde_json::Value) {
        if self.json {
            JSON_WRITTEN.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut stdout = std::io::stdout().lock();
            let _ = serde_json::to_writer_pretty(&mut stdout, value);
            let _ = writeln!(stdout);
        }
    }

    pub fn progress(&self, verb: &'static str) -> CliProgress {
        let width = console::Term::stderr().size().1 as usize;
        let fixed = if width >= 100 {
            BAR_FIXED_WIDE
        } else {
            BAR_FIXED_NARROW
        };
        let bar = if !self.quiet && std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            // Narrow terminals lose the bar before anything that says something.
            let template = if width >= 100 {
                "{prefix} {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} [{bar:20}]"
            } else {
                "{prefix} {msg} {bytes}/{total_bytes} ETA {eta}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
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
            state: Default::default(),
            width,
            fixed,
        }
    }

    /// `settle`: the `--settle` duration, stated in the summary of what it left out.
    pub fn backup(&self, r: &BackupReport, settle: Option<std::time::Duration>) -> u8 {
        let s = &r.snapshot;
        let m = &s.summary;
        let id = (!r.dry_run).then(|| r.snapshot_id.to_hex());
        self.json(
            &serde_json::to_value(BackupJson {
                snapshot_id: id.clone(),
                id,
                dry_run: r.dry_run,
                kind: s.kind,
                parent: s.parent.map(|p| p.to_hex()),
                complete: s.is_complete(),
                problems: &s.problems,
                warnings: &r.warnings,
                settling: &r.settling,
                settling_details: &r.settling_details,
                excluded: r.excluded,
                summary: m,
            })
            .expect("report serialises"),
        );

        let parent = match (s.kind, s.parent) {
            (SnapshotKind::Incremental, Some(p)) => format!("incremental, parent {}", p.short()),
            _ => "full".to_string(),
        };
        if r.dry_run {
            self.line(&format!(
                "dry run ({parent}): {} ({} new, {} changed, {} unchanged); would read {}, would add about {}; nothing was stored",
                plural(m.files, "file"),
                m.files_new,
                m.files_changed,
                m.files_unchanged,
                HumanBytes(m.bytes_read),
                HumanBytes(m.bytes_added),
            ));
            return if s.is_complete() {
                super::exit::SUCCESS
            } else {
                super::exit::INCOMPLETE
            };
        }
        self.line(&format!(
            "snapshot {} saved ({parent}): {} ({} new, {} changed, {} unchanged), {} read, {} added, {}",
            r.snapshot_id.short(),
            plural(m.files, "file"),
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
        if !r.settling_details.is_empty() {
            let d = &r.settling_details;
            let kept = d.iter().filter(|f| f.kept_from_parent).count();
            let longest = match d.iter().map(|f| f.deferred_seconds).max().unwrap_or(0) {
                0 => String::new(),
                s => format!(
                    "; the longest deferred for {}",
                    super::args::describe_duration(std::time::Duration::from_secs(s))
                ),
            };
            self.line(&format!(
                "  {} left for the next backup (--settle: modified less than {} ago): {kept} kept at their version in the parent snapshot, {} not in any snapshot yet{longest}",
                plural(d.len(), "recently modified file"),
                settle.map(super::args::describe_duration).unwrap_or_default(),
                d.len() - kept,
            ));
        }
        if s.is_complete() {
            return exit::SUCCESS;
        }
        // Even with --quiet: cron must mail this.
        eprintln!(
            "tvault: snapshot {} is INCOMPLETE: {} could not be stored",
            r.snapshot_id.short(),
            plural(s.problems.len(), "file or folder")
        );
        if self.quiet {
            for p in &s.problems {
                eprintln!("  {p}");
            }
        }
        exit::INCOMPLETE
    }

    pub fn snapshots(&self, all: &[(Id, Snapshot)]) {
        let list: Vec<SnapshotJson> = all
            .iter()
            .map(|(id, s)| SnapshotJson {
                id: id.to_hex(),
                short_id: id.short(),
                time: s.time,
                host: &s.host,
                paths: &s.paths,
                tags: &s.tags,
                kind: s.kind,
                parent: s.parent.map(|p| p.to_hex()),
                complete: s.is_complete(),
                total_bytes: s.summary.total_bytes,
                bytes_added: s.summary.bytes_added,
                files: s.summary.files,
                copied_from: s.copied_from.map(|c| c.to_hex()),
            })
            .collect();
        self.json(&serde_json::to_value(list).expect("report serialises"));
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

    pub fn restore(&self, r: &RestoreReport, target: &Path, latest: Option<&Latest>) -> u8 {
        self.json(&with_deprecated_id(with_latest(r, latest), "snapshot_id"));
        self.line(&format!(
            "restored snapshot {} into {}: {}, {}, {}, {} in {}",
            &r.id[..tvault_core::id::SHORT_LEN],
            target.display(),
            plural(r.files, "file"),
            plural(r.dirs, "directory"),
            plural(r.symlinks, "symlink"),
            HumanBytes(r.bytes_written),
            secs(r.duration_ms),
        ));
        if r.bytes_resumed > 0 {
            self.line(&format!(
                "of which {} were already written by an interrupted restore (checked chunk by \
                 chunk, not read again)",
                HumanBytes(r.bytes_resumed),
            ));
        }
        if r.files_kept > 0 {
            self.line(&format!(
                "kept {} ({}) already in place and identical (checked chunk by chunk)",
                plural(r.files_kept, "file"),
                HumanBytes(r.bytes_kept),
            ));
        }
        self.failed_files(&r.failed, "could not be restored")
    }

    /// Names the files a restore could not write (even with --quiet); exit 4 when there are any.
    pub fn failed_files(&self, failed: &[String], what: &str) -> u8 {
        if failed.is_empty() {
            return exit::SUCCESS;
        }
        eprintln!("tvault: {} {what}:", plural(failed.len(), "file"));
        for f in failed {
            eprintln!("  {f}");
        }
        exit::DAMAGE
    }
}

impl Out {
    pub fn show(&self, r: &tvault_core::ops::show::ShowReport, latest: Option<&Latest>) {
        use tvault_core::ops::show::Storage;
        self.json(&with_deprecated_id(with_latest(r, latest), "snapshot"));
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
                parts.push(format!(
                    "{} MISSING from the index",
                    plural(s.missing, "chunk")
                ));
            }
            parts.join(", ")
        };
        let parent = r
            .parent
            .as_deref()
            .map_or("none".to_string(), |p| p[..8].to_string());
        self.line(&format!("snapshot {} (parent {parent})", &r.id[..8]));
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

    pub fn diff(&self, r: &DiffReport, latest: Option<&Latest>) {
        self.json(&with_latest(r, latest));
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
        let mut v = serde_json::to_value(r).expect("report serialises");
        // Deprecated: `affected[].snapshot` was the short ID; `id` is the whole one.
        for p in v["problems"].as_array_mut().into_iter().flatten() {
            for a in p["affected"].as_array_mut().into_iter().flatten() {
                let short = a["id"].as_str().map(|id| id[..SHORT_LEN].to_string());
                a["snapshot"] = short.into();
            }
        }
        self.json(&v);
        let read = if r.packs_read > 0 {
            format!(
                ", read {} ({})",
                plural(r.packs_read, "pack"),
                HumanBytes(r.bytes_read)
            )
        } else {
            String::new()
        };
        let summary = format!(
            "checked {}, {}, {}{read} in {}",
            plural(r.snapshots, "snapshot"),
            plural(r.index_files, "index file"),
            plural(r.packs, "pack"),
            secs(r.duration_ms)
        );
        if r.reclaimable_packs > 0 {
            self.line(&format!(
                "{} ({}) can be reclaimed with `tvault prune`",
                plural(r.reclaimable_packs, "unused pack"),
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
                "tvault: DAMAGE: {} found; {summary}",
                plural(r.problems.len(), "problem")
            );
            for p in &r.problems {
                eprintln!("  [{}] {}: {}", kind_name(p), p.file, p.message);
                const SHOWN: usize = 20;
                for a in p.affected.iter().take(SHOWN) {
                    eprintln!("      snapshot {}: {}", &a.id[..SHORT_LEN], a.path);
                }
                if p.affected.len() > SHOWN {
                    eprintln!("      … and {} more (see --json)", p.affected.len() - SHOWN);
                }
            }
            for b in &r.broken_snapshots {
                eprintln!(
                    "  snapshot {}: {} cannot be restored; {}",
                    &b.id[..SHORT_LEN],
                    plural(b.files, "path"),
                    heal_advice(b.heal)
                );
            }
        }
        exit::DAMAGE
    }

    /// `within`: the `--keep-within` span, stated in words before the decisions.
    pub fn prune(&self, r: &PruneReport, within: Option<tvault_core::ops::retention::Within>) {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        if let Some(w) = within {
            self.line(&format!(
                "keep within {} before the newest snapshot of each host and paths (--keep-within)",
                w.describe()
            ));
        }
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
        if r.refused.is_some() {
            self.line("dry run: nothing was changed; a real run would refuse this plan");
            return;
        }
        if r.snapshots_only {
            self.line(&format!(
                "{} removed; their data stays until `tvault prune`",
                plural(r.snapshots_removed, "snapshot")
            ));
            if r.dry_run {
                self.line("dry run: nothing was changed");
            }
            return;
        }
        let verb = if r.dry_run { "would free" } else { "freed" };
        self.line(&format!(
            "{} removed, {} deleted, {} repacked into {}, {} removed; {verb} {} of {}",
            plural(r.snapshots_removed, "snapshot"),
            plural(r.packs_deleted, "pack"),
            r.packs_repacked,
            r.packs_written,
            plural(r.leftovers_deleted, "leftover file"),
            HumanBytes(r.bytes_freed),
            HumanBytes(r.bytes_before),
        ));
        if r.chunks_rewritten > 0 || r.bytes_kept_as_bases > 0 {
            let rewritten = if r.dry_run { "would store" } else { "stored" };
            self.line(&format!(
                "{rewritten} {} again as keyframes so that bases only removed snapshots used could go; {} kept only as bases of deltas",
                plural(r.chunks_rewritten, "delta chunk"),
                HumanBytes(r.bytes_kept_as_bases),
            ));
        }
        if r.dry_run {
            self.line("dry run: nothing was changed");
        }
    }
}

impl Out {
    pub fn tag(&self, r: &tvault_core::ops::tag::TagReport) {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        let tags = if r.tags.is_empty() {
            "no tags".to_string()
        } else {
            format!("tags {}", r.tags.join(", "))
        };
        if r.changed {
            self.line(&format!(
                "snapshot {} -> {}: {tags} (the ID changes with the tags)",
                &r.old_id[..SHORT_LEN],
                &r.id[..SHORT_LEN]
            ));
        } else {
            self.line(&format!(
                "snapshot {}: already {tags}; nothing changed",
                &r.id[..SHORT_LEN]
            ));
        }
    }

    pub fn ls(&self, entries: &[LsEntry], long: bool) {
        self.json(&serde_json::to_value(entries).expect("report serialises"));
        if self.json || self.quiet {
            return;
        }
        for e in entries {
            let target = e
                .target
                .as_ref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            if long {
                outln!(
                    "{} {:>12} {} {}{target}",
                    mode_string(e.kind, e.mode),
                    e.size,
                    e.mtime.format("%Y-%m-%d %H:%M:%S"),
                    e.path
                );
            } else {
                outln!("{}{target}", e.path);
            }
        }
    }

    pub fn find(&self, found: &[Found]) {
        self.json(&serde_json::to_value(found).expect("report serialises"));
        if self.json || self.quiet {
            return;
        }
        for f in found {
            outln!(
                "{}  {}  {:>10}  {}{}",
                &f.id[..tvault_core::id::SHORT_LEN],
                f.time.format("%Y-%m-%d %H:%M:%S"),
                HumanBytes(f.size).to_string(),
                f.path,
                if f.kind == tvault_core::tree::NodeKind::Dir {
                    "/"
                } else {
                    ""
                },
            );
        }
        if found.is_empty() {
            self.note("no match");
        }
    }

    pub fn snapshot_stats(&self, s: &SnapshotStats) {
        self.json(&serde_json::to_value(s).expect("report serialises"));
        self.line(&format!(
            "snapshot {}: {}, {}, {}",
            &s.id[..tvault_core::id::SHORT_LEN],
            plural(s.files, "file"),
            plural(s.dirs, "directory"),
            plural(s.symlinks, "symlink")
        ));
        self.line(&format!(
            "  restore size {} in {} distinct chunks of {} ({:.2}x dedup), stored as {}",
            HumanBytes(s.restore_size),
            s.chunks.chunks,
            HumanBytes(s.chunks.plain_bytes),
            s.dedup_ratio,
            HumanBytes(s.chunks.stored_bytes),
        ));
        self.encodings(&s.chunks);
        if s.chains.bases > 0 {
            self.line(&format!(
                "  delta chains up to {} deep: a restore reads {} (with {} of earlier steps)",
                s.chains.deepest,
                HumanBytes(s.chains.read_bytes),
                plural(s.chains.bases, "base"),
            ));
        }
        if s.missing_chunks > 0 {
            self.warn(&format!(
                "{} of this snapshot in no index: run `tvault verify`",
                plural(s.missing_chunks, "chunk")
            ));
        }
    }

    pub fn repo_stats(&self, s: &RepoStats) {
        self.json(&serde_json::to_value(s).expect("report serialises"));
        self.line(&format!(
            "{}, {} ({})",
            plural(s.snapshots, "snapshot"),
            plural(s.packs, "pack"),
            HumanBytes(s.pack_bytes)
        ));
        self.line(&format!(
            "  restore size of all snapshots {} in {} distinct chunks of {} ({:.2}x dedup), stored as {}",
            HumanBytes(s.restore_size),
            s.chunks.chunks,
            HumanBytes(s.chunks.plain_bytes),
            s.dedup_ratio,
            HumanBytes(s.chunks.stored_bytes),
        ));
        self.encodings(&s.chunks);
    }

    fn encodings(&self, c: &ChunkTotals) {
        for (name, b) in &c.by_encoding {
            self.line(&format!(
                "  {name:<12} {:>8} chunks {:>10} -> {:>10}",
                b.chunks,
                HumanBytes(b.plain_bytes).to_string(),
                HumanBytes(b.stored_bytes).to_string()
            ));
        }
    }

    pub fn repair_index(&self, r: &RepairIndexReport) -> u8 {
        self.json(&serde_json::to_value(r).expect("report serialises"));
        let verb = if r.dry_run {
            "would recover"
        } else {
            "recovered"
        };
        self.line(&format!(
            "scanned {}: {verb} {} of {} that no index listed; {} written, {} removed",
            plural(r.packs_scanned, "pack"),
            plural(r.entries_recovered, "entry"),
            plural(r.packs_recovered, "pack"),
            plural(r.index_files_written.len(), "index file"),
            plural(r.index_files_removed.len(), "corrupt one"),
        ));
        if r.dry_run {
            self.line("dry run: nothing was changed");
        }
        if r.unreadable_packs.is_empty() {
            return exit::SUCCESS;
        }
        if !self.json {
            eprintln!(
                "tvault: DAMAGE: {} cannot be read; their chunks stay lost:",
                plural(r.unreadable_packs.len(), "pack")
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
                "read {} ({}): no damage, nothing to repair",
                plural(r.packs_read, "pack"),
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
                "would drop {} and rewrite {} without them",
                plural(r.chunks_dropped.len(), "damaged chunk"),
                plural(r.damaged_packs.len(), "pack"),
            ));
            self.line("dry run: nothing was changed");
        } else {
            self.line(&format!(
                "dropped {} of {}; {} written with what was sound",
                plural(r.chunks_dropped.len(), "damaged chunk"),
                plural(r.damaged_packs.len(), "pack"),
                plural(r.packs_written, "pack"),
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

fn kind_name(p: &tvault_core::ops::verify::Problem) -> String {
    serde_json::to_value(p.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Draws a bar on a terminal; otherwise only prints warnings. The bar says files done of
/// files to read, bytes read of bytes to read, bytes added to the repository, the current file
/// (shortened from the left to fit the terminal), and once the bytes are through, the phase.
pub struct CliProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
    state: std::sync::Mutex<BarState>,
    /// Terminal columns, and how many of them the bar's fixed parts take.
    width: usize,
    fixed: usize,
}

#[derive(Default)]
struct BarState {
    files: u64,
    started: u64,
    added: u64,
    path: String,
}

/// Columns of the bar besides the message (verb, bytes, rate, ETA, the bar), in a wide and a
/// narrow terminal.
const BAR_FIXED_WIDE: usize = 74;
const BAR_FIXED_NARROW: usize = 38;

/// The bar's message: `3/10 files, 1.2 GiB added, …ckpt/model.safetensors`, at most `width`
/// characters (the path loses its start first).
pub fn bar_message(state: (u64, u64, u64), path: &str, width: usize) -> String {
    let (done, files, added) = state;
    let noun = if files == 1 { "file" } else { "files" };
    let head = format!("{done}/{files} {noun}, {} added", HumanBytes(added));
    let room = width.saturating_sub(head.chars().count() + 2);
    if path.is_empty() || room < 8 {
        return head.chars().take(width).collect();
    }
    let n = path.chars().count();
    let shown: String = if n <= room {
        path.to_string()
    } else {
        let tail: String = path.chars().skip(n - (room - 1)).collect();
        format!("…{tail}")
    };
    format!("{head}, {shown}")
}

impl CliProgress {
    fn redraw(&self) {
        if let Some(b) = &self.bar {
            let s = self.state.lock().expect("progress state");
            let room = self.width.saturating_sub(self.fixed);
            b.set_message(bar_message(
                (s.started.saturating_sub(1), s.files, s.added),
                &s.path,
                room,
            ));
        }
    }
}

impl Progress for CliProgress {
    fn start(&self, files: u64, bytes: u64) {
        self.state.lock().expect("progress state").files = files;
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
        self.redraw();
    }
    fn file(&self, path: &str) {
        {
            let mut s = self.state.lock().expect("progress state");
            s.started += 1;
            s.path = path.to_string();
        }
        self.redraw();
    }
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn added(&self, total: u64) {
        self.state.lock().expect("progress state").added = total;
        self.redraw();
    }
    fn phase(&self, what: &str) {
        if let Some(b) = &self.bar {
            let s = self.state.lock().expect("progress state");
            let head = bar_message((s.files.min(s.started), s.files, s.added), "", 60);
            b.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {wide_msg} {elapsed}")
                    .expect("valid template"),
            );
            b.set_message(format!("{head}; {what}"));
            b.enable_steady_tick(std::time::Duration::from_millis(200));
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

/// `1 file`, `2 files`, `3 directories`: a count and its noun (the last word takes the plural).
pub fn plural(n: impl TryInto<u64>, noun: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        return format!("1 {noun}");
    }
    let consonant_y =
        noun.ends_with('y') && !noun[..noun.len() - 1].ends_with(|c: char| "aeiou".contains(c));
    if consonant_y {
        format!("{n} {}ies", &noun[..noun.len() - 1])
    } else {
        format!("{n} {noun}s")
    }
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::bar_message;

    #[test]
    fn counts_take_the_plural_they_need() {
        use super::plural;
        assert_eq!(plural(1u64, "file"), "1 file");
        assert_eq!(plural(0usize, "file"), "0 files");
        assert_eq!(plural(2u64, "directory"), "2 directories");
        assert_eq!(plural(3u64, "entry"), "3 entries");
        assert_eq!(plural(1u64, "index file"), "1 index file");
        assert_eq!(plural(5u64, "index file"), "5 index files");
        assert_eq!(plural(2u64, "key"), "2 keys");
    }

    #[test]
    fn bar_message_fits_its_room_and_keeps_the_end_of_the_path() {
        let path = "run1/checkpoints/checkpoint-1500/model-00002-of-00004.safetensors";
        let m = bar_message((3, 10, 5 << 30), path, 200);
        assert_eq!(m, format!("3/10 files, 5.00 GiB added, {path}"));
        for width in [20, 40, 60, 80] {
            let m = bar_message((3, 10, 5 << 30), path, width);
            assert!(m.chars().count() <= width, "{width}: {m}");
            assert!(m.starts_with("3/10 files"), "{m}");
        }
        let m = bar_message((0, 1, 0), path, 60);
        assert!(m.starts_with("0/1 file, 0 B added, …"), "{m}");
        assert!(m.ends_with("of-00004.safetensors"), "{m}");
    }
}
