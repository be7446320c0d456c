//! Measures candidate chunking parameters on the SCENARIOS.md workloads: for each, how many
//! bytes the second version of a workload adds after dedup against the first, how many chunks
//! (index entries) it costs, and chunking speed. The repository default was chosen with it.
//!
//! Run: `cargo run --release -p tvault-core --example chunk_params -- [SIZE_MIB]` (default 256).

use std::collections::HashSet;
use std::time::Instant;

use tvault_core::chunker::ChunkerParams;
use tvault_workload::{generate, Scenario};

fn main() -> std::io::Result<()> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir()?;
    let candidates = [64u32 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20];
    println!("workload    avg chunk   chunks(v1)   added by v2 (% of v2)   chunking MB/s");
    for scenario in [
        Scenario::Frozen,
        Scenario::Shifted,
        Scenario::Resave,
        Scenario::Finetune,
    ] {
        let mut versions = Vec::new();
        for step in 0..2 {
            let d = dir.path().join(format!("{}-{step}", scenario.name()));
            let files = generate(scenario, &d, mib << 20, 7, step)?;
            let mut bytes = Vec::new();
            for f in files {
                bytes.push(std::fs::read(d.join(f))?);
            }
            versions.push(bytes);
        }
        for &avg in &candidates {
            let params = ChunkerParams {
                min_size: avg / 4,
                avg_size: avg,
                max_size: (avg * 4).min(16 << 20),
                gear_seed: 0,
            };
            let started = Instant::now();
            let mut seen = HashSet::new();
            let mut chunks_v1 = 0;
            for file in &versions[0] {
                for r in params.cut_all(file) {
                    seen.insert(blake3::hash(&file[r]));
                    chunks_v1 += 1;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let (mut added, mut total) = (0usize, 0usize);
            for file in &versions[1] {
                total += file.len();
                for r in params.cut_all(file) {
                    if !seen.contains(&blake3::hash(&file[r.clone()])) {
                        added += r.len();
                    }
                }
            }
            let v1_bytes: usize = versions[0].iter().map(|f| f.len()).sum();
            println!(
                "{:<11} {:>6} KiB  {:>10}   {:>10} ({:>5.1}%)   {:>8.0}",
                scenario.name(),
                avg >> 10,
                chunks_v1,
                added,
                100.0 * added as f64 / total as f64,
                v1_bytes as f64 / secs / 1e6,
            );
        }
    }
    Ok(())
}
