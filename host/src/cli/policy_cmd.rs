//! `switchyard policy ...`: check, eval, status, and keys and signatures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use switchyard::contract::{json, Backend, BackendStats};
use switchyard::policy::signing::{self, SigningKey, TrustedKeys};
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
    /// Load every `NAME.wasm` of a policy directory on its own (no policy
    /// configs, trusted keys or backends: `config check` loads them with the
    /// router's configuration) and print each policy's status.
    Status {
        /// The policy directory.
        dir: PathBuf,
        /// Skip the compiled-artifact cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// Create an Ed25519 signing key (PKCS#8 PEM, readable by openssl) and
    /// print its public key, for `[policies.trusted_keys]`.
    Keygen {
        /// Where to write the private key (created; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a policy: writes `FILE.sig`, the signature over its digest.
    Sign {
        /// The policy component (`.wasm`).
        file: PathBuf,
        /// The private key (PKCS#8 PEM: `policy keygen`, or `openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a policy's signature (`FILE.sig`) as the router would: against
    /// the trusted keys of a configuration file, or keys given here.
    Verify {
        /// The policy component (`.wasm`).
        file: PathBuf,
        /// A configuration file whose `[policies.trusted_keys]` to use.
        #[arg(long, short, required_unless_present = "trusted_key")]
        config: Option<PathBuf>,
        /// A trusted public key (base64 of its 32 bytes); repeatable.
        #[arg(long)]
        trusted_key: Vec<String>,
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
            out!("created {}; its README.md says how to build and check it", created.display())?;
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check { file, backends, common } => check(&file, backends.as_deref(), &common),
        PolicyCommand::Eval { file, request, backends, common } => eval(&file, &request, &backends, &common),
        PolicyCommand::Status { dir, no_cache } => status(&dir, no_cache),
        PolicyCommand::Keygen { out } => keygen(&out),
        PolicyCommand::Sign { file, key } => sign(&file, &key),
        PolicyCommand::Verify { file, config, trusted_key } => verify(&file, config.as_deref(), &trusted_key),
    }
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let pem = SigningKey::generate_pem().map_err(anyhow::Error::msg)?;
    let key = SigningKey::from_pem(&pem).map_err(anyhow::Error::msg)?;
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        file.mode(0o600);
    }
    let mut file = file.open(out).with_context(|| format!("cannot create {} (an existing key is never overwritten)", out.display()))?;
    std::io::Write::write_all(&mut file, pem.as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
    out!("private key written to {} (keep it secret)", out.display())?;
    out!("public key, for the routers' configuration:\n\n[policies.trusted_keys]\nrelease = \"{}\"", key.public_base64())?;
    Ok(ExitCode::SUCCESS)
}

fn sign(file: &Path, key: &Path) -> anyhow::Result<ExitCode> {
    let key = SigningKey::from_pem(&read_text(key, "key")?).map_err(|p| anyhow::anyhow!("{}: {p}", key.display()))?;
    let bytes = read_policy(file)?;
    let sig = signing::signature_path(file);
    std::fs::write(&sig, format!("{}\n", key.sign(&bytes))).with_context(|| format!("cannot write {}", sig.display()))?;
    out!("{} signed: {} ({}, key {})", file.display(), sig.display(), signing::digest(&bytes), key.public_base64())?;
    Ok(ExitCode::SUCCESS)
}

fn verify(file: &Path, config: Option<&Path>, trusted: &[String]) -> anyhow::Result<ExitCode> {
    let mut keys: std::collections::BTreeMap<String, String> =
        trusted.iter().enumerate().map(|(i, k)| (format!("--trusted-key[{i}]"), k.clone())).collect();
    if let Some(path) = config {
        keys.extend(switchyard::config::Config::load(path)?.policies.trusted_keys);
    }
    let trust = TrustedKeys::parse(&keys).map_err(|(name, problem)| anyhow::anyhow!("trusted key {name}: {problem}"))?;
    if trust.is_empty() {
        bail!("no trusted keys: {} has no [policies.trusted_keys]", config.map(|p| p.display().to_string()).unwrap_or_default());
    }
    let bytes = read_policy(file)?;
    let sig = signing::signature_path(file);
    let signature = std::fs::read_to_string(&sig).ok();
    match trust.verify(&bytes, signature.as_deref()) {
        Ok(key) => {
            out!("{}: signed by `{key}` ({})", file.display(), signing::digest(&bytes))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            out!("{}: REFUSED ({}): {refusal}", file.display(), refusal.as_str())?;
            Ok(ExitCode::FAILURE)
        }
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
    out!("{}: fits {}", file.display(), report.world)?;
    out!("  version  {}", report.hash)?;
    out!("  size     {} bytes (compiled or loaded from cache in {:.1?})", report.size, compiled_in)?;
    out!("  imports  {}", report.imports.join("\n           "))?;
    out!("  exports  {}", report.exports.join("\n           "))?;
    let started = Instant::now();
    runtime.load(&name, &bytes, &config, &backends)?;
    out!("  init     accepted its config; probe decision made ({:.1?} for init and probe)", started.elapsed())?;
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
    out!("{}", serde_json::to_string_pretty(&decision)?)?;
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
    anyhow::ensure!(dir.is_dir(), "{}: no such directory of policies", dir.display());
    let sources = PolicySources { dir: Some(dir.to_path_buf()), builtin: Vec::new(), trust: None };
    let registry = PolicyRegistry::open(runtime(no_cache)?, sources, Vec::new(), HashMap::new())?;
    let statuses = registry.statuses();
    if statuses.is_empty() {
        out!("no `*.wasm` policy in {}", dir.display())?;
    }
    let mut failed = false;
    for s in statuses {
        let version = s.version.as_deref().unwrap_or("-");
        match &s.last_error {
            None => out!("{:<24} serving {version}", s.name)?,
            Some(e) => {
                failed = true;
                out!("{:<24} FAILED  {e}", s.name)?;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
