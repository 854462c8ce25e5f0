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
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
