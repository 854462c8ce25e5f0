//! Command-line parsing and dispatch.

mod policy_cmd;
mod scaffold;
mod serve_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Switchyard: a programmable LLM router. Routing policies are WebAssembly
/// components, sandboxed and hot-swappable.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the router.
    Serve(serve_cmd::ServeArgs),
    /// Run a mock OpenAI-compatible upstream with fault injection, for tests
    /// and demos.
    MockUpstream(serve_cmd::MockArgs),
    /// Check, evaluate and inspect routing policies.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve_cmd::serve(args),
        Command::MockUpstream(args) => serve_cmd::mock_upstream(args),
        Command::Policy(cmd) => policy_cmd::run(cmd),
    }
}

pub fn init_logging(format: &LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
