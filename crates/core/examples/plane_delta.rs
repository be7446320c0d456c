//! What a dense training step (`fulltrain`: fp32 weights and Adam moments, every value moves a
//! little) would store under three encodings of each 512 KiB block, to size a possible format
//! change before making it: the block whole (byte planes, today's default), a dense XOR with the
//! previous step's block (`--dense-deltas`), and an XOR of only the two high byte planes (sign,
//! exponent, top mantissa bits) with the previous step's, the low planes stored whole — a restore
//! of which needs only the base's high planes (and the same with the top plane alone). Also
//! prints what those base planes store alone.
//!
//!   tvault-gen fulltrain /tmp/a --size 1GiB --step 0
//!   tvault-gen fulltrain /tmp/b --size 1GiB --step 1
//!   cargo run --release -p tvault-core --example plane_delta -- /tmp/a /tmp/b
//!
//! Every `*.safetensors` file of both folders is read as fp32 from the end of its header (the
//! `fulltrain` files hold only F32 tensors).

use std::path::Path;

use tvault_core::codec;

const BLOCK: usize = 512 << 10;

fn data(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
    bytes[8 + n..].to_vec()
}

/// `new`'s elements with the bytes `xored(i)` (by position in the element) taken from `xor`.
fn mix(new: &[u8], xor: &[u8], xored: impl Fn(usize) -> bool) -> Vec<u8> {
    new.iter()
        .zip(xor)
        .enumerate()
        .map(|(i, (q, d))| if xored(i % 4) { *d } else { *q })
        .collect()
}

/// `old`'s elements with only the bytes `kept(i)` (by position in the element), others zero.
fn only(old: &[u8], kept: impl Fn(usize) -> bool) -> Vec<u8> {
    old.iter()
        .enumerate()
        .map(|(i, p)| if kept(i % 4) { *p } else { 0 })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (old, new) = (Path::new(&args[1]), Path::new(&args[2]));
    let mut names: Vec<_> = std::fs::read_dir(new)
        .expect("folder")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().ends_with(".safetensors"))
        .collect();
    names.sort();
    let (mut plain, mut whole, mut dense, mut high, mut base_high) = (0, 0, 0, 0, 0);
    let (mut top1, mut base_top1, mut sub) = (0, 0, 0);
    let mut out = Vec::new();
    for name in names {
        let (a, b) = (data(&old.join(&name)), data(&new.join(&name)));
        assert_eq!(a.len(), b.len(), "{name:?}: the steps differ in size");
        for (x, y) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
            let len = y.len() - y.len() % 4;
            let (x, y) = (&x[..len], &y[..len]);
            plain += len;
            codec::encode_typed(y, 4, 1, &mut out);
            whole += out.len();
            let xor: Vec<u8> = x.iter().zip(y).map(|(p, q)| p ^ q).collect();
            codec::encode_typed(&xor, 4, 1, &mut out);
            dense += out.len();
            // Bytes 2 and 3 of each element XORed with the base's, bytes 0 and 1 as they are;
            // then the base's high planes alone (its low planes zeroed store next to nothing).
            codec::encode_typed(&mix(y, &xor, |b| b >= 2), 4, 1, &mut out);
            high += out.len();
            codec::encode_typed(&only(x, |b| b >= 2), 4, 1, &mut out);
            base_high += out.len();
            // The same with the top plane alone (sign and 7 exponent bits).
            codec::encode_typed(&mix(y, &xor, |b| b == 3), 4, 1, &mut out);
            top1 += out.len();
            codec::encode_typed(&only(x, |b| b == 3), 4, 1, &mut out);
            base_top1 += out.len();
            // The elements' difference as integers (wrapping), not their XOR: a small move of
            // a float changes its low bits without the XOR's carries into higher ones.
            let diff: Vec<u8> = x
                .chunks_exact(4)
                .zip(y.chunks_exact(4))
                .flat_map(|(p, q)| {
                    let p = u32::from_le_bytes(p.try_into().expect("4"));
                    let q = u32::from_le_bytes(q.try_into().expect("4"));
                    q.wrapping_sub(p).to_le_bytes()
                })
                .collect();
            codec::encode_typed(&diff, 4, 1, &mut out);
            sub += out.len();
        }
    }
    let share = |n: usize| n as f64 / plain as f64;
    println!("plain bytes: {plain}");
    println!("whole (byte planes):          {:.4}", share(whole));
    println!("dense XOR with the base:      {:.4}", share(dense));
    println!("XOR of the high planes only:  {:.4}", share(high));
    println!("the base's high planes alone: {:.4}", share(base_high));
    println!("XOR of the top plane only:    {:.4}", share(top1));
    println!("the base's top plane alone:   {:.4}", share(base_top1));
    println!("integer difference, dense:    {:.4}", share(sub));
}
