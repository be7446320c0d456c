//! What the CLI prints: progress bars (only on a terminal), one-line human summaries, and the
//! `--json` reports. The JSON field names are a stable interface, documented in the README.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::exit;
use crate::id::Id;
use crate::ops::backup::BackupReport;
use crate::ops::restore::RestoreReport;
use crate::progress::Progress;
use crate::snapshot::{Snapshot, SnapshotKind};

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
            println!("{text}");
        }
    }

    /// A remark on stderr (not with --quiet).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("tvault: {text}");
        }
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
        println!(
            "{:<9} {:<20} {:<12} {:<12} {:>10} {:>10}  {:<10} paths",
            "ID", "time (UTC)", "host", "kind", "size", "added", "tags"
        );
        for (id, s) in all {
            let kind = match (s.kind, s.is_complete()) {
                (SnapshotKind::Full, true) => "full",
                (SnapshotKind::Incremental, true) => "incremental",
                (SnapshotKind::Full, false) => "full!",
                (SnapshotKind::Incremental, false) => "incremental!",
            };
            println!(
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
            println!("(! = incomplete: some files could not be stored)");
        }
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
        if r.failed.is_empty() {
            return exit::SUCCESS;
        }
        eprintln!("tvault: {} file(s) could not be restored:", r.failed.len());
        for f in &r.failed {
            eprintln!("  {f}");
        }
        exit::DAMAGE
    }
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
