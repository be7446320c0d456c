//! BLAKE3 alone over a file, as the backup hot path hashes it (512 KiB pieces, on every core):
//! the physical limit `benches/e2e.sh` prints beside tvault's figures.
//!
//! ```text
//! cargo run --release -p tvault-core --example b3 -- FILE
//! ```

use std::io::Read;
use std::time::Instant;

use rayon::prelude::*;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: b3 FILE");
    let mut file = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 8 << 20];
    let started = Instant::now();
    let (mut total, mut fold) = (0u64, 0u8);
    loop {
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..])? {
                0 => break,
                n => len += n,
            }
        }
        if len == 0 {
            break;
        }
        fold ^= buf[..len]
            .par_chunks(512 * 1024)
            .map(|c| blake3::hash(c).as_bytes()[0])
            .reduce(|| 0, |a, b| a ^ b);
        total += len as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} bytes in {secs:.3} s: {:.2} GB/s ({fold})",
        total as f64 / secs / 1e9
    );
    Ok(())
}
