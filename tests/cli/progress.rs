//! The progress bar as a person sees it: on a terminal (a pseudo-terminal made by `script`),
//! it counts files done of files to read and the bytes added, and every line it draws fits
//! the terminal's width.

use std::process::Command;

use crate::testenv::{random_bytes, TestEnv, TVAULT};

/// What a person would read: escape sequences removed, each redraw (`\r`) its own line.
fn screen_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(if c == '\r' { '\n' } else { c });
    }
    out.lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn progress_bar_counts_files_and_added_bytes_and_fits_a_narrow_terminal() {
    let env = TestEnv::with_repo();
    for i in 0..6 {
        let data = random_bytes(4 << 20, i);
        env.write(format!("src/ckpt/shard-{i}.bin"), &data);
    }
    let cols = 70;
    // `script` gives tvault a terminal; the read limit makes the bar redraw several times.
    let inner = format!(
        "stty cols {cols} rows 24; exec '{}' --repo '{}' backup --read-limit 16MiB '{}'",
        TVAULT,
        env.repo.display(),
        env.src.join("ckpt").display()
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("HOME", env.path("home"))
        .env("TVAULT_PASSWORD", crate::testenv::PASSWORD)
        .output()
        .expect("script (util-linux) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines = screen_lines(&out.stdout);
    // The bar's lines (the summary after it is ordinary text that may wrap).
    let bar: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" added") && !l.contains("saved"))
        .collect();
    assert!(!bar.is_empty(), "no progress bar drawn: {lines:#?}");
    assert!(
        bar.iter().any(|l| l.contains("/6 files")),
        "no file count: {bar:#?}"
    );
    for l in &bar {
        assert!(
            l.chars().count() <= cols,
            "{} columns: {l:?}",
            l.chars().count()
        );
    }
    // The summary printed after the bar is gone.
    assert!(lines.iter().any(|l| l.contains("snapshot")), "{lines:#?}");
}
