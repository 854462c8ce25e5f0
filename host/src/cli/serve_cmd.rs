//! `switchyard serve` and `switchyard mock-upstream`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use switchyard::config::{self, Config, InstanceModeConfig};
use switchyard::gateway::{ConfigFile, Gateway};
use switchyard::policy::{default_threads, watch, InstanceMode, PolicyRuntime, RuntimeSettings, DEFAULT_DEBOUNCE, DEFAULT_POLL};
use switchyard::server::Limits;
use switchyard::telemetry::Telemetry;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (TOML). Without it, the router runs on an
    /// embedded default: three mock backends and the `cheapest-healthy`
    /// policy, offline.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen on this address instead of the configured one (port 0 picks a
    /// free port; the address is printed on stdout).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on (port 0 picks a free port; printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Tokens in each answer.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Delay before every answer, in ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

pub fn serve(args: ServeArgs, log_format: super::LogFormat) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => config::embedded(None)?,
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    // Memory a storm freed goes back to the system once the workers idle.
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().on_thread_park(switchyard::memory::on_worker_park).build()?;
    let (telemetry, tracer) = Telemetry::start(&config.telemetry, tokio.handle().clone()).map_err(anyhow::Error::msg)?.unzip();
    super::init_logging(log_format, tracer);
    fit_connections_to_open_files(&mut config.server);
    let runtime = PolicyRuntime::new(runtime_settings(&config))?;
    let served = tokio.block_on(async move {
        let listen = config.server.listen;
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let file = args.config.clone().map(|path| ConfigFile { path, listen: args.listen });
        let gateway = Gateway::new(config, runtime, file)?;
        gateway.start_origin();
        let _policy_watcher = match gateway.registry().dir() {
            Some(_) => Some(watch(gateway.registry(), DEFAULT_DEBOUNCE, DEFAULT_POLL)?),
            None => None,
        };
        let _config_watcher = switchyard::reload::watch_config(&gateway)
            .with_context(|| format!("cannot watch {}", args.config.as_deref().map(|p| p.display().to_string()).unwrap_or_default()))?;
        let state = gateway.state();
        let addr = listener.local_addr()?;
        // A signal stops the API listener at once; the admin listener stays up
        // while requests drain (`/readyz` 503, metrics still scraped) and stops
        // after them.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
        let draining = gateway.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            draining.begin_drain();
            let _ = stop.send(true);
        });
        // SIGHUP: reopen the decision log after an external rotation (logrotate).
        if let Some(log) = gateway.decision_log().cloned() {
            let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot listen for SIGHUP")?;
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    log.reopen();
                }
            });
        }
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let admin_task = if let Some(admin_addr) = state.config.admin.listen {
            let admin = TcpListener::bind(admin_addr).await.with_context(|| format!("cannot listen on {admin_addr} (admin.listen)"))?;
            super::announce(format_args!("admin listening on http://{}", admin.local_addr()?));
            let gateway = gateway.clone();
            let handler = move |request| switchyard::admin::handle(gateway.clone(), request);
            // The admin listener: few clients (a scraper, an operator).
            let server = &state.config.server;
            let limits = Limits {
                max_headers: 100,
                max_connections: 64,
                header_timeout: server.header_timeout(),
                http2_keepalive: server.http2_keepalive(),
                idle_timeout: server.idle_timeout(),
            };
            Some(tokio::spawn(switchyard::server::serve(admin, handler, limits, until_stopped(admin_stopped), Duration::from_secs(1))))
        } else {
            None
        };
        // Printed last: scripts (and the tests) wait for this line.
        super::announce(format_args!("switchyard listening on http://{addr}"));
        tracing::info!(%addr, config = %state.config.source, policies = ?gateway.registry().names(), "serving");
        let server = &state.config.server;
        let limits = Limits {
            max_headers: server.max_headers,
            max_connections: server.max_connections,
            header_timeout: server.header_timeout(),
            http2_keepalive: server.http2_keepalive(),
            idle_timeout: server.idle_timeout(),
        };
        drop(state);
        let handler = move |request| switchyard::gateway::http::handle(gateway.clone(), request);
        switchyard::server::serve(listener, handler, limits, until_stopped(stopped), grace).await;
        let _ = admin_stop.send(true);
        if let Some(admin) = admin_task {
            // Its own grace (1 s) for a scrape in flight.
            let _ = admin.await;
        }
        Ok(ExitCode::SUCCESS)
    });
    // The last spans go out on the runtime, which is still running here.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    served
}

/// Raises the open-file limit to its hard limit, and lowers
/// `server.max_connections` to what the limit allows, with a warning: past
/// it, clients get the 503 of a full server rather than no answer.
fn fit_connections_to_open_files(server: &mut switchyard::config::ServerConfig) {
    let limit = match switchyard::open_files::raise_to_hard_limit() {
        Ok(limit) => limit,
        Err(e) => return tracing::warn!("cannot read or raise the open-file limit: {e}"),
    };
    let allowed = switchyard::open_files::connections_allowed(limit);
    if server.max_connections > allowed {
        let message = format!(
            "server.max_connections is {} but the open-file limit ({limit}) allows {allowed} at once (two descriptors each, {} kept for the rest): serving at most {allowed}; raise the limit (ulimit -n, systemd's LimitNOFILE) to allow more",
            server.max_connections,
            switchyard::open_files::RESERVED
        );
        // A cut of under a tenth asks nothing of the operator (the default
        // 10 000 under a limit of 20 000 is 9 920): not a warning.
        if allowed >= server.max_connections / 10 * 9 {
            tracing::info!("{message}");
        } else {
            tracing::warn!("{message}");
        }
        server.max_connections = allowed;
    }
}

pub fn mock_upstream(args: MockArgs) -> anyhow::Result<ExitCode> {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    tokio.block_on(async move {
        let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        super::announce(format_args!("mock upstream listening on http://{}", listener.local_addr()?));
        let settings = switchyard::mock_upstream::MockSettings { answer_tokens: args.tokens, latency_ms: args.latency_ms };
        switchyard::mock_upstream::run(listener, settings, shutdown_signal()).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
}

/// The policy runtime's settings from `[policies]`.
pub fn runtime_settings(config: &Config) -> RuntimeSettings {
    let threads = config.policies.threads.unwrap_or_else(default_threads);
    RuntimeSettings {
        call_fuel: config.policies.call_fuel,
        call_deadline: config.call_deadline(),
        decide_on: config.policies.decide_on,
        threads,
        queue: config.policies.queue,
        warm_instances: config.policies.warm_instances.unwrap_or(threads),
        memory_limit: config.policies.memory_limit_mib << 20,
        function_cache_bytes: config.policies.function_cache_mib << 20,
        instance_mode: match config.policies.instance_mode {
            InstanceModeConfig::Pooled => InstanceMode::Pooled,
            InstanceModeConfig::Fresh => InstanceMode::Fresh,
        },
        ..RuntimeSettings::default()
    }
}
