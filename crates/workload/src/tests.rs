//! Tests of the generator: determinism, distributions, and each scenario's promises.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::*;

const MIB: u64 = 1 << 20;

struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

struct Parsed {
    metadata: BTreeMap<String, String>,
    /// In data order.
    tensors: Vec<Tensor>,
}

/// Parses a safetensors file with serde_json, checking the layout rules on the way.
fn read_safetensors(path: &Path) -> Parsed {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header not padded to 8 bytes");
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (key, value) in header.as_object().unwrap() {
        if key == "__metadata__" {
            for (k, v) in value.as_object().unwrap() {
                metadata.insert(k.clone(), v.as_str().unwrap().to_string());
            }
            continue;
        }
        let dtype = Dtype::from_name(value["dtype"].as_str().unwrap()).unwrap();
        let shape: Vec<usize> = value["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let offsets = value["data_offsets"].as_array().unwrap();
        let (begin, end) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        let numel: usize = shape.iter().product();
        assert_eq!(end - begin, numel * dtype.size(), "{key}: offsets vs shape");
        entries.push((begin, end, key.clone(), dtype, shape));
    }
    entries.sort_by_key(|e| (e.0, e.1));
    let mut expected_begin = 0;
    let mut tensors = Vec::new();
    for (begin, end, name, dtype, shape) in entries {
        assert_eq!(begin, expected_begin, "{name}: not contiguous");
        expected_begin = end;
        let data = data[begin..end].to_vec();
        tensors.push(Tensor {
            name,
            dtype,
            shape,
            data,
        });
    }
    assert_eq!(expected_begin, data.len(), "data section length");
    Parsed { metadata, tensors }
}

fn decode_all(t: &Tensor) -> Vec<f32> {
    t.data
        .chunks_exact(t.dtype.size())
        .map(|c| t.dtype.decode(c))
        .collect()
}

fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Every file under `dir` (relative path -> bytes).
fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn gen_step(scenario: Scenario, dir: &Path, size: u64, step: u32) -> Vec<PathBuf> {
    generate(scenario, dir, size, 7, step).unwrap()
}

#[test]
fn rng_is_deterministic_and_uniform() {
    let a: Vec<u64> = (0..100)
        .scan(Rng::new(5), |r, _| Some(r.next_u64()))
        .collect();
    let b: Vec<u64> = (0..100)
        .scan(Rng::new(5), |r, _| Some(r.next_u64()))
        .collect();
    let c: Vec<u64> = (0..100)
        .scan(Rng::new(6), |r, _| Some(r.next_u64()))
        .collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
    let mut rng = Rng::new(1);
    let xs: Vec<f64> = (0..100_000).map(|_| rng.next_f64()).collect();
    assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
    let normals: Vec<f32> = (0..100_000).map(|_| rng.normal(3.0) as f32).collect();
    let (mean, std) = mean_std(&normals);
    assert!(
        mean.abs() < 0.05 && (std - 3.0).abs() < 0.05,
        "{mean} {std}"
    );
    assert!((0..1000).all(|_| rng.below(7) < 7));
}

#[test]
fn ln_matches_libm() {
    let mut rng = Rng::new(9);
    for _ in 0..100_000 {
        let x = (1.0 - rng.next_f64()) * 2f64.powi(rng.below(200) as i32 - 100);
        let (ours, libm) = (ln(x), x.ln());
        assert!(
            (ours - libm).abs() <= 1e-12 * libm.abs().max(1e-3),
            "ln({x}): {ours} vs {libm}"
        );
    }
    assert_eq!(ln(1.0), 0.0);
}

#[test]
fn bf16_rounds_to_nearest_even() {
    assert_eq!(f32_to_bf16(1.0), 0x3F80);
    assert_eq!(f32_to_bf16(-2.0), 0xC000);
    // Exactly half way between 0x3F80 and 0x3F81: ties go to the even one.
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    assert_eq!(bf16_to_f32(0x3F80), 1.0);
    assert_eq!(bf16_next(0x3F80, true), 0x3F81);
    assert_eq!(bf16_next(0xBF80, true), 0xBF7F);
    assert!(bf16_to_f32(bf16_next(0x0000, false)) < 0.0);
}

#[test]
fn f16_conversion_matches_ieee() {
    assert_eq!(f32_to_f16(1.0), 0x3C00);
    assert_eq!(f32_to_f16(-2.0), 0xC000);
    assert_eq!(f32_to_f16(0.1), 0x2E66);
    assert_eq!(f32_to_f16(65504.0), 0x7BFF);
    assert_eq!(f32_to_f16(65520.0), 0x7C00); // rounds up to infinity
    assert_eq!(f32_to_f16(5.960_464_5e-8), 0x0001); // 2^-24, smallest subnormal
    assert_eq!(f32_to_f16(2.980_232_2e-8), 0x0000); // 2^-25 ties to even zero
    assert_eq!(f32_to_f16(1e-10), 0x0000);
    assert_eq!(f32_to_f16(f32::INFINITY), 0x7C00);
    assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    // Every non-NaN half survives a round trip through f32.
    for h in 0..=u16::MAX {
        let x = f16_to_f32(h);
        if !x.is_nan() {
            assert_eq!(f32_to_f16(x), h, "half {h:#06x} -> {x}");
        }
    }
    // Halfway between 1.0 and the next half (1 + 2^-10) rounds to even (1.0).
    assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3C00);
    assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
}

#[test]
fn fill_weights_look_like_weights() {
    for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        let mut buf = vec![0u8; 200_000 * dtype.size()];
        fill_weights(&mut Rng::new(3), dtype, &mut buf);
        let values: Vec<f32> = buf
            .chunks_exact(dtype.size())
            .map(|c| dtype.decode(c))
            .collect();
        let (mean, std) = mean_std(&values);
        assert!(mean.abs() < 0.001, "{dtype:?} mean {mean}");
        assert!(
            (std - WEIGHT_STD).abs() < 0.1 * WEIGHT_STD,
            "{dtype:?} std {std}"
        );
        let distinct: HashSet<u32> = values.iter().map(|v| v.to_bits()).collect();
        assert!(
            distinct.len() > 1000,
            "{dtype:?}: only {} values",
            distinct.len()
        );
    }
}

#[test]
fn transformer_specs_hit_the_target() {
    for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        let mut target = 64u64 << 10;
        while target <= 32 << 30 {
            let specs = transformer_specs(target, dtype);
            let total: u64 = specs.iter().map(|s| s.byte_len() as u64).sum();
            let err = (total as f64 - target as f64).abs() / target as f64;
            assert!(total > 0 && err < 0.10, "{dtype:?} {target}: {total}");
            assert!(specs.iter().all(|s| s.byte_len() <= MAX_TENSOR_BYTES));
            assert!(specs.iter().all(|s| s.dtype == dtype && s.byte_len() > 0));
            let names: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names.len(), specs.len(), "duplicate names");
            assert_eq!(specs, transformer_specs(target, dtype));
            target = target * 3 / 2;
        }
    }
    let specs = transformer_specs(0, Dtype::BF16);
    assert!(specs.iter().map(TensorSpec::byte_len).sum::<usize>() > 0);
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"model.embed_tokens.weight"));
    assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight"));
    assert!(names.contains(&"model.layers.0.mlp.down_proj.weight"));
    assert!(names.contains(&"lm_head.weight"));
}

#[test]
fn write_safetensors_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let specs = vec![
        TensorSpec {
            name: "a\"b".into(),
            dtype: Dtype::BF16,
            shape: vec![3, 5],
        },
        TensorSpec {
            name: "scalar".into(),
            dtype: Dtype::F32,
            shape: vec![],
        },
        TensorSpec {
            name: "empty".into(),
            dtype: Dtype::F16,
            shape: vec![0, 4],
        },
        TensorSpec {
            name: "c".into(),
            dtype: Dtype::F16,
            shape: vec![7],
        },
    ];
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut calls = Vec::new();
    write_safetensors(&path, &specs, &metadata, |i, spec, buf| {
        assert_eq!(buf.len(), spec.byte_len());
        calls.push(i);
        buf.fill(i as u8 + 1);
    })
    .unwrap();
    assert_eq!(calls, [0, 1, 2, 3]);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        safetensors_len(&specs, &metadata)
    );
    let parsed = read_safetensors(&path);
    assert_eq!(parsed.metadata, metadata);
    let names: Vec<&str> = parsed.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a\"b", "scalar", "empty", "c"]);
    assert_eq!(parsed.tensors[0].shape, [3, 5]);
    assert_eq!(parsed.tensors[3].data, vec![4u8; 14]);

    let dup = vec![specs[0].clone(), specs[0].clone()];
    assert!(write_safetensors(&path, &dup, &metadata, |_, _, _| {}).is_err());
    let mut writer = SafetensorsWriter::create(&path, &specs, &BTreeMap::new()).unwrap();
    assert!(writer.write_tensor(&[0; 3]).is_err());
    writer.write_tensor(&[0; 30]).unwrap();
    assert!(writer.finish().is_err());
}

#[test]
fn generated_model_is_valid_and_weight_like() {
    let dir = tempfile::tempdir().unwrap();
    let files = gen_step(Scenario::Single, dir.path(), 3 * MIB, 0);
    assert_eq!(
        files,
        [
            PathBuf::from("model.safetensors"),
            PathBuf::from("config.json")
        ]
    );
    let parsed = read_safetensors(&dir.path().join("model.safetensors"));
    assert_eq!(parsed.metadata["format"], "pt");
    let total: usize = parsed.tensors.iter().map(|t| t.data.len()).sum();
    assert!(
        (total as f64 / (3 * MIB) as f64 - 1.0).abs() < 0.1,
        "{total}"
    );
    let q = parsed
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q.dtype, Dtype::BF16);
    let (mean, std) = mean_std(&decode_all(q));
    assert!(mean.abs() < 0.002, "mean {mean}");
    assert!((std - WEIGHT_STD).abs() < 0.1 * WEIGHT_STD, "std {std}");
    let norm = parsed
        .tensors
        .iter()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    let (mean, _) = mean_std(&decode_all(norm));
    assert!((mean - 1.0).abs() < 0.01, "norm mean {mean}");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    // Smallfiles is checked in its own test: creating 2000 files three times is slow.
    for &scenario in Scenario::all()
        .iter()
        .filter(|&&s| s != Scenario::Smallfiles)
    {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let files_a = generate(scenario, a.path(), MIB / 2, 11, 1).unwrap();
        let files_b = generate(scenario, b.path(), MIB / 2, 11, 1).unwrap();
        generate(scenario, c.path(), MIB / 2, 12, 1).unwrap();
        assert_eq!(files_a, files_b);
        let (ta, tb, tc) = (
            read_tree(a.path()),
            read_tree(b.path()),
            read_tree(c.path()),
        );
        assert_eq!(ta.len(), files_a.len(), "{scenario}: returned list vs tree");
        assert!(ta == tb, "{scenario}: same seed, different bytes");
        let big = |t: &BTreeMap<PathBuf, Vec<u8>>| -> Vec<u8> {
            t.values().max_by_key(|v| v.len()).unwrap().clone()
        };
        assert_ne!(big(&ta), big(&tc), "{scenario}: seed ignored");
    }
}

#[test]
fn single_and_unchanged_ignore_step_and_keep_files() {
    let dir = tempfile::tempdir().unwrap();
    gen_step(Scenario::Unchanged, dir.path(), MIB, 0);
    let path = dir.path().join("model.safetensors");
    let before = (
        fs::read(&path).unwrap(),
        fs::metadata(&path).unwrap().modified().unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    gen_step(Scenario::Unchanged, dir.path(), MIB, 3);
    let after = (
        fs::read(&path).unwrap(),
        fs::metadata(&path).unwrap().modified().unwrap(),
    );
    assert!(before == after, "unchanged checkpoint was rewritten");

    let other = tempfile::tempdir().unwrap();
    gen_step(Scenario::Single, other.path(), MIB, 0);
    let step0 = fs::read(other.path().join("model.safetensors")).unwrap();
    gen_step(Scenario::Single, other.path(), MIB, 2);
    assert!(step0 == fs::read(other.path().join("model.safetensors")).unwrap());
    // A different size regenerates rather than keeping the stale file.
    gen_step(Scenario::Single, other.path(), 2 * MIB, 0);
    assert!(step0 != fs::read(other.path().join("model.safetensors")).unwrap());
}

#[test]
fn frozen_keeps_about_half_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    gen_step(Scenario::Frozen, dir.path(), 2 * MIB, 0);
    let s0 = read_safetensors(&path);
    gen_step(Scenario::Frozen, dir.path(), 2 * MIB, 1);
    let s1 = read_safetensors(&path);
    gen_step(Scenario::Frozen, dir.path(), 2 * MIB, 2);
    let s2 = read_safetensors(&path);
    for (old, new) in [(&s0, &s1), (&s1, &s2)] {
        assert_eq!(old.tensors.len(), new.tensors.len());
        let mut same = 0;
        for (a, b) in old.tensors.iter().zip(&new.tensors) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.data == b.data, !is_trainable(&a.name), "{}", a.name);
            same += usize::from(a.data == b.data);
        }
        let fraction = same as f64 / old.tensors.len() as f64;
        assert!(
            (0.3..=0.7).contains(&fraction),
            "identical fraction {fraction}"
        );
    }
}

#[test]
fn finetune_changes_about_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let steps: Vec<Parsed> = (0..3)
        .map(|s| {
            gen_step(Scenario::Finetune, dir.path(), 2 * MIB, s);
            read_safetensors(&path)
        })
        .collect();
    for pair in steps.windows(2) {
        let (mut changed, mut total) = (0usize, 0usize);
        for (a, b) in pair[0].tensors.iter().zip(&pair[1].tensors) {
            assert_eq!(a.name, b.name);
            for (x, y) in a.data.chunks_exact(2).zip(b.data.chunks_exact(2)) {
                total += 1;
                if x != y {
                    changed += 1;
                    let (x, y) = (Dtype::BF16.decode(x), Dtype::BF16.decode(y));
                    // A tiny step: Normal(0, 1e-4), or one bf16 ulp (~0.8%) if that rounds away.
                    assert!((x - y).abs() <= 1e-3 + 0.01 * x.abs(), "{x} -> {y}");
                }
            }
        }
        let fraction = changed as f64 / total as f64;
        assert!(
            (0.005..=0.02).contains(&fraction),
            "changed fraction {fraction}"
        );
    }
    // Step 2 regenerated in a fresh dir equals step 2 reached through steps 0 and 1.
    let fresh = tempfile::tempdir().unwrap();
    gen_step(Scenario::Finetune, fresh.path(), 2 * MIB, 2);
    assert!(fs::read(fresh.path().join("model.safetensors")).unwrap() == fs::read(&path).unwrap());
}

#[test]
fn fulltrain_changes_every_value_a_little() {
    let dir = tempfile::tempdir().unwrap();
    let size = 3 * MIB;
    let files = gen_step(Scenario::Fulltrain, dir.path(), size, 0);
    assert!(files.contains(&PathBuf::from("optimizer.safetensors")));
    let model0 = read_safetensors(&dir.path().join("model.safetensors"));
    let opt0 = read_safetensors(&dir.path().join("optimizer.safetensors"));
    let both: u64 = ["model.safetensors", "optimizer.safetensors"]
        .iter()
        .map(|f| fs::metadata(dir.path().join(f)).unwrap().len())
        .sum();
    assert!((both as f64 / size as f64 - 1.0).abs() < 0.1, "{both}");
    assert_eq!(opt0.tensors.len(), 2 * model0.tensors.len());
    for t in model0.tensors.iter().chain(&opt0.tensors) {
        assert_eq!(t.dtype, Dtype::F32);
    }
    gen_step(Scenario::Fulltrain, dir.path(), size, 1);
    let model1 = read_safetensors(&dir.path().join("model.safetensors"));
    let opt1 = read_safetensors(&dir.path().join("optimizer.safetensors"));
    for (old, new) in [(&model0, &model1), (&opt0, &opt1)] {
        let (mut changed, mut total) = (0usize, 0usize);
        for (a, b) in old.tensors.iter().zip(&new.tensors) {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
            for (x, y) in decode_all(a).into_iter().zip(decode_all(b)) {
                total += 1;
                changed += usize::from(x != y);
                if a.name.starts_with("model.") || a.name == "lm_head.weight" {
                    assert!((x - y).abs() < 1e-3, "{}: {x} -> {y}", a.name);
                }
            }
        }
        assert!(
            changed as f64 > 0.99 * total as f64,
            "{changed} of {total} changed"
        );
    }
    let sq = opt1
        .tensors
        .iter()
        .find(|t| t.name.ends_with("exp_avg_sq"))
        .unwrap();
    assert!(decode_all(sq).iter().all(|&v| v > 0.0));
}

#[test]
fn resave_reorders_identical_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    gen_step(Scenario::Resave, dir.path(), 2 * MIB, 0);
    let bytes0 = fs::read(&path).unwrap();
    let s0 = read_safetensors(&path);
    gen_step(Scenario::Resave, dir.path(), 2 * MIB, 1);
    let bytes1 = fs::read(&path).unwrap();
    let s1 = read_safetensors(&path);
    assert!(bytes0 != bytes1, "file did not change");
    assert_ne!(s0.metadata, s1.metadata);
    let by_name = |p: &Parsed| -> BTreeMap<String, Vec<u8>> {
        p.tensors
            .iter()
            .map(|t| (t.name.clone(), t.data.clone()))
            .collect()
    };
    assert!(by_name(&s0) == by_name(&s1), "tensor bytes differ");
    let order = |p: &Parsed| -> Vec<String> { p.tensors.iter().map(|t| t.name.clone()).collect() };
    assert_ne!(order(&s0), order(&s1));
}

#[test]
fn shifted_inserts_exactly_4099_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob.bin");
    let size = MIB + 333; // odd, and not a multiple of anything
    let blobs: Vec<Vec<u8>> = (0..3)
        .map(|s| {
            gen_step(Scenario::Shifted, dir.path(), size, s);
            fs::read(&path).unwrap()
        })
        .collect();
    assert_eq!(blobs[0].len() as u64, size);
    assert_ne!(&blobs[0][..8], b"\0\0\0\0\0\0\0\0");
    let at = SHIFT_OFFSET as usize;
    for pair in blobs.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        assert_eq!(new.len(), old.len() + SHIFT_LEN);
        assert_eq!(&new[..at], &old[..at]);
        assert_eq!(&new[at + SHIFT_LEN..], &old[at..]);
        assert_ne!(&new[at..at + SHIFT_LEN], &old[at..at + SHIFT_LEN]);
    }
    // Tiny blobs put the insertion at the end.
    gen_step(Scenario::Shifted, dir.path(), 10, 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), 10 + SHIFT_LEN as u64);
}

#[test]
fn smallfiles_writes_many_small_files_and_changes_few() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB;
    let files = gen_step(Scenario::Smallfiles, dir.path(), size, 0);
    let tree0 = read_tree(dir.path());
    assert!(files.len() >= 1000, "{} files", files.len());
    assert_eq!(tree0.len(), files.len());
    let shards: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!((2..=3).contains(&shards.len()), "{} shards", shards.len());
    let shard_bytes: u64 = shards.iter().map(|f| tree0[*f].len() as u64).sum();
    let all_bytes: u64 = tree0.values().map(|v| v.len() as u64).sum();
    assert!(
        shard_bytes * 2 > all_bytes,
        "shards {shard_bytes} of {all_bytes}"
    );
    assert!(
        (all_bytes as f64 / size as f64 - 1.0).abs() < 0.1,
        "{all_bytes}"
    );
    for shard in &shards {
        read_safetensors(&dir.path().join(shard));
    }
    for (path, bytes) in &tree0 {
        if !path.to_string_lossy().contains("safetensors") {
            assert!(
                (100..=20 << 10).contains(&bytes.len()),
                "{path:?}: {}",
                bytes.len()
            );
        }
    }
    let depth = files.iter().map(|f| f.components().count()).max().unwrap();
    assert!(depth >= 3, "not nested");

    gen_step(Scenario::Smallfiles, dir.path(), size, 1);
    let tree1 = read_tree(dir.path());
    assert_eq!(
        tree0.keys().collect::<Vec<_>>(),
        tree1.keys().collect::<Vec<_>>()
    );
    let changed: Vec<&PathBuf> = tree0.keys().filter(|k| tree0[*k] != tree1[*k]).collect();
    assert!(
        (1..=SMALL_CHANGES_PER_STEP).contains(&changed.len()),
        "{changed:?}"
    );
    assert!(changed
        .iter()
        .all(|p| !p.to_string_lossy().contains("safetensors")));

    // Going back to step 0 restores exactly the first tree; another seed gives other files.
    gen_step(Scenario::Smallfiles, dir.path(), size, 0);
    assert!(read_tree(dir.path()) == tree0, "step 0 not reproduced");
    assert_ne!(small_file_sizes(size, 7), small_file_sizes(size, 8));
}

/// The tensors of `finetune` step `step` at `size`, in file order.
fn finetune_tensors(size: u64, step: u32) -> Vec<Tensor> {
    let dir = tempfile::tempdir().unwrap();
    gen_step(Scenario::Finetune, dir.path(), size, step);
    read_safetensors(&dir.path().join("model.safetensors")).tensors
}

/// The `checkpoint-N` folders in `dir`, sorted by N.
fn checkpoint_folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| n["checkpoint-".len()..].parse::<u64>().unwrap());
    names
}

#[test]
fn rolling_writes_each_finetune_step_in_a_new_folder_and_keeps_the_newest_two() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB;
    let mut states = Vec::new();
    for step in 0..4 {
        let files = gen_step(Scenario::Rolling, dir.path(), size, step);
        let kept: Vec<String> = (step.saturating_sub(1)..=step)
            .map(checkpoint_folder)
            .collect();
        assert_eq!(checkpoint_folders(dir.path()), kept, "step {step}");
        let tree = read_tree(dir.path());
        assert_eq!(files.iter().collect::<HashSet<_>>().len(), files.len());
        assert_eq!(
            tree.keys().collect::<HashSet<_>>(),
            files.iter().collect::<HashSet<_>>(),
            "step {step}: returned list vs tree"
        );
        let newest = Path::new(&kept[kept.len() - 1]).to_path_buf();
        assert_eq!(
            newest,
            Path::new(&format!("checkpoint-{}", (step + 1) * 500))
        );
        // The finetune step's file itself, header included.
        let finetune = tempfile::tempdir().unwrap();
        gen_step(Scenario::Finetune, finetune.path(), size, step);
        assert!(
            tree[&newest.join("model.safetensors")]
                == fs::read(finetune.path().join("model.safetensors")).unwrap(),
            "step {step}: not the finetune checkpoint"
        );
        let state: serde_json::Value =
            serde_json::from_slice(&tree[&newest.join("trainer_state.json")]).unwrap();
        assert_eq!(state["global_step"], (step + 1) * 500);
        states.push(tree[&newest.join("trainer_state.json")].clone());
        assert!(tree.contains_key(&newest.join("config.json")));
    }
    assert!(
        states.windows(2).all(|w| w[0] != w[1]),
        "trainer_state.json unchanged"
    );

    // Going on keeps the folder it does not rewrite (same mtime: a backup need not read it).
    let kept = dir.path().join("checkpoint-2000/model.safetensors");
    let mtime = fs::metadata(&kept).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    gen_step(Scenario::Rolling, dir.path(), size, 4);
    assert_eq!(fs::metadata(&kept).unwrap().modified().unwrap(), mtime);

    // The tree after step k does not depend on what ran before.
    let fresh = tempfile::tempdir().unwrap();
    gen_step(Scenario::Rolling, fresh.path(), size, 4);
    assert!(
        read_tree(fresh.path()) == read_tree(dir.path()),
        "not deterministic"
    );
}

/// Checks `folder` of a sharded step: `shards` valid safetensors shards named HF's way, an index
/// mapping every tensor to the shard holding it with the total size, and the shards' tensors in
/// order are exactly `expected`. Returns the index's weight map.
#[track_caller]
fn assert_sharded(folder: &Path, shards: usize, expected: &[Tensor]) -> BTreeMap<String, String> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(folder.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let weight_map: BTreeMap<String, String> =
        serde_json::from_value(index["weight_map"].clone()).unwrap();
    let total: u64 = expected.iter().map(|t| t.data.len() as u64).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    let mut tensors = Vec::new();
    for k in 1..=shards {
        let name = format!("model-{k:05}-of-{shards:05}.safetensors");
        let parsed = read_safetensors(&folder.join(&name));
        assert!(!parsed.tensors.is_empty(), "{name} is empty");
        for t in &parsed.tensors {
            assert_eq!(weight_map.get(&t.name), Some(&name), "{}", t.name);
        }
        tensors.extend(parsed.tensors);
    }
    let shard_files = fs::read_dir(folder)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".safetensors")
        })
        .count();
    assert_eq!(shard_files, shards, "{}", folder.display());
    assert_eq!(weight_map.len(), tensors.len(), "index vs shards");
    assert_eq!(tensors.len(), expected.len());
    for (got, want) in tensors.iter().zip(expected) {
        assert_eq!(
            (&got.name, got.dtype, &got.shape),
            (&want.name, want.dtype, &want.shape)
        );
        assert!(
            got.data == want.data,
            "{}: other bytes than finetune",
            got.name
        );
    }
    weight_map
}

#[test]
fn sharded_and_resharded_split_each_finetune_step_over_indexed_shards() {
    let size = 2 * MIB;
    let expected: Vec<Vec<Tensor>> = (0..3).map(|s| finetune_tensors(size, s)).collect();
    for scenario in [Scenario::Sharded, Scenario::Resharded] {
        let dir = tempfile::tempdir().unwrap();
        let mut maps = Vec::new();
        for step in 0..3 {
            let files = gen_step(scenario, dir.path(), size, step);
            let kept: Vec<String> = (step.saturating_sub(1)..=step)
                .map(checkpoint_folder)
                .collect();
            assert_eq!(
                checkpoint_folders(dir.path()),
                kept,
                "{scenario} step {step}"
            );
            assert_eq!(read_tree(dir.path()).len(), files.len());
            let shards = shard_count(scenario, step);
            let want = if scenario == Scenario::Sharded {
                4
            } else {
                [2, 3, 4][step as usize]
            };
            assert_eq!(shards, want);
            let folder = dir.path().join(checkpoint_folder(step));
            maps.push(assert_sharded(&folder, shards, &expected[step as usize]));
            assert!(folder.join("trainer_state.json").is_file());
            assert!(folder.join("config.json").is_file());
        }
        let moved = maps[1].iter().filter(|(t, f)| maps[2][*t] != **f).count();
        match scenario {
            Scenario::Sharded => assert!(maps[1] == maps[2], "sharded moved tensors"),
            _ => assert!(moved > 0, "resharded moved no tensor"),
        }
        let fresh = tempfile::tempdir().unwrap();
        gen_step(scenario, fresh.path(), size, 2);
        assert!(
            read_tree(fresh.path()) == read_tree(dir.path()),
            "{scenario}: not deterministic"
        );
    }
}

#[test]
fn a_layout_folder_holds_only_its_own_files() {
    // Another layout's step written over the same DIR leaves no stale shard or model file.
    let dir = tempfile::tempdir().unwrap();
    gen_step(Scenario::Sharded, dir.path(), MIB, 1);
    fs::create_dir(dir.path().join("checkpoint-99x")).unwrap();
    fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let files = gen_step(Scenario::Rolling, dir.path(), MIB, 1);
    let tree = read_tree(dir.path());
    let layout: HashSet<&PathBuf> = tree
        .keys()
        .filter(|p| p.to_string_lossy().starts_with("checkpoint-"))
        .collect();
    assert_eq!(layout, files.iter().collect::<HashSet<_>>());
    // What is not a checkpoint folder stays.
    assert!(tree.contains_key(Path::new("notes.txt")));
    assert!(dir.path().join("checkpoint-99x").is_dir());
}

#[test]
fn shard_ranges_are_contiguous_non_empty_and_balanced() {
    let specs = transformer_specs(8 * MIB, Dtype::BF16);
    let total: usize = specs.iter().map(TensorSpec::byte_len).sum();
    for n in 1..=6 {
        let ranges = shard_ranges(&specs, n);
        assert_eq!(ranges.len(), n);
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[n - 1].end, specs.len());
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert!(ranges.iter().all(|r| !r.is_empty()));
        let largest = ranges
            .iter()
            .map(|r| {
                specs[r.clone()]
                    .iter()
                    .map(TensorSpec::byte_len)
                    .sum::<usize>()
            })
            .max()
            .unwrap();
        let biggest_tensor = specs.iter().map(TensorSpec::byte_len).max().unwrap();
        assert!(
            largest <= total / n + biggest_tensor,
            "n={n}: {largest} of {total}"
        );
    }
    assert_eq!(shard_ranges(&specs[..2], 4).len(), 2);
}

#[test]
fn names_and_sizes_parse() {
    for &s in Scenario::all() {
        assert_eq!(Scenario::from_name(s.name()), Some(s));
    }
    assert_eq!(Scenario::from_name("FineTune"), Some(Scenario::Finetune));
    assert_eq!(Scenario::from_name("nope"), None);
    assert_eq!(parse_size("123"), Some(123));
    assert_eq!(parse_size("64MiB"), Some(64 << 20));
    assert_eq!(parse_size("2G"), Some(2_000_000_000));
    assert_eq!(parse_size("1.5gib"), Some(3 << 29));
    assert_eq!(parse_size("10k"), Some(10_000));
    assert_eq!(parse_size("4 KiB"), Some(4096));
    assert_eq!(parse_size("MiB"), None);
    assert_eq!(parse_size("12Q"), None);
    assert_eq!(parse_size("99999999999999999999"), None);
}
