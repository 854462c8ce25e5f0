//! `switchyard config`: check a configuration without serving it, and print
//! the embedded default to start from.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use switchyard::config::{Config, ConfigError, OnPolicyError, EMBEDDED_TOML};
use switchyard::gateway::Gateway;
use switchyard::policy::PolicyRuntime;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file, load its policies as the router would,
    /// and print the routes and backends as the router sees them. Exits
    /// non-zero when the file is invalid or a route's policy does not serve.
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// Print the embedded default configuration (what `switchyard serve`
    /// runs without `--config`), to start a configuration from.
    PrintDefault,
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Check { file } => check(file),
        ConfigCommand::PrintDefault => {
            out!("{}", EMBEDDED_TOML.trim())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(file: PathBuf) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&file)?;
    // Checking writes nothing: no decision log file is created, and the
    // origin is not polled (policies already pulled into `dir` are checked).
    // What would stop `serve` from opening the log is still found.
    if let Some(path) = config.decision_log.path.take() {
        let in_a_dir = path.parent().is_none_or(|dir| dir.as_os_str().is_empty() || dir.is_dir());
        let problem = if path.is_dir() {
            Some("it is a directory")
        } else if !in_a_dir {
            Some("its directory does not exist")
        } else if std::fs::metadata(&path).is_ok_and(|m| m.permissions().readonly()) {
            Some("it is read-only")
        } else {
            None
        };
        if let Some(problem) = problem {
            let problem = format!("cannot open {}: {problem}", path.display());
            return Err(ConfigError { file: config.source.clone(), key: "decision_log.path".into(), problem }.into());
        }
    }
    let pulled = !config.policies.source.is_empty();
    if pulled {
        config.policies.source.clear();
        if !config.policies.dir.as_deref().is_some_and(std::path::Path::is_dir) {
            config.policies.dir = None;
        }
    }
    let runtime = PolicyRuntime::new(super::serve_cmd::runtime_settings(&config))?;
    let gateway = Gateway::new(config, runtime, None)?;
    let state = gateway.state();
    let registry = gateway.registry();
    let statuses = registry.statuses();
    out!("{}: valid", file.display())?;
    out!("routes:")?;
    let mut ok = true;
    for route in &state.config.routes {
        let Some(instance) = route.policy_instance() else {
            let how = if route.targets.is_empty() {
                let arms: Vec<String> = route.split.iter().map(|a| format!("{} {}", a.backend, a.weight)).collect();
                format!("split by weight: {}", arms.join(", "))
            } else {
                format!("targets in order: {}", route.targets.join(", "))
            };
            out!("  {:<20} -> {how} (no policy)", route.model)?;
            continue;
        };
        let serving = match (registry.get(&instance), statuses.iter().find(|s| s.name == instance)) {
            (Some(version), _) => format!("serving {}", version.version()),
            (None, Some(status)) => {
                ok = false;
                match &status.last_error {
                    Some(e) => format!("NOT SERVING: {e}"),
                    None => "NOT SERVING".to_owned(),
                }
            }
            (None, None) if pulled => "pulled from policies.source when serving (not pulled here yet)".to_owned(),
            (None, None) => {
                ok = false;
                "NOT FOUND: neither a file in policies.dir nor built in".to_owned()
            }
        };
        let on_error = match &route.on_policy_error {
            OnPolicyError::Reject => "reject".to_owned(),
            OnPolicyError::Backends(names) => names.join(", "),
        };
        let own = if route.policy_config.is_some() { ", with this route's policy_config" } else { "" };
        out!("  {:<20} -> {}{own} ({serving}); on policy error: {on_error}", route.model, route.policy)?;
    }
    out!("backends:")?;
    for b in &state.config.backends {
        let url = b.base_url.as_deref().map_or_else(|| "(in-process mock)".to_owned(), shown_url);
        let tags = if b.tags.is_empty() { String::new() } else { format!(" tags={}", b.tags.join(",")) };
        out!(
            "  {:<20} {:<10} model={} {url} ${}/${} per million tokens{tags}",
            b.name,
            b.provider.as_str(),
            b.model(),
            b.input_price,
            b.output_price
        )?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A backend's URL as printed: no password and no query, where secrets
/// from the environment may sit (`?key=${KEY}`).
fn shown_url(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url.query().is_some() {
                url.set_query(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn printed_urls_keep_no_secret() {
        let cases = [
            ("http://127.0.0.1:1/v1?key=supersecret", "http://127.0.0.1:1/v1?***"),
            ("https://u:p4ss@api.example.com/v1", "https://u:***@api.example.com/v1"),
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ];
        for (url, shown) in cases {
            assert_eq!(super::shown_url(url), shown);
        }
    }
}
