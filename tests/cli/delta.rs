//! Deltas against the parent snapshot (encoding 3): a fine-tuning series stores each step as
//! XORs with the previous one and restores byte-identical at every step; chains stop within
//! their bound, at staggered steps; prune keeps the bases live deltas need; verify names the
//! files whose deltas lost their base; a crash at any write step of a delta backup leaves a
//! sound repository.

use std::collections::HashMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tvault_workload::Scenario;

use crate::testenv::{
    args, crash_at_every_write_step, files_below, flip_byte, num, text, Manifest, TestEnv,
};

const SIZE: u64 = 2 << 20;

/// Writes step `step` of a fine-tuning checkpoint into `src/ckpt` (always the same path, so
/// each backup's parent is the previous one) and returns the directory.
fn step(env: &TestEnv, scenario: Scenario, size: u64, step: u32) -> PathBuf {
    let dir = env.root.join("src/ckpt");
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    env.checkpoint("src/ckpt", scenario, size, 7, step)
}

fn manifest_of(dir: &Path) -> Manifest {
    crate::testenv::sources_manifest(&[dir])
}

fn stored(report: &Value, field: &str) -> u64 {
    num(&report["stored"], field)
}

#[test]
fn finetune_series_stores_small_deltas_and_restores_every_step() {
    let env = TestEnv::with_repo();
    let mut snaps = Vec::new();
    for s in 0..4 {
        let dir = step(&env, Scenario::Finetune, SIZE, s);
        let report = env.backup(&[&dir], &[]);
        let added = num(&report, "bytes_added");
        if s > 0 {
            // Most blocks are deltas; a few may start a new chain (staggered keyframes).
            assert!(stored(&report, "delta") > SIZE * 3 / 4, "{report:#}");
            let keyframes = stored(&report, "byte_planes_stored");
            assert!(
                (added - keyframes) * 100 <= SIZE * 4,
                "step {s} added {added} bytes: {report:#}"
            );
        }
        snaps.push((text(&report, "id"), manifest_of(&dir)));
    }
    for (id, expected) in &snaps {
        env.assert_restores(id, expected);
    }
    // `show --tensors` says every tensor of the model changed and is stored as a delta, and
    // that config.json is unchanged.
    let last = &snaps[3].0;
    let show = env
        .tvault(args!["--json", "show", last, "--tensors"])
        .expect_code(0)
        .json();
    let files = show["files"].as_array().unwrap();
    let model = files
        .iter()
        .find(|f| text(f, "path").ends_with("model.safetensors"))
        .unwrap();
    let tensors = model["tensors"].as_array().unwrap();
    assert!(!tensors.is_empty());
    // Tensors with blocks of their own are deltas (or stored whole where a block started a
    // new chain: keyframes are staggered); tensors smaller than a chunk live in the plain
    // chunks around them: unchanged, or stored whole ("changed").
    for t in tensors {
        if num(t, "blocks") > 0 {
            assert!(t["status"] == "delta" || t["status"] == "changed", "{t:#}");
        } else {
            assert!(
                t["status"] == "unchanged" || t["status"] == "changed",
                "{t:#}"
            );
        }
    }
    assert!(tensors.iter().any(|t| t["status"] == "delta"));
    assert!(num(&model["storage"], "delta") > SIZE * 3 / 4);
    let config = files
        .iter()
        .find(|f| text(f, "path").ends_with("config.json"))
        .unwrap();
    assert_eq!(num(&config["storage"], "unchanged"), num(config, "size"));
    let human = env.tvault(args!["show", last, "--tensors"]).expect_code(0);
    assert!(human.stdout.contains("delta"), "{human}");
    env.tvault(["verify", "--read-data"]).expect_code(0);
}

#[test]
fn chains_end_at_staggered_steps_so_no_step_stores_the_whole_checkpoint() {
    // Version 3: sparse deltas cost 1 each and chains stop at depth 32, so every block starts
    // a new chain within any 33 steps; but not all in the same step: over 66 steps (the bound
    // crossed twice) no step adds more than twice the mean of the steps after the first.
    staggered_chains(3, 33, &[1, 32, 33, 34, 65, 66]);
}

#[test]
fn version_4_chains_end_at_staggered_steps_within_65_steps() {
    // Version 4: chains up to depth 64, so every block starts a new chain within 65 steps.
    staggered_chains(4, 65, &[1, 64, 65, 66]);
}

/// 67 `finetune` steps into a repository of `version` whose sparse chains end within
/// `period` steps; restores `check` and verifies all.
fn staggered_chains(version: u32, period: usize, check: &[usize]) {
    let env = TestEnv::with_repo();
    // Small tensor blocks: many blocks in a small file, so turns spread as in a large one.
    let path = env.repo.join("config");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["tensor_block"] = Value::from(4096);
    config["version"] = Value::from(version);
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let size = 1 << 20;
    let (mut snaps, mut added, mut keyframes, mut deltas) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in 0..=66 {
        let dir = step(&env, Scenario::Finetune, size, s);
        let report = env.backup(&[&dir], &[]);
        deltas.push(stored(&report, "delta"));
        added.push(num(&report, "bytes_added"));
        keyframes.push(stored(&report, "byte_planes"));
        snaps.push((text(&report, "id"), manifest_of(&dir)));
    }
    let later = &added[1..];
    let mean = later.iter().sum::<u64>() / later.len() as u64;
    let max = *later.iter().max().unwrap();
    assert!(max <= 2 * mean, "max {max} > 2 x mean {mean}: {added:?}");
    // Each step stores most blocks as deltas.
    assert!(deltas[1..].iter().all(|&d| d > size / 2), "{deltas:?}");
    // Every block's chain ends within its bound: in each run of `period` steps, every tensor
    // block stored whole by the first step is stored whole again.
    for run in keyframes[1..].chunks_exact(period) {
        let sum: u64 = run.iter().sum();
        assert!(sum >= keyframes[0], "{sum} keyframe bytes: {keyframes:?}");
    }
    // Turns follow the blocks in order of tensor name, so every step restarts about as many
    // blocks as any other (hashed turns left some steps none and others twice the mean).
    let (lo, hi) = (keyframes[1..].iter().min(), keyframes[1..].iter().max());
    let (lo, hi) = (*lo.unwrap(), *hi.unwrap());
    assert!(
        lo > 0 && hi <= 2 * lo,
        "{lo}..{hi} keyframe bytes: {keyframes:?}"
    );
    // And spread over the period: half of it restarts about half of the blocks (a version-4
    // chain outlives version 3's 33 steps).
    let half: u64 = keyframes[1..=period / 2].iter().sum();
    assert!(
        half < keyframes[0] * 3 / 4,
        "{half} keyframe bytes: {keyframes:?}"
    );

    // Restores around both bounds (restoring all 67 takes too long for the suite); verify
    // decodes every stored chunk of them all.
    for &i in check {
        env.assert_restores(&snaps[i].0, &snaps[i].1);
    }
    env.tvault(["verify", "--read-data"]).expect_code(0);
}

#[test]
fn max_chain_bounds_every_chain_and_staggers_the_keyframes_it_costs() {
    // Chains grown to depth 6, then `--max-chain 4`: no new link is deeper than 4 (the first
    // capped step restarts the deeper chains at once), and from the next step on every block
    // starts a new chain within any 5 steps, about a fifth of them at each step.
    let env = TestEnv::with_repo();
    let path = env.repo.join("config");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["tensor_block"] = Value::from(4096);
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let size = 1 << 20;
    let depths = |env: &TestEnv| -> HashMap<tvault_core::id::Id, u8> {
        let repo = env.open_repo();
        let index = repo.index();
        index.deltas().map(|(id, d)| (*id, d.depth)).collect()
    };
    let (mut keyframes, mut ids, mut last, mut grown) =
        (Vec::new(), Vec::new(), None, HashMap::new());
    let mut first_stored = 0;
    for s in 0..=17 {
        let dir = step(&env, Scenario::Finetune, size, s);
        let capped: &[&str] = if s < 7 { &[] } else { &["--max-chain", "4"] };
        let report = env.backup(&[&dir], capped);
        keyframes.push(stored(&report, "byte_planes"));
        if s == 0 {
            first_stored = stored(&report, "byte_planes_stored");
        }
        ids.push(text(&report, "id"));
        assert!(stored(&report, "delta") > 0 || s == 0, "{report:#}");
        last = Some((text(&report, "id"), manifest_of(&dir)));
        if s == 6 {
            grown = depths(&env);
        }
    }
    let deepest = grown.values().max().copied();
    assert!(
        deepest >= Some(5),
        "chains of depth {deepest:?} before the cap"
    );
    let capped: Vec<u8> = depths(&env)
        .into_iter()
        .filter(|(id, _)| !grown.contains_key(id))
        .map(|(_, d)| d)
        .collect();
    assert!(capped.len() > 100, "{} links under the cap", capped.len());
    assert_eq!(
        capped.iter().max(),
        Some(&4),
        "the deepest link under the cap"
    );
    let after_cap = keyframes[8..].to_vec();
    for run in after_cap.chunks_exact(5) {
        let sum: u64 = run.iter().sum();
        assert!(sum >= keyframes[0], "{sum} keyframe bytes: {keyframes:?}");
    }
    let (lo, hi) = (after_cap.iter().min(), after_cap.iter().max());
    let (lo, hi) = (*lo.unwrap(), *hi.unwrap());
    assert!(
        lo * 8 > keyframes[0] && hi <= 2 * lo,
        "{lo}..{hi} keyframe bytes: {keyframes:?}"
    );
    let (id, manifest) = last.unwrap();
    env.assert_restores(&id, &manifest);

    // `stats` tells what chains a restore goes through: none for the first step; for the
    // last, links up to the cap and the bases of earlier steps, read beside its own chunks.
    let stats = |id: &str| env.tvault(["--json", "stats", id]).expect_code(0).json();
    let first = stats(&ids[0]);
    assert_eq!(first["chains"]["deepest"], 0, "{first:#}");
    assert_eq!(num(&first["chains"], "bases"), 0);
    assert_eq!(
        num(&first["chains"], "read_bytes"),
        num(&first, "stored_bytes")
    );
    let late = stats(&id);
    assert_eq!(late["chains"]["deepest"], 4, "{late:#}");
    assert!(num(&late["chains"], "bases") > 100, "{late:#}");
    let own = num(&late, "stored_bytes");
    let read = num(&late["chains"], "read_bytes");
    assert!(
        read > own + first_stored / 2,
        "reads {read}, stores {own}: {late:#}"
    );
    let human = env.tvault(["stats", &id]).expect_code(0).stdout;
    assert!(human.contains("delta chains up to 4 deep"), "{human}");

    // 0 stores no deltas; without the option chains grow past the cap again.
    let dir = step(&env, Scenario::Finetune, size, 18);
    assert_eq!(
        stored(&env.backup(&[&dir], &["--max-chain", "0"]), "delta"),
        0
    );
    let dir = step(&env, Scenario::Finetune, size, 19);
    assert!(stored(&env.backup(&[&dir], &[]), "delta") > size / 2);
    env.tvault(["verify", "--read-data"]).expect_code(0);
    env.tvault(["backup", "--max-chain", "65", dir.to_str().unwrap()])
        .expect_code(2)
        .stderr_has(&["--max-chain"]);
}

#[test]
fn prune_keeps_the_bases_that_live_deltas_need() {
    let env = TestEnv::with_repo();
    env.set_pack_size(256 << 10);
    let mut snaps = Vec::new();
    for s in 0..3 {
        let dir = step(&env, Scenario::Finetune, SIZE, s);
        let report = env.backup(&[&dir], &[]);
        snaps.push((text(&report, "id"), manifest_of(&dir)));
    }
    // Forget the keyframe and the first delta: the last snapshot still needs both as bases.
    env.tvault(args![
        "prune",
        "--forget",
        &snaps[0].0,
        "--forget",
        &snaps[1].0
    ])
    .expect_code(0);
    assert_eq!(env.snapshots().len(), 1);
    env.assert_restores(&snaps[2].0, &snaps[2].1);
    env.tvault(["verify", "--read-data"]).expect_code(0);
    // A new step on top of the pruned repository, then prune again with repacking.
    let dir = step(&env, Scenario::Finetune, SIZE, 3);
    let report = env.backup(&[&dir], &[]);
    assert!(stored(&report, "delta") > 0, "{report:#}");
    let id = text(&report, "id");
    env.tvault(args!["prune", "--keep-last", "1", "--max-unused", "0"])
        .expect_code(0);
    env.assert_restores(&id, &manifest_of(&dir));
    env.tvault(["verify", "--read-data"]).expect_code(0);
}

/// Pack bytes of the repository (`stats --json`).
fn pack_bytes(env: &TestEnv) -> u64 {
    num(
        &env.tvault(["--json", "stats"]).expect_code(0).json(),
        "pack_bytes",
    )
}

#[test]
fn prune_rewrites_deltas_whose_bases_only_forgotten_steps_used_as_keyframes() {
    let env = TestEnv::with_repo();
    env.set_pack_size(256 << 10);
    let mut last = None;
    for s in 0..5 {
        let dir = step(&env, Scenario::Finetune, SIZE, s);
        last = Some((text(&env.backup(&[&dir], &[]), "id"), manifest_of(&dir)));
    }
    let (id, expected) = last.unwrap();
    let fresh = TestEnv::with_repo();
    fresh.set_pack_size(256 << 10);
    fresh.backup(&[&env.root.join("src/ckpt")], &[]);
    let fresh_bytes = pack_bytes(&fresh);

    let report = env
        .tvault(args!["--json", "prune", "--keep-last", "1"])
        .expect_code(0)
        .json();
    let after = pack_bytes(&env);
    assert!(
        after * 100 <= fresh_bytes * 105,
        "after prune --keep-last 1 the repository holds {after} pack bytes, a fresh backup of \
         the kept step {fresh_bytes}: {report:#}"
    );
    assert!(num(&report, "chunks_rewritten") > 0, "{report:#}");
    assert_eq!(num(&report, "bytes_kept_as_bases"), 0, "{report:#}");
    env.assert_restores(&id, &expected);
    env.tvault(["verify", "--read-data"]).expect_code(0);

    // Two steps kept, the older one a chain on forgotten bases: its blocks become keyframes,
    // the newer step's deltas stay deltas on them.
    let dir = step(&env, Scenario::Finetune, SIZE, 5);
    let report = env.backup(&[&dir], &[]);
    assert!(stored(&report, "delta") > 0, "{report:#}");
    let newest = (text(&report, "id"), manifest_of(&dir));
    env.tvault(args!["prune", "--keep-last", "2"])
        .expect_code(0);
    env.assert_restores(&id, &expected);
    env.assert_restores(&newest.0, &newest.1);
    env.tvault(["verify", "--read-data"]).expect_code(0);
}

/// (snapshot, path) of every file a verify report's problems name.
fn affected_files(report: &Value) -> Vec<(String, String)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["affected"].as_array().unwrap().clone())
        .map(|a| (text(&a, "snapshot"), text(&a, "path")))
        .collect()
}

#[test]
fn verify_names_the_files_whose_deltas_lost_their_base() {
    let env = TestEnv::with_repo();
    let dir = step(&env, Scenario::Finetune, SIZE, 0);
    let s0 = text(&env.backup(&[&dir], &[]), "id");
    let first_packs = files_below(&env.repo.join("data"));
    let dir = step(&env, Scenario::Finetune, SIZE, 1);
    let report = env.backup(&[&dir], &[]);
    assert!(stored(&report, "delta") > 0);
    let s1 = text(&report, "id");
    // Damage the keyframes: the pack of the first backup.
    let pack = first_packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(pack, 5000);
    let run = env
        .tvault(["--json", "verify", "--read-data"])
        .expect_code(4);
    let report = run.json();
    let affected = affected_files(&report);
    for s in [&s0, &s1] {
        assert!(
            affected
                .iter()
                .any(|(snap, path)| s.starts_with(snap.as_str())
                    && path.ends_with("model.safetensors")),
            "snapshot {s} is not named: {report:#}"
        );
    }
    // Restore of the delta snapshot fails loudly for the model, never silently.
    let target = env.fresh_path("restore");
    let run = env.tvault(args!["--json", "restore", &s1, &target]);
    assert_ne!(run.code(), Some(0), "{run}");
}

/// verify checks deltas chain by chain (each keyframe decoded once, each link applied once):
/// a damaged link in the middle still names exactly the steps above it.
#[test]
fn verify_names_the_steps_above_a_damaged_link_of_a_chain_and_spares_those_below() {
    let env = TestEnv::with_repo();
    let dir = step(&env, Scenario::Finetune, SIZE, 0);
    let s0 = text(&env.backup(&[&dir], &[]), "id");
    let before = files_below(&env.repo.join("data"));
    let dir = step(&env, Scenario::Finetune, SIZE, 1);
    let s1 = text(&env.backup(&[&dir], &[]), "id");
    let step1_packs: Vec<_> = files_below(&env.repo.join("data"))
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let dir = step(&env, Scenario::Finetune, SIZE, 2);
    let report = env.backup(&[&dir], &[]);
    assert!(stored(&report, "delta") > 0);
    let s2 = text(&report, "id");
    env.tvault(["verify", "--read-data"]).expect_code(0);
    // Damage the middle links: every blob step 1 stored (a byte in every 2 KiB).
    for pack in &step1_packs {
        for at in (200..fs::metadata(pack).unwrap().len() - 200).step_by(2048) {
            flip_byte(pack, at);
        }
    }
    let report = env
        .tvault(["--json", "verify", "--read-data"])
        .expect_code(4)
        .json();
    // Step 1's tree was in its packs too.
    let affected = affected_files(&report);
    let named = |s: &str| -> Vec<String> {
        affected
            .iter()
            .filter(|(a, _)| s.starts_with(a.as_str()))
            .map(|(_, path)| path.clone())
            .collect()
    };
    assert!(!named(&s1).is_empty(), "step 1 is not named: {report:#}");
    assert!(
        named(&s2)
            .iter()
            .any(|path| path.ends_with("model.safetensors")),
        "step 2's model, whose deltas sit on step 1's, is not named: {report:#}"
    );
    assert_eq!(
        named(&s0).len(),
        0,
        "step 0 holds no damaged chunk: {report:#}"
    );
}

/// Restore reads a chain's links together (per step, not per block): a damaged link in the
/// middle of a chain still fails the file above it, and the error names the damaged link's pack.
#[test]
fn restore_fails_on_a_damaged_middle_link_of_a_chain_and_names_its_pack() {
    let env = TestEnv::with_repo();
    let (mut ids, mut manifests) = (Vec::new(), Vec::new());
    let mut step1_packs = Vec::new();
    for s in 0..3 {
        let before = files_below(&env.repo.join("data"));
        let dir = step(&env, Scenario::Finetune, SIZE, s);
        ids.push(text(&env.backup(&[&dir], &[]), "id"));
        manifests.push(manifest_of(&dir));
        if s == 1 {
            step1_packs = files_below(&env.repo.join("data"))
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
        }
    }
    // One byte in the middle of step 1's largest pack: one link of one block's chain.
    let pack = step1_packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(pack, fs::metadata(pack).unwrap().len() / 2);
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    let target = env.fresh_path("restore");
    let run = env.tvault(args!["--json", "restore", &ids[2], &target]);
    assert_ne!(run.code(), Some(0), "{run}");
    let report = run.json();
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{run}");
    let failed = failed[0].as_str().unwrap();
    assert!(failed.contains("model.safetensors"), "{run}");
    assert!(
        failed.contains("damaged") && failed.contains(&pack_name[..16]),
        "the damaged link's pack {pack_name} is not named: {run}"
    );
    assert!(!target.join("ckpt/model.safetensors").exists(), "{run}");
    // The steps below the damage restore.
    env.assert_restores(&ids[0], &manifests[0]);
}

#[test]
fn crash_at_every_write_step_of_a_delta_backup_leaves_a_sound_repository() {
    let env = TestEnv::with_repo();
    env.set_pack_size(512 << 10);
    let dir = step(&env, Scenario::Finetune, SIZE, 0);
    let v0 = manifest_of(&dir);
    let s0 = text(&env.backup(&[&dir], &[]), "id");
    let dir = step(&env, Scenario::Finetune, SIZE, 1);
    let v1 = manifest_of(&dir);
    let saved = env.save_repo();
    let backup = args!["--json", "backup", &dir];
    crash_at_every_write_step(&env, &saved, &backup, 60, |n, run| {
        let snaps = env.snapshots();
        for s in &snaps {
            let id = text(s, "id");
            let expected = if id == s0 { &v0 } else { &v1 };
            env.assert_restores(&id, expected);
        }
        if run.code() == Some(0) {
            assert!(stored(&run.json(), "delta") > 0, "{run}");
            return ControlFlow::Break(());
        }
        if snaps.len() == 2 {
            // Stopped after the commit point (removing the lock): the snapshot is whole.
            return ControlFlow::Break(());
        }
        assert_eq!(snaps.len(), 1, "step {n}");
        // The next backup works and restores identical.
        let id = text(&env.backup(&[&dir], &[]), "id");
        env.assert_restores(&id, &v1);
        ControlFlow::Continue(())
    });
}

/// `show --tensors` of a step and `diff` of its parent and that step name the same tensors as
/// changed (small ones included), the same as unchanged, and a first snapshot calls every
/// tensor "new". Regression (issue 10.4): they said 58 vs 75 on the same pair.
#[test]
fn show_tensors_and_diff_agree_on_what_a_step_changed() {
    let env = TestEnv::with_repo();
    let mut ids = Vec::new();
    for (s, scenario) in [(0, Scenario::Frozen), (1, Scenario::Frozen)] {
        let dir = step(&env, scenario, SIZE, s);
        ids.push(text(&env.backup(&[&dir], &[]), "id"));
    }
    let model = |show: &Value| -> Vec<Value> {
        show["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| text(f, "path").ends_with("model.safetensors"))
            .unwrap()["tensors"]
            .as_array()
            .unwrap()
            .clone()
    };
    let first = env
        .tvault(args!["--json", "show", &ids[0], "--tensors"])
        .expect_code(0)
        .json();
    let first = model(&first);
    assert!(first.iter().all(|t| t["status"] == "new"), "{first:#?}");

    let show = env
        .tvault(args!["--json", "show", &ids[1], "--tensors"])
        .expect_code(0)
        .json();
    let tensors = model(&show);
    let named = |status: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = tensors
            .iter()
            .filter(|t| status.iter().any(|s| t["status"] == *s))
            .map(|t| text(t, "name"))
            .collect();
        v.sort();
        v
    };
    let diff = env
        .tvault(args!["--json", "diff", &ids[0], &ids[1]])
        .expect_code(0)
        .json();
    let changed = diff["changed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| text(c, "path").ends_with("model.safetensors"))
        .unwrap()
        .clone();
    let mut diff_changed: Vec<String> = changed["tensors"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    diff_changed.sort();
    assert!(!diff_changed.is_empty());
    assert_eq!(named(&["delta", "changed"]), diff_changed);
    assert_eq!(
        named(&["unchanged"]).len() as u64,
        num(&changed["tensors"], "unchanged")
    );
    assert!(named(&["new"]).is_empty());
    // Every tensor of the file is listed, small ones too: the same count as the file holds.
    let ckpt = env.root.join("src/ckpt");
    let file = files_below(&ckpt)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with("model.safetensors"))
        .unwrap();
    assert_eq!(
        tensors.len(),
        crate::testenv::safetensors_tensors(&file).len()
    );
}

/// Size of the `fulltrain` tests' checkpoints (smaller ones are mostly tiny tensors).
const FULL: u64 = 4 << 20;

/// Steps of `fulltrain` (every value changes) backed up with `extra` flags: each step's report.
fn full_training(extra: &[&str]) -> (TestEnv, Vec<Value>) {
    let env = TestEnv::with_repo();
    let reports = (0..3)
        .map(|s| {
            let dir = step(&env, Scenario::Fulltrain, FULL, s);
            let report = env.backup(&[&dir], extra);
            env.assert_restores(&text(&report, "id"), &manifest_of(&dir));
            report
        })
        .collect();
    env.tvault(["verify", "--read-data"]).expect_code(0);
    (env, reports)
}

#[test]
fn full_training_steps_are_stored_whole_unless_dense_deltas_are_asked_for() {
    // Restore speed first: a block that changed everywhere restores from one blob, not from
    // its keyframe and a dense XOR.
    let (plain, reports) = full_training(&[]);
    let methods = crate::testenv::delta_methods(&plain.open_repo());
    assert!(
        methods.iter().all(|&m| m >= 3),
        "only sparse deltas: {methods:?}"
    );
    // Asked for: dense XORs with the keyframe, smaller steps.
    let (dense, with) = full_training(&["--dense-deltas"]);
    let methods = crate::testenv::delta_methods(&dense.open_repo());
    assert!(methods.iter().any(|&m| m <= 2), "{methods:?}");
    for s in 1..3 {
        assert!(stored(&with[s], "delta") > FULL / 2, "{:#?}", with[s]);
        assert!(stored(&reports[s], "delta") < FULL / 4, "{:#?}", reports[s]);
        let (a, b) = (
            num(&with[s], "bytes_added"),
            num(&reports[s], "bytes_added"),
        );
        assert!(
            a * 10 < b * 9,
            "step {s}: {a} bytes with dense deltas, {b} without"
        );
    }
}
