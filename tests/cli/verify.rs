//! `verify`: every kind of damage, made by code ([`broken_repo`]) on a fresh two-snapshot
//! repository, is reported with its kind, the repository file it is in and exactly the
//! (snapshot, path) pairs it costs, with exit 4; a clean repository exits 0; the slices of
//! `--read-data-subset` read every pack exactly once; a repository that cannot be checked exits 1.
//! The tests of `prune.rs` use the helpers here ([`Layout`], [`verify`], [`assert_verifies_clean`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::Path;

use serde_json::{json, Value};
use tvault_core::id::Id;
use tvault_core::pack::{BlobKind, PackEntry};
use tvault_core::repo::pack_key;
use tvault_core::tree::NodeKind;
use tvault_workload::Scenario;

use crate::testenv::{
    args, flip_byte, hostname, num, sources_manifest, text, Manifest, Run, TestEnv,
};

/// What `verify` names as affected when a snapshot's tree cannot be read.
const WHOLE: &str = "(the whole snapshot: its tree is lost)";
/// Two paths with the same content that no snapshot of the fixture changes.
const BASE: [&str; 2] = ["ckpt/base-copy.safetensors", "ckpt/base/model.safetensors"];

// ---------------------------------------------------------------------------------------------
// Helpers

/// `tvault --json verify EXTRA…`: the run and its report.
pub(crate) fn verify(env: &TestEnv, extra: &[&str]) -> (Run, Value) {
    let mut a: Vec<OsString> = args!["--json", "verify"];
    a.extend(extra.iter().map(OsString::from));
    let run = env.tvault(a);
    let report = run.json();
    (run, report)
}

/// `verify --read-data` finds nothing: exit 0, `clean`, no problems, every pack read, nothing
/// reclaimable unless `reclaimable_ok`. Returns the report.
#[track_caller]
pub(crate) fn assert_verifies_clean(env: &TestEnv, reclaimable_ok: bool) -> Value {
    let (run, r) = verify(env, &["--read-data"]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(r["clean"], true, "{run}");
    assert_eq!(r["problems"], json!([]), "{run}");
    assert_eq!(num(&r, "packs_read"), num(&r, "packs"), "{run}");
    if !reclaimable_ok {
        assert_eq!(num(&r, "reclaimable_packs"), 0, "{run}");
    }
    r
}

/// `v` is a JSON object with exactly these fields (the `--json` reports are a stable interface).
#[track_caller]
pub(crate) fn assert_fields(v: &Value, fields: &[&str]) {
    let have: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v:#}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(have, fields.iter().copied().collect(), "{v:#}");
}

/// A problem of `verify --json`, as the tests compare it (the message aside).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    kind: String,
    file: String,
    affected: BTreeSet<(String, String)>,
}

fn found(kind: &str, file: &str, affected: BTreeSet<(String, String)>) -> Found {
    Found {
        kind: kind.into(),
        file: file.into(),
        affected,
    }
}

/// The report's problems, sorted; checks that no problem lists an affected pair twice.
#[track_caller]
fn problems(report: &Value) -> Vec<Found> {
    let mut out: Vec<Found> = report["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems array in {report:#}"))
        .iter()
        .map(|p| {
            let list = p["affected"].as_array().unwrap();
            let affected: BTreeSet<(String, String)> = list
                .iter()
                .map(|a| (text(a, "snapshot"), text(a, "path")))
                .collect();
            assert_eq!(affected.len(), list.len(), "duplicates in {p:#}");
            found(&text(p, "kind"), &text(p, "file"), affected)
        })
        .collect();
    out.sort();
    out
}

/// The message of the only problem of `kind`.
#[track_caller]
fn message(report: &Value, kind: &str) -> String {
    let all: Vec<&Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == kind)
        .collect();
    assert_eq!(all.len(), 1, "{report:#}");
    text(all[0], "message")
}

/// One snapshot's files as its tree lists them.
pub(crate) struct SnapFiles {
    pub tree: Id,
    /// Path in the snapshot → its chunks.
    pub files: BTreeMap<String, Vec<Id>>,
}

/// What the library reads from a (healthy) repository: the packs and blobs of every index file
/// and every snapshot's files. Aims the damage, and computes whom it must affect.
pub(crate) struct Layout {
    /// Index file key (`index/…`) → the packs it lists.
    pub index_files: BTreeMap<String, Vec<Id>>,
    pub packs: BTreeMap<Id, Vec<PackEntry>>,
    /// Full snapshot ID → its files.
    pub snapshots: BTreeMap<String, SnapFiles>,
}

impl Layout {
    #[track_caller]
    pub(crate) fn read(env: &TestEnv) -> Layout {
        let repo = env.open_repo();
        let mut index_files = BTreeMap::new();
        let mut packs = BTreeMap::new();
        for file in repo.read_index_files().unwrap() {
            let key = file.object.to_string();
            let list = file.packs.unwrap_or_else(|e| panic!("{key}: {e}"));
            index_files.insert(key, list.iter().map(|(p, _)| *p).collect());
            packs.extend(list);
        }
        let mut snapshots = BTreeMap::new();
        for (id, snap) in repo.snapshots().unwrap() {
            let files = repo
                .load_tree(&snap.tree)
                .unwrap()
                .nodes
                .iter()
                .filter(|n| n.kind == NodeKind::File)
                .map(|n| (n.path.display(), n.chunks.clone()))
                .collect();
            snapshots.insert(
                id.to_hex(),
                SnapFiles {
                    tree: snap.tree,
                    files,
                },
            );
        }
        Layout {
            index_files,
            packs,
            snapshots,
        }
    }

    /// The pack holding `blob`, and its entry there.
    #[track_caller]
    pub(crate) fn find(&self, blob: &Id) -> (Id, PackEntry) {
        self.packs
            .iter()
            .find_map(|(p, es)| es.iter().find(|e| e.id == *blob).map(|e| (*p, *e)))
            .unwrap_or_else(|| panic!("blob {blob:?} is in no index file"))
    }

    /// The index file that lists `pack`.
    #[track_caller]
    pub(crate) fn index_of(&self, pack: &Id) -> String {
        self.index_files
            .iter()
            .find(|(_, packs)| packs.contains(pack))
            .map(|(k, _)| k.clone())
            .expect("pack is indexed")
    }

    /// Every (short snapshot ID, path) of the snapshots in `among` (all when empty) whose file
    /// uses a blob of `lost`.
    pub(crate) fn affected(
        &self,
        among: &[&str],
        lost: &BTreeSet<Id>,
    ) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (id, snap) in &self.snapshots {
            if !among.is_empty() && !among.contains(&id.as_str()) {
                continue;
            }
            for (path, chunks) in &snap.files {
                if chunks.iter().any(|c| lost.contains(c)) {
                    out.insert((id[..8].to_string(), path.clone()));
                }
            }
        }
        out
    }

    /// Number of blobs in all packs.
    pub(crate) fn blobs(&self) -> u64 {
        self.packs.values().map(|es| es.len() as u64).sum()
    }
}

/// Whether a pack holds a tree blob.
fn has_tree(entries: &[PackEntry]) -> bool {
    entries.iter().any(|e| e.kind == BlobKind::Tree)
}

/// The size of a repository file.
fn size_of(env: &TestEnv, key: &str) -> u64 {
    fs::metadata(env.repo.join(key)).unwrap().len()
}

// ---------------------------------------------------------------------------------------------
// Fixtures

pub(crate) struct Fixture {
    pub env: TestEnv,
    /// (Full snapshot ID, what it restores to), oldest first.
    pub snaps: Vec<(String, Manifest)>,
}

/// Two snapshots of a tree with a `frozen` checkpoint (versions 0 and 1), a base checkpoint that
/// does not change and an identical copy of it under another name ([`BASE`]), and a small notes
/// file, in a repository with 1 MiB packs: each backup stores a few packs of data only (the
/// first ones hold the base's chunks, which both snapshots and both names use), then a last
/// one that also holds its tree.
pub(crate) fn two_snapshots() -> Fixture {
    let env = TestEnv::with_plain_repo();
    env.set_pack_size(1 << 20);
    let base = env.checkpoint("src/ckpt/base", Scenario::Single, 2 << 20, 72, 0);
    fs::copy(
        base.join("model.safetensors"),
        env.src.join("ckpt/base-copy.safetensors"),
    )
    .unwrap();
    let mut snaps = Vec::new();
    for step in 0..2 {
        let ckpt = env.checkpoint("src/ckpt", Scenario::Frozen, 4 << 20, 71, step);
        env.write("src/ckpt/notes.txt", format!("step {step}\n").as_bytes());
        let id = text(&env.backup(&[&ckpt], &[]), "id");
        snaps.push((id, sources_manifest(&[&ckpt])));
    }
    Fixture { env, snaps }
}

/// A data chunk of the base checkpoint (which both snapshots use under both its names), in a
/// pack that holds no tree: (chunk, pack, entry).
fn shared_chunk(layout: &Layout, fx: &Fixture) -> (Id, Id, PackEntry) {
    let files = |s: &str| &layout.snapshots[s].files;
    let (first, second) = (files(&fx.snaps[0].0), files(&fx.snaps[1].0));
    first[BASE[0]]
        .iter()
        .filter(|c| {
            [first, second]
                .iter()
                .all(|f| BASE.iter().all(|b| f[*b].contains(c)))
        })
        .map(|c| {
            let (pack, entry) = layout.find(c);
            (*c, pack, entry)
        })
        .find(|(_, pack, e)| e.kind == BlobKind::Data && !has_tree(&layout.packs[pack]))
        .expect("the snapshots share a chunk in a data-only pack")
}

/// How [`broken_repo`] damages the fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Damage {
    /// One bit flipped in the middle of a data chunk both snapshots use.
    FlipChunk,
    /// That chunk's pack cut in the middle of that chunk.
    TruncatePack,
    /// That chunk's pack deleted.
    DeletePack,
    /// The index file of the first backup deleted (its packs stay).
    DeleteIndex,
    /// One bit flipped in the index file of the first backup.
    FlipIndex,
    /// One bit flipped in the second snapshot's manifest.
    FlipSnapshot,
    /// One bit flipped in the middle of the second snapshot's tree blob.
    FlipTree,
}

pub(crate) struct Broken {
    pub fx: Fixture,
    /// The layout before the damage.
    pub layout: Layout,
    /// The repository file damaged (`data/…`, `index/…`, `snapshots/…`).
    pub key: String,
    /// The blobs the damage loses.
    pub lost: BTreeSet<Id>,
}

/// A fresh [`two_snapshots`] repository with one `damage`.
pub(crate) fn broken_repo(damage: Damage) -> Broken {
    let fx = two_snapshots();
    let layout = Layout::read(&fx.env);
    let (chunk, pack, entry) = shared_chunk(&layout, &fx);
    let path = |key: &str| fx.env.repo.join(key);
    let middle = |e: &PackEntry| u64::from(e.offset) + u64::from(e.stored_len) / 2;
    let first_index = {
        let tree = layout.snapshots[&fx.snaps[0].0].tree;
        layout.index_of(&layout.find(&tree).0)
    };
    let blobs_of_index = |key: &str| -> BTreeSet<Id> {
        layout.index_files[key]
            .iter()
            .flat_map(|p| layout.packs[p].iter().map(|e| e.id))
            .collect()
    };
    let (key, lost) = match damage {
        Damage::FlipChunk => {
            flip_byte(&path(&pack_key(&pack)), middle(&entry));
            (pack_key(&pack), BTreeSet::from([chunk]))
        }
        Damage::TruncatePack => {
            let cut = middle(&entry);
            let f = fs::File::options()
                .write(true)
                .open(path(&pack_key(&pack)))
                .unwrap();
            f.set_len(cut).unwrap();
            let lost = layout.packs[&pack]
                .iter()
                .filter(|e| u64::from(e.offset) + u64::from(e.stored_len) > cut)
                .map(|e| e.id)
                .collect();
            (pack_key(&pack), lost)
        }
        Damage::DeletePack => {
            fs::remove_file(path(&pack_key(&pack))).unwrap();
            let lost = layout.packs[&pack].iter().map(|e| e.id).collect();
            (pack_key(&pack), lost)
        }
        Damage::DeleteIndex => {
            fs::remove_file(path(&first_index)).unwrap();
            (first_index.clone(), blobs_of_index(&first_index))
        }
        Damage::FlipIndex => {
            flip_byte(&path(&first_index), size_of(&fx.env, &first_index) / 2);
            (first_index.clone(), blobs_of_index(&first_index))
        }
        Damage::FlipSnapshot => {
            let key = format!("snapshots/{}", fx.snaps[1].0);
            flip_byte(&path(&key), size_of(&fx.env, &key) / 2);
            (key, BTreeSet::new())
        }
        Damage::FlipTree => {
            let tree = layout.snapshots[&fx.snaps[1].0].tree;
            let (pack, entry) = layout.find(&tree);
            assert_eq!(entry.kind, BlobKind::Tree);
            flip_byte(&path(&pack_key(&pack)), middle(&entry));
            (pack_key(&pack), BTreeSet::from([tree]))
        }
    };
    Broken {
        fx,
        layout,
        key,
        lost,
    }
}

impl Broken {
    fn short(&self, i: usize) -> String {
        self.fx.snaps[i].0[..8].to_string()
    }

    /// `verify EXTRA`, which must exit 4 with exactly `want` as its problems; returns the report.
    #[track_caller]
    fn expect_problems(&self, extra: &[&str], want: Vec<Found>) -> Value {
        let (run, report) = verify(&self.fx.env, extra);
        assert_eq!(run.code(), Some(4), "{run}");
        assert_eq!(report["clean"], false, "{run}");
        let mut want = want;
        want.sort();
        assert_eq!(problems(&report), want, "{run}");
        report
    }

    /// Both names of the base checkpoint in the snapshots `which`.
    fn base_pairs(&self, which: &[usize]) -> BTreeSet<(String, String)> {
        which
            .iter()
            .flat_map(|&i| BASE.map(|p| (self.short(i), p.to_string())))
            .collect()
    }

    /// `(snapshot, WHOLE)` for snapshot `i`.
    fn whole(&self, i: usize) -> BTreeSet<(String, String)> {
        BTreeSet::from([(self.short(i), WHOLE.to_string())])
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn clean_repository_verifies_clean_with_and_without_reading_data() {
    let fx = two_snapshots();
    let env = &fx.env;
    let layout = Layout::read(env);
    assert!(layout.packs.len() >= 6, "{} packs", layout.packs.len());

    let (run, r) = verify(env, &[]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_fields(
        &r,
        &[
            "clean",
            "read_data",
            "snapshots",
            "index_files",
            "packs",
            "packs_read",
            "blobs_read",
            "bytes_read",
            "problems",
            "reclaimable_packs",
            "reclaimable_bytes",
            "duration_ms",
        ],
    );
    assert_eq!(r["clean"], true);
    assert_eq!(r["read_data"], "none");
    assert_eq!(r["problems"], json!([]));
    assert_eq!(num(&r, "snapshots"), 2);
    assert_eq!(num(&r, "index_files"), 2);
    assert_eq!(num(&r, "packs"), layout.packs.len() as u64);
    for field in [
        "packs_read",
        "blobs_read",
        "bytes_read",
        "reclaimable_packs",
    ] {
        assert_eq!(num(&r, field), 0, "{field}: {run}");
    }

    let r = assert_verifies_clean(env, false);
    assert_eq!(r["read_data"], "all");
    assert_eq!(num(&r, "blobs_read"), layout.blobs());
    let pack_bytes: u64 = layout
        .packs
        .keys()
        .map(|p| size_of(env, &pack_key(p)))
        .sum();
    assert_eq!(num(&r, "bytes_read"), pack_bytes);

    // The human form: one line on stdout, nothing on stderr.
    let run = env.tvault(["verify", "--read-data"]).expect_code(0);
    assert!(run.stdout.contains("checked 2 snapshots"), "{run}");
    assert!(run.stdout.contains("no problems"), "{run}");
    assert_eq!(run.stderr, "", "{run}");
}

#[test]
fn flipped_bit_in_a_shared_chunk_is_found_by_reading_data_and_names_both_snapshots() {
    let b = broken_repo(Damage::FlipChunk);
    let env = &b.fx.env;
    // The pack keeps its size, so the structure check cannot see it.
    let (run, r) = verify(env, &[]);
    assert_eq!(run.code(), Some(0), "{run}");
    assert_eq!(r["clean"], true, "{run}");

    let affected = b.layout.affected(&[], &b.lost);
    assert_eq!(affected, b.base_pairs(&[0, 1]));
    let report = b.expect_problems(
        &["--read-data"],
        vec![found("damaged_chunk", &b.key, affected.clone())],
    );
    let chunk = b.lost.first().unwrap().to_hex();
    assert!(
        message(&report, "damaged_chunk").contains(&chunk),
        "{report:#}"
    );
    let problem = &report["problems"][0];
    assert_fields(problem, &["kind", "file", "message", "affected"]);
    assert_fields(&problem["affected"][0], &["id", "snapshot", "path"]);

    // The human report goes to stderr even with --quiet, and names pack, snapshots and file.
    let run = env
        .tvault(["--quiet", "verify", "--read-data"])
        .expect_code(4);
    assert_eq!(run.stdout, "", "{run}");
    run.stderr_has(&["DAMAGE", "1 problem", &format!("[damaged_chunk] {}", b.key)]);
    for (snap, path) in &affected {
        run.stderr_has(&[&format!("snapshot {snap}: {path}")]);
    }
}

#[test]
fn truncated_pack_is_found_by_the_structure_check_with_its_files() {
    let b = broken_repo(Damage::TruncatePack);
    let affected = b.layout.affected(&[], &b.lost);
    assert!(affected.is_superset(&b.base_pairs(&[0, 1])), "{affected:?}");
    let report = b.expect_problems(&[], vec![found("damaged_pack", &b.key, affected)]);
    assert!(
        message(&report, "damaged_pack").contains("truncated"),
        "{report:#}"
    );
    // Reading the data finds it too.
    let (run, _) = verify(&b.fx.env, &["--read-data"]);
    assert_eq!(run.code(), Some(4), "{run}");
}

#[test]
fn deleted_pack_is_missing_with_every_file_that_needs_it() {
    let b = broken_repo(Damage::DeletePack);
    let affected = b.layout.affected(&[], &b.lost);
    assert!(affected.is_superset(&b.base_pairs(&[0, 1])), "{affected:?}");
    for extra in [&[][..], &["--read-data"]] {
        let report =
            b.expect_problems(extra, vec![found("missing_pack", &b.key, affected.clone())]);
        assert!(
            message(&report, "missing_pack")
                .contains(&format!("{} chunks in it are lost", b.lost.len())),
            "{report:#}"
        );
    }
}

#[test]
fn deleted_index_file_leaves_chunks_missing_for_the_files_that_need_them() {
    let b = broken_repo(Damage::DeleteIndex);
    // The first snapshot's tree was in that index's packs; the second needs its shared chunks.
    let missing = b.layout.affected(&[&b.fx.snaps[1].0], &b.lost);
    assert!(missing.is_superset(&b.base_pairs(&[1])), "{missing:?}");
    let report = b.expect_problems(
        &["--read-data"],
        vec![
            found(
                "corrupt_tree",
                &format!("snapshots/{}", b.fx.snaps[0].0),
                b.whole(0),
            ),
            found("missing_chunks", "index", missing.clone()),
        ],
    );
    assert_eq!(num(&report, "index_files"), 1);
    assert!(
        message(&report, "missing_chunks").contains(&format!("{} file(s)", missing.len())),
        "{report:#}"
    );
    // The unindexed packs are on disk and may hold the missing chunks: named, not reclaimable.
    let packs = b.layout.index_files[&b.key].len();
    assert_eq!(num(&report, "reclaimable_packs"), 0, "{report:#}");
    assert!(
        message(&report, "missing_chunks").contains(&format!(
            "{packs} pack(s) on disk are in no index file and may hold them"
        )),
        "{report:#}"
    );
}

#[test]
fn corrupt_index_file_is_named_with_what_it_costs() {
    let b = broken_repo(Damage::FlipIndex);
    let missing = b.layout.affected(&[&b.fx.snaps[1].0], &b.lost);
    let want = vec![
        found("corrupt_index", &b.key, BTreeSet::new()),
        found(
            "corrupt_tree",
            &format!("snapshots/{}", b.fx.snaps[0].0),
            b.whole(0),
        ),
        found("missing_chunks", "index", missing),
    ];
    let report = b.expect_problems(&[], want.clone());
    assert_eq!(num(&report, "index_files"), 2);
    assert!(
        message(&report, "corrupt_index").contains("does not match its name"),
        "{report:#}"
    );
    b.expect_problems(&["--read-data"], want);
    // Opening the repository warns about it, even with --quiet.
    let run = b.fx.env.tvault(["--quiet", "verify"]).expect_code(4);
    run.stderr_has(&["warning", &b.key, "DAMAGE"]);
}

#[test]
fn corrupt_snapshot_manifest_is_named() {
    let b = broken_repo(Damage::FlipSnapshot);
    let report = b.expect_problems(
        &["--read-data"],
        vec![found("corrupt_snapshot", &b.key, BTreeSet::new())],
    );
    assert!(
        message(&report, "corrupt_snapshot").contains("does not match its name"),
        "{report:#}"
    );
    assert_eq!(num(&report, "snapshots"), 2);
    let run = b.fx.env.tvault(["verify"]).expect_code(4);
    run.stderr_has(&[&format!("[corrupt_snapshot] {}", b.key)]);
}

#[test]
fn corrupt_tree_costs_the_whole_snapshot() {
    let b = broken_repo(Damage::FlipTree);
    let snap_key = format!("snapshots/{}", b.fx.snaps[1].0);
    // Structure only: the tree does not decode.
    let report = b.expect_problems(&[], vec![found("corrupt_tree", &snap_key, b.whole(1))]);
    let tree = b.lost.first().unwrap().to_hex();
    assert!(
        message(&report, "corrupt_tree").contains(&tree[..8]),
        "{report:#}"
    );
    // Reading the data also names the damaged blob in its pack.
    b.expect_problems(
        &["--read-data"],
        vec![
            found("damaged_chunk", &b.key, b.whole(1)),
            found("corrupt_tree", &snap_key, b.whole(1)),
        ],
    );
}

#[test]
fn read_data_subsets_cover_every_pack_once_and_bad_specs_are_usage_errors() {
    let fx = two_snapshots();
    let env = &fx.env;
    let layout = Layout::read(env);
    let packs = layout.packs.len() as u64;

    let mut sums = [0u64; 3];
    for n in 1..=3 {
        let spec = format!("{n}/3");
        let (run, r) = verify(env, &["--read-data-subset", &spec]);
        assert_eq!(run.code(), Some(0), "{run}");
        assert_eq!(r["read_data"], spec.as_str());
        assert_eq!(num(&r, "packs"), packs);
        for (sum, field) in sums
            .iter_mut()
            .zip(["packs_read", "blobs_read", "bytes_read"])
        {
            *sum += num(&r, field);
        }
    }
    let all = assert_verifies_clean(env, false);
    assert_eq!(
        sums[0], packs,
        "the three slices read {} of {packs} packs",
        sums[0]
    );
    assert_eq!(sums[1], num(&all, "blobs_read"));
    assert_eq!(sums[2], num(&all, "bytes_read"));

    let (run, r) = verify(env, &["--read-data-subset", "50%"]);
    assert_eq!(run.code(), Some(0), "{run}");
    let read = num(&r, "packs_read");
    assert!(
        read == packs / 2 || read == packs.div_ceil(2),
        "50% of {packs} packs read {read}"
    );

    for bad in ["0/3", "4/3", "x", "3", "0%", "150%"] {
        let run = env.tvault(["verify", "--read-data-subset", bad]);
        assert_eq!(run.code(), Some(2), "{run}");
        run.stderr_has(&["invalid subset", bad, "n/m", "P%"]);
    }
    let run = env.tvault(["verify", "--read-data", "--read-data-subset", "1/2"]);
    assert_eq!(run.code(), Some(2), "{run}");

    // A damaged chunk is found by exactly one of the slices.
    let (chunk, pack, entry) = shared_chunk(&layout, &fx);
    flip_byte(
        &env.repo.join(pack_key(&pack)),
        u64::from(entry.offset) + u64::from(entry.stored_len) / 2,
    );
    let mut found_by = Vec::new();
    for n in 1..=3 {
        let spec = format!("{n}/3");
        let (run, r) = verify(env, &["--read-data-subset", &spec]);
        match run.code() {
            Some(0) => {}
            Some(4) => {
                assert!(
                    message(&r, "damaged_chunk").contains(&chunk.to_hex()),
                    "{run}"
                );
                found_by.push(spec);
            }
            _ => panic!("{run}"),
        }
    }
    assert_eq!(found_by.len(), 1, "found by slices {found_by:?}");
}

#[test]
fn verify_exits_1_when_it_cannot_check() {
    let env = TestEnv::new();
    env.tvault(["verify"])
        .expect_code(1)
        .stderr_has(&["no tvault repository", "tvault init"]);

    // A live exclusive lock (this test process's pid, just refreshed), as a running prune has.
    env.init_plain();
    let now = chrono::Utc::now().to_rfc3339();
    let lock = json!({
        "host": hostname(), "pid": std::process::id(), "exclusive": true,
        "command": "prune", "created": now, "refreshed": now,
    });
    let lock = env.write(
        Path::new("repo/locks").join("ab".repeat(32)),
        &serde_json::to_vec(&lock).unwrap(),
    );
    for read_data in [&[][..], &["--read-data"]] {
        let mut a: Vec<OsString> = args!["verify"];
        a.extend(read_data.iter().map(OsString::from));
        env.tvault(a)
            .expect_code(1)
            .stderr_has(&["locked", "prune", "wait for it to finish"]);
    }
    fs::remove_file(lock).unwrap();
    env.tvault(["verify"]).expect_code(0);
}
