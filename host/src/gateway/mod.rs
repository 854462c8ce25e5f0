//! The gateway: the configured backends and routes, swapped whole on a
//! configuration reload, and the path of one request through them.
//!
//! - `http.rs`: where a request is read, authenticated and answered.
//! - `admission.rs`: where a request meets its caller's limits and budget.
//! - `plan.rs`: where the policy is called and targets are chosen.
//! - `cached.rs`: answers from the response cache, and streams kept in it.
//! - `attempts.rs`: where an upstream is tried and a failure is retried.
//! - `relay.rs`: where a stream is passed to the client.
//! - `framing.rs`: how its events are framed for the client's API.
//! - `outcome.rs`: what a request came to, for the policy's `observe`.
//! - `candidates.rs`: shadow and canary policies beside a serving one.
//! - `rescue.rs`: where a stream broken mid-answer finds its continuation.
//! - `transcript.rs`: what a stream has said, and the splice rule.

mod admission;
mod attempts;
mod cached;
pub mod candidates;
mod framing;
pub mod http;
mod outcome;
mod plan;
mod relay;
mod rescue;
mod stream_body;
mod transcript;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::cache::ResponseCache;
use crate::config::{
    ClientConfig, Config, ConfigError, LimitsConfig, OnPolicyError, RescueConfig, RouteCacheConfig, RouteConfig, EMBEDDED_POLICY_NAME,
};
use crate::decision_log::{DecisionLog, Retention};
use crate::metrics::Metrics;
use crate::origin::{OriginSync, Source};
use crate::policy::signing::signature_path;
use crate::policy::{PolicyRegistry, PolicyRuntime, PolicySources, RescanReport};
use crate::quota::Quotas;
use crate::shared_store::SharedStore;
use crate::stats::LiveStats;
use crate::upstream::Upstream;

/// The router: its current configuration and the policy registry.
pub struct Gateway {
    state: ArcSwap<GatewayState>,
    registry: Arc<PolicyRegistry>,
    /// Stats by backend name, kept when a reload keeps the backend.
    stats: Mutex<HashMap<String, Arc<LiveStats>>>,
    metrics: Arc<Metrics>,
    decision_log: Option<Arc<DecisionLog>>,
    /// Where the configuration came from, for reloads.
    file: Option<ConfigFile>,
    /// Shadow and canary candidates' books.
    candidates: Arc<candidates::Candidates>,
    /// Callers' limits and budgets.
    quotas: Arc<Quotas>,
    /// Kept answers.
    cache: Arc<ResponseCache>,
    /// Where policies are pulled from, when configured.
    origin: Option<Arc<OriginSync>>,
    /// Set once shutdown begins: `/readyz` answers 503 while requests drain.
    draining: std::sync::atomic::AtomicBool,
    /// Streams in flight, watched for clients that stop reading.
    stalls: Arc<stream_body::StallWatch>,
}

/// The configuration file being served, and the command-line override that
/// reloads of it keep.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file.
    pub path: PathBuf,
    /// `--listen`, which wins over the file's `server.listen`.
    pub listen: Option<SocketAddr>,
}

/// One configuration, ready to serve. Requests hold it for their whole life.
pub struct GatewayState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The backends, in configuration order.
    pub upstreams: Vec<Arc<Upstream>>,
    by_name: HashMap<String, usize>,
    routes: HashMap<String, Route>,
    catch_all: Option<Route>,
    /// Backend names and models that bypass policies.
    direct: HashMap<String, Vec<usize>>,
    clients: Vec<ClientConfig>,
    /// The body of `GET /v1/models`.
    models: Bytes,
}

/// How a route chooses the targets of its requests.
struct Route {
    kind: RouteKind,
    /// Whether its streams may be rescued.
    rescue: bool,
    /// Its rate limits, for each client key.
    limits: Option<LimitsConfig>,
    /// Its response cache.
    cache: Option<RouteCacheConfig>,
}

enum RouteKind {
    /// A policy instance decides.
    Policy {
        /// The instance's name in the registry (`NAME`, or `NAME~MODEL` for
        /// a route's own configuration).
        policy: String,
        /// What serves when the policy cannot decide: indices into
        /// `upstreams`; empty means reject.
        on_policy_error: Vec<usize>,
    },
    /// These backends, in order.
    Targets(Vec<usize>),
    /// One backend by weight, the same for the same caller; then the others.
    Split(Vec<(usize, u32)>),
}

impl Route {
    fn new(route: &RouteConfig, by_name: &HashMap<String, usize>, rescue: &RescueConfig) -> Self {
        // Validation made sure every name is a backend.
        let index = |name: &String| by_name.get(name).copied();
        let kind = if !route.targets.is_empty() {
            RouteKind::Targets(route.targets.iter().filter_map(index).collect())
        } else if !route.split.is_empty() {
            RouteKind::Split(route.split.iter().filter_map(|arm| Some((index(&arm.backend)?, arm.weight))).collect())
        } else {
            let on_policy_error = match &route.on_policy_error {
                OnPolicyError::Reject => vec![],
                OnPolicyError::Backends(names) => names.iter().filter_map(index).collect(),
            };
            RouteKind::Policy { policy: route.policy_instance().unwrap_or_default(), on_policy_error }
        };
        Self { kind, rescue: route.rescue.unwrap_or(rescue.enabled), limits: route.limits.filter(LimitsConfig::any), cache: route.cache }
    }

    /// The policy instance that decides, if a policy does.
    fn policy(&self) -> Option<&str> {
        match &self.kind {
            RouteKind::Policy { policy, .. } => Some(policy),
            _ => None,
        }
    }
}

impl GatewayState {
    /// The route that serves `model`: its own, none for a backend named
    /// directly, else the catch-all.
    fn route_for(&self, model: &str) -> Option<&Route> {
        match self.routes.get(model) {
            Some(route) => Some(route),
            None if self.direct.contains_key(model) => None,
            None => self.catch_all.as_ref(),
        }
    }

    /// The name of `model`'s route (`*` for the catch-all) and its rate
    /// limits, if it has any: counted by route, whatever name a client
    /// gives the catch-all.
    pub fn route_limits<'a>(&self, model: &'a str) -> Option<(&'a str, LimitsConfig)> {
        let name = if self.routes.contains_key(model) { model } else { "*" };
        self.route_for(model).and_then(|r| r.limits).map(|limits| (name, limits))
    }

    /// The cache settings of `model`'s route, if it caches.
    pub fn route_cache(&self, model: &str) -> Option<RouteCacheConfig> {
        self.route_for(model).and_then(|r| r.cache)
    }

    /// The highest input and output prices of any backend: what a spend
    /// reservation is priced at, before the policy picks a backend.
    pub fn max_prices(&self) -> (f64, f64) {
        self.upstreams.iter().fold((0.0, 0.0), |(i, o), u| (u.config.input_price.max(i), u.config.output_price.max(o)))
    }

    /// The client configuration named `name`.
    pub fn client(&self, name: &str) -> Option<&ClientConfig> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// `GET /v1/models/{id}`: the model object of a virtual model or a
    /// backend's model as `/v1/models` lists it; any other name when a
    /// catch-all route serves every model.
    pub fn model(&self, id: &str) -> Option<serde_json::Value> {
        let list: serde_json::Value = serde_json::from_slice(&self.models).ok()?;
        let listed = list["data"].as_array()?.iter().find(|m| m["id"] == id).cloned();
        listed.or_else(|| {
            self.catch_all.as_ref().map(|_| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
        })
    }

    /// `model` as a metrics label: configured virtual models and backend
    /// models by name, anything else (a catch-all route serves any name the
    /// client sends) as `other`, so clients cannot grow the metric series.
    pub fn model_label<'a>(&self, model: &'a str) -> &'a str {
        if self.routes.contains_key(model) || self.direct.contains_key(model) {
            model
        } else {
            "other"
        }
    }
}

impl Gateway {
    /// Builds the gateway and loads the policies. Policies that fail to load
    /// are reported; their routes answer by `on_policy_error`.
    /// `file` is where `config` was read from (none for the embedded
    /// default); [`Gateway::reload_file`] reads it again.
    pub fn new(config: Config, runtime: PolicyRuntime, file: Option<ConfigFile>) -> Result<Arc<Self>, ConfigError> {
        let stats = Mutex::new(HashMap::new());
        let state = build_state(config, &stats, None)?;
        let config_error = |key: &str, problem: String| ConfigError { file: state.config.source.clone(), key: key.into(), problem };
        let trust =
            state.config.trusted_keys().map_err(|(name, problem)| config_error(&format!("policies.trusted_keys.{name}"), problem))?;
        // Pulled policies land in `policies.dir`; the last good ones are
        // placed before the registry's first read.
        let origin = match (&state.config.policies.dir, state.config.policies.source.as_slice()) {
            (Some(dir), sources) if !sources.is_empty() => {
                let sources = sources
                    .iter()
                    .map(|s| Source::parse(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|p| config_error("policies.source", p))?;
                let interval = std::time::Duration::from_millis(state.config.policies.poll_interval_ms);
                Some(
                    OriginSync::open(sources, interval, dir)
                        .map_err(|e| config_error("policies.dir", format!("cannot use {}: {e}", dir.display())))?,
                )
            }
            _ => None,
        };
        let sources = PolicySources {
            dir: state.config.policies.dir.clone(),
            builtin: vec![(EMBEDDED_POLICY_NAME.to_owned(), crate::config::EMBEDDED_POLICY)],
            trust: trust.map(Arc::new),
        };
        let backends = state.upstreams.iter().map(|u| u.contract()).collect();
        let registry = PolicyRegistry::open(runtime, sources, backends, state.config.policy_configs()).map_err(|e| ConfigError {
            file: state.config.source.clone(),
            key: "policies.dir".into(),
            problem: e.message().to_owned(),
        })?;
        for status in registry.statuses() {
            if let Some(e) = status.last_error {
                tracing::error!(policy = %status.name, "policy failed to load; its routes answer by on_policy_error: {e}");
            }
        }
        warn_unknown_policies(&state.config, &registry);
        let decision_log = match &state.config.decision_log.path {
            Some(path) => {
                let d = &state.config.decision_log;
                let retention = Retention {
                    max_file_bytes: d.max_file_mib << 20,
                    max_file_age: std::time::Duration::from_secs(d.max_file_age_s),
                    keep_files: d.keep_files,
                    sample_rate: d.sample_rate,
                    compress: d.compress,
                };
                Some(DecisionLog::open(path, d.include_prompts, retention).map(Arc::new).map_err(|e| ConfigError {
                    file: state.config.source.clone(),
                    key: "decision_log.path".into(),
                    problem: format!("cannot open {}: {e}", path.display()),
                })?)
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let candidates = Arc::default();
        let shared =
            match &state.config.shared.redis_url {
                Some(_) => Some(Arc::new(
                    SharedStore::new(&state.config.shared, crate::quota::shared_scripts(), metrics.clone())
                        .map_err(|problem| ConfigError { file: state.config.source.clone(), key: "shared.redis_url".into(), problem })?,
                )),
                None => None,
            };
        let quotas = Arc::new(Quotas::new(shared.clone(), metrics.clone()));
        let cache = Arc::new(ResponseCache::new(state.config.cache.max_mib << 20, shared, metrics.clone()));
        Ok(Arc::new(Self {
            state: ArcSwap::from_pointee(state),
            registry: Arc::new(registry),
            stats,
            metrics,
            decision_log,
            file,
            candidates,
            quotas,
            cache,
            origin,
            draining: Default::default(),
            stalls: Default::default(),
        }))
    }

    /// Where policies are pulled from, when configured.
    pub fn origin(&self) -> Option<&Arc<OriginSync>> {
        self.origin.as_ref()
    }

    /// Starts polling the origin, when one is configured (needs a Tokio runtime).
    pub fn start_origin(&self) {
        if let Some(origin) = &self.origin {
            origin.spawn(Arc::downgrade(&self.registry));
        }
    }

    /// The state serving now.
    pub fn state(&self) -> Arc<GatewayState> {
        self.state.load_full()
    }

    /// `admin.token` now: a reload that changes it applies to the next
    /// admin request.
    pub fn admin_token(&self) -> Option<String> {
        self.state.load().config.admin.token.clone()
    }

    /// `server.max_headers` now (no reference count taken: read per request).
    pub fn max_headers(&self) -> usize {
        self.state.load().config.server.max_headers
    }

    /// The policy registry.
    pub fn registry(&self) -> &Arc<PolicyRegistry> {
        &self.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The decision log, when configured (opened at start; a new path needs a restart).
    pub fn decision_log(&self) -> Option<&Arc<DecisionLog>> {
        self.decision_log.as_ref()
    }

    /// Callers' limits and budgets.
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Streams in flight, watched for clients that stop reading.
    pub(crate) fn stalls(&self) -> &Arc<stream_body::StallWatch> {
        &self.stalls
    }

    /// The response cache.
    pub fn cache(&self) -> &Arc<ResponseCache> {
        &self.cache
    }

    /// The shadow and canary candidates' books.
    pub fn candidates(&self) -> &Arc<candidates::Candidates> {
        &self.candidates
    }

    /// Promotes the canary beside `name`: its file replaces NAME's (or
    /// becomes `NAME.wasm` in the policy directory when NAME is built in),
    /// so the promotion survives a restart, and NAME reloads from it.
    /// Answers the version now serving.
    pub fn promote(&self, name: &str) -> Result<String, String> {
        let canary = crate::policy::Candidate::Canary.name_for(name);
        let from = self.registry.file_of(&canary).ok_or_else(|| format!("`{name}` has no canary file"))?;
        let version = self.registry.get(&canary).map(|p| p.version().to_owned()).unwrap_or_default();
        let to = match self.registry.file_of(name) {
            Some(file) => file,
            None => self
                .registry
                .dir()
                .ok_or("no policy directory to promote into")?
                .join(format!("{name}.{}", crate::policy::POLICY_EXTENSION)),
        };
        // The signature travels with its bytes (first: the registry checks it with them).
        let (from_sig, to_sig) = (signature_path(&from), signature_path(&to));
        if from_sig.exists() {
            std::fs::rename(&from_sig, &to_sig).map_err(|e| format!("cannot move {} to {}: {e}", from_sig.display(), to_sig.display()))?;
        }
        std::fs::rename(&from, &to).map_err(|e| format!("cannot move {} to {}: {e}", from.display(), to.display()))?;
        // Recorded before the rescan: the directory watcher may swap the
        // promoted version in first, and whoever sees it serve sees it counted.
        self.metrics.canary_transition(&canary, "promoted");
        self.candidates.settle(&canary, &version, candidates::CanaryState::Promoted, "promoted");
        self.registry.rescan();
        let serving = self.registry.get(name).map(|p| p.version().to_owned()).unwrap_or_default();
        tracing::warn!(policy = %name, version = %serving, "canary promoted");
        Ok(serving)
    }

    /// Rolls the canary `canary` back: its file is renamed `*.rolled-back`
    /// (kept for a look, never loaded), so it serves nothing, now or after
    /// a restart.
    pub fn roll_back(&self, canary: &str, reason: &str) -> Result<(), String> {
        let file = self.registry.file_of(canary).ok_or_else(|| format!("no canary `{canary}` is serving"))?;
        let version = self.registry.get(canary).map(|p| p.version().to_owned()).unwrap_or_default();
        let mut parked = file.clone().into_os_string();
        parked.push(".rolled-back");
        std::fs::rename(&file, &parked).map_err(|e| format!("cannot move {}: {e}", file.display()))?;
        let sig = signature_path(&file);
        if sig.exists() {
            let mut parked_sig = sig.clone().into_os_string();
            parked_sig.push(".rolled-back");
            std::fs::rename(&sig, &parked_sig).map_err(|e| format!("cannot move {}: {e}", sig.display()))?;
        }
        // Recorded before the rescan, as for a promotion.
        self.metrics.canary_transition(canary, "rolled_back");
        self.candidates.settle(canary, &version, candidates::CanaryState::RolledBack, reason);
        self.registry.rescan();
        tracing::warn!(%canary, %version, "canary rolled back: {reason}");
        Ok(())
    }

    /// Marks the node as shutting down; `/readyz` answers 503 from now on.
    pub fn begin_drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The virtual models whose policy has no version serving.
    pub fn policies_missing(&self) -> Vec<String> {
        let state = self.state();
        let mut missing: Vec<String> = state
            .routes
            .values()
            .chain(&state.catch_all)
            .filter_map(Route::policy)
            .filter(|p| self.registry.get(p).is_none())
            .map(str::to_owned)
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// Reads the configuration file again and applies it when it is valid;
    /// `Ok(None)` when the router serves the embedded default (no file).
    pub fn reload_file(&self) -> Result<Option<RescanReport>, ConfigError> {
        let Some(file) = &self.file else { return Ok(None) };
        let mut config = Config::load(&file.path)?;
        if let Some(listen) = file.listen {
            config.server.listen = listen;
        }
        self.reconfigure(config).map(Some)
    }

    /// The configuration file being served, if any.
    pub fn config_file(&self) -> Option<&ConfigFile> {
        self.file.as_ref()
    }

    /// Applies a new configuration: backends, routes, clients and policy
    /// configs. Settings that need a restart (listener, policy directory and
    /// runtime limits) are reported and left as they are.
    pub fn reconfigure(&self, config: Config) -> Result<RescanReport, ConfigError> {
        let old = self.state();
        let (p, q) = (&config.policies, &old.config.policies);
        if config.server.listen != old.config.server.listen
            || p.dir != q.dir
            || p.source != q.source
            || p.poll_interval_ms != q.poll_interval_ms
            || p.trusted_keys != q.trusted_keys
        {
            tracing::warn!(file = %config.source, "server.listen, policies.dir, source, poll_interval_ms and trusted_keys changes take effect after a restart");
        }
        if config.shared != old.config.shared || config.cache != old.config.cache {
            tracing::warn!(file = %config.source, "[shared] and [cache] changes take effect after a restart");
        }
        // (admin.token is read per request: it changes at once.)
        if config.decision_log != old.config.decision_log
            || config.telemetry != old.config.telemetry
            || config.admin.listen != old.config.admin.listen
        {
            tracing::warn!(file = %config.source, "[decision_log], [telemetry] and admin.listen changes take effect after a restart");
        }
        let state = build_state(config, &self.stats, Some(&old))?;
        let backends = state.upstreams.iter().map(|u| u.contract()).collect();
        let report = self.registry.reconfigure(Some(backends), state.config.policy_configs());
        warn_unknown_policies(&state.config, &self.registry);
        self.state.store(Arc::new(state));
        Ok(report)
    }
}

/// Routes whose policy is neither a file in `policies.dir` nor built in, as
/// (model, policy).
fn unknown_route_policies(config: &Config, registry: &PolicyRegistry) -> Vec<(String, String)> {
    let known: std::collections::HashSet<String> = registry.statuses().into_iter().map(|s| s.name).collect();
    config
        .routes
        .iter()
        .filter(|r| !r.policy.is_empty() && !known.contains(&r.policy))
        .map(|r| (r.model.clone(), r.policy.clone()))
        .collect()
}

/// Says so, at start and on every reload, for each route whose policy does
/// not exist: its requests would all answer by `on_policy_error`.
fn warn_unknown_policies(config: &Config, registry: &PolicyRegistry) {
    for (model, policy) in unknown_route_policies(config, registry) {
        let file = match &config.policies.dir {
            Some(dir) => format!("no `{policy}.wasm` in {}", dir.display()),
            None => "no policies.dir".to_owned(),
        };
        tracing::warn!(
            file = %config.source,
            "route `{model}` names policy `{policy}`, but there is {file} and no built-in policy of that name: its requests answer by on_policy_error"
        );
    }
}

/// Turns `config` into serving state. A backend whose configuration is the
/// same as in `old` keeps its `Upstream`, and so its pooled connections.
fn build_state(
    config: Config,
    stats: &Mutex<HashMap<String, Arc<LiveStats>>>,
    old: Option<&GatewayState>,
) -> Result<GatewayState, ConfigError> {
    let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
    let mut upstreams = Vec::with_capacity(config.backends.len());
    for (i, backend) in config.backends.iter().enumerate() {
        let live = stats.entry(backend.name.clone()).or_insert_with(|| Arc::new(LiveStats::new(&config.circuit))).clone();
        live.set_circuit_config(&config.circuit);
        let unchanged = old.and_then(|old| old.by_name.get(&backend.name).map(|&j| &old.upstreams[j])).filter(|u| u.config == *backend);
        if let Some(upstream) = unchanged {
            upstreams.push(upstream.clone());
            continue;
        }
        let upstream = Upstream::new(backend.clone(), live).map_err(|problem| ConfigError {
            file: config.source.clone(),
            key: format!("backends[{i}]"),
            problem,
        })?;
        upstreams.push(Arc::new(upstream));
    }
    stats.retain(|name, _| config.backends.iter().any(|b| &b.name == name));

    let by_name: HashMap<String, usize> = upstreams.iter().enumerate().map(|(i, u)| (u.name().to_owned(), i)).collect();
    let mut direct: HashMap<String, Vec<usize>> = HashMap::new();
    if config.policies.direct_backend_models {
        for (i, u) in upstreams.iter().enumerate() {
            direct.entry(u.name().to_owned()).or_default().push(i);
            if u.config.model() != u.name() {
                direct.entry(u.config.model().to_owned()).or_default().push(i);
            }
        }
    }
    let routes =
        config.routes.iter().filter(|r| r.model != "*").map(|r| (r.model.clone(), Route::new(r, &by_name, &config.rescue))).collect();
    let catch_all = config.routes.iter().find(|r| r.model == "*").map(|r| Route::new(r, &by_name, &config.rescue));
    let models = models_body(&config);
    Ok(GatewayState { clients: config.clients.clone(), config: Arc::new(config), upstreams, by_name, routes, catch_all, direct, models })
}

/// `GET /v1/models`: the virtual models, then the backends' models.
fn models_body(config: &Config) -> Bytes {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for r in config.routes.iter().filter(|r| r.model != "*") {
        if seen.insert(r.model.clone()) {
            data.push(serde_json::json!({"id": r.model, "object": "model", "created": 0, "owned_by": "switchyard"}));
        }
    }
    if config.policies.direct_backend_models {
        for b in &config.backends {
            if seen.insert(b.model().to_owned()) {
                data.push(serde_json::json!({"id": b.model(), "object": "model", "created": 0, "owned_by": b.provider.as_str()}));
            }
        }
    }
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}
