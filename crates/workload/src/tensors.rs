//! Transformer-like tensor lists and the streaming safetensors writer.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// Dimensions of a Llama-like decoder (untied embeddings, gated MLP, RMS norms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
}

impl ModelDims {
    /// The widest model from a fixed ladder that still has [`MIN_LAYERS`] layers at `target_bytes`,
    /// with no tensor over [`MAX_TENSOR_BYTES`]; the vocabulary absorbs what whole layers miss.
    pub fn for_target(target_bytes: u64, dtype: Dtype) -> ModelDims {
        let es = dtype.size() as u64;
        let cap = MAX_TENSOR_BYTES as u64;
        let mut best: Option<ModelDims> = None;
        for &hidden in &HIDDEN_LADDER {
            let intermediate = (hidden * 8).div_ceil(3).next_multiple_of(32);
            let h = hidden as u64;
            if h * intermediate as u64 * es > cap {
                break;
            }
            let vocab_cap = cap / (h * es) / 8 * 8;
            let base_vocab = ((hidden * 8).clamp(128, 32_000) as u64).min(vocab_cap);
            let mut dims = ModelDims {
                vocab: base_vocab as usize,
                hidden,
                intermediate,
                layers: 1,
            };
            let fixed = dims.fixed_params() * es;
            let layer = dims.layer_params() * es;
            let layers = ((target_bytes.saturating_sub(fixed) + layer / 2) / layer).max(1);
            dims.layers = layers as usize;
            let rest = target_bytes.saturating_sub(layers * layer + h * es);
            dims.vocab = (rest / (2 * h * es) / 8 * 8).clamp(64, vocab_cap) as usize;
            if best.is_none() || layers >= MIN_LAYERS {
                best = Some(dims);
            }
        }
        best.expect("the ladder is not empty")
    }

    /// Embeddings, lm_head and the final norm.
    fn fixed_params(&self) -> u64 {
        let (v, d) = (self.vocab as u64, self.hidden as u64);
        2 * v * d + d
    }

    /// Attention q/k/v/o, MLP gate/up/down and two norms.
    fn layer_params(&self) -> u64 {
        let (d, f) = (self.hidden as u64, self.intermediate as u64);
        4 * d * d + 3 * d * f + 2 * d
    }

    pub fn total_bytes(&self, dtype: Dtype) -> u64 {
        (self.fixed_params() + self.layers as u64 * self.layer_params()) * dtype.size() as u64
    }

    /// Tensors in model order, named like a Hugging Face Llama checkpoint.
    pub fn specs(&self, dtype: Dtype) -> Vec<TensorSpec> {
        let (v, d, f) = (self.vocab, self.hidden, self.intermediate);
        let t = |name: String, shape: Vec<usize>| TensorSpec { name, dtype, shape };
        let mut out = Vec::with_capacity(self.layers * 9 + 3);
        out.push(t("model.embed_tokens.weight".into(), vec![v, d]));
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                out.push(t(format!("{p}.self_attn.{proj}.weight"), vec![d, d]));
            }
            out.push(t(format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
            out.push(t(format!("{p}.mlp.up_proj.weight"), vec![f, d]));
            out.push(t(format!("{p}.mlp.down_proj.weight"), vec![d, f]));
            out.push(t(format!("{p}.input_layernorm.weight"), vec![d]));
            out.push(t(format!("{p}.post_attention_layernorm.weight"), vec![d]));
        }
        out.push(t("model.norm.weight".into(), vec![d]));
        out.push(t("lm_head.weight".into(), vec![v, d]));
        out
    }

    /// A Hugging Face style `config.json` for these dimensions.
    pub fn config_json(&self, dtype: Dtype) -> String {
        let heads = if self.hidden % 64 == 0 {
            self.hidden / 64
        } else {
            self.hidden / 8
        };
        let torch_dtype = match dtype {
            Dtype::BF16 => "bfloat16",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
        };
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": heads,
            "vocab_size": self.vocab,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype,
        });
        let mut text = serde_json::to_string_pretty(&config).expect("a json! value serialises");
        text.push('\n');
        text
    }
}

/// Transformer-like tensors (see [`ModelDims::specs`]) totalling close to `target_bytes`
/// (within a few percent from 64 KiB up); never empty, no tensor over [`MAX_TENSOR_BYTES`].
pub fn transformer_specs(target_bytes: u64, dtype: Dtype) -> Vec<TensorSpec> {
    ModelDims::for_target(target_bytes, dtype).specs(dtype)
}

// ---------------------------------------------------------------------------------------------
// Safetensors writing

/// The 8-byte length prefix plus the JSON header, space-padded to a multiple of 8 bytes. Keys are
/// written in data order (`__metadata__` first, omitted when empty) like the reference writer.
pub fn safetensors_header(specs: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).expect("a string map serialises"));
    }
    let mut offset = 0usize;
    for spec in specs {
        if json.len() > 1 {
            json.push(',');
        }
        let end = offset + spec.byte_len();
        let name = serde_json::to_string(&spec.name).expect("a string serialises");
        let shape = serde_json::to_string(&spec.shape).expect("a usize list serialises");
        let _ = write!(
            json,
            "{name}:{{\"dtype\":\"{}\",\"shape\":{shape},\"data_offsets\":[{offset},{end}]}}",
            spec.dtype.name()
        );
        offset = end;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

/// Header plus data bytes of the file [`write_safetensors`] would write.
pub fn safetensors_len(specs: &[TensorSpec], metadata: &BTreeMap<String, String>) -> u64 {
    safetensors_header(specs, metadata).len() as u64
        + specs.iter().map(|s| s.byte_len() as u64).sum::<u64>()
}

pub(crate) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Streams a safetensors file: the header up front, then each tensor's bytes in spec order.
pub struct SafetensorsWriter {
    out: BufWriter<File>,
    lens: Vec<usize>,
    next: usize,
}

impl SafetensorsWriter {
    pub fn create(
        path: &Path,
        specs: &[TensorSpec],
        metadata: &BTreeMap<String, String>,
    ) -> io::Result<SafetensorsWriter> {
        let mut seen = HashSet::new();
        if let Some(dup) = specs.iter().find(|s| !seen.insert(s.name.as_str())) {
            return Err(invalid(format!("duplicate tensor name {:?}", dup.name)));
        }
        if specs.iter().any(|s| s.name == "__metadata__") {
            return Err(invalid("tensor named __metadata__".into()));
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&safetensors_header(specs, metadata))?;
        Ok(SafetensorsWriter {
            out,
            lens: specs.iter().map(TensorSpec::byte_len).collect(),
            next: 0,
        })
    }

    /// Appends the next tensor's bytes; the length must match its spec.
    pub fn write_tensor(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(&len) = self.lens.get(self.next) else {
            return Err(invalid("more tensors than specs".into()));
        };
        if data.len() != len {
            return Err(invalid(format!(
                "tensor {} has {} bytes, its spec says {len}",
                self.next,
                data.len()
            )));
        }
        self.out.write_all(data)?;
        self.next += 1;
        Ok(())
    }

    /// Flushes; fails if some tensors were never written.
    pub fn finish(mut self) -> io::Result<()> {
        if self.next != self.lens.len() {
            return Err(invalid(format!(
                "{} of {} tensors written",
                self.next,
                self.lens.len()
            )));
        }
        self.out.flush()
    }
}

/// Writes a safetensors file; `fill(i, spec, buf)` fills buf (len == spec.byte_len()) with
/// tensor i's bytes. Writes through a BufWriter, one tensor at a time.
pub fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(usize, &TensorSpec, &mut [u8]),
) -> io::Result<()> {
    let mut writer = SafetensorsWriter::create(path, specs, metadata)?;
    let mut buf = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        buf.clear();
        buf.resize(spec.byte_len(), 0);
        fill(i, spec, &mut buf);
        writer.write_tensor(&buf)?;
    }
    writer.finish()
}
