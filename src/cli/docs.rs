//! `completions` and `man`: what the command line says about itself.

use anyhow::Result;

use super::commands::*;
use super::exit;

pub(super) fn completions(args: CompletionsArgs) -> Result<u8> {
    let CompletionsArgs { shell } = args;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Rendered to memory first: clap_complete panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tvault", &mut script);
    std::io::Write::write_all(&mut std::io::stdout(), &script)?;
    Ok(exit::SUCCESS)
}

pub(super) fn man() -> Result<u8> {
    // The top page, then one page per subcommand with its options (global options
    // propagated into each), in one roff stream.
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut page = Vec::new();
    let top = clap_mangen::Man::new(cmd.clone());
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    top.render_subcommands_section(&mut page)?;
    render_exit_status(&mut page)?;
    for (title, start) in [
        ("SNAPSHOT IDS AND LATEST", "**Snapshot IDs and `latest`**"),
        ("DURATIONS", "**Durations**"),
    ] {
        render_readme(&mut page, title, readme_paragraph(start))?;
    }
    render_readme(&mut page, "JSON OUTPUT", readme_section("## JSON output"))?;
    top.render_version_section(&mut page)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("tvault-{}", sub.get_name());
        let sub = sub.clone().name(name).version(env!("CARGO_PKG_VERSION"));
        clap_mangen::Man::new(sub).render(&mut page)?;
    }
    std::io::Write::write_all(&mut std::io::stdout(), &page)?;
    Ok(exit::SUCCESS)
}

/// The man page's EXIT STATUS section (clap_mangen has none of its own).
fn render_exit_status(page: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(page, ".SH \"EXIT STATUS\"")?;
    for line in EXIT_STATUS_HELP.lines().skip(1) {
        let line = line.trim();
        match line.split_once("  ") {
            Some((code, text)) if code.chars().all(|c| c.is_ascii_digit()) => {
                writeln!(page, ".TP\n\\fB{code}\\fR\n{}", text.trim())?
            }
            _ => writeln!(page, "{line}")?,
        }
    }
    Ok(())
}

/// The README, whose words the man page repeats (one text, so the two never disagree).
const README: &str = include_str!("../../README.md");

/// The README's paragraph that starts with `start` (up to the next blank line).
fn readme_paragraph(start: &str) -> &'static str {
    let at = README.find(start).expect("the README has the paragraph");
    let text = &README[at..];
    &text[..text.find("\n\n").unwrap_or(text.len())]
}

/// The README's section under `heading` (up to the next `## `).
fn readme_section(heading: &str) -> &'static str {
    let at = README.find(heading).expect("the README has the section") + heading.len();
    let text = &README[at..];
    &text[..text.find("\n## ").unwrap_or(text.len())]
}

/// Markdown as roff: paragraphs, and a table's rows as tagged paragraphs (`.TP`).
fn render_readme(page: &mut Vec<u8>, title: &str, markdown: &str) -> std::io::Result<()> {
    use std::io::Write;
    let plain = |s: &str| {
        s.replace("**", "")
            .replace('`', "")
            .replace("\\|", "|")
            .replace('\\', "\\\\")
    };
    writeln!(page, ".SH \"{title}\"")?;
    for block in markdown.trim().split("\n\n") {
        if block.starts_with('|') {
            for row in block.lines().skip(2) {
                let cells: Vec<&str> = row.trim_matches('|').splitn(2, " | ").collect();
                if let [name, text] = cells[..] {
                    writeln!(
                        page,
                        ".TP\n\\fB{}\\fR\n{}",
                        plain(name.trim()),
                        plain(text.trim())
                    )?;
                }
            }
        } else {
            writeln!(page, ".PP\n{}", plain(&block.replace('\n', " ")))?;
        }
    }
    Ok(())
}
