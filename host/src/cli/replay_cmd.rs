//! `switchyard replay`: a decision log through a candidate policy.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use switchyard::config::Config;
use switchyard::contract::Backend;
use switchyard::policy::{LoadedPolicy, PolicyRuntime, EMPTY_CONFIG};
use switchyard::replay::{replay, Candidates, ReplayReport};
use switchyard::upstream::contract_backend;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The decision log (JSONL, `.gz` too; `-` for standard input). Records
    /// hold the request as the policy saw it and the stats it was given.
    log: PathBuf,
    /// The candidate policy component (`.wasm`).
    #[arg(long)]
    policy: PathBuf,
    /// The router's configuration: the backends (their order, prices and
    /// capabilities) and `[policies.config.NAME]` for the policies.
    #[arg(long)]
    config: PathBuf,
    /// The candidate's own JSON config, instead of its name's in `--config`.
    #[arg(long)]
    policy_config: Option<PathBuf>,
    /// Compare with this policy's decisions instead of the logged ones.
    #[arg(long)]
    against: Option<PathBuf>,
    /// Only the records decided by this policy (as the log names it), when
    /// the log holds several routes' decisions; the candidates then take
    /// this name's `[policies.config.NAME]` (else their file's name's).
    #[arg(long)]
    name: Option<String>,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let backends: Vec<Backend> = config.backends.iter().map(contract_backend).collect();
    let configs = config.policy_configs();
    // The router's own limits (fuel, memory, backstop) for the candidates.
    let runtime = PolicyRuntime::new(super::serve_cmd::runtime_settings(&config))?;
    let load = |file: &Path, own: Option<&Path>| -> anyhow::Result<std::sync::Arc<LoadedPolicy>> {
        let stem = || file.file_stem().and_then(|s| s.to_str()).unwrap_or("policy").to_owned();
        let name = args.name.clone().unwrap_or_else(stem);
        let policy_config = match own {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read the policy config {}", path.display()))?,
            None => configs.get(&name).cloned().unwrap_or_else(|| EMPTY_CONFIG.to_owned()),
        };
        let bytes = std::fs::read(file).with_context(|| format!("cannot read the policy {}", file.display()))?;
        Ok(runtime.load(&name, &bytes, &policy_config, &backends)?)
    };
    let policy = load(&args.policy, args.policy_config.as_deref())?;
    let against = args.against.as_deref().map(|f| load(f, None)).transpose()?;
    let log = open(&args.log)?;
    let bar = progress_bar();
    let candidates = Candidates { policy: &policy, against: against.as_deref(), backends: &backends, name: args.name.as_deref() };
    let report = replay(log, &candidates, |n| bar.set_position(n));
    bar.finish_and_clear();
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(&report, &args, against.is_some())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the decision log {}", path.display()))?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Records read, on a terminal; nothing otherwise.
fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {pos} records replayed ({per_sec})") {
        bar.set_style(style);
    }
    bar
}

fn print_report(r: &ReplayReport, args: &ReplayArgs, against: bool) -> std::io::Result<()> {
    let baseline = if against { "the --against policy" } else { "the logged decisions" };
    out!("replayed {} of {} records through {} (against {baseline})", r.replayed, r.records, args.policy.display())?;
    if r.skipped > 0 {
        let other = if args.name.is_some() { ", or by another policy than --name's" } else { "" };
        out!(
            "  skipped       {} (not decided by a policy: direct, targets or split routes, a failed policy, shadow records{other})",
            r.skipped
        )?;
    }
    if r.unreadable > 0 {
        out!("  unreadable    {} lines", r.unreadable)?;
    }
    if r.other_backends > 0 {
        out!(
            "  other backends  {} (logged with other backends than this configuration's: the candidate chose among different ones; replay with the configuration of the time)",
            r.other_backends
        )?;
    }
    if r.without_prompts > 0 {
        out!("  without prompts {} (the log kept only lengths: decided on what was logged)", r.without_prompts)?;
    }
    out!("  agreement     {:.2}% ({} of {})", r.agreement() * 100.0, r.agreed, r.replayed)?;
    if !r.changed.is_empty() {
        out!("  changed first target:")?;
        let mut changed: Vec<_> = r.changed.iter().collect();
        changed.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (change, n) in changed {
            out!("    {n:>8}  {change}")?;
        }
    }
    out!("  rejections    {}", r.rejected)?;
    for (kind, n) in &r.errors {
        out!("  errors        {n} {kind}")?;
    }
    if r.costed > 0 {
        let diff = r.cost_after - r.cost_before;
        let pct = if r.cost_before > 0.0 { diff / r.cost_before * 100.0 } else { 0.0 };
        out!(
            "  cost          ${:.4} -> ${:.4} ({diff:+.4}, {pct:+.1}%) over {} records with token usage",
            r.cost_before,
            r.cost_after,
            r.costed
        )?;
    }
    out!("  decision time p50 {:.1} µs, p99 {:.1} µs", r.decision_us_p50, r.decision_us_p99)
}
