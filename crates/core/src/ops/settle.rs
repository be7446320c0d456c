//! `backup --settle D`: what a snapshot holds for files still being written. The walk marks
//! files modified less than D ago, and the backup adds those that change during it (found
//! changed since the walk when opened or once read, or gone; see `Rules::late`: what was
//! read of them is not stored); here each one keeps the parent snapshot's entry exactly as it
//! was (chunks, size, times, inode: the next incremental sees that it no longer matches and reads
//! the file), or is left out when the parent has no version of it, and is listed either way
//! with how long it has been deferred, counted from the first snapshot that deferred it (the
//! snapshot manifest records it). Nothing is dropped silently.
//!
//! Files that belong together are decided per folder: a *checkpoint folder* (one that directly
//! holds a sharded model or training state, see [`is_checkpoint_marker`], now or in the parent
//! snapshot: a marker being rewritten may be missing from the disk) with a settling file
//! keeps the parent's version of every file directly in it that changed, appeared or went away
//! since, so no snapshot mixes two training steps. Other files are decided one by one.
//!
//! A model file (safetensors, GGUF, zip) that changed since the parent snapshot settles only
//! once it is also complete and parses ([`incomplete_files`]): a header that promises more
//! bytes than the file has is a file still being written, however old its mtime.
//!
//! A deferral longer than `--settle-max` is a problem: the snapshot is incomplete (exit 3).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::fs::Metadata;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::backup::unchanged;
use super::walk::Walked;
use crate::snapshot::Deferral;
use crate::tree::{Node, NodeKind, NodePath};

/// A file whose current version the snapshot does not hold (the `settling_details` of the
/// backup's JSON report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SettlingFile {
    /// The file's absolute path.
    pub path: String,
    /// Seconds since the first snapshot that deferred it (0 when this one is the first).
    pub deferred_seconds: u64,
    /// The snapshot holds the parent snapshot's entry for it; false: no version of it yet.
    pub kept_from_parent: bool,
    /// The checkpoint folder kept at the parent's version with it (absolute), if any.
    pub folder: Option<String>,
}

/// What the decisions depend on.
pub(crate) struct Rules<'a> {
    pub settle: Duration,
    /// A deferral longer than this makes the snapshot incomplete.
    pub max: Duration,
    pub now: DateTime<Utc>,
    /// The parent snapshot's files by path.
    pub parent_files: &'a HashMap<NodePath, Node>,
    /// The deferrals the parent snapshot recorded.
    pub parent_deferred: &'a [Deferral],
    /// Whether a parent entry can be kept: every chunk of it is in the index.
    pub restorable: &'a dyn Fn(&Node) -> bool,
    /// Files the backup found being written when it opened or read them, after the walk found
    /// them settled: settling, whatever their metadata says now.
    pub late: &'a HashSet<NodePath>,
    /// Model files that are not complete yet, and why (see [`incomplete_files`]): settling.
    pub incomplete: &'a HashMap<NodePath, String>,
}

/// The walk, settled.
#[derive(Default)]
pub(crate) struct Settled {
    /// For each walked entry, in order: stored as usual (false: a file listed in `files`).
    pub as_usual: Vec<bool>,
    /// Parent entries kept in place of files' current versions.
    pub kept: Vec<Node>,
    /// Every file whose current version is not stored, sorted by path.
    pub files: Vec<SettlingFile>,
    /// The same files for the manifest, with the start of each deferral.
    pub deferred: Vec<Deferral>,
    /// Deferrals past `--settle-max`.
    pub problems: Vec<String>,
    /// What the settling files became, one warning per file or checkpoint folder.
    pub warnings: Vec<String>,
}

impl Settled {
    /// Without `--settle`: every one of `n` walked entries is stored as usual.
    pub fn none(n: usize) -> Settled {
        Settled {
            as_usual: vec![true; n],
            ..Settled::default()
        }
    }
}

/// The walk's rule: a file modified less than `settle` before `now` (or after it) is settling.
pub(crate) fn modified_within(meta: &Metadata, settle: Duration, now: SystemTime) -> bool {
    let age = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok());
    age.is_none_or(|a| a < settle)
}

/// Whether a file's name shows that its folder holds a checkpoint made of several files that
/// belong together: a shard index (`model.safetensors.index.json`,
/// `pytorch_model.bin.index.json`), a shard (`model-00001-of-00004.safetensors`), or training
/// state (`trainer_state.json`, `optimizer.*`, `scheduler.pt`, `rng_state*.pth`, DeepSpeed's
/// `*_optim_states.pt` and `*_model_states.pt`). A folder of single-file checkpoints
/// (`step-1000.safetensors`, `step-2000.safetensors`) is not one: its files are independent.
pub fn is_checkpoint_marker(name: &str) -> bool {
    let shard = name.split_once("-of-").is_some_and(|(before, after)| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        digits(before.rsplit('-').next().unwrap_or(""))
            && digits(after.split('.').next().unwrap_or(""))
    });
    shard
        || name.ends_with(".safetensors.index.json")
        || name.ends_with(".bin.index.json")
        || name == "trainer_state.json"
        || name.starts_with("optimizer.")
        || name == "scheduler.pt"
        || (name.starts_with("rng_state") && name.ends_with(".pth"))
        || name.ends_with("_optim_states.pt")
        || name.ends_with("_model_states.pt")
}

/// The walked model files that changed since the parent snapshot (or are new), are not
/// already settling by their mtime, and are not complete yet (see [`crate::format::incomplete`]),
/// with why. Unchanged files are not opened: this reads a header per changed model file.
pub(crate) fn incomplete_files(
    walked: &[Walked],
    parent_files: &HashMap<NodePath, Node>,
) -> HashMap<NodePath, String> {
    let mut out = HashMap::new();
    for w in walked {
        if w.node.kind != NodeKind::File || w.settling {
            continue;
        }
        if parent_files
            .get(&w.node.path)
            .is_some_and(|p| unchanged(p, &w.node))
        {
            continue;
        }
        // A file that cannot be opened now is left to the read, which reports it.
        let Ok(file) = fs::File::open(&w.abs) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let src = crate::format::FileSource {
            file: &file,
            len: meta.len(),
        };
        if let Some(why) = crate::format::incomplete(&src) {
            out.insert(w.node.path.clone(), why);
        }
    }
    out
}

/// A number of seconds in words (`1 hour 5 minutes`): never `40m`, which could be months.
pub(crate) fn human(secs: u64) -> String {
    super::describe_duration(Duration::from_secs(secs))
}

/// `, deferred for 1h`; nothing for a deferral that starts with this backup.
fn for_how_long(secs: u64) -> String {
    match secs {
        0 => String::new(),
        s => format!(", deferred for {}", human(s)),
    }
}

fn name_of(path: &NodePath) -> String {
    let name = path.0.rsplit(|&b| b == b'/').next().unwrap_or(&path.0);
    String::from_utf8_lossy(name).into_owned()
}

/// A checkpoint folder held at the parent's version.
struct Held {
    abs: PathBuf,
    /// Names of its settling files.
    settling: Vec<String>,
    /// One of them changed during this backup (see [`Rules::late`]).
    late: bool,
    /// One of them is a model file not complete yet (see [`Rules::incomplete`]).
    incomplete: bool,
    /// Its files listed, and their oldest deferral.
    listed: usize,
    oldest: u64,
    since: Option<DateTime<Utc>>,
}

/// Lists deferred files, keeps their parent entries and counts their deferrals.
struct Deferrer<'a> {
    rules: &'a Rules<'a>,
    since: HashMap<&'a str, DateTime<Utc>>,
    held: HashMap<NodePath, Held>,
    out: Settled,
}

impl Deferrer<'_> {
    /// The snapshot does not hold `path`'s current version: keep the parent's, list it.
    fn defer(&mut self, path: &NodePath, abs: PathBuf, folder: Option<&NodePath>) {
        let rules = self.rules;
        let kept = rules
            .parent_files
            .get(path)
            .filter(|p| (rules.restorable)(p))
            .cloned();
        let key = path.display();
        let started = self.since.get(key.as_str()).copied().unwrap_or(rules.now);
        let secs = (rules.now - started).num_seconds().max(0) as u64;
        let abs = abs.display().to_string();
        let folder_abs = folder.and_then(|f| self.held.get_mut(f)).map(|h| {
            h.listed += 1;
            if h.since.is_none_or(|s| started < s) {
                h.since = Some(started);
                h.oldest = secs;
            }
            h.abs.display().to_string()
        });
        if folder_abs.is_none() {
            let what = match kept {
                Some(_) => "this snapshot keeps its version from the parent snapshot",
                None => "not in this snapshot (no earlier version)",
            };
            let why = match (rules.late.contains(path), rules.incomplete.get(path)) {
                (true, _) => "changed during this backup".to_string(),
                (false, Some(what)) => format!("not complete yet: {what}"),
                (false, None) => {
                    format!("modified less than {} ago", human(rules.settle.as_secs()))
                }
            };
            self.out.warnings.push(format!(
                "{abs}: {why} (--settle); {what}{}; a later backup takes it once it settles",
                for_how_long(secs)
            ));
            if secs > rules.max.as_secs() {
                let holds = match kept {
                    Some(_) => "its version from an earlier snapshot",
                    None => "no version of it",
                };
                self.out.problems.push(format!(
                    "{abs} is still being written after {} ({} at every backup since {}), longer than --settle-max {}; this snapshot holds {holds}: check the job that writes it",
                    human(secs),
                    match rules.incomplete.get(path) {
                        Some(what) => format!("not complete: {what}"),
                        None => format!("modified within --settle {}", human(rules.settle.as_secs())),
                    },
                    started.format("%Y-%m-%d %H:%M:%S UTC"),
                    human(rules.max.as_secs())
                ));
            }
        }
        self.out.deferred.push(Deferral {
            path: key,
            since: started,
        });
        self.out.files.push(SettlingFile {
            path: abs,
            deferred_seconds: secs,
            kept_from_parent: kept.is_some(),
            folder: folder_abs,
        });
        if let Some(k) = kept {
            self.out.kept.push(k);
        }
    }
}

/// Decides what the snapshot holds for settling files and checkpoint folders (see the module
/// doc); everything else is stored as usual. It reports nothing itself (the warnings are in
/// the result): a backup that finds more files settling while it reads decides again.
pub(crate) fn resolve(walked: &[Walked], rules: &Rules) -> Settled {
    let settling = |w: &Walked| {
        w.settling
            || rules.late.contains(&w.node.path)
            || rules.incomplete.contains_key(&w.node.path)
    };
    // The folders that directly hold a checkpoint marker, on disk or in the parent snapshot
    // (a marker being rewritten may be missing from the disk right now).
    let mut checkpoints: HashSet<NodePath> = rules
        .parent_files
        .keys()
        .filter(|p| is_checkpoint_marker(&name_of(p)))
        .filter_map(|p| p.parent())
        .collect();
    let mut dirs: HashMap<NodePath, PathBuf> = HashMap::new();
    let mut present: HashSet<NodePath> = HashSet::new();
    for w in walked {
        present.insert(w.node.path.clone());
        match w.node.kind {
            NodeKind::Dir => {
                dirs.insert(w.node.path.clone(), w.abs.clone());
            }
            NodeKind::File if is_checkpoint_marker(&name_of(&w.node.path)) => {
                checkpoints.extend(w.node.path.parent());
            }
            NodeKind::File | NodeKind::Symlink => {}
        }
    }
    // The checkpoint folders with a settling file.
    let mut held: HashMap<NodePath, Held> = HashMap::new();
    for w in walked.iter().filter(|w| settling(w)) {
        let Some(dir) = w.node.path.parent() else {
            continue;
        };
        let Some(abs) = dirs.get(&dir) else { continue };
        if !checkpoints.contains(&dir) {
            continue;
        }
        let h = held.entry(dir).or_insert_with(|| Held {
            abs: abs.clone(),
            settling: Vec::new(),
            late: false,
            incomplete: false,
            listed: 0,
            oldest: 0,
            since: None,
        });
        h.settling.push(name_of(&w.node.path));
        h.late |= rules.late.contains(&w.node.path);
        h.incomplete |= rules.incomplete.contains_key(&w.node.path);
    }

    let mut d = Deferrer {
        rules,
        since: rules
            .parent_deferred
            .iter()
            .map(|d| (d.path.as_str(), d.since))
            .collect(),
        held,
        out: Settled::default(),
    };
    for w in walked {
        if w.node.kind != NodeKind::File {
            d.out.as_usual.push(true);
            continue;
        }
        let folder = w.node.path.parent().filter(|f| d.held.contains_key(f));
        // A late file changed since the walk: what was read of it is not its walked version.
        let changed = rules.late.contains(&w.node.path)
            || rules
                .parent_files
                .get(&w.node.path)
                .is_none_or(|p| !unchanged(p, &w.node));
        let defer = changed && (settling(w) || folder.is_some());
        if defer {
            d.defer(&w.node.path, w.abs.clone(), folder.as_ref());
        }
        d.out.as_usual.push(!defer);
    }
    // Files a held folder had in the parent and no longer has: the folder is mid-write, so
    // they keep their version too (unless still on disk: then excluded or unreadable now).
    let mut gone: Vec<(&NodePath, NodePath)> = rules
        .parent_files
        .keys()
        .filter(|p| !present.contains(*p))
        .filter_map(|p| Some((p, p.parent().filter(|f| d.held.contains_key(f))?)))
        .collect();
    gone.sort();
    for (path, dir) in gone {
        let abs = d.held[&dir].abs.join(name_of(path));
        if fs::symlink_metadata(&abs).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            d.defer(path, abs, Some(&dir));
        }
    }

    let Deferrer { held, mut out, .. } = d;
    let mut folders: Vec<&Held> = held.values().filter(|h| h.listed > 0).collect();
    folders.sort_by(|a, b| a.abs.cmp(&b.abs));
    for h in folders {
        let abs = h.abs.display();
        let settling = h.settling.join(", ");
        let or_late = match (h.late, h.incomplete) {
            (true, _) => " or changed during this backup",
            (false, true) => " or not complete yet",
            (false, false) => "",
        };
        out.warnings.push(format!(
            "checkpoint folder {abs}: {settling} modified less than {} ago{or_late} (--settle); this snapshot keeps the parent snapshot's version of the whole folder ({} file(s) changed, added or removed since){}, so it never mixes two steps; a later backup takes the folder once it settles",
            human(rules.settle.as_secs()),
            h.listed,
            for_how_long(h.oldest)
        ));
        if h.oldest > rules.max.as_secs() {
            let since = h.since.unwrap_or(rules.now);
            out.problems.push(format!(
                "checkpoint folder {abs} has been kept at an earlier version for {} ({settling} modified within --settle {} at every backup since {}), longer than --settle-max {}: check the job that writes it",
                human(h.oldest),
                human(rules.settle.as_secs()),
                since.format("%Y-%m-%d %H:%M:%S UTC"),
                human(rules.max.as_secs())
            ));
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.deferred.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_markers_are_shards_indexes_and_training_state() {
        for name in [
            "model-00001-of-00004.safetensors",
            "pytorch_model-00002-of-00002.bin",
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
            "trainer_state.json",
            "optimizer.pt",
            "optimizer.safetensors",
            "scheduler.pt",
            "rng_state.pth",
            "rng_state_3.pth",
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "mp_rank_00_model_states.pt",
        ] {
            assert!(is_checkpoint_marker(name), "{name}");
        }
        for name in [
            "model.safetensors",
            "step-1000.safetensors",
            "last.ckpt",
            "config.json",
            "model-of-x.bin",
            "a-1-of-.bin",
            "log.txt",
        ] {
            assert!(!is_checkpoint_marker(name), "{name}");
        }
    }

    #[test]
    fn durations_are_stated_in_words() {
        assert_eq!(human(0), "0 seconds");
        assert_eq!(human(59), "59 seconds");
        assert_eq!(human(2400), "40 minutes");
        assert_eq!(human(3600), "1 hour");
        assert_eq!(human(3600 + 5 * 60 + 1), "1 hour 5 minutes 1 second");
        assert_eq!(human(3 * 86_400 + 4 * 3600), "3 days 4 hours");
    }
}
