//! Weight values: normal draws, fine-tuning and optimizer steps, in parallel blocks.

use super::*;

/// Values ~ Normal(0, 0.02) encoded as dtype (bf16 = upper 16 bits of f32, round-to-nearest-even;
/// f16 = IEEE half). `buf.len()` must be a multiple of `dtype.size()`.
pub fn fill_weights(rng: &mut Rng, dtype: Dtype, buf: &mut [u8]) {
    fill_normal(rng, dtype, 0.0, WEIGHT_STD, buf);
}

pub(crate) fn fill_normal(rng: &mut Rng, dtype: Dtype, mean: f64, std: f64, buf: &mut [u8]) {
    assert_eq!(buf.len() % dtype.size(), 0, "buffer is not whole elements");
    match dtype {
        Dtype::BF16 => {
            for out in buf.chunks_exact_mut(2) {
                let v = (mean + rng.normal(std)) as f32;
                out.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        Dtype::F16 => {
            for out in buf.chunks_exact_mut(2) {
                let v = (mean + rng.normal(std)) as f32;
                out.copy_from_slice(&f32_to_f16(v).to_le_bytes());
            }
        }
        Dtype::F32 => {
            for out in buf.chunks_exact_mut(4) {
                let v = (mean + rng.normal(std)) as f32;
                out.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// Runs `f` on every item, spread over the available cores.
pub(crate) fn par_for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    let mut groups: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (k, item) in items.into_iter().enumerate() {
        groups[k % threads].push(item);
    }
    let f = &f;
    std::thread::scope(|scope| {
        for group in groups {
            scope.spawn(move || group.into_iter().for_each(f));
        }
    });
}

/// Like [`fill_normal`], but block `b` of the buffer draws from `Rng::keyed([key, first_block + b])`.
pub(crate) fn fill_normal_keyed(
    key: u64,
    first_block: u64,
    dtype: Dtype,
    (mean, std): (f64, f64),
    buf: &mut [u8],
) {
    let jobs: Vec<(usize, &mut [u8])> = buf
        .chunks_mut(BLOCK_ELEMS * dtype.size())
        .enumerate()
        .collect();
    par_for_each(jobs, |(b, chunk)| {
        let mut rng = Rng::keyed(&[key, first_block + b as u64]);
        fill_normal(&mut rng, dtype, mean, std, chunk);
    });
}

/// Norm weights sit around 1.0, everything else around 0.
pub(crate) fn init_mean(spec: &TensorSpec) -> f64 {
    if spec.name.contains("norm") {
        1.0
    } else {
        0.0
    }
}

/// Tensor `i`'s initial values, a function of (seed, i) only.
pub(crate) fn fill_base(seed: u64, i: usize, spec: &TensorSpec, buf: &mut [u8]) {
    let key = mix(&[seed, tag::BASE, i as u64]);
    fill_normal_keyed(key, 0, spec.dtype, (init_mean(spec), WEIGHT_STD), buf);
}

/// Tensor `i` of [`Scenario::Finetune`] step `step`: its initial values after `step` calls of
/// [`finetune_step`], each from its own stream (so step k is step k-1 plus one more step).
pub(crate) fn fill_finetune(seed: u64, i: usize, spec: &TensorSpec, step: u32, buf: &mut [u8]) {
    fill_base(seed, i, spec, buf);
    for s in 1..=step {
        let key = [seed, tag::FINETUNE, i as u64, u64::from(s)];
        finetune_step(&mut Rng::keyed(&key), buf);
    }
}

/// One small-learning-rate step on bf16 data: each value is picked with probability
/// [`FINETUNE_FRACTION`], gets Normal(0, 1e-4) added in f32 and is re-rounded; a pick that rounds
/// back to the same bf16 moves one ulp instead, so every picked value really changes.
pub(crate) fn finetune_step(rng: &mut Rng, buf: &mut [u8]) {
    let n = buf.len() / 2;
    let log_keep = ln(1.0 - FINETUNE_FRACTION);
    let mut idx = 0usize;
    loop {
        // Geometric gaps: as if each index were tossed, at the cost of one draw per pick.
        let gap = (ln(1.0 - rng.next_f64()) / log_keep).floor();
        if gap >= (n - idx) as f64 {
            break;
        }
        idx += gap as usize;
        let at = 2 * idx;
        let old = u16::from_le_bytes([buf[at], buf[at + 1]]);
        let delta = rng.normal(FINETUNE_STD) as f32;
        let mut new = f32_to_bf16(bf16_to_f32(old) + delta);
        if new == old {
            new = bf16_next(old, delta >= 0.0);
        }
        buf[at..at + 2].copy_from_slice(&new.to_le_bytes());
        idx += 1;
    }
}

/// Fulltrain state of tensor `i` after `step` Adam-like steps: master weights, exp_avg, exp_avg_sq.
pub(crate) fn adam_state(
    seed: u64,
    i: usize,
    spec: &TensorSpec,
    step: u32,
    (w, m, v): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (base, moments) = (
        mix(&[seed, tag::BASE, i as u64]),
        mix(&[seed, tag::MOMENTS, i as u64]),
    );
    let grads: Vec<u64> = (1..=step)
        .map(|s| mix(&[seed, tag::GRAD, i as u64, u64::from(s)]))
        .collect();
    let mean = init_mean(spec);
    let jobs: Vec<_> = w
        .chunks_mut(BLOCK_ELEMS)
        .zip(m.chunks_mut(BLOCK_ELEMS))
        .zip(v.chunks_mut(BLOCK_ELEMS))
        .enumerate()
        .collect();
    par_for_each(jobs, |(b, ((w, m), v))| {
        let b = b as u64;
        // Same stream as fill_base, so step 0's weights are the common initial values.
        let mut rng = Rng::keyed(&[base, b]);
        w.iter_mut()
            .for_each(|x| *x = (mean + rng.normal(WEIGHT_STD)) as f32);
        // Start mid-training: moments near their steady state rather than zero.
        let mut rng = Rng::keyed(&[moments, b]);
        for (m, v) in m.iter_mut().zip(v.iter_mut()) {
            *m = rng.normal(MOMENT_STD) as f32;
            *v = (GRAD_STD * GRAD_STD * (0.5 + rng.next_f64())) as f32;
        }
        for &key in &grads {
            let mut rng = Rng::keyed(&[key, b]);
            for ((w, m), v) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = rng.normal(GRAD_STD) as f32;
                *m = 0.9 * *m + 0.1 * g;
                *v = 0.999 * *v + 0.001 * g * g;
                *w -= ADAM_LR * *m / (v.sqrt() + 1e-8);
            }
        }
    });
}

pub(crate) fn f32s_to_le(values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}
