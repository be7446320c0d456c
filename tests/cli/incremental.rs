//! Incremental backups: an unchanged tree is not read again, `--full` re-reads but stores
//! nothing new, one changed tensor costs about one tensor (plus its neighbouring chunks), the
//! parent is chosen as documented, and every snapshot restores on its own.

use std::path::{Path, PathBuf};

use tvault_workload::{ModelDims, Scenario};

use crate::testenv::{
    args, bf16_model, num, retrain_tensor, safetensors_tensors, set_mtime, sources_manifest, text,
    TensorLoc, TestEnv,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A 12 MiB bf16 Llama-like checkpoint (`model.safetensors` + `config.json`) whose MLP and
/// embedding tensors are exactly 1 MiB: the workload's own size ladder only reaches 1 MiB
/// tensors at ~50 MiB, too slow for a debug-build test.
fn checkpoint_with_1mib_tensors(env: &TestEnv, rel: &str, seed: u64) -> PathBuf {
    let dims = ModelDims {
        vocab: 1024,
        hidden: 512,
        intermediate: 1024,
        layers: 2,
    };
    let dir = env.path(rel);
    bf16_model(&dir, dims, seed);
    dir
}

/// The tensor named `name` of a safetensors file.
fn tensor(model: &Path, name: &str) -> TensorLoc {
    safetensors_tensors(model)
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name} in {}", model.display()))
}

#[test]
fn unchanged_tree_second_backup_reads_nothing_and_restores_alone() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Unchanged, 4 * MIB, 21, 0);
    env.write("src/ckpt/tokenizer/vocab.txt", b"<s>\n</s>\n");
    let expected = sources_manifest(&[&ckpt]);

    let first = env.backup(&[&ckpt], &[]);
    let first_id = text(&first, "id");
    // The scenario's next step leaves every file untouched.
    env.checkpoint("src/ckpt", Scenario::Unchanged, 4 * MIB, 21, 1);
    let second = env.backup(&[&ckpt], &[]);
    assert_eq!(text(&second, "kind"), "incremental");
    assert_eq!(text(&second, "parent"), first_id);
    assert_eq!(num(&second, "bytes_read"), 0, "{second:#}");
    assert_eq!(num(&second, "files_unchanged"), num(&second, "files"));
    assert_eq!(num(&second, "files_new") + num(&second, "files_changed"), 0);
    assert_eq!(num(&second, "total_bytes"), num(&first, "total_bytes"));
    assert!(num(&second, "bytes_added") < 64 * KIB, "{second:#}");

    // The incremental snapshot restores byte-identical without help from the first one.
    env.assert_restores(&text(&second, "id"), &expected);
    env.assert_restores(&first_id, &expected);
}

#[test]
fn full_flag_rereads_every_byte_but_adds_almost_nothing() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 4 * MIB, 22, 0);
    let expected = sources_manifest(&[&ckpt]);
    let first = env.backup(&[&ckpt], &[]);
    let full = env.backup(&[&ckpt], &["--full"]);
    assert_eq!(text(&full, "kind"), "full");
    assert_eq!(text(&full, "parent"), text(&first, "id"));
    assert!(num(&full, "total_bytes") > 4 * MIB * 9 / 10);
    assert_eq!(num(&full, "bytes_read"), num(&full, "total_bytes"));
    assert!(num(&full, "bytes_added") < 64 * KIB, "{full:#}");
    assert_eq!(
        num(&full, "chunks_added"),
        0,
        "no data chunk is new: {full:#}"
    );
    env.assert_restores(&text(&full, "id"), &expected);
}

#[test]
fn one_changed_tensor_adds_about_that_tensor_not_the_checkpoint() {
    let env = TestEnv::with_repo();
    let ckpt = checkpoint_with_1mib_tensors(&env, "src/ckpt", 23);
    let model = ckpt.join("model.safetensors");
    let model_len = std::fs::metadata(&model).unwrap().len();
    assert!(model_len >= 8 * MIB);
    let before = sources_manifest(&[&ckpt]);
    let first = env.backup(&[&ckpt], &[]);

    // A tensor well inside the file, so there are unchanged chunks on both sides of it.
    let t = tensor(&model, "model.layers.1.mlp.gate_proj.weight");
    assert_eq!(t.len, MIB);
    assert!(
        t.start >= 2 * MIB && t.start + t.len + 2 * MIB <= model_len,
        "{t:?}"
    );
    retrain_tensor(&model, &t, 0xfeed);
    let after = sources_manifest(&[&ckpt]);
    let second = env.backup(&[&ckpt], &[]);
    assert_eq!(text(&second, "kind"), "incremental");
    assert_eq!(num(&second, "files_changed"), 1, "{second:#}");
    assert_eq!(
        num(&second, "files_unchanged"),
        1,
        "config.json: {second:#}"
    );
    // Only the changed file is read, and it is read whole.
    assert_eq!(num(&second, "bytes_read"), model_len);
    let added = num(&second, "bytes_added");
    assert!(
        added >= t.len / 5,
        "{added} bytes added for a changed {} byte tensor: too little to hold it",
        t.len
    );
    assert!(
        added <= t.len + 8 * MIB,
        "{added} bytes added for a changed {} byte tensor",
        t.len
    );
    assert!(
        added < model_len * 6 / 10,
        "{added} bytes added for one {} byte tensor of a {model_len} byte checkpoint",
        t.len
    );
    assert!(
        added < num(&first, "bytes_added") / 2,
        "first backup added {}, second {added}",
        num(&first, "bytes_added")
    );

    // Each snapshot restores on its own to the tree as it was when it was taken.
    env.assert_restores(&text(&first, "id"), &before);
    env.assert_restores(&text(&second, "id"), &after);
}

#[test]
fn rewritten_file_with_same_size_and_restored_mtime_is_read_again() {
    // Guards the ctime/inode part of the "unchanged" test: tools that only compare size and
    // mtime miss a file rewritten by something that preserves mtimes (rsync -t, cp -p).
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 2 * MIB, 24, 0);
    let model = ckpt.join("model.safetensors");
    set_mtime(&model, 1_600_000_000, 5);
    let first = env.backup(&[&ckpt], &[]);

    let t = tensor(&model, "model.layers.3.mlp.up_proj.weight");
    retrain_tensor(&model, &t, 0xbeef);
    set_mtime(&model, 1_600_000_000, 5);
    let after = sources_manifest(&[&ckpt]);
    let second = env.backup(&[&ckpt], &[]);
    assert_eq!(num(&second, "files_changed"), 1, "{second:#}");
    assert!(num(&second, "bytes_read") > 0);
    assert!(num(&second, "bytes_added") > 0);
    env.assert_restores(&text(&second, "id"), &after);
    assert_ne!(text(&first, "id"), text(&second, "id"));
}

#[test]
fn explicit_parent_is_honored() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Frozen, 2 * MIB, 25, 0);
    let v0 = sources_manifest(&[&ckpt]);
    let s0 = text(&env.backup(&[&ckpt], &[]), "id");
    env.checkpoint("src/ckpt", Scenario::Frozen, 2 * MIB, 25, 1);
    let v1 = sources_manifest(&[&ckpt]);
    let s1 = env.backup(&[&ckpt], &[]);
    assert_eq!(text(&s1, "parent"), s0, "default parent: the latest");
    let s1 = text(&s1, "id");

    // Name the older snapshot (by prefix) as parent: it is recorded, and the files that changed
    // since it are read again.
    let s2 = env.backup(&[&ckpt], &["--parent", &s0[..8]]);
    assert_eq!(text(&s2, "parent"), s0);
    assert_eq!(text(&s2, "kind"), "incremental");
    assert_eq!(num(&s2, "files_changed"), 1, "{s2:#}");
    let s3 = env.backup(&[&ckpt], &["--parent", &s1]);
    assert_eq!(text(&s3, "parent"), s1);
    assert_eq!(num(&s3, "bytes_read"), 0, "{s3:#}");

    env.assert_restores(&s0, &v0);
    for s in [&s1, &text(&s2, "id"), &text(&s3, "id")] {
        env.assert_restores(s, &v1);
    }

    // A parent that does not exist is an error, and no snapshot is written.
    let run = env
        .tvault(["backup", ckpt.to_str().unwrap(), "--parent", "0000ffff"])
        .expect_code(1);
    run.stderr_has(&["0000ffff"]);
    assert_eq!(env.snapshots().len(), 4);
}

#[test]
fn parent_is_the_latest_snapshot_of_the_same_host_and_paths() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 256 * KIB, 26, 0);
    let other = env.checkpoint("src/other", Scenario::Single, 256 * KIB, 27, 0);
    let a = text(&env.backup(&[&ckpt], &[]), "id");
    // Another host's snapshot of the same paths is not a parent, nor is one of other paths.
    let b = env.backup(&[&ckpt], &["--host", "gpu-node-7"]);
    assert_eq!(text(&b, "kind"), "full");
    assert!(b["parent"].is_null(), "{b:#}");
    let c = env.backup(&[&other], &[]);
    assert!(c["parent"].is_null(), "{c:#}");
    let both = env.backup(&[&ckpt, &other], &[]);
    assert!(both["parent"].is_null(), "{both:#}");
    let d = env.backup(&[&ckpt], &[]);
    assert_eq!(text(&d, "parent"), a);
    assert_eq!(text(&d, "kind"), "incremental");
    let e = env.backup(&[&ckpt], &["--host", "gpu-node-7"]);
    assert_eq!(text(&e, "parent"), text(&b, "id"));
    let hosts: Vec<String> = env.snapshots().iter().map(|s| text(s, "host")).collect();
    assert_eq!(hosts.iter().filter(|h| *h == "gpu-node-7").count(), 2);
}

/// `backup --dry-run` (issue 10.2): says what would be read and roughly added, stores
/// nothing, writes no snapshot, and does not create the default repository.
#[test]
fn backup_dry_run_reports_what_would_be_read_and_added_and_writes_nothing() {
    let env = TestEnv::with_repo();
    let ckpt = env.checkpoint("src/ckpt", Scenario::Single, 3 << 20, 5, 0);
    let before = env.repo_state();
    let run = env
        .tvault(args!["--json", "backup", "--dry-run", &ckpt])
        .expect_code(0);
    let r = run.json();
    assert_eq!(r["dry_run"], true, "{run}");
    assert!(r["id"].is_null(), "{run}");
    let total = num(&r, "total_bytes");
    assert_eq!(num(&r, "bytes_read"), total);
    let estimate = num(&r, "bytes_added");
    assert!(estimate > total / 3 && estimate < total, "{run}");
    assert_eq!(
        env.repo_state(),
        before,
        "a dry run wrote to the repository"
    );
    assert!(env.snapshots().is_empty());

    // The real backup adds about what the dry run said (plus index and trailers).
    let real = env.backup(&[&ckpt], &[]);
    let added = num(&real, "bytes_added");
    assert!(
        added >= estimate && added < estimate + estimate / 50,
        "{estimate} vs {added}"
    );
    // Unchanged since: nothing to read, nothing to add; the human line says so.
    let run = env
        .tvault(args!["backup", "--dry-run", &ckpt])
        .expect_code(0);
    assert!(
        run.stdout.contains("would read 0 B, would add about 0 B"),
        "{run}"
    );
    assert!(run.stdout.contains("nothing was stored"), "{run}");
    assert_eq!(env.snapshots().len(), 1);

    // No default repository is created by a dry run.
    let fresh = TestEnv::new();
    fresh
        .tvault_default_repo(args!["backup", "--dry-run", &ckpt])
        .expect_code(1);
    assert!(!fresh.path("xdg/tvault/repo").exists());
}
