//! `tvault-gen`: writes one step of a checkpoint scenario (see `tvault_workload`) into a
//! directory, for benches and manual experiments.
//!
//! ```text
//! cargo run --release -p tvault-workload --bin tvault-gen -- SCENARIO DIR [--size 64MiB] [--seed 1] [--step 0]
//! cargo run --release -p tvault-workload --bin tvault-gen -- finetune /tmp/ft --size 1GiB            # step 0
//! cargo run --release -p tvault-workload --bin tvault-gen -- finetune /tmp/ft --size 1GiB --step 1   # next checkpoint
//! cargo run --release -p tvault-workload --bin tvault-gen -- sharded /tmp/run --step 1   # /tmp/run/checkpoint-{500,1000}/
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tvault_workload::{self as workload, Scenario};

struct Args {
    scenario: Scenario,
    dir: PathBuf,
    size: u64,
    seed: u64,
    step: u32,
}

fn usage() -> String {
    let mut text = String::from(
        "usage: tvault-gen SCENARIO DIR [--size SIZE] [--seed N] [--step K]\n\
         \n\
         Writes step K of SCENARIO into DIR (created if missing; rerun with the next --step on\n\
         the same DIR to get the next checkpoint). Output is a pure function of the arguments.\n\
         rolling, sharded and resharded write DIR/checkpoint-{(K+1)*500}/ and keep step K-1's\n\
         folder beside it (deleting older ones), as a trainer does: back up DIR.\n\
         \n\
         options:\n\
         \x20 --size SIZE  checkpoint bytes (default 64MiB); plain bytes or K/M/G/T (powers of\n\
         \x20              1000) or KiB/MiB/GiB/TiB (powers of 1024), e.g. 1.5GiB\n\
         \x20 --seed N     seed (default 1)\n\
         \x20 --step K     checkpoint number, 0 first (default 0)\n\
         \x20 -h, --help   this text\n\
         \n\
         scenarios:\n",
    );
    for &s in Scenario::all() {
        text.push_str(&format!("  {:<11} {}\n", s.name(), s.description()));
    }
    text
}

/// `Ok(None)` means help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut positional = Vec::new();
    let (mut size, mut seed, mut step) = (64 << 20, 1, 0);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let Some(flag) = arg.strip_prefix("--") else {
            positional.push(arg);
            continue;
        };
        // Both `--size 1G` and `--size=1G`.
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("--{flag} needs a value"))?;
                (flag.to_string(), value)
            }
        };
        match name.as_str() {
            "size" => size = workload::parse_size(&value).ok_or(format!("bad size {value:?}"))?,
            "seed" => seed = value.parse().map_err(|_| format!("bad seed {value:?}"))?,
            "step" => step = value.parse().map_err(|_| format!("bad step {value:?}"))?,
            _ => return Err(format!("unknown option --{name}")),
        }
    }
    let [scenario, dir] = <[String; 2]>::try_from(positional)
        .map_err(|p| format!("expected SCENARIO and DIR, got {} arguments", p.len()))?;
    let scenario =
        Scenario::from_name(&scenario).ok_or_else(|| format!("unknown scenario {scenario:?}"))?;
    Ok(Some(Args {
        scenario,
        dir: PathBuf::from(dir),
        size,
        seed,
        step,
    }))
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprint!("error: {err}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let files = match workload::generate(args.scenario, &args.dir, args.size, args.seed, args.step)
    {
        Ok(files) => files,
        Err(err) => {
            eprintln!(
                "error: generating {} in {}: {err}",
                args.scenario,
                args.dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = 0;
    for file in &files {
        let len = std::fs::metadata(args.dir.join(file)).map_or(0, |m| m.len());
        total += len;
        println!("{len:>14}  {}", file.display());
    }
    println!(
        "{} step {}: {} files, {total} bytes ({}) in {}, {elapsed:.1}s",
        args.scenario,
        args.step,
        files.len(),
        human(total),
        args.dir.display()
    );
    ExitCode::SUCCESS
}
