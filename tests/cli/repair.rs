//! Size checks, repair and healing: a file whose chunks do not add up to its recorded size is
//! refused by every reader (restore, `restore --tar`, verify); `repair index` rebuilds a lost
//! or corrupt index file from the packs (idempotent, `--dry-run`, crash-safe); `repair packs`
//! drops damaged chunks (and the deltas that need them) so that a backup of the same data heals
//! the snapshots that need them, and verify says which snapshots heal and which stay broken;
//! verify never calls a pack that holds live delta bases reclaimable.

use std::collections::BTreeSet;
use std::fs;
use std::ops::ControlFlow;

use serde_json::Value;
use tvault_core::codec::Encoding;
use tvault_core::id::Id;
use tvault_core::pack::BlobKind;
use tvault_core::repo::{pack_key, BlobWriter};
use tvault_core::tree::Tree;
use tvault_workload::Scenario;

use crate::bad_input::repo_of_a_user_who_cannot_read_everything;
use crate::testenv::{
    args, crash_at_every_write_step, files_below, flip_byte, num, set_mode, sources_manifest, text,
    Manifest, TestEnv,
};
use crate::verify::{assert_verifies_clean, verify};

/// `tvault --json repair WHAT EXTRA…`, which must exit 0; returns the report.
#[track_caller]
fn repair(env: &TestEnv, what: &str, extra: &[&str]) -> Value {
    let mut a = args!["--json", "repair", what];
    a.extend(extra.iter().map(std::ffi::OsString::from));
    env.tvault(a).expect_code(0).json()
}

/// The `broken_snapshots` of a verify report as (short ID, heal).
fn broken(report: &Value) -> BTreeSet<(String, String)> {
    report["broken_snapshots"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| (short(&text(b, "id")), text(b, "heal")))
                .collect()
        })
        .unwrap_or_default()
}

fn short(id: &str) -> String {
    id[..8].to_string()
}

/// The chunks of `path` in snapshot `snap`, and the pack of each.
fn chunks_of(env: &TestEnv, snap: &str, path: &str) -> Vec<(Id, Id)> {
    let repo = env.open_repo();
    let s = repo.load_snapshot(&Id::from_hex(snap).unwrap()).unwrap();
    let tree = repo.load_tree(&s.tree).unwrap();
    let node = tree
        .nodes
        .iter()
        .find(|n| n.path.display() == path)
        .unwrap_or_else(|| panic!("{path} not in snapshot {snap}"));
    node.chunks
        .iter()
        .map(|c| (*c, repo.index().pack_id(repo.index().get(c).unwrap())))
        .collect()
}

/// Flips a bit in the middle of `chunk`'s stored bytes in its pack.
fn damage_chunk(env: &TestEnv, chunk: &Id) {
    let repo = env.open_repo();
    let loc = *repo.index().get(chunk).unwrap();
    let pack = env.repo.join(pack_key(&repo.index().pack_id(&loc)));
    flip_byte(&pack, u64::from(loc.offset) + u64::from(loc.stored_len) / 2);
}

// ---------------------------------------------------------------------------------------------
// Item 4: sizes

/// Rewrites snapshot `id` so that its tree records `path` as `delta` bytes larger than its
/// chunks hold (a new tree blob, a new manifest; the old manifest is deleted). Returns the new ID.
fn forge_size(env: &TestEnv, id: &str, path: &str, delta: u64) -> String {
    let repo = env.open_repo();
    let old = Id::from_hex(id).unwrap();
    let mut snap = repo.load_snapshot(&old).unwrap();
    let mut tree = repo.load_tree(&snap.tree).unwrap();
    let node = tree
        .nodes
        .iter_mut()
        .find(|n| n.path.display() == path)
        .unwrap();
    node.size += delta;
    let tree = Tree::new(tree.nodes);
    let bytes = tree.to_bytes();
    let tree_id = Id::of(&bytes);
    let mut w = BlobWriter::new(&repo);
    w.add(tree_id, BlobKind::Tree, Encoding::Raw, &bytes, bytes.len())
        .unwrap();
    w.finish().unwrap();
    snap.tree = tree_id;
    let new = repo.save_snapshot(&snap).unwrap().to_hex();
    fs::remove_file(env.repo.join("snapshots").join(id)).unwrap();
    new
}

#[test]
fn every_reader_refuses_a_file_whose_size_disagrees_with_its_chunks() {
    let env = TestEnv::with_plain_repo();
    env.write("src/d/a.bin", &vec![7u8; 300 << 10]);
    env.write("src/d/b.txt", b"hello");
    let dir = env.src.join("d");
    let id = text(&env.backup(&[&dir], &[]), "id");
    let id = forge_size(&env, &id, "d/a.bin", 1000);

    // Restore as a tar archive: the same file is left out and named, exit 4 (was: exit 0 with
    // the file padded with zeros).
    let archive = env.path("out.tar");
    let run = env.tvault(args!["restore", &id, "--tar", &archive]);
    assert_eq!(run.code(), Some(4), "{run}");
    run.stderr_has(&["d/a.bin", "recorded size", "left out of the archive"]);
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(fs::File::open(&archive).unwrap());
    for entry in tar.entries().unwrap() {
        names.push(entry.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.contains(&"d/b.txt".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("a.bin")), "{names:?}");
    let run = env.tvault(args![
        "--json",
        "restore",
        &id,
        "--tar",
        &env.path("o2.tar")
    ]);
    assert_eq!(run.code(), Some(4), "{run}");
    assert_eq!(run.json()["failed"].as_array().unwrap().len(), 1, "{run}");

    // Restore to a directory: the file fails, the rest is restored.
    let target = env.fresh_path("restore");
    let run = env.tvault(args!["restore", &id, &target]).expect_code(4);
    run.stderr_has(&["d/a.bin", "recorded size"]);
    assert!(!target.join("d/a.bin").exists());
    assert_eq!(fs::read(target.join("d/b.txt")).unwrap(), b"hello");

    // verify names the snapshot and the path (was: clean).
    let (run, report) = verify(&env, &[]);
    assert_eq!(run.code(), Some(4), "{run}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{run}");
    assert_eq!(problems[0]["kind"], "corrupt_tree", "{run}");
    assert_eq!(problems[0]["affected"][0]["snapshot"], short(&id).as_str());
    assert_eq!(problems[0]["affected"][0]["path"], "d/a.bin");
    assert!(
        text(&problems[0], "message").contains("recorded size"),
        "{run}"
    );
    assert_eq!(
        broken(&report),
        BTreeSet::from([(short(&id), "never".to_string())])
    );
}

// ---------------------------------------------------------------------------------------------
// Item 5a: repair index

/// Two backups into 256 KiB packs: (env, snapshots with what they restore to).
fn two_backups() -> (TestEnv, Vec<(String, Manifest)>) {
    let env = TestEnv::with_plain_repo();
    env.set_pack_size(256 << 10);
    let mut snaps = Vec::new();
    for seed in [1, 2] {
        let dir = env.checkpoint(
            format!("src/ckpt/m{seed}"),
            Scenario::Single,
            1 << 20,
            seed,
            0,
        );
        let ckpt = dir.parent().unwrap().to_path_buf();
        let id = text(&env.backup(&[&ckpt], &[]), "id");
        snaps.push((id, sources_manifest(&[&ckpt])));
    }
    (env, snaps)
}

fn index_files(env: &TestEnv) -> Vec<std::path::PathBuf> {
    files_below(&env.repo.join("index"))
}

#[track_caller]
fn assert_repaired(env: &TestEnv, snaps: &[(String, Manifest)]) {
    assert_verifies_clean(env, false);
    for (id, m) in snaps {
        env.assert_restores(id, m);
    }
}

#[test]
fn repair_index_rebuilds_a_lost_index_file_from_the_packs() {
    let (env, snaps) = two_backups();
    let first = index_files(&env);
    assert_eq!(first.len(), 2);
    let lost = &first[0];
    fs::remove_file(lost).unwrap();
    let (run, report) = verify(&env, &[]);
    assert_eq!(run.code(), Some(4), "{run}");
    assert!(
        broken(&report)
            .iter()
            .all(|(_, heal)| heal == "repair_index"),
        "{run}"
    );
    env.tvault(["verify"])
        .expect_code(4)
        .stderr_has(&["tvault repair index"]);

    // A dry run says what it would recover and writes nothing.
    let before = env.repo_state();
    let r = repair(&env, "index", &["--dry-run"]);
    assert_eq!(r["dry_run"], true);
    assert!(num(&r, "packs_recovered") > 0, "{r:#}");
    assert!(
        num(&r, "entries_recovered") > num(&r, "packs_recovered"),
        "{r:#}"
    );
    assert_eq!(r["index_files_written"], serde_json::json!([]));
    assert_eq!(env.repo_state(), before);

    let r = repair(&env, "index", &[]);
    assert_eq!(
        r["index_files_written"].as_array().unwrap().len(),
        1,
        "{r:#}"
    );
    assert_eq!(
        num(&r, "packs_scanned"),
        files_below(&env.repo.join("data")).len() as u64
    );
    assert_repaired(&env, &snaps);

    // Idempotent: a second run finds every pack indexed and writes nothing.
    let before = env.repo_state();
    let r = repair(&env, "index", &[]);
    assert_eq!(num(&r, "packs_recovered"), 0, "{r:#}");
    assert_eq!(r["index_files_written"], serde_json::json!([]));
    assert_eq!(env.repo_state(), before);

    // A corrupt index file is replaced, then removed.
    let corrupt = index_files(&env)[0].clone();
    flip_byte(&corrupt, 20);
    env.tvault(["verify"]).expect_code(4);
    let r = repair(&env, "index", &[]);
    // Rebuilt byte for byte, it takes the damaged file's name: replaced, not deleted. Rebuilt
    // otherwise (which index file is first by name is chance), the damaged one is removed once
    // the new one is durable.
    let written = r["index_files_written"].as_array().unwrap();
    assert_eq!(written.len(), 1, "{r:#}");
    let name = format!("index/{}", corrupt.file_name().unwrap().to_string_lossy());
    if written[0] == name.as_str() {
        assert_eq!(r["index_files_removed"], serde_json::json!([]), "{r:#}");
        assert!(corrupt.exists());
    } else {
        assert_eq!(r["index_files_removed"], serde_json::json!([name]), "{r:#}");
        assert!(!corrupt.exists());
    }
    assert_repaired(&env, &snaps);

    // With every index file gone, the packs hold every snapshot's tree: not reclaimable.
    for f in index_files(&env) {
        fs::remove_file(f).unwrap();
    }
    let (run, report) = verify(&env, &[]);
    assert_eq!(run.code(), Some(4), "{run}");
    assert_eq!(num(&report, "reclaimable_packs"), 0, "{run}");
    assert!(run.stdout.contains("tvault repair index"), "{run}");
    repair(&env, "index", &[]);
    assert_repaired(&env, &snaps);

    // A corrupt index file of packs that another index file lists is removed.
    let files = index_files(&env);
    let copy = env.repo.join("index").join("ab".repeat(32));
    fs::copy(&files[0], &copy).unwrap();
    let r = repair(&env, "index", &[]);
    let removed = r["index_files_removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{r:#}");
    assert!(copy.ends_with(removed[0].as_str().unwrap()), "{r:#}");
    assert_eq!(r["index_files_written"], serde_json::json!([]), "{r:#}");
    assert!(!copy.exists());
    assert_repaired(&env, &snaps);
}

#[test]
fn repair_index_stopped_at_any_write_step_is_finished_by_a_rerun() {
    let (env, snaps) = two_backups();
    fs::remove_file(&index_files(&env)[1]).unwrap();
    let saved = env.save_repo();
    let n = crash_at_every_write_step(&env, &saved, &["repair", "index"], 20, |_, run| {
        if run.code() == Some(0) {
            return ControlFlow::Continue(());
        }
        // The crash left at worst its lock and a temporary file; a rerun repairs.
        if !env.lock_files().is_empty() {
            env.tvault(["unlock"]).expect_code(0);
        }
        repair(&env, "index", &[]);
        assert_repaired(&env, &snaps);
        ControlFlow::Continue(())
    });
    assert!(n > 2, "the crash hook never stopped repair index");
}

// ---------------------------------------------------------------------------------------------
// Items 5b, 5c: repair packs and healing

#[test]
fn repair_packs_then_a_backup_of_the_same_data_heals_the_damaged_snapshot() {
    let env = TestEnv::with_plain_repo();
    env.set_pack_size(256 << 10);
    let dir = env.checkpoint("src/ckpt", Scenario::Single, 1 << 20, 5, 0);
    let m = sources_manifest(&[&dir]);
    let s1 = text(&env.backup(&[&dir], &[]), "id");
    let chunks = chunks_of(&env, &s1, "ckpt/model.safetensors");
    let (victim, pack) = chunks[chunks.len() / 2];
    damage_chunk(&env, &victim);

    let (run, report) = verify(&env, &["--read-data"]);
    assert_eq!(run.code(), Some(4), "{run}");
    assert_eq!(
        broken(&report),
        BTreeSet::from([(short(&s1), "repair_packs".to_string())])
    );
    env.tvault(["verify", "--read-data"])
        .expect_code(4)
        .stderr_has(&["tvault repair packs", "then back up the same data"]);

    // Without repair, a backup skips the chunk (the index lists it) and nothing heals.
    env.backup(&[&dir], &["--full"]);
    let (run, _) = verify(&env, &["--read-data"]);
    assert_eq!(run.code(), Some(4), "{run}");

    let before = env.repo_state();
    let r = repair(&env, "packs", &["--dry-run"]);
    assert_eq!(
        r["chunks_dropped"][0]["chunk"],
        victim.to_hex().as_str(),
        "{r:#}"
    );
    assert_eq!(env.repo_state(), before);

    let r = repair(&env, "packs", &[]);
    let dropped = r["chunks_dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{r:#}");
    assert_eq!(dropped[0]["chunk"], victim.to_hex().as_str());
    assert_eq!(dropped[0]["pack"], pack_key(&pack).as_str());
    let record = env.repo.join(text(&r, "record"));
    let record: Value = serde_json::from_slice(&fs::read(record).unwrap()).unwrap();
    assert_eq!(record["dropped"][0]["chunk"], victim.to_hex().as_str());
    assert!(!env.repo.join(pack_key(&pack)).exists());

    // Now both snapshots miss the chunk, and a backup of the same content heals them.
    let (run, report) = verify(&env, &["--read-data"]);
    assert_eq!(run.code(), Some(4), "{run}");
    assert!(
        broken(&report).iter().all(|(_, heal)| heal == "backup"),
        "{run}"
    );
    env.tvault(["verify"])
        .expect_code(4)
        .stderr_has(&["heals when a backup stores the same content again"]);
    let s3 = text(&env.backup(&[&dir], &["--full"]), "id");
    assert_verifies_clean(&env, false);
    env.assert_restores(&s1, &m);
    env.assert_restores(&s3, &m);
    // Nothing left to repair.
    let r = repair(&env, "packs", &[]);
    assert_eq!(r["damaged_packs"], serde_json::json!([]), "{r:#}");
}

/// Regression test of 02c48ae: `repair packs` took any error reading a pack (permissions, I/O)
/// for damage and deleted the pack. A pack it cannot read stops it before it changes anything.
/// (As root, who reads anything, tvault runs as nobody.)
#[test]
fn repair_packs_stops_at_a_pack_it_cannot_read_and_deletes_nothing() {
    let (env, _) = repo_of_a_user_who_cannot_read_everything();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 << 10, 77, 0);
    env.backup(&[&ckpt], &[]);
    let before = files_below(&env.repo);
    let pack = files_below(&env.repo.join("data"))[0].clone();
    set_mode(&pack, 0o000);
    let name = pack.file_name().unwrap().to_str().unwrap().to_string();
    env.tvault(["repair", "packs"]).expect_code(1).stderr_has(&[
        "cannot read pack",
        &name,
        "changes nothing",
    ]);
    assert_eq!(
        files_below(&env.repo),
        before,
        "repair packs changed the repository"
    );
    set_mode(&pack, 0o400);
    assert_verifies_clean(&env, false);
}

#[test]
fn repair_packs_stopped_at_any_write_step_is_finished_by_a_rerun() {
    let env = TestEnv::with_plain_repo();
    env.set_pack_size(256 << 10);
    let dir = env.checkpoint("src/ckpt", Scenario::Single, 1 << 20, 6, 0);
    let m = sources_manifest(&[&dir]);
    let s1 = text(&env.backup(&[&dir], &[]), "id");
    let chunks = chunks_of(&env, &s1, "ckpt/model.safetensors");
    damage_chunk(&env, &chunks[1].0);
    let saved = env.save_repo();
    let n = crash_at_every_write_step(&env, &saved, &["repair", "packs"], 40, |_, run| {
        if run.code() == Some(0) {
            return ControlFlow::Continue(());
        }
        // A rerun finishes the repair (packs the crash left unindexed are leftovers it passes
        // over); a backup then heals.
        if !env.lock_files().is_empty() {
            env.tvault(["unlock"]).expect_code(0);
        }
        repair(&env, "packs", &[]);
        env.backup(&[&dir], &["--full"]);
        assert_verifies_clean(&env, true);
        env.assert_restores(&s1, &m);
        ControlFlow::Continue(())
    });
    assert!(n > 4, "the crash hook never stopped repair packs");
}

/// Writes step `step` of a fine-tuning series into `src/ckpt` (same path each time).
fn finetune_step(env: &TestEnv, step: u32) -> std::path::PathBuf {
    let dir = env.root.join("src/ckpt");
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    env.checkpoint("src/ckpt", Scenario::Finetune, 2 << 20, 9, step)
}

#[test]
fn a_damaged_delta_base_drops_its_deltas_and_only_the_snapshot_whose_data_is_gone_stays_broken() {
    let env = TestEnv::with_plain_repo();
    env.set_pack_size(256 << 10);
    let d0 = finetune_step(&env, 0);
    let m0 = sources_manifest(&[&d0]);
    let s0 = text(&env.backup(&[&d0], &[]), "id");
    let d1 = finetune_step(&env, 1);
    let m1 = sources_manifest(&[&d1]);
    let r1 = env.backup(&[&d1], &[]);
    assert!(num(&r1["stored"], "delta") > 0, "{r1:#}");
    let s1 = text(&r1, "id");
    // A keyframe of step 0 that a delta of step 1 uses as its base.
    let repo = env.open_repo();
    let deltas: Vec<Id> = chunks_of(&env, &s1, "ckpt/model.safetensors")
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| repo.index().delta(c).is_some())
        .collect();
    let base = repo.index().delta(&deltas[deltas.len() / 2]).unwrap().base;
    assert!(
        repo.index().delta(&base).is_none(),
        "the base is a keyframe"
    );
    drop(repo);
    damage_chunk(&env, &base);

    let r = repair(&env, "packs", &[]);
    let dropped: BTreeSet<String> = r["chunks_dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| text(d, "chunk"))
        .collect();
    assert!(dropped.contains(&base.to_hex()), "{r:#}");
    assert!(
        dropped.len() >= 2,
        "the deltas on the base are dropped too: {r:#}"
    );

    // The source now holds step 1 only: a backup heals snapshot 1, never snapshot 0, whose
    // step-0 block exists nowhere any more; verify says so.
    let s2 = text(&env.backup(&[&d1], &["--full"]), "id");
    let (run, report) = verify(&env, &["--read-data"]);
    assert_eq!(run.code(), Some(4), "{run}");
    assert_eq!(
        broken(&report),
        BTreeSet::from([(short(&s0), "backup".to_string())]),
        "{run}"
    );
    env.assert_restores(&s1, &m1);
    env.assert_restores(&s2, &m1);
    // Backing up step 0 again heals snapshot 0 too.
    let d0 = finetune_step(&env, 0);
    env.backup(&[&d0], &["--full"]);
    assert_verifies_clean(&env, false);
    env.assert_restores(&s0, &m0);
}

// ---------------------------------------------------------------------------------------------
// Item 5d: one definition of "in use"

#[test]
fn verify_never_calls_a_pack_of_live_delta_bases_reclaimable() {
    let env = TestEnv::with_plain_repo();
    env.set_pack_size(256 << 10);
    let d0 = finetune_step(&env, 0);
    let s0 = text(&env.backup(&[&d0], &[]), "id");
    let d1 = finetune_step(&env, 1);
    let m1 = sources_manifest(&[&d1]);
    let s1 = text(&env.backup(&[&d1], &[]), "id");
    // Forget step 0: its keyframes stay as the bases of step 1's deltas.
    env.tvault(args!["prune", "--forget", &s0]).expect_code(0);
    let r = assert_verifies_clean(&env, true);
    assert_eq!(num(&r, "reclaimable_packs"), 0, "{r:#}");
    // And prune agrees: a second prune deletes nothing.
    let r = env
        .tvault(args!["--json", "prune", "--keep-last", "1"])
        .expect_code(0)
        .json();
    assert_eq!(num(&r, "packs_deleted"), 0, "{r:#}");
    env.assert_restores(&s1, &m1);
}

/// Regression: a delta was decoded only through the copy of its base the index reads; with that
/// copy damaged and another copy of the base sound (the base stored twice, by two backups that
/// ran at once), `repair packs` dropped the delta too, and the snapshot that needed it broke.
#[test]
fn repair_packs_keeps_a_delta_whose_base_has_another_sound_copy() {
    let env = TestEnv::with_plain_repo();
    // Step 0 stored twice: once here, once in a copy of the repository (beside a notes file,
    // so its pack differs) whose new files are copied back, as a concurrent backup leaves them.
    let other = env.fresh_path("other-repo");
    crate::testenv::copy_dir(&env.repo, &other);
    let d0 = finetune_step(&env, 0);
    let mut snaps = vec![(
        text(&env.backup(&[&d0], &[]), "id"),
        sources_manifest(&[&d0]),
    )];
    env.write("src/ckpt/notes.txt", b"the other run\n");
    let run = env
        .tvault_at(&other, args!["--json", "backup", &d0])
        .expect_code(0);
    snaps.push((text(&run.json(), "id"), sources_manifest(&[&d0])));
    let ours: BTreeSet<_> = files_below(&env.repo).into_iter().collect();
    for path in files_below(&other) {
        let rel = path.strip_prefix(&other).unwrap();
        if !ours.contains(&env.repo.join(rel)) && !rel.starts_with("locks") {
            fs::create_dir_all(env.repo.join(rel).parent().unwrap()).unwrap();
            fs::copy(&path, env.repo.join(rel)).unwrap();
        }
    }
    let d1 = finetune_step(&env, 1);
    let r1 = env.backup(&[&d1], &[]);
    assert!(num(&r1["stored"], "delta") > 0, "{r1:#}");
    snaps.push((text(&r1, "id"), sources_manifest(&[&d1])));

    // Damage the copy the index reads of a base of step 1's deltas.
    let repo = env.open_repo();
    let delta = chunks_of(&env, &snaps[2].0, "ckpt/model.safetensors")
        .into_iter()
        .map(|(c, _)| c)
        .find(|c| repo.index().delta(c).is_some())
        .unwrap();
    let base = repo.index().delta(&delta).unwrap().base;
    let copies = repo
        .read_index_files()
        .unwrap()
        .into_iter()
        .flat_map(|f| f.packs.unwrap())
        .filter(|(_, entries)| entries.iter().any(|e| e.id == base))
        .count();
    assert_eq!(copies, 2, "the base is stored twice");
    drop(repo);
    damage_chunk(&env, &base);

    let r = repair(&env, "packs", &[]);
    let dropped: Vec<String> = r["chunks_dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| text(d, "chunk"))
        .collect();
    assert_eq!(dropped, [base.to_hex()], "{r:#}");
    assert_repaired(&env, &snaps);
}
