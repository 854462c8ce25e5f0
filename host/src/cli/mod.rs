//! Command-line parsing and dispatch.

/// `println!` that returns the write's error instead of panicking: a
/// command whose reader went away (`switchyard ... | head`) stops with an
/// `io::Error` of kind `BrokenPipe`, which `main` ends quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Prints a line a supervisor (or a test) may wait for, such as the
/// address a server listens on. Nobody reading it is not the server's
/// failure, so a write error (a closed stdout) is ignored.
pub(crate) fn announce(line: std::fmt::Arguments<'_>) {
    let _ = out!("{line}");
}

mod config_cmd;
mod policy_cmd;
mod replay_cmd;
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
    /// Check a configuration file, or print the embedded default.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Run a decision log through a candidate policy: agreement, changed
    /// decisions, rejections, errors, cost and decision time.
    Replay(replay_cmd::ReplayArgs),
    /// Exit 0 when a running router answers its health (or readiness) URL
    /// with 2xx, else 1: a container's HEALTHCHECK with no shell or curl.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The URL to GET (http or https).
    #[arg(default_value = "http://127.0.0.1:8080/healthz", value_parser = http_url)]
    url: reqwest::Url,
    /// Give up after this many ms.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// An absolute http or https URL, for clap.
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("the scheme must be http or https, not `{other}`")),
    }
}

fn probe(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_millis(args.timeout_ms)).build()?;
    let answer = runtime.block_on(async { client.get(args.url.clone()).send().await.map(|r| r.status()) });
    match answer {
        Ok(status) if status.is_success() => Ok(ExitCode::SUCCESS),
        Ok(status) => {
            eprintln!("{}: {status}", args.url);
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("{}: no answer: {e}", args.url);
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // `serve` starts logging once it has read its configuration, which
        // may ask for trace export.
        Command::Serve(args) => serve_cmd::serve(args, cli.log_format),
        Command::MockUpstream(args) => {
            init_logging(cli.log_format, None);
            serve_cmd::mock_upstream(args)
        }
        Command::Policy(cmd) => {
            init_logging(cli.log_format, None);
            policy_cmd::run(cmd)
        }
        Command::Config(cmd) => {
            init_logging(cli.log_format, None);
            config_cmd::run(cmd)
        }
        Command::Replay(args) => {
            init_logging(cli.log_format, None);
            replay_cmd::run(args)
        }
        Command::Probe(args) => probe(&args),
    }
}

/// Logs to stderr (level from `RUST_LOG`, default `info`), and exports the
/// trace spans through `tracer` when given.
pub fn init_logging(format: LogFormat, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{Layer, Registry};

    let filter = || {
        let filter = match std::env::var("RUST_LOG") {
            Ok(text) if !text.trim().is_empty() => text.parse::<Targets>().unwrap_or_else(|e| {
                eprintln!("RUST_LOG={text:?} is not a list of `level` or `target=level`: {e}; logging at info");
                Targets::new().with_default(LevelFilter::INFO)
            }),
            _ => Targets::new().with_default(LevelFilter::INFO),
        };
        // The exported spans would prefix every log line; they are for the collector.
        filter.with_target(switchyard::telemetry::TARGET, LevelFilter::OFF)
    };
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match format {
        LogFormat::Text => fmt.with_filter(filter()).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter()).boxed(),
    }];
    if let Some(tracer) = tracer {
        let spans = Targets::new().with_target(switchyard::telemetry::TARGET, LevelFilter::INFO);
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans).boxed());
    }
    tracing_subscriber::registry().with(layers).init();
}
