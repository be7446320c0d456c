//! Delta bases by tensor identity, not by path (issue 14.1): a tensor block of a new file is
//! stored as a delta against the same tensor (name, dtype, shape) wherever the repository holds
//! it, so the layouts training runs really write get deltas too: a new folder per step (the
//! previous one deleted), a renamed file, a checkpoint re-sharded over other files, and a
//! fine-tune of a base model backed up earlier under other paths. The layouts come from the
//! workload generator (`rolling`, `sharded`, `resharded`). Every snapshot restores
//! byte-identical and `verify --read-data` is clean.

use std::collections::BTreeMap;
use std::fs;

use serde_json::Value;
use tvault_workload::{checkpoint_folder, Scenario};

use crate::testenv::{args, num, set_mtime, sources_manifest, text, Manifest, TestEnv};

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

/// Size of the layout series: large enough that a step's deltas are a small part of it.
const LAYOUT_SIZE: u64 = 4 << 20;

/// Backs up steps 0, 1 and 2 of a layout scenario (`checkpoints/checkpoint-N/`, a new folder per
/// step, the older ones deleted as a trainer does) one after the other. No file of a step after
/// the first is at a path the repository holds, so without bases by tensor identity it adds what
/// a first backup of its folder into a new repository adds (measured beside it); it must add
/// under a tenth of that. The last snapshot (steps 1 and 2, both stored as deltas) then
/// restores byte for byte, and `verify --read-data` decodes every chunk.
fn assert_layout_stored_as_deltas(scenario: Scenario) {
    let env = TestEnv::with_repo();
    let dir = env.root.join("src/checkpoints");
    let mut last = (String::new(), Manifest::new());
    for step in 0..3 {
        env.checkpoint(&dir, scenario, LAYOUT_SIZE, SEED, step);
        let report = env.backup(&[&dir], &[]);
        if step > 0 {
            let folder = dir.join(checkpoint_folder(step));
            let fresh = env.fresh_path("fresh-repo");
            env.tvault_at(&fresh, ["init"]).expect_code(0);
            let first = env
                .tvault_at(&fresh, args!["--json", "backup", &folder])
                .expect_code(0)
                .json();
            let (added, alone) = (num(&report, "bytes_added"), num(&first, "bytes_added"));
            assert!(
                added * 10 < alone,
                "{scenario} step {step} added {added} bytes, {:.3} of the {alone} a first backup \
                 of its folder adds: its tensors found no bases in the earlier folders\n{report:#}",
                added as f64 / alone as f64
            );
        }
        last = (text(&report, "id"), sources_manifest(&[&dir]));
    }
    restore_all(&env, &[last]);
}

#[test]
fn a_new_folder_per_step_stores_each_step_as_deltas() {
    // `checkpoint-500/model.safetensors`, `checkpoint-1000/…`: the finetune steps.
    assert_layout_stored_as_deltas(Scenario::Rolling);
}

#[test]
fn sharded_steps_in_new_folders_are_stored_as_deltas() {
    // Each step in 4 shards plus the index, in a new folder.
    assert_layout_stored_as_deltas(Scenario::Sharded);
}

#[test]
fn a_resharded_checkpoint_is_stored_as_deltas() {
    // 2, then 3, then 4 shards: tensors move to other files (and offsets) every step.
    assert_layout_stored_as_deltas(Scenario::Resharded);
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
    env.checkpoint(&root, Scenario::Rolling, SIZE, SEED, 0);
    env.backup(&[&root], &[]);
    env.checkpoint(&root, Scenario::Rolling, SIZE, SEED, 1);
    let id = text(&env.backup(&[&root], &[]), "id");
    let run = env
        .tvault(["--json", "show", "--tensors", &id])
        .expect_code(0);
    let report = run.json();
    let files = report["files"].as_array().unwrap();
    let model = files
        .iter()
        .find(|f| text(f, "path").ends_with("checkpoint-1000/model.safetensors"))
        .expect("the new step's model file");
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
