//! Walking backup sources: what is there, with its metadata, in a stable order, and what is
//! left out (excluded by pattern, the repository itself, special files). Files still settling
//! (`--settle`) are marked, not left out: `settle.rs` decides what the snapshot holds for them.

use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use globset::{GlobSet, GlobSetBuilder};

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::tree::{Node, NodeKind, NodePath};

/// One source path and the name it gets at the top of the tree.
pub(crate) struct Source {
    pub abs: PathBuf,
    pub name: Vec<u8>,
}

pub(crate) fn resolve_sources(paths: &[PathBuf]) -> Result<Vec<Source>> {
    if paths.is_empty() {
        return Err(Error::Invalid("backup needs at least one path".into()));
    }
    let mut sources: Vec<Source> = Vec::new();
    for p in paths {
        let abs = fs::canonicalize(p)
            .map_err(|e| Error::Invalid(format!("cannot back up {}: {e}", p.display())))?;
        let name = abs
            .file_name()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "cannot back up {}: give a directory below /",
                    p.display()
                ))
            })?
            .as_bytes()
            .to_vec();
        if let Some(other) = sources.iter().find(|s| s.name == name) {
            return Err(Error::Invalid(format!(
                "{} and {} would both be stored as {:?}; back them up in separate snapshots",
                other.abs.display(),
                abs.display(),
                String::from_utf8_lossy(&name)
            )));
        }
        sources.push(Source { abs, name });
    }
    Ok(sources)
}

pub(crate) fn node_from(path: NodePath, kind: NodeKind, m: &Metadata) -> Node {
    Node {
        path,
        kind,
        mode: m.mode() & 0o7777,
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        inode: m.ino(),
        dev: m.dev(),
        uid: m.uid(),
        gid: m.gid(),
        size: 0,
        chunks: Vec::new(),
        target: None,
    }
}

/// Exclusion patterns. A pattern without `/` matches a file or directory name at any depth
/// (`*.tmp`); one with `/` matches the whole path as stored in the snapshot (`ckpt/tmp/**`),
/// or the absolute path when it starts with `/`. An excluded directory is not descended into.
#[derive(Default)]
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    absolute: GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut sets = [
            GlobSetBuilder::new(),
            GlobSetBuilder::new(),
            GlobSetBuilder::new(),
        ];
        for p in patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::Invalid(format!("invalid --exclude pattern {p:?}: {e}")))?;
            let set = if p.starts_with('/') {
                2
            } else if p.contains('/') {
                1
            } else {
                0
            };
            sets[set].add(glob);
        }
        let [names, paths, absolute] = sets.map(|b| b.build().unwrap_or_else(|_| GlobSet::empty()));
        Ok(Excludes {
            names,
            paths,
            absolute,
        })
    }

    /// Reads patterns from a file: one per line; blank lines and `#` comments are ignored.
    pub fn read_file(path: &Path) -> Result<Vec<String>> {
        let text = fs::read_to_string(path).map_err(|e| {
            Error::Invalid(format!("cannot read exclude file {}: {e}", path.display()))
        })?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    }

    fn matches(&self, name: &[u8], path: &NodePath, abs: &Path) -> bool {
        let name = std::ffi::OsStr::from_bytes(name);
        self.names.is_match(name)
            || self.paths.is_match(path.as_os_str())
            || self.absolute.is_match(abs)
    }
}

/// A walked entry waiting to be stored.
pub(crate) struct Walked {
    pub node: Node,
    pub abs: PathBuf,
    /// A file modified less than `--settle` ago (or with an mtime in the future).
    pub settling: bool,
}

/// What the walk found and what it left out.
#[derive(Default)]
pub(crate) struct WalkResult {
    pub entries: Vec<Walked>,
    /// Entries that could not be read: they make the snapshot incomplete.
    pub problems: Vec<String>,
    /// Entries skipped on purpose or by nature (special files, the repository itself).
    pub warnings: Vec<String>,
    pub excluded: u64,
}

pub(crate) struct WalkOptions<'a> {
    pub skip: Option<&'a Path>,
    pub excludes: &'a Excludes,
    pub settle: Option<Duration>,
    pub now: SystemTime,
}

/// Walks every source in a stable order and records what it finds, without reading content.
pub(crate) fn walk(
    sources: &[Source],
    opts: &WalkOptions,
    progress: &dyn Progress,
) -> Result<WalkResult> {
    let mut out = WalkResult::default();
    let note = |list: &mut Vec<String>, msg: String| {
        progress.warn(&msg);
        list.push(msg);
    };
    for src in sources {
        let walker = walkdir::WalkDir::new(&src.abs)
            .follow_links(false)
            .sort_by(|a, b| a.file_name().cmp(b.file_name()));
        let mut entries = walker.into_iter();
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let at = e
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    let why = e
                        .io_error()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| e.to_string());
                    note(
                        &mut out.problems,
                        format!("cannot read {at}: {why}; not in this snapshot"),
                    );
                    continue;
                }
            };
            let abs = entry.path().to_path_buf();
            let rel = abs
                .strip_prefix(&src.abs)
                .expect("walk stays below its root");
            let mut path = src.name.clone();
            if !rel.as_os_str().is_empty() {
                path.push(b'/');
                path.extend_from_slice(rel.as_os_str().as_bytes());
            }
            let path = NodePath(path);
            let is_dir = entry.file_type().is_dir();
            if Some(abs.as_path()) == opts.skip {
                note(
                    &mut out.warnings,
                    format!("skipping {}: it is the repository itself", abs.display()),
                );
                if is_dir {
                    entries.skip_current_dir();
                }
                continue;
            }
            if entry.depth() > 0
                && opts
                    .excludes
                    .matches(entry.file_name().as_bytes(), &path, &abs)
            {
                out.excluded += 1;
                if is_dir {
                    entries.skip_current_dir();
                }
                continue;
            }
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    note(
                        &mut out.problems,
                        format!("cannot read {}: {e}; not in this snapshot", abs.display()),
                    );
                    continue;
                }
            };
            let ft = meta.file_type();
            let mut settling = false;
            let node = if ft.is_dir() {
                node_from(path, NodeKind::Dir, &meta)
            } else if ft.is_symlink() {
                let target = fs::read_link(&abs).at(&abs)?;
                let mut n = node_from(path, NodeKind::Symlink, &meta);
                n.target = Some(NodePath(target.as_os_str().as_bytes().to_vec()));
                n
            } else if ft.is_file() {
                if let Some(settle) = opts.settle {
                    let age = meta
                        .modified()
                        .ok()
                        .and_then(|m| opts.now.duration_since(m).ok());
                    settling = age.is_none_or(|a| a < settle);
                }
                let mut n = node_from(path, NodeKind::File, &meta);
                n.size = meta.len();
                n
            } else {
                let what = if ft.is_socket() {
                    "socket"
                } else if ft.is_fifo() {
                    "FIFO"
                } else {
                    "device file"
                };
                note(
                    &mut out.warnings,
                    format!(
                        "skipping {} ({what}: only files, directories and symlinks are backed up)",
                        abs.display()
                    ),
                );
                continue;
            };
            out.entries.push(Walked {
                node,
                abs,
                settling,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(patterns: &[&str], name: &str, path: &str, abs: &str) -> bool {
        let ex =
            Excludes::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        ex.matches(
            name.as_bytes(),
            &NodePath(path.as_bytes().to_vec()),
            Path::new(abs),
        )
    }

    #[test]
    fn exclude_patterns_match_names_paths_and_absolute_paths() {
        assert!(matches(
            &["*.tmp"],
            "step-9.tmp",
            "ckpt/run/step-9.tmp",
            "/d/ckpt/run/step-9.tmp"
        ));
        assert!(!matches(
            &["*.tmp"],
            "step-9.tmpx",
            "ckpt/step-9.tmpx",
            "/d/ckpt/step-9.tmpx"
        ));
        // `*` does not cross `/` in path patterns; `**` does.
        assert!(matches(
            &["ckpt/*/x.bin"],
            "x.bin",
            "ckpt/a/x.bin",
            "/d/ckpt/a/x.bin"
        ));
        assert!(!matches(
            &["ckpt/*/x.bin"],
            "x.bin",
            "ckpt/a/b/x.bin",
            "/d/ckpt/a/b/x.bin"
        ));
        assert!(matches(
            &["ckpt/**/x.bin"],
            "x.bin",
            "ckpt/a/b/x.bin",
            "/d/ckpt/a/b/x.bin"
        ));
        assert!(matches(
            &["/d/ckpt/cache"],
            "cache",
            "ckpt/cache",
            "/d/ckpt/cache"
        ));
        assert!(!matches(
            &["/e/ckpt/cache"],
            "cache",
            "ckpt/cache",
            "/d/ckpt/cache"
        ));
        assert!(!matches(&[], "a", "a", "/a"));
    }

    #[test]
    fn bad_patterns_and_missing_exclude_files_are_clear_errors() {
        let err = Excludes::new(&["ckpt/[".to_string()]).err().unwrap();
        assert!(
            err.to_string().contains("invalid --exclude pattern"),
            "{err}"
        );
        let err = Excludes::read_file(Path::new("/nonexistent/excludes")).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read exclude file /nonexistent/excludes"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ex");
        fs::write(&f, "# partial checkpoints\n*.tmp\n\n  ckpt/cache/**  \n").unwrap();
        assert_eq!(
            Excludes::read_file(&f).unwrap(),
            vec!["*.tmp", "ckpt/cache/**"]
        );
    }
}
