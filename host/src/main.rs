//! The `switchyard` command line: the binary edge, where errors become
//! messages and exit codes.

#![forbid(unsafe_code)]

mod cli;

/// mimalloc: the router makes many small, short-lived allocations per
/// request; glibc's malloc showed as 10 % of the profile under load.
/// `switchyard::memory` gives its free memory back on an idle node.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    switchyard::memory::configure();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        // Its reader went away (`| head`): the output was not wanted further.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
