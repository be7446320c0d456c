//! Delta bases by tensor identity, not by path (issue 14.1): a tensor block of a new file is
//! stored as a delta against the same tensor (name, dtype, shape) wherever the repository holds
//! it, so the layouts training runs really write get deltas too: a new folder per step (the
//! previous one deleted), a renamed file, a checkpoint re-sharded over other files, and a
//! fine-tune of a base model backed up earlier under other paths. Every snapshot restores
//! byte-identical and `verify --read-data` is clean.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tvault_workload::{transformer_specs, write_safetensors, Dtype, Scenario};

use crate::testenv::{
    num, safetensors_tensors, set_mtime, sources_manifest, text, Manifest, TestEnv,
};

const SIZE: u64 = 2 << 20;
const SEED: u64 = 7;

/// The checkpoint data of a report's backup that was stored as deltas, and the bytes it added.
fn delta_and_added(report: &Value) -> (u64, u64) {
    (num(&report["stored"], "delta"), num(report, "bytes_added"))
}

/// A step after the first: most of the model is stored as deltas (a block may start a new
/// chain instead: keyframes are staggered over the steps), and besides such keyframes the
/// step adds a few percent of its size (a keyframe of these weights takes about 0.67).
#[track_caller]
fn assert_stored_as_deltas(report: &Value, what: &str) {
    let (delta, added) = delta_and_added(report);
    assert!(
        delta > SIZE * 3 / 4,
        "{what}: too little as deltas: {report:#}"
    );
    let keyframes = num(&report["stored"], "byte_planes_stored");
    assert!(
        (added - keyframes) * 100 <= SIZE * 4,
        "{what} added {added} bytes, {:.3} of the checkpoint: {report:#}",
        added as f64 / SIZE as f64
    );
}

fn restore_all(env: &TestEnv, snaps: &[(String, Manifest)]) {
    for (id, expected) in snaps {
        env.assert_restores(id, expected);
    }
    env.tvault(["verify", "--read-data"]).expect_code(0);
}

#[test]
fn a_new_folder_per_step_stores_each_step_as_deltas() {
    // `checkpoints/checkpoint-100/`, `checkpoint-200/`, …: each step in a new folder, the
    // previous one deleted (a trainer keeping one checkpoint).
    let env = TestEnv::with_repo();
    let root = env.root.join("src/checkpoints");
    let mut snaps = Vec::new();
    for s in 0..4u32 {
        if s > 0 {
            fs::remove_dir_all(root.join(format!("checkpoint-{}", s * 100))).unwrap();
        }
        let rel = format!("src/checkpoints/checkpoint-{}", (s + 1) * 100);
        env.checkpoint(&rel, Scenario::Finetune, SIZE, SEED, s);
        let report = env.backup(&[&root], &[]);
        if s > 0 {
            assert_stored_as_deltas(&report, &format!("step {s}"));
        }
        snaps.push((text(&report, "id"), sources_manifest(&[&root])));
    }
    restore_all(&env, &snaps);
}

#[test]
fn a_renamed_checkpoint_is_stored_as_deltas() {
    let env = TestEnv::with_repo();
    let dir = env.checkpoint("src/ckpt", Scenario::Finetune, SIZE, SEED, 0);
    let mut snaps = vec![(
        text(&env.backup(&[&dir], &[]), "id"),
        sources_manifest(&[&dir]),
    )];
    env.checkpoint("src/ckpt", Scenario::Finetune, SIZE, SEED, 1);
    fs::rename(
        dir.join("model.safetensors"),
        dir.join("weights-step1.safetensors"),
    )
    .unwrap();
    let report = env.backup(&[&dir], &[]);
    assert_stored_as_deltas(&report, "the renamed step");
    snaps.push((text(&report, "id"), sources_manifest(&[&dir])));
    restore_all(&env, &snaps);
}

/// Rewrites `dir/model.safetensors` as `n` shards `model-0000k-of-0000n.safetensors` holding
/// its tensors (same names, dtypes, shapes and bytes) in turn, plus the index JSON.
fn reshard(dir: &Path, n: usize) -> Vec<PathBuf> {
    let single = dir.join("model.safetensors");
    let bytes = fs::read(&single).unwrap();
    let at: BTreeMap<String, (usize, usize)> = safetensors_tensors(&single)
        .into_iter()
        .map(|t| (t.name, (t.start as usize, t.len as usize)))
        .collect();
    let specs = transformer_specs(SIZE, Dtype::BF16);
    let per = specs.len().div_ceil(n);
    let mut weight_map = serde_json::Map::new();
    let mut shards = Vec::new();
    for (k, part) in specs.chunks(per).enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let path = dir.join(&name);
        write_safetensors(&path, part, &BTreeMap::new(), |_, spec, buf| {
            let (start, len) = at[&spec.name];
            buf.copy_from_slice(&bytes[start..start + len]);
        })
        .unwrap();
        for spec in part {
            weight_map.insert(spec.name.clone(), Value::String(name.clone()));
        }
        shards.push(path);
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    fs::remove_file(&single).unwrap();
    shards
}

#[test]
fn a_resharded_checkpoint_is_stored_as_deltas() {
    // Step 0 in one file, step 1 over three shards, step 2 over two: every tensor moves to
    // another file (and offset) each time.
    let env = TestEnv::with_repo();
    let dir = env.checkpoint("src/ckpt", Scenario::Finetune, SIZE, SEED, 0);
    let mut snaps = vec![(
        text(&env.backup(&[&dir], &[]), "id"),
        sources_manifest(&[&dir]),
    )];
    for (step, shards) in [(1, 3), (2, 2)] {
        for f in fs::read_dir(&dir).unwrap() {
            fs::remove_file(f.unwrap().path()).unwrap();
        }
        env.checkpoint("src/ckpt", Scenario::Finetune, SIZE, SEED, step);
        assert_eq!(reshard(&dir, shards).len(), shards);
        let report = env.backup(&[&dir], &[]);
        assert_stored_as_deltas(&report, &format!("step {step} over {shards} shards"));
        snaps.push((text(&report, "id"), sources_manifest(&[&dir])));
    }
    restore_all(&env, &snaps);
}

#[test]
fn a_finetune_of_a_base_model_backed_up_under_other_paths_is_stored_as_deltas() {
    // The base model is backed up from its download folder; the fine-tuning run's folder is
    // another backup (other paths: no parent snapshot), whose first step is a small change of
    // the base.
    let env = TestEnv::with_repo();
    let base = env.checkpoint("src/hub/base-model", Scenario::Finetune, SIZE, SEED, 0);
    let mut snaps = vec![(
        text(&env.backup(&[&base], &[]), "id"),
        sources_manifest(&[&base]),
    )];
    let run = env.checkpoint("src/runs/sft", Scenario::Finetune, SIZE, SEED, 1);
    let report = env.backup(&[&run], &[]);
    assert!(report["parent"].is_null(), "{report:#}");
    assert_stored_as_deltas(&report, "the first step of the fine-tune");
    snaps.push((text(&report, "id"), sources_manifest(&[&run])));
    restore_all(&env, &snaps);
}

#[test]
fn the_base_is_the_same_file_name_then_the_newest() {
    // Three candidates with the same tensors: an unrelated model of the same name (older), the
    // step before (same name, newer), and an unrelated model under another name (newest). Only
    // the step before makes deltas pay: any other choice stores the step whole.
    let env = TestEnv::with_repo();
    let root = env.root.join("src/ckpts");
    let unrelated = 99;
    let old = env.checkpoint("src/ckpts/a", Scenario::Finetune, SIZE, unrelated, 0);
    set_mtime(&old.join("model.safetensors"), 1_000_000, 0);
    let prev = env.checkpoint("src/ckpts/b", Scenario::Finetune, SIZE, SEED, 0);
    set_mtime(&prev.join("model.safetensors"), 2_000_000, 0);
    let other = env.checkpoint("src/ckpts/c", Scenario::Finetune, SIZE, unrelated, 1);
    fs::rename(
        other.join("model.safetensors"),
        other.join("weights.safetensors"),
    )
    .unwrap();
    set_mtime(&other.join("weights.safetensors"), 3_000_000, 0);
    let mut snaps = vec![(
        text(&env.backup(&[&root], &[]), "id"),
        sources_manifest(&[&root]),
    )];
    env.checkpoint("src/ckpts/d", Scenario::Finetune, SIZE, SEED, 1);
    let report = env.backup(&[&root], &[]);
    assert_stored_as_deltas(&report, "the next step");
    snaps.push((text(&report, "id"), sources_manifest(&[&root])));
    restore_all(&env, &snaps);
}

#[test]
fn show_tensors_of_a_new_folder_says_delta_or_unchanged_not_new() {
    // `show --tensors` compares with the parent's file at the same path, which a new folder
    // per step never has: its tensors are still reported by how they are stored.
    let env = TestEnv::with_repo();
    let root = env.root.join("src/checkpoints");
    env.checkpoint(
        "src/checkpoints/checkpoint-100",
        Scenario::Finetune,
        SIZE,
        SEED,
        0,
    );
    env.backup(&[&root], &[]);
    fs::remove_dir_all(root.join("checkpoint-100")).unwrap();
    env.checkpoint(
        "src/checkpoints/checkpoint-200",
        Scenario::Finetune,
        SIZE,
        SEED,
        1,
    );
    let id = text(&env.backup(&[&root], &[]), "id");
    let run = env
        .tvault(["--json", "show", "--tensors", &id])
        .expect_code(0);
    let report = run.json();
    let files = report["files"].as_array().unwrap();
    let model = files
        .iter()
        .find(|f| text(f, "path").ends_with(".safetensors"))
        .expect("a model file");
    let statuses: BTreeMap<String, usize> =
        model["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, t| {
                *m.entry(text(t, "status")).or_default() += 1;
                m
            });
    assert!(
        statuses.get("delta").copied().unwrap_or(0) > 0,
        "{statuses:?}\n{run}"
    );
    assert!(!statuses.contains_key("new"), "{statuses:?}\n{run}");
}
