//! The layouts a training run writes (SCENARIOS.md `rolling` and `sharded`): the `finetune`
//! series, value for value, saved as a Hugging Face Trainer saves it. Step k goes to a new folder
//! `DIR/checkpoint-{(k+1)*500}/` with `config.json` and `trainer_state.json`, the model either
//! whole (`model.safetensors`, byte-identical to the `finetune` file) or split in tensor order
//! over shards `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`; folders
//! older than the newest [`SAVE_TOTAL_LIMIT`] are deleted (`save_total_limit=2`). DIR is what
//! gets backed up.
//!
//! The tree after step k is a pure function of the arguments, as for every scenario: the
//! folders of steps k-1 and k, each written only if it does not already hold exactly that (so
//! running steps 0, 1, 2 on one DIR writes each folder once, and a kept folder keeps its mtime),
//! every other `checkpoint-N` folder deleted, and stray files inside the two folders removed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::scenarios::{provenance, write_checkpoint, write_small};
use super::*;

/// Checkpoint folders kept in DIR, newest first (Hugging Face Trainer's `save_total_limit`).
pub const SAVE_TOTAL_LIMIT: u32 = 2;

/// Trainer steps between two checkpoints (`save_steps`): step k is `checkpoint-{(k+1)*500}`.
pub const SAVE_STEPS: u64 = 500;

/// Shards of every [`Scenario::Sharded`] step.
pub const SHARDED_SHARDS: usize = 4;

/// The folder (below DIR) that step `step` of a layout scenario writes.
pub fn checkpoint_folder(step: u32) -> String {
    format!("checkpoint-{}", (u64::from(step) + 1) * SAVE_STEPS)
}

/// How many files step `step` of a layout scenario splits the model over: 1 for
/// [`Scenario::Rolling`] (one `model.safetensors`), [`SHARDED_SHARDS`] for
/// [`Scenario::Sharded`], `2 + step % 3` for [`Scenario::Resharded`].
pub fn shard_count(scenario: Scenario, step: u32) -> usize {
    match scenario {
        Scenario::Sharded => SHARDED_SHARDS,
        Scenario::Resharded => 2 + (step % 3) as usize,
        _ => 1,
    }
}

/// Rolling, Sharded and Resharded: the folders of steps `step - 1` and `step` (see the module
/// doc). Returns their files relative to `dir`, the older folder first.
pub(crate) fn gen_layout(
    scenario: Scenario,
    dir: &Path,
    size: u64,
    seed: u64,
    step: u32,
) -> io::Result<Vec<PathBuf>> {
    let kept = step.saturating_sub(SAVE_TOTAL_LIMIT - 1)..=step;
    let keep: Vec<String> = kept.clone().map(checkpoint_folder).collect();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let numbered = name
            .strip_prefix("checkpoint-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered && entry.file_type()?.is_dir() && !keep.contains(&name) {
            fs::remove_dir_all(entry.path())?;
        }
    }
    let mut files = Vec::new();
    for s in kept {
        files.extend(write_folder(scenario, dir, size, seed, s)?);
    }
    Ok(files)
}

/// Contiguous, non-empty runs of `specs` for `n` files (fewer only if there are fewer tensors),
/// each starting at the first tensor that begins at or after its share of the bytes.
pub fn shard_ranges(specs: &[TensorSpec], n: usize) -> Vec<Range<usize>> {
    let n = n.clamp(1, specs.len().max(1));
    let total: u64 = specs.iter().map(|s| s.byte_len() as u64).sum();
    let mut starts = Vec::with_capacity(specs.len());
    let mut offset = 0u64;
    for spec in specs {
        starts.push(offset);
        offset += spec.byte_len() as u64;
    }
    let mut bounds = vec![0];
    for j in 1..n {
        let at =
            starts.partition_point(|&s| (s as u128) * (n as u128) < (j as u128) * (total as u128));
        let lowest = bounds[j - 1] + 1;
        bounds.push(at.max(lowest).min(specs.len() - (n - j)));
    }
    bounds.push(specs.len());
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Writes step `step`'s folder; returns its files relative to `dir`.
fn write_folder(
    scenario: Scenario,
    dir: &Path,
    size: u64,
    seed: u64,
    step: u32,
) -> io::Result<Vec<PathBuf>> {
    let folder = checkpoint_folder(step);
    let path = dir.join(&folder);
    fs::create_dir_all(&path)?;
    let dims = ModelDims::for_target(size, Dtype::BF16);
    let specs = dims.specs(Dtype::BF16);
    let fill = |first: usize| {
        move |k: usize, spec: &TensorSpec, buf: &mut [u8]| {
            fill_finetune(seed, first + k, spec, step, buf);
        }
    };
    let mut names = Vec::new();
    let n = shard_count(scenario, step);
    if n == 1 {
        // The finetune file itself, header included.
        let metadata = provenance(Scenario::Finetune, seed, size, step);
        write_checkpoint(&path.join("model.safetensors"), &specs, &metadata, fill(0))?;
        names.push("model.safetensors".to_string());
    } else {
        let ranges = shard_ranges(&specs, n);
        let mut weight_map = BTreeMap::new();
        for (k, range) in ranges.iter().enumerate() {
            let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, ranges.len());
            let mut metadata = provenance(scenario, seed, size, step);
            metadata.insert("shard".into(), name.clone());
            let part = &specs[range.clone()];
            write_checkpoint(&path.join(&name), part, &metadata, fill(range.start))?;
            for spec in part {
                weight_map.insert(spec.name.clone(), name.clone());
            }
            names.push(name);
        }
        let total: u64 = specs.iter().map(|s| s.byte_len() as u64).sum();
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        names.push(write_json(&path, "model.safetensors.index.json", &index)?);
    }
    let config = dims.config_json(Dtype::BF16);
    write_small(&path, "config.json", config.as_bytes())?;
    names.push("config.json".into());
    names.push(write_json(
        &path,
        "trainer_state.json",
        &trainer_state(seed, step),
    )?);
    // A folder holds exactly this step's files (another scenario may have written there).
    for entry in fs::read_dir(&path)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !names.contains(&name) {
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(names.iter().map(|n| Path::new(&folder).join(n)).collect())
}

/// Writes `value` as pretty JSON plus a newline to `dir/name` (if it changed); returns `name`.
fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> io::Result<String> {
    let mut text = serde_json::to_string_pretty(value).expect("a json! value serialises");
    text.push('\n');
    write_small(dir, name, text.as_bytes())?;
    Ok(name.to_string())
}

/// A Trainer-like `trainer_state.json`: the global step and one log entry per saved checkpoint
/// so far, so it changes every step.
fn trainer_state(seed: u64, step: u32) -> serde_json::Value {
    let global_step = (u64::from(step) + 1) * SAVE_STEPS;
    let log: Vec<serde_json::Value> = (0..=step)
        .map(|s| {
            let at = (u64::from(s) + 1) * SAVE_STEPS;
            let noise = Rng::keyed(&[seed, tag::TRAINER_LOG, u64::from(s)]).normal(0.02);
            let loss = 1.2 + 1.3 * (-(at as f64) / 2000.0).exp() + noise;
            serde_json::json!({
                "epoch": at as f64 / 4000.0,
                "learning_rate": 1e-4 * (1.0 - at as f64 / 100_000.0),
                "loss": (loss * 1e4).round() / 1e4,
                "step": at,
            })
        })
        .collect();
    serde_json::json!({
        "best_metric": null,
        "epoch": global_step as f64 / 4000.0,
        "global_step": global_step,
        "log_history": log,
        "logging_steps": SAVE_STEPS,
        "save_steps": SAVE_STEPS,
        "train_batch_size": 8,
    })
}
