//! The router's configuration: a TOML file, checked whole before use.
//!
//! Errors name the file, the key and the problem. Secrets come from
//! `${ENV_VAR}` references in `api_key`, `base_url`, client `key`, `admin.token`,
//! `shared.redis_url` and `policies.source` values.

mod embedded;
mod quota;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use embedded::{embedded, EMBEDDED_POLICY, EMBEDDED_POLICY_NAME, EMBEDDED_TOML};
pub use quota::{BudgetConfig, CacheConfig, CacheMode, LimitsConfig, OnSharedError, RouteCacheConfig, SharedConfig};

/// Fuel of one decision by default: about 100 million WebAssembly
/// instructions, some 7 ms of a tight loop on this project's 2-core machines.
/// A warm decision uses 15-35 thousand (Rust), 0.3 million (Python) or 1.3
/// million (JavaScript); the largest view a client can cause (256 messages,
/// 16 KiB of text, 128 tools) 0.2-4 million (Rust), 6 million (Python) or 25
/// million (JavaScript). Figures in bench/results.md.
pub const DEFAULT_CALL_FUEL: u64 = 100_000_000;

/// Fuel of instantiation plus `init` by default.
pub const DEFAULT_INIT_FUEL: u64 = 2_000_000_000;

/// The wall-clock backstop of a decision by default, in milliseconds.
pub const DEFAULT_CALL_DEADLINE_MS: u64 = 250;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{problem}", if key == "-" { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    /// The file (or `<embedded>`).
    pub file: String,
    /// The key, as a path such as `backends[1].base_url`; `-` for the whole file.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (`<embedded>` for the built-in default).
    pub source: String,
    /// The HTTP listener.
    pub server: ServerConfig,
    /// Policy runtime and routing settings.
    pub policies: PoliciesConfig,
    /// Which policy serves which virtual model.
    pub routes: Vec<RouteConfig>,
    /// Failover limits.
    pub retry: RetryConfig,
    /// Circuit breaker settings.
    pub circuit: CircuitConfig,
    /// Mid-stream rescue.
    pub rescue: RescueConfig,
    /// Upstream backends, in order.
    pub backends: Vec<BackendConfig>,
    /// Client API keys; empty means no authentication.
    pub clients: Vec<ClientConfig>,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The decision log.
    pub decision_log: DecisionLogConfig,
    /// Trace export.
    pub telemetry: TelemetryConfig,
    /// The node's store of cached answers.
    pub cache: CacheConfig,
    /// Limits, budgets and the cache shared across nodes.
    pub shared: SharedConfig,
}

/// `[decision_log]`: one JSON line per routed request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// The JSONL file, relative to the config file; no log when unset.
    pub path: Option<PathBuf>,
    /// Also record message text (off by default: prompts may be sensitive).
    pub include_prompts: bool,
    /// The file is rotated before it grows past this many MiB.
    pub max_file_mib: u64,
    /// The file is rotated once it is this many seconds old.
    pub max_file_age_s: u64,
    /// Rotated files kept (`FILE.1` the newest); older ones are deleted.
    pub keep_files: u32,
    /// Share of ordinary requests logged, 0 to 1; errors, fallbacks,
    /// rejections, policy failures and broken or rescued streams always are.
    pub sample_rate: f64,
    /// Rotated files are gzipped (`FILE.1.gz`).
    pub compress: bool,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self {
            path: None,
            include_prompts: false,
            max_file_mib: 100,
            max_file_age_s: 86_400,
            keep_files: 5,
            sample_rate: 1.0,
            compress: false,
        }
    }
}

/// `[telemetry]`: OpenTelemetry trace export over OTLP/HTTP (protobuf); off
/// unless `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's traces URL, used as is (e.g.
    /// `http://collector:4318/v1/traces`). Headers (an API key, say) come
    /// from `OTEL_EXPORTER_OTLP_HEADERS`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of traces sampled, 0 to 1; a caller's `traceparent` decides
    /// for its own trace.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { otlp_endpoint: None, service_name: "switchyard".into(), sample_ratio: 1.0 }
    }
}

/// `[admin]`: metrics, health and the admin API on a listener of their own.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; none when unset.
    pub listen: Option<SocketAddr>,
    /// Bearer token for `/admin/*` (use `${ENV_VAR}`); `/admin/*` is off when unset.
    pub token: Option<String>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most request headers accepted.
    pub max_headers: usize,
    /// How long shutdown waits for requests and streams in flight, in ms.
    pub shutdown_grace_ms: u64,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time a connection has to send its first byte, and then each request
    /// its complete headers, in ms.
    pub header_timeout_ms: u64,
    /// Time a request has to send its whole body, in ms (408 after it).
    pub body_timeout_ms: u64,
    /// Time a streaming client may stop reading before its stream is ended
    /// and the upstream released, in ms.
    pub stream_write_timeout_ms: u64,
    /// Longest a stream may run, in ms; then it ends with an error event.
    pub stream_max_duration_ms: u64,
    /// HTTP/2: a ping after this long without frames, and the connection
    /// closed when the answer takes as long, in ms.
    pub http2_keepalive_ms: u64,
    /// A connection (HTTP/1 keep-alive or HTTP/2) with no request in
    /// flight for this long is closed gracefully, in ms.
    pub idle_timeout_ms: u64,
}

impl ServerConfig {
    /// `header_timeout_ms`.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// `body_timeout_ms`.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    /// `stream_write_timeout_ms`.
    pub fn stream_write_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_write_timeout_ms)
    }

    /// `http2_keepalive_ms`.
    pub fn http2_keepalive(&self) -> Duration {
        Duration::from_millis(self.http2_keepalive_ms)
    }

    /// `idle_timeout_ms`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// `stream_max_duration_ms`.
    pub fn stream_max_duration(&self) -> Duration {
        Duration::from_millis(self.stream_max_duration_ms)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 << 20,
            max_headers: 100,
            shutdown_grace_ms: 30_000,
            max_connections: 10_000,
            header_timeout_ms: 30_000,
            body_timeout_ms: 30_000,
            stream_write_timeout_ms: 30_000,
            stream_max_duration_ms: 30 * 60_000,
            http2_keepalive_ms: 20_000,
            idle_timeout_ms: 120_000,
        }
    }
}

/// Instance reuse mode of the policy runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InstanceModeConfig {
    /// Warm instances, reused.
    #[default]
    Pooled,
    /// A fresh instance per decision.
    Fresh,
}

/// Where the server's policy decisions run (`policies.decide_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecideOn {
    /// On the async worker serving the request, in a fiber that, once a
    /// call has run a whole epoch tick (1 ms), yields to the worker's other
    /// connections at every tick: no hand-over between threads.
    #[default]
    Worker,
    /// On the policy threads: guest CPU apart from the workers, at the cost
    /// of a hand-over to a thread and back for every decision.
    Threads,
}

/// `[policies]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Directory of `NAME.wasm` policies, relative to the config file; `None`
    /// serves only the embedded default policy. With `source`, where pulled
    /// policies are kept (the origin's: other files are removed).
    pub dir: Option<PathBuf>,
    /// Origins policies are pulled from: `https://…/index.json` (several
    /// policies) or `oci://HOST/REPOSITORY:TAG` (one each); one or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub source: Vec<String>,
    /// Time between two polls of the origin, in ms.
    pub poll_interval_ms: u64,
    /// Public keys (name = base64 of the 32 bytes) whose Ed25519 signatures
    /// policies need; none: signatures are not checked.
    pub trusted_keys: BTreeMap<String, String>,
    /// Budget of one decision in fuel (about one unit per WebAssembly
    /// instruction): the same request on the same version always fits or
    /// never does, whatever the load.
    pub call_fuel: u64,
    /// Wall-clock backstop of one decision, in ms: far above what the fuel
    /// budget takes, for host-side stalls.
    pub call_deadline_ms: u64,
    /// Where decisions run.
    pub decide_on: DecideOn,
    /// Decisions that run at once (with `decide_on = "threads"`, the
    /// policy threads; default: one per core).
    pub threads: Option<usize>,
    /// Warm instances per policy version, created at load (default: as many
    /// as `threads`).
    pub warm_instances: Option<usize>,
    /// Decisions that may wait for their turn; past that, a decision
    /// fails as `overloaded` (and the route's `on_policy_error` applies).
    pub queue: usize,
    /// Most messages passed to a policy, the newest; the rest still count in
    /// `total-text-bytes` and the `switchyard.message-count` tag.
    pub view_max_messages: usize,
    /// Memory cap of one policy instance, in MiB.
    pub memory_limit_mib: usize,
    /// Compiled functions kept in memory so that a new version compiles
    /// only what changed, in MiB; 0 turns it off.
    pub function_cache_mib: u64,
    /// Instance reuse.
    pub instance_mode: InstanceModeConfig,
    /// Bytes of message text passed to a policy per request.
    pub text_budget_bytes: usize,
    /// A request naming a backend (by name or model) goes straight to it,
    /// without a policy.
    pub direct_backend_models: bool,
    /// Per-policy configuration, handed to `init` as JSON.
    pub config: BTreeMap<String, toml::Value>,
    /// How a `NAME.canary.wasm` candidate serves and is judged.
    pub canary: CanaryConfig,
}

/// `[policies.canary]`: a candidate `NAME.canary.wasm` serves `share`
/// percent of NAME's requests (the same callers: by `user` or client key),
/// and is compared with NAME over windows of `min_requests` on each side:
/// rolled back when its error rate is `max_error_rate_increase` above, or
/// its mean latency or cost per request `max_latency_increase` /
/// `max_cost_increase` (fractions) above NAME's; promoted after a clean
/// window when `auto_promote`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// Percent of requests the canary decides, 0 to 100.
    pub share: f64,
    /// Requests on each side before a window is judged.
    pub min_requests: u64,
    /// Error rate above the stable version's that rolls back (0.05: five
    /// points).
    pub max_error_rate_increase: f64,
    /// Mean latency above the stable version's, as a fraction, that rolls
    /// back.
    pub max_latency_increase: f64,
    /// Mean cost per request above the stable version's, as a fraction,
    /// that rolls back.
    pub max_cost_increase: f64,
    /// Promote after a clean window (the canary file replaces NAME's).
    pub auto_promote: bool,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            share: 10.0,
            min_requests: 100,
            max_error_rate_increase: 0.05,
            max_latency_increase: 0.5,
            max_cost_increase: 0.25,
            auto_promote: false,
        }
    }
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            dir: None,
            source: Vec::new(),
            poll_interval_ms: 2000,
            trusted_keys: BTreeMap::new(),
            call_fuel: DEFAULT_CALL_FUEL,
            call_deadline_ms: DEFAULT_CALL_DEADLINE_MS,
            decide_on: DecideOn::Worker,
            threads: None,
            warm_instances: None,
            queue: 1024,
            view_max_messages: 256,
            memory_limit_mib: 64,
            function_cache_mib: 64,
            instance_mode: InstanceModeConfig::Pooled,
            text_budget_bytes: 16 << 10,
            direct_backend_models: true,
            config: BTreeMap::new(),
            canary: CanaryConfig::default(),
        }
    }
}

/// `[[routes]]`: a virtual model served by a policy, by an ordered list of
/// backends (`targets`), or by a weighted split (`split`): exactly one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The model name clients ask for (`*` matches any model no other route
    /// or backend matches).
    pub model: String,
    /// The policy that decides (empty for `targets` and `split` routes).
    #[serde(default)]
    pub policy: String,
    /// The policy's configuration for this route alone, instead of
    /// `[policies.config.NAME]`: routes can share one policy file.
    #[serde(default)]
    pub policy_config: Option<BTreeMap<String, toml::Value>>,
    /// Backends tried in this order, no policy.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Backends chosen by weight, the same one for the same caller (its
    /// `user`, else its client key), the others as fallbacks; no policy.
    #[serde(default)]
    pub split: Vec<SplitArm>,
    /// What happens when the policy cannot decide (it trapped, spent its
    /// budget, answered nonsense, is quarantined or not loaded).
    #[serde(default)]
    pub on_policy_error: OnPolicyError,
    /// Whether a stream that breaks mid-answer is continued on the next
    /// target; unset follows `rescue.enabled`.
    #[serde(default)]
    pub rescue: Option<bool>,
    /// Rate limits of this route, for each client key apart (one count for
    /// all callers when no keys are configured).
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// Exact answers kept and replayed; none when unset.
    #[serde(default)]
    pub cache: Option<RouteCacheConfig>,
}

/// One backend of a `split` route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitArm {
    /// The backend.
    pub backend: String,
    /// Its share: weight over the sum of the weights.
    pub weight: u32,
}

impl RouteConfig {
    /// The name of the policy instance that decides this route: the
    /// policy's own, or, with `policy_config`, `NAME~MODEL`: the route's
    /// own instance, whose name a reload keeps, so that a configuration the
    /// policy refuses leaves the last good one serving, as for any policy.
    /// `None` for `targets` and `split` routes.
    pub fn policy_instance(&self) -> Option<String> {
        if self.policy.is_empty() {
            return None;
        }
        Some(match &self.policy_config {
            None => self.policy.clone(),
            Some(_) => format!("{}{}{}", self.policy, crate::policy::INSTANCE_SEPARATOR, self.model),
        })
    }
}

/// `routes[].on_policy_error`: `"reject"` or a list of backend names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "OnPolicyErrorToml")]
pub enum OnPolicyError {
    /// Answer 503 with an error that names the policy and the failure.
    #[default]
    Reject,
    /// Try these backends, in order, and no others.
    Backends(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OnPolicyErrorToml {
    Word(String),
    Backends(Vec<String>),
}

impl TryFrom<OnPolicyErrorToml> for OnPolicyError {
    type Error = String;

    fn try_from(value: OnPolicyErrorToml) -> Result<Self, String> {
        match value {
            OnPolicyErrorToml::Word(w) if w == "reject" => Ok(Self::Reject),
            OnPolicyErrorToml::Word(w) => Err(format!("`{w}` is neither \"reject\" nor a list of backend names")),
            OnPolicyErrorToml::Backends(b) if b.is_empty() => Err("an empty list would route nowhere: use \"reject\"".into()),
            OnPolicyErrorToml::Backends(b) => Ok(Self::Backends(b)),
        }
    }
}

/// `[retry]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Most upstream attempts per request.
    pub max_attempts: u32,
    /// Total time budget of a request, in ms (streams: until the first token).
    pub total_timeout_ms: u64,
    /// The longest `Retry-After` the router waits for before retrying a
    /// target, in ms; after a longer one it moves on (or, on the last
    /// target, fails).
    pub max_retry_after_ms: u64,
    /// The wait before retrying a target after a failure that came without
    /// a `Retry-After`, in ms; doubled on each retry, with jitter; 0 turns
    /// those retries off. Timeouts are not retried: they already spent
    /// their time.
    pub backoff_ms: u64,
    /// Retries of the same backend after a transient failure before the
    /// first byte (HTTP 500, 502, 503 without a long `Retry-After`, a broken
    /// connection), before the next target is tried. Never after a timeout,
    /// a 4xx or a context-length refusal.
    pub same_backend: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_attempts: 3, total_timeout_ms: 120_000, max_retry_after_ms: 2_000, backoff_ms: 100, same_backend: 1 }
    }
}

/// `[rescue]`: a chat stream that breaks after its first byte is continued
/// from the next target (by prefill, or by a regeneration spliced where
/// the client's text ends), never sending a byte twice.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RescueConfig {
    /// Rescue streams (routes may override with `rescue`).
    pub enabled: bool,
    /// Most breaks rescued in one stream.
    pub max_rescues: u32,
}

impl Default for RescueConfig {
    fn default() -> Self {
        Self { enabled: true, max_rescues: 2 }
    }
}

/// `[circuit]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Consecutive failures that open a backend's circuit.
    pub failure_threshold: u32,
    /// How long an open circuit waits before a probe request, in ms.
    pub open_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_ms: 10_000 }
    }
}

/// Upstream provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible API: OpenAI, vLLM, Ollama, llama.cpp, OpenRouter, Groq...
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Answers locally, for demos and tests.
    Mock,
}

impl ProviderKind {
    /// The name policies see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Mock => "mock",
        }
    }
}

/// What a backend can do.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapabilitiesConfig {
    /// Image inputs.
    pub vision: bool,
    /// Tool calls.
    pub tools: bool,
    /// JSON mode.
    pub json_mode: bool,
    /// Streaming.
    pub stream: bool,
    /// Continues an assistant turn given as the last message (assistant
    /// prefill), which mid-stream rescue uses. Unset: yes for Anthropic and
    /// `mock` backends, no for OpenAI-compatible ones.
    pub prefill: Option<bool>,
    /// Serves OpenAI's Responses API (`POST /responses`) itself: Responses
    /// API clients' requests go to it as they came (OpenAI-compatible
    /// backends only). Default false: they are translated to chat.
    pub responses: bool,
}

impl Default for CapabilitiesConfig {
    fn default() -> Self {
        Self { vision: false, tools: false, json_mode: false, stream: true, prefill: None, responses: false }
    }
}

/// Behaviour of a `mock` backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Time before a non-streamed answer, in ms.
    pub latency_ms: u64,
    /// Time before the first streamed token, in ms.
    pub ttft_ms: u64,
    /// Streaming speed; 0 streams as fast as possible.
    pub tokens_per_second: u32,
    /// Tokens in each answer.
    pub answer_tokens: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self { latency_ms: 0, ttft_ms: 0, tokens_per_second: 0, answer_tokens: 16 }
    }
}

/// `[[backends]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name; policies and logs refer to it.
    pub name: String,
    /// Provider kind.
    pub provider: ProviderKind,
    /// Base URL of the API, such as `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// API key (use `${ENV_VAR}`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The upstream model; defaults to the name.
    #[serde(default)]
    pub model: Option<String>,
    /// Tags policies can filter on, such as `private`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// US dollars per million input tokens.
    #[serde(default)]
    pub input_price: f64,
    /// US dollars per million output tokens.
    #[serde(default)]
    pub output_price: f64,
    /// US dollars per million prompt tokens the backend read from its
    /// prompt cache (as it reports them: `prompt_tokens_details.cached_tokens`,
    /// Anthropic's cache reads); unset prices them as other input tokens.
    #[serde(default)]
    pub cached_input_price: Option<f64>,
    /// Context window in tokens.
    #[serde(default = "default_context_window")]
    pub context_window: u32,
    /// The most tokens the model writes in one answer: what Anthropic
    /// backends are asked for when an OpenAI client sets no limit (their API
    /// requires one). Default 8192 (the smallest limit of current Claude
    /// models); raise it for models that write longer answers.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: CapabilitiesConfig,
    /// Time limit of one non-streamed attempt, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// TCP connect time limit, in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time limit to the first streamed token, in ms.
    #[serde(default = "default_first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// Longest silence inside a stream, in ms.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Speak HTTP/2 over plain TCP (prior knowledge, "h2c") to an `http://`
    /// `base_url`: one connection carries every request in flight to the
    /// backend, where HTTP/1.1 takes a connection (and its buffers) each.
    /// An `https` upstream negotiates HTTP/2 by itself.
    #[serde(default)]
    pub h2c: bool,
    /// Mock behaviour (provider `mock` only).
    #[serde(default)]
    pub mock: Option<MockConfig>,
}

impl BackendConfig {
    /// What an answer cost in US dollars: `input` prompt tokens (of which
    /// `cached` read from the backend's prompt cache) and `output` tokens.
    pub fn cost_usd(&self, input: u64, output: u64, cached: u64) -> f64 {
        let cached = cached.min(input);
        let cached_price = self.cached_input_price.unwrap_or(self.input_price);
        ((input - cached) as f64 * self.input_price + cached as f64 * cached_price + output as f64 * self.output_price) / 1e6
    }

    /// The upstream model.
    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(&self.name)
    }

    /// Whether the backend continues an assistant turn given last.
    pub fn prefill(&self) -> bool {
        self.capabilities.prefill.unwrap_or(matches!(self.provider, ProviderKind::Anthropic | ProviderKind::Mock))
    }

    /// The attempt time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

fn default_context_window() -> u32 {
    128_000
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_first_token_timeout_ms() -> u64 {
    30_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    30_000
}

/// `[[clients]]`: a client API key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// A name for logs and policies (never the key).
    pub name: String,
    /// The key clients send (use `${ENV_VAR}`).
    pub key: String,
    /// Its rate limits.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// Its spend budget.
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    policies: PoliciesConfig,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default)]
    circuit: CircuitConfig,
    #[serde(default)]
    rescue: RescueConfig,
    #[serde(default)]
    backends: Vec<BackendConfig>,
    #[serde(default)]
    clients: Vec<ClientConfig>,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    decision_log: DecisionLogConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    cache: CacheConfig,
    #[serde(default)]
    shared: SharedConfig,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            problem: format!("cannot read: {e}"),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &file, &base, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text`; relative paths resolve against `base`,
    /// `${VAR}` through `env`.
    pub fn parse(text: &str, file: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let err = |key: &str, problem: String| ConfigError { file: file.to_owned(), key: key.to_owned(), problem };
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            // The key's path (`backends[0].input_price`) and where it is.
            let path = e.path().to_string();
            let e = e.into_inner();
            let at = e.span().map(|s| line_col(text, s.start)).map(|(line, col)| format!("line {line}, column {col}"));
            // A value the parser itself refused (a number too large) has no
            // path yet: the key is read off the line it is on.
            let path =
                if matches!(path.as_str(), "." | "") { e.span().and_then(|s| key_on_line(text, s.start)).unwrap_or(path) } else { path };
            let key = match (path.as_str(), at) {
                ("." | "", Some(at)) => at,
                ("." | "", None) => "-".to_owned(),
                (path, Some(at)) => format!("{path} ({at})"),
                (path, None) => path.to_owned(),
            };
            err(&key, e.message().to_owned())
        })?;
        let mut config = Config {
            source: file.to_owned(),
            server: raw.server,
            policies: raw.policies,
            routes: raw.routes,
            retry: raw.retry,
            circuit: raw.circuit,
            rescue: raw.rescue,
            backends: raw.backends,
            clients: raw.clients,
            admin: raw.admin,
            decision_log: raw.decision_log,
            telemetry: raw.telemetry,
            cache: raw.cache,
            shared: raw.shared,
        };
        if let Some(dir) = &config.policies.dir {
            config.policies.dir = Some(base.join(dir));
        } else if !config.policies.source.is_empty() {
            config.policies.dir = crate::origin::default_dir();
        }
        if let Some(path) = &config.decision_log.path {
            config.decision_log.path = Some(base.join(path));
        }
        for (i, b) in config.backends.iter_mut().enumerate() {
            if let Some(v) = &b.api_key {
                b.api_key = Some(interpolate(v, env).map_err(|p| err(&format!("backends[{i}].api_key"), p))?);
            }
            if let Some(v) = &b.base_url {
                b.base_url = Some(interpolate(v, env).map_err(|p| err(&format!("backends[{i}].base_url"), p))?);
            }
        }
        if let Some(token) = &config.admin.token {
            let token = interpolate(token, env).map_err(|p| err("admin.token", p))?;
            if token.len() < 16 {
                return Err(err("admin.token", "must be at least 16 characters".into()));
            }
            config.admin.token = Some(token);
        }
        for (i, c) in config.clients.iter_mut().enumerate() {
            c.key = interpolate(&c.key, env).map_err(|p| err(&format!("clients[{i}].key"), p))?;
        }
        if let Some(url) = &config.shared.redis_url {
            config.shared.redis_url = Some(interpolate(url, env).map_err(|p| err("shared.redis_url", p))?);
        }
        for (i, source) in config.policies.source.iter_mut().enumerate() {
            *source = interpolate(source, env).map_err(|p| err(&format!("policies.source[{i}]"), p))?;
        }
        config.validate().map_err(|(key, problem)| err(&key, problem))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let p = &self.policies;
        for (i, source) in p.source.iter().enumerate() {
            crate::origin::Source::parse(source).map_err(|problem| (format!("policies.source[{i}]"), problem))?;
        }
        if !p.source.is_empty() {
            if p.dir.is_none() {
                return Err((
                    "policies.dir".into(),
                    "set it: where policies pulled from `source` are kept (no $HOME or $XDG_CACHE_HOME)".into(),
                ));
            }
            if !(100..=3_600_000).contains(&p.poll_interval_ms) {
                return Err(("policies.poll_interval_ms".into(), "must be between 100 and 3600000".into()));
            }
        }
        if let Err((name, problem)) = self.trusted_keys() {
            return Err((format!("policies.trusted_keys.{name}"), problem));
        }
        if p.call_deadline_ms == 0 || p.call_deadline_ms > 10_000 {
            return Err(("policies.call_deadline_ms".into(), "must be between 1 and 10000".into()));
        }
        if p.call_fuel < 10_000 {
            return Err(("policies.call_fuel".into(), "must be at least 10000 (a warm Rust decision uses a few thousand)".into()));
        }
        for (key, value, max) in [("threads", p.threads, 256), ("warm_instances", p.warm_instances, 256)] {
            if value.is_some_and(|n| n == 0 || n > max) {
                return Err((format!("policies.{key}"), format!("must be between 1 and {max}")));
            }
        }
        if p.queue == 0 {
            return Err(("policies.queue".into(), "must be at least 1".into()));
        }
        let canary = &self.policies.canary;
        if !(0.0..=100.0).contains(&canary.share) {
            return Err(("policies.canary.share".into(), format!("must be a percentage from 0 to 100, not {}", canary.share)));
        }
        if canary.min_requests == 0 {
            return Err(("policies.canary.min_requests".into(), "must be at least 1".into()));
        }
        for (key, value) in [
            ("max_error_rate_increase", canary.max_error_rate_increase),
            ("max_latency_increase", canary.max_latency_increase),
            ("max_cost_increase", canary.max_cost_increase),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err((format!("policies.canary.{key}"), format!("must be a number 0 or above, not {value}")));
            }
        }
        if p.view_max_messages == 0 {
            return Err(("policies.view_max_messages".into(), "must be at least 1".into()));
        }
        if p.memory_limit_mib == 0 || p.memory_limit_mib > 4096 {
            return Err(("policies.memory_limit_mib".into(), "must be between 1 and 4096".into()));
        }
        if p.function_cache_mib > 4096 {
            return Err(("policies.function_cache_mib".into(), "must be between 0 (off) and 4096".into()));
        }
        if self.retry.max_attempts == 0 {
            return Err(("retry.max_attempts".into(), "must be at least 1".into()));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(("server.max_body_bytes".into(), "must be at least 1024".into()));
        }
        if self.server.max_headers < 32 {
            // Below that the official SDKs' own requests (about 20 headers) get 431.
            return Err(("server.max_headers".into(), "must be at least 32 (the official SDKs send about 20 headers)".into()));
        }
        if self.server.max_connections == 0 {
            return Err(("server.max_connections".into(), "must be at least 1".into()));
        }
        let server = &self.server;
        for (key, ms) in [
            ("header_timeout_ms", server.header_timeout_ms),
            ("body_timeout_ms", server.body_timeout_ms),
            ("stream_write_timeout_ms", server.stream_write_timeout_ms),
            ("stream_max_duration_ms", server.stream_max_duration_ms),
            ("http2_keepalive_ms", server.http2_keepalive_ms),
            ("idle_timeout_ms", server.idle_timeout_ms),
        ] {
            if ms == 0 {
                return Err((format!("server.{key}"), "must be more than 0".into()));
            }
        }
        if self.backends.is_empty() {
            return Err(("backends".into(), "at least one backend is needed".into()));
        }
        let d = &self.decision_log;
        if d.max_file_mib == 0 || d.max_file_mib > 1 << 20 {
            return Err(("decision_log.max_file_mib".into(), "must be between 1 and 1048576".into()));
        }
        if d.max_file_age_s == 0 {
            return Err(("decision_log.max_file_age_s".into(), "must be more than 0".into()));
        }
        if !(0.0..=1.0).contains(&d.sample_rate) {
            return Err(("decision_log.sample_rate".into(), "must be between 0 and 1".into()));
        }
        let t = &self.telemetry;
        if let Some(url) = &t.otlp_endpoint {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| ("telemetry.otlp_endpoint".to_owned(), format!("`{url}` is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(("telemetry.otlp_endpoint".into(), format!("`{url}` must be http or https")));
            }
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(("telemetry.sample_ratio".into(), "must be between 0 and 1".into()));
        }
        if t.service_name.is_empty() {
            return Err(("telemetry.service_name".into(), "must not be empty".into()));
        }
        let mut names = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let key = |field: &str| format!("backends[{i}].{field}");
            if b.name.is_empty() || b.name.len() > 128 || !b.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c)) {
                return Err((key("name"), format!("`{}` is not a valid name (1 to 128 of A-Z a-z 0-9 - _ . : /)", b.name)));
            }
            if !names.insert(b.name.as_str()) {
                return Err((key("name"), format!("`{}` is used by an earlier backend", b.name)));
            }
            match (b.provider, &b.base_url) {
                (ProviderKind::Mock, _) => {}
                (_, None) => return Err((key("base_url"), format!("required for provider `{}`", b.provider.as_str()))),
                (_, Some(url)) => {
                    let parsed = reqwest::Url::parse(url).map_err(|e| (key("base_url"), format!("`{url}` is not a URL: {e}")))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err((key("base_url"), format!("`{url}` must be http or https")));
                    }
                    if b.h2c && parsed.scheme() != "http" {
                        return Err((key("h2c"), format!("only for an http:// base_url (`{url}` negotiates HTTP/2 itself)")));
                    }
                }
            }
            if b.h2c && b.provider == ProviderKind::Mock {
                return Err((key("h2c"), "not for provider `mock`, which answers in the router".into()));
            }
            if b.mock.is_some() && b.provider != ProviderKind::Mock {
                return Err((key("mock"), "only for provider `mock`".into()));
            }
            for (field, price) in [
                ("input_price", b.input_price),
                ("output_price", b.output_price),
                ("cached_input_price", b.cached_input_price.unwrap_or(0.0)),
            ] {
                if !price.is_finite() || price < 0.0 {
                    return Err((key(field), format!("{price} is not a price (a number, 0 or more)")));
                }
            }
            for (field, ms) in [
                ("timeout_ms", b.timeout_ms),
                ("connect_timeout_ms", b.connect_timeout_ms),
                ("first_token_timeout_ms", b.first_token_timeout_ms),
                ("stream_idle_timeout_ms", b.stream_idle_timeout_ms),
            ] {
                if ms == 0 {
                    return Err((key(field), "must be more than 0".into()));
                }
            }
        }
        let mut models = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !models.insert(r.model.as_str()) {
                return Err((format!("routes[{i}].model"), format!("`{}` is routed twice", r.model)));
            }
            let key = |field: &str| format!("routes[{i}].{field}");
            match (r.policy.is_empty(), r.targets.is_empty(), r.split.is_empty()) {
                (false, true, true) | (true, false, true) | (true, true, false) => {}
                (true, true, true) => {
                    return Err((key("policy"), "a route needs a `policy`, `targets` or a `split` (an empty list is none)".into()))
                }
                _ => return Err((key("policy"), "give one of `policy`, `targets` and `split`, not several".into())),
            }
            if r.policy.is_empty() && (r.policy_config.is_some() || r.on_policy_error != OnPolicyError::Reject) {
                let field = if r.policy_config.is_some() { "policy_config" } else { "on_policy_error" };
                return Err((key(field), "only for a route with a `policy`".into()));
            }
            if r.policy.contains(crate::policy::INSTANCE_SEPARATOR) {
                return Err((key("policy"), format!("`{}` is reserved in policy names", crate::policy::INSTANCE_SEPARATOR)));
            }
            if let Some(unknown) = r.targets.iter().chain(r.split.iter().map(|a| &a.backend)).find(|b| !names.contains(b.as_str())) {
                let field = if r.targets.is_empty() { "split" } else { "targets" };
                return Err((key(field), format!("`{unknown}` is not a configured backend")));
            }
            if !r.split.is_empty() && r.split.iter().map(|a| u64::from(a.weight)).sum::<u64>() == 0 {
                return Err((key("split"), "the weights add up to 0".into()));
            }
            if let OnPolicyError::Backends(backends) = &r.on_policy_error {
                if let Some(unknown) = backends.iter().find(|b| !names.contains(b.as_str())) {
                    return Err((format!("routes[{i}].on_policy_error"), format!("`{unknown}` is not a configured backend")));
                }
            }
        }
        let mut keys = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.key.len() < 8 {
                return Err((format!("clients[{i}].key"), "must be at least 8 characters".into()));
            }
            if !keys.insert(c.key.as_str()) {
                return Err((format!("clients[{i}].key"), "is the same key as an earlier client's".into()));
            }
            // Keys of one name (a rotation) share its limits and budget.
            if let Some(earlier) = self.clients[..i].iter().find(|e| e.name == c.name) {
                if earlier.limits != c.limits || earlier.budget != c.budget {
                    return Err((
                        format!("clients[{i}].name"),
                        format!(
                            "`{}` has other limits or another budget in an earlier client of that name; keys of one name share them",
                            c.name
                        ),
                    ));
                }
            }
        }
        quota::validate(&self.clients, &self.routes, &self.cache, &self.shared)?;
        for name in p.config.keys() {
            if !self.routes.iter().any(|r| &r.policy == name && r.policy_config.is_none()) {
                tracing::warn!(file = %self.source, "policies.config.{name}: no route uses this policy");
            }
        }
        Ok(())
    }

    /// Each policy's configuration as JSON, for `init`; a route's own
    /// `policy_config` under its instance's name (`NAME~MODEL`).
    pub fn policy_configs(&self) -> HashMap<String, String> {
        fn json<T: serde::Serialize>(value: &T) -> String {
            serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
        }
        let mut configs: HashMap<String, String> = self.policies.config.iter().map(|(name, value)| (name.clone(), json(value))).collect();
        for r in &self.routes {
            if let (Some(config), Some(instance)) = (&r.policy_config, r.policy_instance()) {
                configs.insert(instance, json(config));
            }
        }
        configs
    }

    /// The keys policies must be signed with; `None` when none are configured.
    pub fn trusted_keys(&self) -> Result<Option<crate::policy::signing::TrustedKeys>, (String, String)> {
        let keys = crate::policy::signing::TrustedKeys::parse(&self.policies.trusted_keys)?;
        Ok(Some(keys).filter(|k| !k.is_empty()))
    }

    /// The per-call deadline of policies.
    pub fn call_deadline(&self) -> Duration {
        Duration::from_millis(self.policies.call_deadline_ms)
    }
}

/// Replaces `${NAME}` with the environment variable `NAME`; `$${` is a
/// literal `${`.
fn interpolate(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed `${{` in `{value}`"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not an environment variable reference"));
        }
        let found = env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
        out.push_str(&found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The dotted key of the `key = value` line at `offset`, under the table
/// header above it (`backends[1].weight`), for errors the TOML parser
/// reports without a path. Best effort: `None` where the line is no
/// simple assignment.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return None;
    }
    // The nearest table header above, and for an array of tables its index.
    let above = &text[..start];
    let Some(header) = above.lines().rev().map(str::trim).find(|l| l.starts_with('[')) else { return Some(key.to_owned()) };
    let table = header.trim_matches(|c| c == '[' || c == ']').trim();
    if header.starts_with("[[") {
        let index = above.lines().filter(|l| l.trim() == header).count().saturating_sub(1);
        return Some(format!("{table}[{index}].{key}"));
    }
    Some(format!("{table}.{key}"))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or a list of strings")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let env = |name: &str| (name == "SECRET").then(|| "s3cret-value".to_owned());
        Config::parse(text, "test.toml", Path::new("/etc/switchyard"), &env)
    }

    const MINIMAL: &str = "[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.backends[0].model(), "m");
        assert_eq!(c.retry.max_attempts, 3);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let cases: &[(&str, &str, &str)] = &[
            ("[server]\nlisen = 1\n", "server.lisen (line 2, column 1)", "unknown field `lisen`"),
            // Refused by the TOML parser itself, before any key is known.
            ("[server]\nmax_connections = 99999999999999999999999\n", "server.max_connections (line 2, column 19)", "too large"),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[backends]]\nname = \"b\"\nweight = 1e999999999\n",
                "backends[1].weight (line 6",
                "",
            ),
            (
                "[telemetry]\notlp_endpoint = \"collector:4318\"\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n",
                "telemetry.otlp_endpoint",
                "must be http or https",
            ),
            (
                "[telemetry]\nsample_ratio = 2.0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n",
                "telemetry.sample_ratio",
                "between 0 and 1",
            ),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"mock\"\ninput_price = \"two\"\n",
                "backends[0].input_price (line 4, column 15)",
                "invalid type: string \"two\"",
            ),
            ("[server]\nlisten = \"nowhere\"\n", "server.listen (line 2", "invalid socket address"),
            ("[policies]\nsource = \"ftp://x/index.json\"\n", "policies.source[0]", "expected https://"),
            ("[policies]\nsource = [\"oci://r.example/p/a:1\", \"oci://r.example\"]\n", "policies.source[1]", "oci://HOST/REPOSITORY:TAG"),
            ("[policies]\nsource = 3\n", "policies.source", "a string or a list of strings"),
            ("[policies]\ndir = \"p\"\nsource = \"https://o.example/i.json\"\npoll_interval_ms = 5\n", "policies.poll_interval_ms", "between 100"),
            ("[policies.trusted_keys]\nrelease = \"AAAA\"\n", "policies.trusted_keys.release", "32 bytes"),
            ("[[backends]]\nname = \"a\"\nprovider = \"openai\"\n", "backends[0].base_url", "required for provider `openai`"),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"https://x/v1\"\nh2c = true\n",
                "backends[0].h2c",
                "only for an http:// base_url",
            ),
            ("[[backends]]\nname = \"a\"\nprovider = \"mock\"\nh2c = true\n", "backends[0].h2c", "not for provider `mock`"),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"ftp://x\"\n",
                "backends[0].base_url",
                "must be http or https",
            ),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\napi_key = \"${NOPE}\"\n",
                "backends[0].api_key",
                "environment variable `NOPE` is not set",
            ),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n",
                "backends[1].name",
                "used by an earlier backend",
            ),
            ("[[backends]]\nname = \"a\"\nprovider = \"mock\"\ninput_price = -1\n", "backends[0].input_price", "is not a price"),
            ("[[backends]]\nname = \"a\"\nprovider = \"lama\"\n", "backends[0].provider (line 3, column 12)", "unknown variant `lama`"),
            ("", "backends", "at least one backend"),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[clients]]\nname = \"c\"\nkey = \"short\"\n",
                "clients[0].key",
                "at least 8 characters",
            ),
            (
                "[policies]\ncall_deadline_ms = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n",
                "policies.call_deadline_ms",
                "between 1 and 10000",
            ),
            ("[policies]\ncall_fuel = 5\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.call_fuel", "at least 10000"),
            ("[policies]\nthreads = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.threads", "between 1 and 256"),
            ("[policies]\nqueue = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.queue", "at least 1"),
            ("[policies]\ndecide_on = \"gpu\"\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.decide_on", "unknown variant `gpu`"),
            ("[policies.canary]\nshare = 120.0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.canary.share", "percentage"),
            ("[policies.canary]\nmax_cost_increase = -1.0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.canary.max_cost_increase", "0 or above"),
            ("[policies]\nview_max_messages = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.view_max_messages", "at least 1"),
            ("[policies]\nfunction_cache_mib = 5000\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "policies.function_cache_mib", "between 0 (off) and 4096"),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[routes]]\nmodel = \"x\"\npolicy = \"p\"\non_policy_error = \"open\"\n",
                "routes[0].on_policy_error",
                "neither \"reject\" nor a list of backend names",
            ),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[routes]]\nmodel = \"x\"\npolicy = \"p\"\non_policy_error = []\n",
                "routes[0].on_policy_error",
                "would route nowhere",
            ),
            (
                "[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[routes]]\nmodel = \"x\"\npolicy = \"p\"\non_policy_error = [\"a\", \"b\"]\n",
                "routes[0].on_policy_error",
                "`b` is not a configured backend",
            ),
            ("[server]\nmax_connections = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "server.max_connections", "at least 1"),
            ("[server]\nbody_timeout_ms = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "server.body_timeout_ms", "more than 0"),
            ("[server]\nstream_write_timeout_ms = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "server.stream_write_timeout_ms", "more than 0"),
            ("[server]\nstream_max_duration_ms = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "server.stream_max_duration_ms", "more than 0"),
            ("[server]\nhttp2_keepalive_ms = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "server.http2_keepalive_ms", "more than 0"),
            ("[decision_log]\nsample_rate = 1.5\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "decision_log.sample_rate", "between 0 and 1"),
            ("[decision_log]\nmax_file_mib = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "decision_log.max_file_mib", "between 1 and"),
            ("[decision_log]\nmax_file_age_s = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "decision_log.max_file_age_s", "more than 0"),
            ("[server]\nidle_timeout_ms = 0\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n", "server.idle_timeout_ms", "more than 0"),
            ("not toml at all", "line 1", ""),
        ];
        let route = |body: &str| format!("[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[routes]]\nmodel = \"x\"\n{body}\n");
        #[rustfmt::skip]
        let routes: &[(&str, &str, &str)] = &[
            ("", "routes[0].policy", "needs a `policy`, `targets` or a `split`"),
            ("policy = \"p\"\ntargets = [\"a\"]", "routes[0].policy", "not several"),
            ("targets = [\"a\"]\nsplit = [{ backend = \"a\", weight = 1 }]", "routes[0].policy", "not several"),
            ("targets = [\"a\", \"b\"]", "routes[0].targets", "`b` is not a configured backend"),
            ("split = [{ backend = \"b\", weight = 1 }]", "routes[0].split", "`b` is not a configured backend"),
            ("split = [{ backend = \"a\", weight = 0 }]", "routes[0].split", "add up to 0"),
            ("split = [{ backend = \"a\" }]", "routes[0].split", "missing field `weight`"),
            ("targets = [\"a\"]\npolicy_config = { x = 1 }", "routes[0].policy_config", "only for a route with a `policy`"),
            ("targets = [\"a\"]\non_policy_error = [\"a\"]", "routes[0].on_policy_error", "only for a route with a `policy`"),
            ("policy = \"p~1\"", "routes[0].policy", "reserved"),
        ];
        for (body, key, problem) in routes {
            let text = route(body);
            let e = parse(&text).expect_err(&text);
            assert!(e.key.starts_with(key), "{text:?}: key {:?}, expected {key:?} ({e})", e.key);
            assert!(e.problem.contains(problem), "{text:?}: problem {:?}, expected {problem:?}", e.problem);
        }
        for (text, key, problem) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.file, "test.toml");
            assert!(e.key.starts_with(key), "{text:?}: key {:?}, expected {key:?} ({e})", e.key);
            assert!(e.problem.contains(problem), "{text:?}: problem {:?}, expected {problem:?}", e.problem);
        }
    }

    #[test]
    fn secrets_and_paths_are_resolved() {
        let text = "[policies]\ndir = \"policies\"\n[[backends]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x/v1\"\napi_key = \"Bearer-${SECRET}-$${LITERAL}\"\n";
        let c = parse(text).unwrap();
        assert_eq!(c.backends[0].api_key.as_deref(), Some("Bearer-s3cret-value-${LITERAL}"));
        assert_eq!(c.policies.dir.as_deref(), Some(Path::new("/etc/switchyard/policies")));
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../tests/fixtures/switchyard.toml");
        let env = |_: &str| Some("sk-test".to_owned());
        let c = Config::parse(text, "switchyard.toml", Path::new("."), &env).unwrap();
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.backends[1].provider, ProviderKind::Anthropic);
    }

    #[test]
    fn routes_with_their_own_policy_config_get_their_own_instance() {
        let text = format!(
            "{MINIMAL}[[routes]]\nmodel = \"a\"\npolicy = \"p\"\npolicy_config = {{ primary = \"m\" }}\n[[routes]]\nmodel = \"b\"\npolicy = \"p\"\npolicy_config = {{ primary = \"m\" }}\n[[routes]]\nmodel = \"c\"\npolicy = \"p\"\npolicy_config = {{ primary = \"n\" }}\n[[routes]]\nmodel = \"d\"\npolicy = \"p\"\n[[routes]]\nmodel = \"e\"\ntargets = [\"m\"]\n"
        );
        let c = parse(&text).unwrap();
        let instances: Vec<Option<String>> = c.routes.iter().map(RouteConfig::policy_instance).collect();
        assert_eq!(instances[0].as_deref(), Some("p~a"), "named by the route, so a reload keeps the name");
        assert_eq!(instances[1].as_deref(), Some("p~b"));
        assert_eq!(instances[3].as_deref(), Some("p"), "no policy_config: the policy's own name and [policies.config.p]");
        assert_eq!(instances[4], None);
        let configs = c.policy_configs();
        assert_eq!(configs[instances[2].as_deref().unwrap()], r#"{"primary":"n"}"#);
    }

    #[test]
    fn a_route_rejects_when_its_policy_fails_unless_it_names_backends() {
        let text = format!(
            "{MINIMAL}[[routes]]\nmodel = \"a\"\npolicy = \"p\"\n[[routes]]\nmodel = \"b\"\npolicy = \"p\"\non_policy_error = [\"m\"]\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.routes[0].on_policy_error, OnPolicyError::Reject);
        assert_eq!(c.routes[1].on_policy_error, OnPolicyError::Backends(vec!["m".into()]));
    }

    #[test]
    fn prompt_cache_reads_are_priced_apart_when_the_backend_says_so() {
        let config =
            parse("[[backends]]\nname = \"a\"\nprovider = \"mock\"\ninput_price = 3.0\noutput_price = 15.0\ncached_input_price = 0.3\n")
                .unwrap();
        let b = &config.backends[0];
        // 1M prompt tokens, 400k of them cache reads, and 100k output.
        let usd = b.cost_usd(1_000_000, 100_000, 400_000);
        assert!((usd - (0.6 * 3.0 + 0.4 * 0.3 + 0.1 * 15.0)).abs() < 1e-9, "{usd}");
        let plain = BackendConfig { cached_input_price: None, ..b.clone() };
        assert!((plain.cost_usd(1_000_000, 0, 400_000) - 3.0).abs() < 1e-9, "unset: cache reads at the input price");
        assert!((b.cost_usd(10, 0, 1_000) - 10.0 * 0.3 / 1e6).abs() < 1e-15, "never more cache reads than prompt tokens");
    }

    #[test]
    fn policy_config_becomes_json() {
        let text =
            format!("{MINIMAL}[[routes]]\nmodel = \"auto\"\npolicy = \"p\"\n[policies.config.p]\nmax_targets = 2\nrequire_tag = \"eu\"\n");
        let c = parse(&text).unwrap();
        let json: serde_json::Value = serde_json::from_str(&c.policy_configs()["p"]).unwrap();
        assert_eq!(json, serde_json::json!({"max_targets": 2, "require_tag": "eu"}));
    }
}
