//! Torchzip: the `single` bf16 model as `torch.save` writes it (`pytorch_model.bin`): a zip of
//! stored (uncompressed) entries `archive/data.pkl` (a protocol-2 pickle of an ordered dict of
//! tensors, each storage a persistent ID `("storage", torch.BFloat16Storage, key, "cpu",
//! numel)`), `archive/data/<key>` (each storage's bytes, 64-byte aligned) and
//! `archive/version`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::*;

pub(crate) fn gen_torchzip(dir: &Path, size: u64, seed: u64) -> io::Result<Vec<PathBuf>> {
    let dims = ModelDims::for_target(size, Dtype::BF16);
    let specs = dims.specs(Dtype::BF16);
    let mut files: Vec<(String, Vec<u8>)> = vec![("archive/data.pkl".into(), pickle(&specs))];
    for (i, spec) in specs.iter().enumerate() {
        let mut buf = vec![0u8; spec.byte_len()];
        fill_base(seed, i, spec, &mut buf);
        files.push((format!("archive/data/{i}"), buf));
    }
    files.push(("archive/version".into(), b"3\n".to_vec()));
    fs::create_dir_all(dir)?;
    let path = dir.join("pytorch_model.bin");
    let bytes = stored_zip(&files);
    if fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
        fs::File::create(&path)?.write_all(&bytes)?;
    }
    let config =
        scenarios::write_small(dir, "config.json", dims.config_json(Dtype::BF16).as_bytes())?;
    Ok(vec![PathBuf::from("pytorch_model.bin"), config])
}

fn unicode(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

/// The pickle `torch.save(state_dict)` writes, reduced to what a reader of storages needs.
fn pickle(specs: &[TensorSpec]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"ccollections\nOrderedDict\nq\x00)Rq\x01(");
    let mut memo: u32 = 2;
    let mut put = |p: &mut Vec<u8>| {
        p.push(b'r');
        p.extend_from_slice(&memo.to_le_bytes());
        memo += 1;
        memo - 1
    };
    let mut class_memo = None;
    for (key, spec) in specs.iter().enumerate() {
        unicode(&mut p, &spec.name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
        put(&mut p);
        p.extend_from_slice(b"((");
        unicode(&mut p, "storage");
        match class_memo {
            Some(m) => {
                p.push(b'j');
                p.extend_from_slice(&u32::to_le_bytes(m));
            }
            None => {
                p.extend_from_slice(b"ctorch\nBFloat16Storage\n");
                class_memo = Some(put(&mut p));
            }
        }
        unicode(&mut p, &key.to_string());
        unicode(&mut p, "cpu");
        p.push(b'J');
        p.extend_from_slice(&(spec.numel() as u32).to_le_bytes());
        p.extend_from_slice(b"tQK\x00("); // storage offset, then the shape
        for d in &spec.shape {
            p.push(b'J');
            p.extend_from_slice(&(*d as u32).to_le_bytes());
        }
        p.extend_from_slice(b"t(");
        let mut stride = 1usize;
        let strides: Vec<usize> = spec
            .shape
            .iter()
            .rev()
            .map(|d| {
                let s = stride;
                stride *= d;
                s
            })
            .collect();
        for s in strides.iter().rev() {
            p.push(b'J');
            p.extend_from_slice(&(*s as u32).to_le_bytes());
        }
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// A zip of stored entries, each data start padded to 64 bytes with an extra field as PyTorch
/// does (zip64 is not needed for the sizes the benches use; refused past 4 GiB).
pub fn stored_zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut z = Vec::new();
    let mut central = Vec::new();
    let u32_of = |n: usize| u32::try_from(n).expect("torchzip: under 4 GiB");
    for (name, data) in files {
        let local = u32_of(z.len());
        let pad = (64 - (z.len() + 30 + name.len() + 4) % 64) % 64;
        let crc = crc32(data);
        z.extend_from_slice(b"PK\x03\x04");
        z.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend_from_slice(&crc.to_le_bytes());
        z.extend_from_slice(&u32_of(data.len()).to_le_bytes());
        z.extend_from_slice(&u32_of(data.len()).to_le_bytes());
        z.extend_from_slice(&(name.len() as u16).to_le_bytes());
        z.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        z.extend_from_slice(name.as_bytes());
        z.extend_from_slice(&0xFB1Eu16.to_le_bytes());
        z.extend_from_slice(&(pad as u16).to_le_bytes());
        z.extend(std::iter::repeat_n(b'Z', pad));
        z.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&u32_of(data.len()).to_le_bytes());
        central.extend_from_slice(&u32_of(data.len()).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&local.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32_of(z.len());
    z.extend_from_slice(&central);
    z.extend_from_slice(b"PK\x05\x06");
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&(files.len() as u16).to_le_bytes());
    z.extend_from_slice(&(files.len() as u16).to_le_bytes());
    z.extend_from_slice(&u32_of(central.len()).to_le_bytes());
    z.extend_from_slice(&cd_offset.to_le_bytes());
    z.extend_from_slice(&[0, 0]);
    z
}

/// The zip CRC-32 (IEEE, reflected), bit by bit: the benches' checkpoints are written once.
fn crc32(data: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}
