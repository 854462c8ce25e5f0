//! `switchyard policy ...`: check, eval and status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use switchyard::contract::{json, Backend, BackendStats};
use switchyard::policy::{Decision, PolicyRegistry, PolicyRuntime, PolicySources, RuntimeSettings, EMPTY_CONFIG};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a buildable policy from a template.
    New {
        /// The policy's name (lower-case letters, digits, `-`).
        name: String,
        /// Its language.
        #[arg(long, value_enum)]
        lang: super::scaffold::Lang,
        /// Where to create it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the Rust SDK (`guest-sdk/`), for Rust policies built
        /// outside this repository.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Compile a policy against the `switchyard:policy` world, list its
    /// imports and exports, run `init` with a config and make one probe
    /// decision.
    Check {
        /// The policy component (`.wasm`).
        file: PathBuf,
        /// Backends to pass to `init`, as a JSON array (default: none).
        #[arg(long, short)]
        backends: Option<PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print the decision a policy makes for a request and backends, as JSON.
    Eval {
        /// The policy component (`.wasm`).
        file: PathBuf,
        /// The request as the policy sees it, as JSON (README: "Check and
        /// evaluate"; `tests/fixtures/request.json` is an example).
        #[arg(long, short)]
        request: PathBuf,
        /// The backends, as a JSON array.
        #[arg(long, short)]
        backends: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Load every `NAME.wasm` of a policy directory as the router would and
    /// print each policy's status.
    Status {
        /// The policy directory.
        dir: PathBuf,
        /// Skip the compiled-artifact cache.
        #[arg(long)]
        no_cache: bool,
    },
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The policy's configuration, a JSON file passed to `init` (default `{}`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Skip the compiled-artifact cache.
    #[arg(long)]
    no_cache: bool,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::New { name, lang, dir, sdk } => {
            let created = super::scaffold::new_policy(&name, lang, &dir, sdk.as_deref())?;
            println!("created {}; its README.md says how to build and check it", created.display());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check { file, backends, common } => check(&file, backends.as_deref(), &common),
        PolicyCommand::Eval { file, request, backends, common } => eval(&file, &request, &backends, &common),
        PolicyCommand::Status { dir, no_cache } => status(&dir, no_cache),
    }
}

fn runtime(no_cache: bool) -> anyhow::Result<PolicyRuntime> {
    let mut settings = RuntimeSettings::default();
    if no_cache {
        settings.cache_dir = None;
    }
    Ok(PolicyRuntime::new(settings)?)
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} file {}", path.display()))
}

fn read_config(common: &CommonArgs) -> anyhow::Result<String> {
    let Some(path) = &common.config else { return Ok(EMPTY_CONFIG.to_owned()) };
    let text = read_text(path, "config")?;
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        bail!("config file {} is not valid JSON: {e}", path.display());
    }
    Ok(text)
}

fn policy_name(file: &Path) -> String {
    file.file_stem().map_or_else(|| file.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn read_policy(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read policy file {}", file.display()))
}

fn check(file: &Path, backends: Option<&Path>, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let config = read_config(common)?;
    let backends = match backends {
        Some(path) => read_backends(path)?.0,
        None => Vec::new(),
    };
    let bytes = read_policy(file)?;
    let runtime = runtime(common.no_cache)?;
    let name = policy_name(file);
    let started = Instant::now();
    let report = runtime.inspect(&name, &bytes)?;
    let compiled_in = started.elapsed();
    println!("{}: fits {}", file.display(), report.world);
    println!("  version  {}", report.hash);
    println!("  size     {} bytes (compiled or loaded from cache in {:.1?})", report.size, compiled_in);
    println!("  imports  {}", report.imports.join("\n           "));
    println!("  exports  {}", report.exports.join("\n           "));
    let started = Instant::now();
    runtime.load(&name, &bytes, &config, &backends)?;
    println!("  init     accepted its config; probe decision made ({:.1?} for init and probe)", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

fn eval(file: &Path, request: &Path, backends: &Path, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let config = read_config(common)?;
    let request = json::parse_request(&read_text(request, "request")?)
        .with_context(|| format!("request file {} is not a valid request", request.display()))?;
    let (backends, stats) = read_backends(backends)?;
    let bytes = read_policy(file)?;
    let policy = runtime(common.no_cache)?.load(&policy_name(file), &bytes, &config, &backends)?;
    let decision: Decision = policy.decide(&request, &stats)?;
    println!("{}", serde_json::to_string_pretty(&decision)?);
    let fuel = policy.call_stats().fuel_used;
    eprintln!("fuel used: {fuel} of the default budget of {} (policies.call_fuel)", switchyard::policy::DEFAULT_CALL_FUEL);
    Ok(ExitCode::SUCCESS)
}

fn read_backends(path: &Path) -> anyhow::Result<(Vec<Backend>, Vec<BackendStats>)> {
    json::parse_backends(&read_text(path, "backends")?)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("backends file {} is not a valid list of backends", path.display()))
}

fn status(dir: &Path, no_cache: bool) -> anyhow::Result<ExitCode> {
    let sources = PolicySources { dir: Some(dir.to_path_buf()), builtin: Vec::new() };
    let registry = PolicyRegistry::open(runtime(no_cache)?, sources, Vec::new(), HashMap::new())?;
    let statuses = registry.statuses();
    if statuses.is_empty() {
        println!("no `*.wasm` policy in {}", dir.display());
    }
    let mut failed = false;
    for s in statuses {
        let version = s.version.as_deref().unwrap_or("-");
        match &s.last_error {
            None => println!("{:<24} serving {version}", s.name),
            Some(e) => {
                failed = true;
                println!("{:<24} FAILED  {e}", s.name);
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
