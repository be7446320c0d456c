//! Generated data (random bytes, small bf16 models) and an exact tree comparison (content,
//! permission bits, mtimes in ns, symlink targets, empty directories, non-UTF-8 names) that
//! never follows symlinks.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tvault_workload::{fill_weights, write_safetensors, Dtype, ModelDims, Rng};

use super::{overwrite_at, read_at, TensorLoc};

/// `len` random (incompressible) bytes, the same for the same `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0; len];
    Rng::new(seed).fill_bytes(&mut buf);
    buf
}

/// A bf16 Llama-like checkpoint of shape `dims` in `dir`: `model.safetensors` (each tensor
/// written from its own seed, derived from `seed`) and `config.json`. Returns the model file.
pub fn bf16_model(dir: &Path, dims: ModelDims, seed: u64) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let model = dir.join("model.safetensors");
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&model, &dims.specs(Dtype::BF16), &metadata, |i, _, buf| {
        fill_weights(&mut Rng::new(seed ^ (i as u64) << 8), Dtype::BF16, buf)
    })
    .unwrap();
    fs::write(dir.join("config.json"), dims.config_json(Dtype::BF16)).unwrap();
    model
}

/// Rewrites one bf16 tensor in place with new realistic weights from `seed` (same length);
/// they must differ from the old ones.
pub fn retrain_tensor(model: &Path, t: &TensorLoc, seed: u64) {
    assert_eq!(t.dtype, "BF16");
    let mut buf = vec![0u8; t.len as usize];
    fill_weights(&mut Rng::new(seed), Dtype::BF16, &mut buf);
    assert_ne!(
        buf,
        read_at(model, t.start, t.len as usize),
        "the tensor must change"
    );
    overwrite_at(model, t.start, &buf);
}

/// The names in a directory, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Tree comparison

/// One entry of a tree, as the comparison sees it. Symlinks are compared by target only
/// (their mode is always 0777 and restore cannot set their times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        mode: u32,
        mtime_ns: i128,
        size: u64,
        hash: String,
    },
    Dir {
        mode: u32,
        mtime_ns: i128,
    },
    Symlink {
        target: PathBuf,
    },
    Other {
        kind: String,
    },
}

/// Relative path → entry, for everything below a directory.
pub type Manifest = BTreeMap<PathBuf, Entry>;

fn entry_of(path: &Path) -> Entry {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ft = m.file_type();
    let mode = m.mode() & 0o7777;
    let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    if ft.is_file() {
        let mut hasher = blake3::Hasher::new();
        let mut f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::io::copy(&mut f, &mut hasher).unwrap();
        Entry::File {
            mode,
            mtime_ns,
            size: m.len(),
            hash: hasher.finalize().to_hex().to_string(),
        }
    } else if ft.is_dir() {
        Entry::Dir { mode, mtime_ns }
    } else if ft.is_symlink() {
        Entry::Symlink {
            target: fs::read_link(path).unwrap(),
        }
    } else {
        Entry::Other {
            kind: format!("{ft:?}"),
        }
    }
}

fn walk_into(abs: &Path, key: PathBuf, out: &mut Manifest) {
    let entry = entry_of(abs);
    let is_dir = matches!(entry, Entry::Dir { .. });
    out.insert(key.clone(), entry);
    if is_dir {
        for child in fs::read_dir(abs).unwrap() {
            let name = child.unwrap().file_name();
            walk_into(&abs.join(&name), key.join(&name), out);
        }
    }
}

/// Everything below `dir` (not `dir` itself), keyed by relative path.
pub fn manifest(dir: &Path) -> Manifest {
    let mut out = Manifest::new();
    for child in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let name = child.unwrap().file_name();
        walk_into(&dir.join(&name), PathBuf::from(&name), &mut out);
    }
    out
}

/// What restoring a backup of `sources` must produce: each source under its base name.
pub fn sources_manifest(sources: &[&Path]) -> Manifest {
    let mut out = Manifest::new();
    for s in sources {
        walk_into(s, PathBuf::from(s.file_name().unwrap()), &mut out);
    }
    out
}

/// Panics with a readable list of every difference.
#[track_caller]
pub fn assert_manifest_eq(expected: &Manifest, actual: &Manifest, what: &str) {
    let mut diffs = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => diffs.push(format!("missing  {path:?}: {e:?}")),
            Some(a) if a != e => {
                diffs.push(format!("differs  {path:?}:\n   want {e:?}\n   got  {a:?}"))
            }
            Some(_) => {}
        }
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            diffs.push(format!("extra    {path:?}: {a:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: trees differ ({} of {} entries expected):\n{}",
        diffs.len(),
        expected.len(),
        diffs.join("\n")
    );
}

/// Compares two directories' contents (not the directories themselves).
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    assert_manifest_eq(
        &manifest(expected),
        &manifest(actual),
        &format!("{} vs {}", expected.display(), actual.display()),
    );
}

/// `m` with every mtime truncated to whole seconds (what a tar archive keeps).
pub fn mtimes_in_seconds(m: &Manifest) -> Manifest {
    let secs = |ns: i128| ns.div_euclid(1_000_000_000) * 1_000_000_000;
    m.iter()
        .map(|(p, e)| {
            let e = match e.clone() {
                Entry::File {
                    mode,
                    mtime_ns,
                    size,
                    hash,
                } => Entry::File {
                    mode,
                    mtime_ns: secs(mtime_ns),
                    size,
                    hash,
                },
                Entry::Dir { mode, mtime_ns } => Entry::Dir {
                    mode,
                    mtime_ns: secs(mtime_ns),
                },
                other => other,
            };
            (p.clone(), e)
        })
        .collect()
}
