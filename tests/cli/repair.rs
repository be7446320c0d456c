//! Size checks and what is in use: a file whose chunks do not add up to its recorded size is
//! refused by every reader (restore, `restore --tar`, verify); verify never calls a pack that
//! holds live delta bases reclaimable.

use std::fs;

use tvault::codec::Encoding;
use tvault::id::Id;
use tvault::pack::BlobKind;
use tvault::repo::{BlobWriter, Repository};
use tvault::tree::Tree;
use tvault::workload::Scenario;

use crate::testenv::{args, num, sources_manifest, text, TestEnv};
use crate::verify::{assert_verifies_clean, verify};

fn short(id: &str) -> String {
    id[..8].to_string()
}

// ---------------------------------------------------------------------------------------------
// Item 4: sizes

/// Rewrites snapshot `id` so that its tree records `path` as `delta` bytes larger than its
/// chunks hold (a new tree blob, a new manifest; the old manifest is deleted). Returns the new ID.
fn forge_size(env: &TestEnv, id: &str, path: &str, delta: u64) -> String {
    let repo = Repository::open(&env.repo).unwrap();
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
    let env = TestEnv::with_repo();
    env.write("src/d/a.bin", &vec![7u8; 300 << 10]);
    env.write("src/d/b.txt", b"hello");
    let dir = env.src.join("d");
    let id = text(&env.backup(&[&dir], &[]), "snapshot_id");
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
}

/// Writes step `step` of a fine-tuning series into `src/ckpt` (same path each time).
fn finetune_step(env: &TestEnv, step: u32) -> std::path::PathBuf {
    let dir = env.root.join("src/ckpt");
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    env.checkpoint("src/ckpt", Scenario::Finetune, 2 << 20, 9, step)
}

// ---------------------------------------------------------------------------------------------
// Item 5d: one definition of "in use"

#[test]
fn verify_never_calls_a_pack_of_live_delta_bases_reclaimable() {
    let env = TestEnv::with_repo();
    env.set_pack_size(256 << 10);
    let d0 = finetune_step(&env, 0);
    let s0 = text(&env.backup(&[&d0], &[]), "snapshot_id");
    let d1 = finetune_step(&env, 1);
    let m1 = sources_manifest(&[&d1]);
    let s1 = text(&env.backup(&[&d1], &[]), "snapshot_id");
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
