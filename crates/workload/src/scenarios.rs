//! The SCENARIOS.md workloads: what step k of each scenario writes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Single,
    Unchanged,
    Frozen,
    Finetune,
    Fulltrain,
    Resave,
    Shifted,
    Rolling,
    Sharded,
    Resharded,
    Smallfiles,
    Torchzip,
}

impl Scenario {
    pub fn all() -> &'static [Scenario] {
        &[
            Scenario::Single,
            Scenario::Unchanged,
            Scenario::Frozen,
            Scenario::Finetune,
            Scenario::Fulltrain,
            Scenario::Resave,
            Scenario::Shifted,
            Scenario::Rolling,
            Scenario::Sharded,
            Scenario::Resharded,
            Scenario::Smallfiles,
            Scenario::Torchzip,
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Single => "single",
            Scenario::Unchanged => "unchanged",
            Scenario::Frozen => "frozen",
            Scenario::Finetune => "finetune",
            Scenario::Fulltrain => "fulltrain",
            Scenario::Resave => "resave",
            Scenario::Shifted => "shifted",
            Scenario::Rolling => "rolling",
            Scenario::Sharded => "sharded",
            Scenario::Resharded => "resharded",
            Scenario::Smallfiles => "smallfiles",
            Scenario::Torchzip => "torchzip",
        }
    }

    /// Case-insensitive inverse of [`Scenario::name`].
    pub fn from_name(s: &str) -> Option<Scenario> {
        Scenario::all()
            .iter()
            .copied()
            .find(|sc| sc.name().eq_ignore_ascii_case(s))
    }

    /// One line on what step k looks like, for usage texts.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::Single => "one bf16 checkpoint (step ignored)",
            Scenario::Unchanged => "the same bf16 checkpoint every step (files left untouched)",
            Scenario::Frozen => "bf16; about half the tensors bit-identical between steps",
            Scenario::Finetune => "bf16; about 1% of values change slightly per step",
            Scenario::Fulltrain => "fp32 weights + Adam exp_avg/exp_avg_sq; every value changes",
            Scenario::Resave => "bf16; same tensors, other order and metadata from step 1",
            Scenario::Shifted => "opaque blob; step k inserts k*4099 bytes near the start",
            Scenario::Rolling => {
                "finetune step k in DIR/checkpoint-{(k+1)*500}/; the newest 2 folders kept"
            }
            Scenario::Sharded => "rolling, the model in 4 shards + model.safetensors.index.json",
            Scenario::Resharded => "sharded over 2 + k%3 shards: tensors move between files",
            Scenario::Smallfiles => "2000 small files + 3 bf16 shards; a few small files change",
            Scenario::Torchzip => "the single bf16 model as torch.save writes it (step ignored)",
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes version `step` of the scenario's tree into `dir` (created if missing) with about `size`
/// bytes of checkpoint data, deterministically from `seed`, and returns the tree's files
/// (relative paths). Files are overwritten in place, so step 0 then step 1 on the same dir gives
/// the next checkpoint. A file that already holds exactly what this call would write is left
/// untouched (small files are compared in full; a checkpoint by its length and header, whose
/// metadata names scenario, seed, size and step), so unchanged files keep their mtime. The
/// layout scenarios (rolling, sharded, resharded) write a new `checkpoint-N/` folder below `dir`
/// per step and delete the older ones, as a trainer does (see `layouts.rs`).
pub fn generate(
    scenario: Scenario,
    dir: &Path,
    size: u64,
    seed: u64,
    step: u32,
) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    match scenario {
        Scenario::Single | Scenario::Unchanged => gen_model(scenario, dir, size, seed, 0),
        Scenario::Frozen | Scenario::Finetune => gen_model(scenario, dir, size, seed, step),
        Scenario::Fulltrain => gen_fulltrain(dir, size, seed, step),
        Scenario::Resave => gen_resave(dir, size, seed, step),
        Scenario::Shifted => gen_shifted(dir, size, seed, step),
        Scenario::Smallfiles => gen_smallfiles(dir, size, seed, step),
        Scenario::Rolling | Scenario::Sharded | Scenario::Resharded => {
            super::layouts::gen_layout(scenario, dir, size, seed, step)
        }
        Scenario::Torchzip => super::torchzip::gen_torchzip(dir, size, seed),
    }
}

/// Checkpoint metadata: the usual `format` plus a tag naming what determines the content.
pub(crate) fn provenance(
    scenario: Scenario,
    seed: u64,
    size: u64,
    version: u32,
) -> BTreeMap<String, String> {
    let tag =
        format!("{scenario} seed={seed} size={size} version={version} gen={GENERATOR_VERSION}");
    BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("tvault_workload".to_string(), tag),
    ])
}

/// True when `path` already is a `len`-byte file starting with `header`.
pub(crate) fn checkpoint_is_current(path: &Path, header: &[u8], len: u64) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != len {
        return false;
    }
    let mut existing = vec![0; header.len()];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut existing))
        .is_ok()
        && existing == header
}

/// [`write_safetensors`], unless the file is already current (see [`generate`]).
pub(crate) fn write_checkpoint(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    fill: impl FnMut(usize, &TensorSpec, &mut [u8]),
) -> io::Result<()> {
    let header = safetensors_header(specs, metadata);
    if checkpoint_is_current(path, &header, safetensors_len(specs, metadata)) {
        return Ok(());
    }
    write_safetensors(path, specs, metadata, fill)
}

/// Writes `dir/rel` unless it already holds exactly `bytes`.
pub(crate) fn write_small(dir: &Path, rel: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(rel);
    if fs::read(&path).ok().as_deref() != Some(bytes) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, bytes)?;
    }
    Ok(PathBuf::from(rel))
}

/// Frozen layers: even-numbered layers, embeddings and the final norm never change.
pub(crate) fn is_trainable(name: &str) -> bool {
    if name == "lm_head.weight" {
        return true;
    }
    name.strip_prefix("model.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|layer| layer.parse::<usize>().ok())
        .is_some_and(|layer| layer % 2 == 1)
}

/// Single, Unchanged, Frozen and Finetune: `model.safetensors` (bf16) plus `config.json`.
pub(crate) fn gen_model(
    scenario: Scenario,
    dir: &Path,
    size: u64,
    seed: u64,
    step: u32,
) -> io::Result<Vec<PathBuf>> {
    let dims = ModelDims::for_target(size, Dtype::BF16);
    let specs = dims.specs(Dtype::BF16);
    let metadata = provenance(scenario, seed, size, step);
    write_checkpoint(
        &dir.join("model.safetensors"),
        &specs,
        &metadata,
        |i, spec, buf| match scenario {
            Scenario::Frozen if step > 0 && is_trainable(&spec.name) => {
                let key = mix(&[seed, tag::TRAIN, i as u64, u64::from(step)]);
                fill_normal_keyed(key, 0, spec.dtype, (init_mean(spec), WEIGHT_STD), buf);
            }
            Scenario::Finetune => fill_finetune(seed, i, spec, step, buf),
            _ => fill_base(seed, i, spec, buf),
        },
    )?;
    let config = write_small(dir, "config.json", dims.config_json(Dtype::BF16).as_bytes())?;
    Ok(vec![PathBuf::from("model.safetensors"), config])
}

/// Fulltrain: fp32 `model.safetensors` plus `optimizer.safetensors` (two moments per weight), so
/// `size` is split 1:2 between them. Both files are written side by side, tensor by tensor.
pub(crate) fn gen_fulltrain(
    dir: &Path,
    size: u64,
    seed: u64,
    step: u32,
) -> io::Result<Vec<PathBuf>> {
    let dims = ModelDims::for_target(size / 3, Dtype::F32);
    let specs = dims.specs(Dtype::F32);
    let opt_specs: Vec<TensorSpec> = specs
        .iter()
        .flat_map(|s| {
            ["exp_avg", "exp_avg_sq"].map(|moment| TensorSpec {
                name: format!("state.{}.{moment}", s.name),
                dtype: Dtype::F32,
                shape: s.shape.clone(),
            })
        })
        .collect();
    let metadata = provenance(Scenario::Fulltrain, seed, size, step);
    let mut opt_metadata = metadata.clone();
    opt_metadata.insert("step".into(), step.to_string());
    let (model_path, opt_path) = (
        dir.join("model.safetensors"),
        dir.join("optimizer.safetensors"),
    );
    let current = |path: &Path, specs: &[TensorSpec], meta| {
        checkpoint_is_current(
            path,
            &safetensors_header(specs, meta),
            safetensors_len(specs, meta),
        )
    };
    if !(current(&model_path, &specs, &metadata) && current(&opt_path, &opt_specs, &opt_metadata)) {
        let mut model = SafetensorsWriter::create(&model_path, &specs, &metadata)?;
        let mut opt = SafetensorsWriter::create(&opt_path, &opt_specs, &opt_metadata)?;
        let (mut w, mut m, mut v, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, spec) in specs.iter().enumerate() {
            for state in [&mut w, &mut m, &mut v] {
                state.clear();
                state.resize(spec.numel(), 0.0f32);
            }
            adam_state(seed, i, spec, step, (&mut w, &mut m, &mut v));
            f32s_to_le(&w, &mut bytes);
            model.write_tensor(&bytes)?;
            f32s_to_le(&m, &mut bytes);
            opt.write_tensor(&bytes)?;
            f32s_to_le(&v, &mut bytes);
            opt.write_tensor(&bytes)?;
        }
        model.finish()?;
        opt.finish()?;
    }
    let config = write_small(dir, "config.json", dims.config_json(Dtype::F32).as_bytes())?;
    Ok(vec![
        PathBuf::from("model.safetensors"),
        PathBuf::from("optimizer.safetensors"),
        config,
    ])
}

/// Resave: the base tensors in model order at step 0, in a step-specific shuffled order with
/// extra metadata from step 1 on.
pub(crate) fn gen_resave(dir: &Path, size: u64, seed: u64, step: u32) -> io::Result<Vec<PathBuf>> {
    let dims = ModelDims::for_target(size, Dtype::BF16);
    let specs = dims.specs(Dtype::BF16);
    let mut order: Vec<usize> = (0..specs.len()).collect();
    let mut metadata = provenance(Scenario::Resave, seed, size, step);
    if step > 0 {
        Rng::keyed(&[seed, tag::SHUFFLE, u64::from(step)]).shuffle(&mut order);
        if order.iter().enumerate().all(|(k, &i)| k == i) {
            order.rotate_left(1);
        }
        metadata.insert("saved_by".into(), format!("step-{step}"));
    }
    let ordered: Vec<TensorSpec> = order.iter().map(|&i| specs[i].clone()).collect();
    write_checkpoint(
        &dir.join("model.safetensors"),
        &ordered,
        &metadata,
        |k, spec, buf| fill_base(seed, order[k], spec, buf),
    )?;
    let config = write_small(dir, "config.json", dims.config_json(Dtype::BF16).as_bytes())?;
    Ok(vec![PathBuf::from("model.safetensors"), config])
}

/// The bytes step `s` inserts into the Shifted blob.
pub(crate) fn shift_insert(seed: u64, s: u32) -> Vec<u8> {
    let mut bytes = vec![0; SHIFT_LEN];
    Rng::keyed(&[seed, tag::INSERT, u64::from(s)]).fill_bytes(&mut bytes);
    bytes
}

/// Shifted: `size` headerless weight-like bytes; step k puts the insertions of steps k, k-1, ...,
/// 1 at [`SHIFT_OFFSET`], so step k is also step k-1 with 4099 bytes inserted there.
pub(crate) fn gen_shifted(dir: &Path, size: u64, seed: u64, step: u32) -> io::Result<Vec<PathBuf>> {
    const BATCH: u64 = 8 << 20; // a multiple of the 2-byte elements and of fill blocks
    let insert_at = SHIFT_OFFSET.min(size);
    let insertion: Vec<u8> = (1..=step)
        .rev()
        .flat_map(|s| shift_insert(seed, s))
        .collect();
    let key = mix(&[seed, tag::BLOB]);
    let block_bytes = (BLOCK_ELEMS * Dtype::BF16.size()) as u64;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(dir.join("blob.bin"))?);
    if insert_at == 0 {
        out.write_all(&insertion)?;
    }
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let len = (size - pos).min(BATCH) as usize;
        buf.clear();
        buf.resize(len.next_multiple_of(2), 0);
        let weights = (0.0, WEIGHT_STD);
        fill_normal_keyed(key, pos / block_bytes, Dtype::BF16, weights, &mut buf);
        let batch = &buf[..len];
        if pos < insert_at && insert_at <= pos + len as u64 {
            let (head, tail) = batch.split_at((insert_at - pos) as usize);
            out.write_all(head)?;
            out.write_all(&insertion)?;
            out.write_all(tail)?;
        } else {
            out.write_all(batch)?;
        }
        pos += len as u64;
    }
    out.flush()?;
    Ok(vec![PathBuf::from("blob.bin")])
}

/// Relative path and content kind of small file `j`, spread over a few nested directories.
pub(crate) fn small_file_path(j: usize) -> (usize, String) {
    let kind = j % 5;
    let path = match kind {
        0 => format!("tokenizer/vocab/{:02}/vocab-{j:05}.json", j / 250),
        1 => format!("tokenizer/merges/merges-{j:05}.txt"),
        2 => {
            let group = ["model", "train", "eval", "data"][(j / 5) % 4];
            format!("configs/{group}/config-{j:05}.json")
        }
        3 => format!("data/meta/{:02}/shard-{j:05}.jsonl", j / 200),
        _ => format!("eval/results/run-{}/result-{j:05}.csv", j / 500),
    };
    (kind, path)
}

/// Sizes in 100 B..20 KiB skewed towards small ones (min + range * u^4: median ~1.4 KiB, mean
/// ~4 KiB), scaled down so that small files take at most a quarter of `size` (never below 100 B).
pub(crate) fn small_file_sizes(size: u64, seed: u64) -> Vec<usize> {
    let mean = SMALL_MIN + (SMALL_MAX - SMALL_MIN) / 5.0;
    let scale = (size as f64 / 4.0 / (mean * SMALL_FILES as f64)).min(1.0);
    (0..SMALL_FILES)
        .map(|j| {
            let u = Rng::keyed(&[seed, tag::SMALL_SIZE, j as u64]).next_f64();
            let extra = (SMALL_MAX - SMALL_MIN) * (u * u) * (u * u);
            (SMALL_MIN + extra * scale).round() as usize
        })
        .collect()
}

/// For each small file changed by some step in 1..=step, the last such step.
pub(crate) fn small_file_versions(seed: u64, step: u32) -> HashMap<usize, u32> {
    let mut versions = HashMap::new();
    for s in 1..=step {
        let mut rng = Rng::keyed(&[seed, tag::SMALL_CHANGE, u64::from(s)]);
        for _ in 0..SMALL_CHANGES_PER_STEP {
            versions.insert(rng.below(SMALL_FILES as u64) as usize, s);
        }
    }
    versions
}

pub(crate) fn word(rng: &mut Rng) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "to", "ri", "en", "st", "ma", "lo", "ne", "ar", "qu", "in", "th", "es", "ow", "ul",
        "pe",
    ];
    let n = 1 + rng.below(4);
    (0..n).map(|_| SYLLABLES[rng.below(16) as usize]).collect()
}

/// `head`, entries joined by `sep` while they fit, `tail`, then newlines up to `target` bytes.
pub(crate) fn build_text(
    target: usize,
    (head, sep, tail): (&str, &str, &str),
    mut entry: impl FnMut() -> String,
) -> String {
    let mut text = String::from(head);
    let mut first = true;
    loop {
        let e = entry();
        let sep = if first { "" } else { sep };
        if text.len() + sep.len() + e.len() + tail.len() > target {
            break;
        }
        text.push_str(sep);
        text.push_str(&e);
        first = false;
    }
    text.push_str(tail);
    while text.len() < target {
        text.push('\n');
    }
    text
}

/// Tokenizer-, config- and metadata-like text of about `target` bytes.
pub(crate) fn small_file_text(kind: usize, rng: &mut Rng, target: usize) -> String {
    match kind {
        0 => build_text(target, ("{\"model\":{\"vocab\":{", ",", "}}}\n"), || {
            let prefix = if rng.below(2) == 0 { "\u{2581}" } else { "" };
            let token = serde_json::to_string(&format!("{prefix}{}", word(rng)))
                .expect("a string serialises");
            format!("{token}:{}", rng.below(50_000))
        }),
        1 => build_text(target, ("#version: 0.2\n", "", ""), || {
            format!("{} {}\n", word(rng), word(rng))
        }),
        2 => {
            let mut k = 0;
            build_text(target, ("{\n", ",\n", "\n}\n"), || {
                k += 1;
                let value = match rng.below(4) {
                    0 => format!("{:.6e}", rng.next_f64() * 1e-3),
                    1 => rng.below(100_000).to_string(),
                    2 => format!("\"{}\"", word(rng)),
                    _ => (rng.below(2) == 0).to_string(),
                };
                format!("  \"{}_{k}\": {value}", word(rng))
            })
        }
        3 => build_text(target, ("", "", ""), || {
            format!(
                "{{\"shard\":{},\"offset\":{},\"tokens\":{},\"sha256\":\"{:016x}{:016x}\"}}\n",
                rng.below(4096),
                rng.below(1 << 40),
                rng.below(1 << 20),
                rng.next_u64(),
                rng.next_u64()
            )
        }),
        _ => build_text(target, ("task,metric,step,value\n", "", ""), || {
            let metric = ["acc", "f1", "loss", "ppl"][rng.below(4) as usize];
            let step = rng.below(100) * 1000;
            format!("{},{metric},{step},{:.4}\n", word(rng), rng.next_f64())
        }),
    }
}

/// Smallfiles: [`SMALL_FILES`] small files plus a bf16 model in up to [`SHARDS`] shards with its
/// index and config; step k rewrites the few small files picked by steps 1..=k.
pub(crate) fn gen_smallfiles(
    dir: &Path,
    size: u64,
    seed: u64,
    step: u32,
) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let sizes = small_file_sizes(size, seed);
    let versions = small_file_versions(seed, step);
    for (j, &len) in sizes.iter().enumerate() {
        let (kind, rel) = small_file_path(j);
        let version = versions.get(&j).copied().unwrap_or(0);
        let mut rng = Rng::keyed(&[seed, tag::SMALL, j as u64, u64::from(version)]);
        let text = small_file_text(kind, &mut rng, len);
        written.push(write_small(dir, &rel, text.as_bytes())?);
    }

    let small_total: u64 = sizes.iter().map(|&s| s as u64).sum();
    let dims = ModelDims::for_target(size.saturating_sub(small_total).max(64 << 10), Dtype::BF16);
    let specs = dims.specs(Dtype::BF16);
    let total: u64 = specs.iter().map(|s| s.byte_len() as u64).sum();
    // Each tensor goes to the shard its start offset falls in; empty shards are dropped.
    let mut shard_of = Vec::with_capacity(specs.len());
    let mut offset = 0u64;
    for spec in &specs {
        shard_of.push((offset * SHARDS as u64 / total) as usize);
        offset += spec.byte_len() as u64;
    }
    let mut used: Vec<usize> = shard_of.clone();
    used.dedup();
    let mut weight_map = BTreeMap::new();
    for (k, &shard) in used.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, used.len());
        let members: Vec<usize> = (0..specs.len()).filter(|&i| shard_of[i] == shard).collect();
        let shard_specs: Vec<TensorSpec> = members.iter().map(|&i| specs[i].clone()).collect();
        let mut metadata = provenance(Scenario::Smallfiles, seed, size, 0);
        metadata.insert("shard".into(), name.clone());
        write_checkpoint(&dir.join(&name), &shard_specs, &metadata, |m, spec, buf| {
            fill_base(seed, members[m], spec, buf)
        })?;
        for spec in &shard_specs {
            weight_map.insert(spec.name.clone(), name.clone());
        }
        written.push(PathBuf::from(name));
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let mut index = serde_json::to_string_pretty(&index).expect("a json! value serialises");
    index.push('\n');
    written.push(write_small(
        dir,
        "model.safetensors.index.json",
        index.as_bytes(),
    )?);
    written.push(write_small(
        dir,
        "config.json",
        dims.config_json(Dtype::BF16).as_bytes(),
    )?);
    Ok(written)
}

/// Parses a byte count: plain bytes, or a K/M/G/T suffix (powers of 1000, also KB/MB/...) or
/// KiB/MiB/GiB/TiB (powers of 1024); case-insensitive, fractions allowed ("1.5GiB").
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return None,
    };
    if number.contains('.') {
        let value = number.parse::<f64>().ok()? * multiplier as f64;
        (value.is_finite() && value < u64::MAX as f64).then(|| value.round() as u64)
    } else {
        number.parse::<u64>().ok()?.checked_mul(multiplier)
    }
}
