//! The `tvault` binary: parse, run, print the error chain, exit with a documented code.

use std::process::ExitCode;

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // A closed pipe (`tvault snapshots | head`) is the reader's choice, not a failure.
            let broken_pipe = err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            cli::print_error(&err);
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
