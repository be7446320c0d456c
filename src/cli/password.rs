//! Where passwords come from. The repository password: `--password-file FILE`, else
//! `--password-command CMD` (its standard output; for secret managers), else `TVAULT_PASSWORD`,
//! else a prompt on a terminal (not echoed). A new key's password (`key add`, `key passwd`):
//! `--new-password-file FILE`, else `TVAULT_NEW_PASSWORD`, else a prompt (asked twice). Without
//! any of them and no terminal, the error says the ways to give one. One trailing newline of a
//! file or a command's output is not part of the password. The destination of `copy`:
//! `--to-password-file`, `--to-password-command`, `TVAULT_TO_PASSWORD`, a prompt (`destination`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tvault_core::error::Error;

/// The global password options of this run.
#[derive(Clone, Debug, Default)]
pub struct PasswordOpts {
    pub file: Option<PathBuf>,
    pub command: Option<String>,
}

static OPTS: OnceLock<PasswordOpts> = OnceLock::new();

/// Sets the options of this run (once, when the command line is parsed).
pub fn set(opts: PasswordOpts) {
    let _ = OPTS.set(opts);
}

const HOW: &str = "set TVAULT_PASSWORD, pass --password-file FILE or --password-command CMD, or \
                   run tvault on a terminal to be asked";

/// The repository password of an existing repository (`repo` names it in the prompt).
pub fn current(repo: &Path) -> Result<Vec<u8>, Error> {
    if let Some(p) = given()? {
        return Ok(p);
    }
    if !on_terminal() {
        return Err(Error::PasswordNeeded {
            path: repo.to_path_buf(),
        });
    }
    prompt(&format!("password for {}: ", repo.display()))
}

/// The password of a repository being created: from the same places, asked twice on a
/// terminal.
pub fn for_new_repository(repo: &Path) -> Result<Vec<u8>, Error> {
    if let Some(p) = given()? {
        return Ok(p);
    }
    if !on_terminal() {
        return Err(Error::Invalid(format!(
            "{} is to be created encrypted and no password was given: {HOW} (or create a \
             plaintext repository on purpose with `tvault init --no-encryption`)",
            repo.display()
        )));
    }
    prompt_twice(&format!("new password for {}: ", repo.display()))
}

/// The new password of `key add` / `key passwd`.
pub fn new_key(file: Option<&Path>) -> Result<Vec<u8>, Error> {
    if let Some(f) = file {
        return from_file(f);
    }
    if let Some(v) = std::env::var_os("TVAULT_NEW_PASSWORD") {
        return non_empty(v.into_encoded_bytes(), "TVAULT_NEW_PASSWORD");
    }
    if !on_terminal() {
        return Err(Error::Invalid(
            "no new password given: set TVAULT_NEW_PASSWORD, pass --new-password-file FILE, \
             or run tvault on a terminal to be asked"
                .into(),
        ));
    }
    prompt_twice("new password: ")
}

/// A password given by option or environment, if any.
fn given() -> Result<Option<Vec<u8>>, Error> {
    let opts = OPTS.get().cloned().unwrap_or_default();
    if let Some(f) = &opts.file {
        return from_file(f).map(Some);
    }
    if let Some(cmd) = &opts.command {
        return from_command(cmd).map(Some);
    }
    if let Some(v) = std::env::var_os("TVAULT_PASSWORD") {
        return non_empty(v.into_encoded_bytes(), "TVAULT_PASSWORD").map(Some);
    }
    Ok(None)
}

fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn strip_newline(mut b: Vec<u8>) -> Vec<u8> {
    if b.last() == Some(&b'\n') {
        b.pop();
        if b.last() == Some(&b'\r') {
            b.pop();
        }
    }
    b
}

fn non_empty(b: Vec<u8>, from: &str) -> Result<Vec<u8>, Error> {
    if b.is_empty() {
        return Err(Error::Invalid(format!("the password from {from} is empty")));
    }
    Ok(b)
}

fn from_file(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Invalid(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?;
    non_empty(strip_newline(bytes), &path.display().to_string())
}

fn from_command(cmd: &str) -> Result<Vec<u8>, Error> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::Invalid(format!("cannot run --password-command {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "--password-command {cmd:?} failed ({})",
            out.status
        )));
    }
    non_empty(
        strip_newline(out.stdout),
        &format!("--password-command {cmd:?}"),
    )
}

fn prompt(text: &str) -> Result<Vec<u8>, Error> {
    let p = rpassword::prompt_password(text)
        .map_err(|e| Error::Invalid(format!("cannot read the password from the terminal: {e}")))?;
    non_empty(p.into_bytes(), "the terminal")
}

fn prompt_twice(text: &str) -> Result<Vec<u8>, Error> {
    let first = prompt(text)?;
    let again = prompt("the same password again: ")?;
    if first != again {
        return Err(Error::Invalid(
            "the two passwords differ; nothing was changed".into(),
        ));
    }
    Ok(first)
}

/// The password of `copy`'s destination repository `repo` (asked for only when it is
/// encrypted): `--to-password-file FILE`, else `--to-password-command CMD`, else
/// `TVAULT_TO_PASSWORD`, else a prompt on a terminal naming the destination.
pub fn destination(
    repo: &Path,
    file: Option<&Path>,
    command: Option<&str>,
) -> Result<Vec<u8>, Error> {
    if let Some(f) = file {
        return from_file(f);
    }
    if let Some(cmd) = command {
        return from_command(cmd);
    }
    if let Some(v) = std::env::var_os("TVAULT_TO_PASSWORD") {
        return non_empty(v.into_encoded_bytes(), "TVAULT_TO_PASSWORD");
    }
    if !on_terminal() {
        // The caller names the destination.
        return Err(Error::Invalid(
            "it is encrypted and no password was given for it: set TVAULT_TO_PASSWORD, pass \
             --to-password-file FILE or --to-password-command CMD, or run tvault on a terminal \
             to be asked"
                .into(),
        ));
    }
    prompt(&format!(
        "password for the destination {}: ",
        repo.display()
    ))
}
