//! JSON forms of the contract's request and backends, as written by hand for
//! `switchyard policy eval` and kept in test fixtures. Every field but a few
//! names has a default; unknown fields are errors, so typos do not pass
//! silently.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::contract;

/// A request in JSON. See `wit/policy.wit` for each field's meaning.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestJson {
    #[serde(default = "default_request_id")]
    id: String,
    model: String,
    #[serde(default)]
    surface: SurfaceJson,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    messages: Vec<MessageJson>,
    /// Defaults to the total text length divided by 4.
    input_tokens: Option<u32>,
    max_output_tokens: Option<u32>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    json_mode: bool,
    key_name: Option<String>,
    user: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    seed: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SurfaceJson {
    #[default]
    Chat,
    Completion,
    Embeddings,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RoleJson {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageJson {
    role: RoleJson,
    #[serde(default)]
    text: String,
    /// Defaults to the length of `text`.
    text_bytes: Option<u32>,
    #[serde(default)]
    has_image: bool,
    #[serde(default)]
    has_audio: bool,
    #[serde(default)]
    has_file: bool,
    #[serde(default)]
    has_tool_calls: bool,
}

/// A backend in JSON. See `wit/policy.wit` for each field's meaning.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendJson {
    name: String,
    #[serde(default = "default_provider")]
    provider: String,
    /// Defaults to the backend's name.
    model: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    input_price: f64,
    #[serde(default)]
    output_price: f64,
    #[serde(default = "default_context_window")]
    context_window: u32,
    #[serde(default)]
    capabilities: CapabilitiesJson,
    #[serde(default)]
    stats: StatsJson,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CapabilitiesJson {
    vision: bool,
    tools: bool,
    json_mode: bool,
    stream: bool,
}

impl Default for CapabilitiesJson {
    fn default() -> Self {
        Self { vision: false, tools: false, json_mode: false, stream: true }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StatsJson {
    circuit: CircuitJson,
    in_flight: u32,
    latency_p50_ms: f32,
    latency_p95_ms: f32,
    ttft_ms: f32,
    error_rate: f32,
    samples: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum CircuitJson {
    #[default]
    Closed,
    HalfOpen,
    Open,
}

fn default_request_id() -> String {
    "eval".into()
}

fn default_provider() -> String {
    "openai".into()
}

fn default_context_window() -> u32 {
    128_000
}

impl From<RequestJson> for contract::Request {
    fn from(r: RequestJson) -> Self {
        let messages: Vec<contract::Message> = r
            .messages
            .into_iter()
            .map(|m| contract::Message {
                role: match m.role {
                    RoleJson::System => contract::Role::System,
                    RoleJson::Developer => contract::Role::Developer,
                    RoleJson::User => contract::Role::User,
                    RoleJson::Assistant => contract::Role::Assistant,
                    RoleJson::Tool => contract::Role::Tool,
                },
                text_bytes: m.text_bytes.unwrap_or(m.text.len() as u32),
                text: m.text,
                has_image: m.has_image,
                has_audio: m.has_audio,
                has_file: m.has_file,
                has_tool_calls: m.has_tool_calls,
            })
            .collect();
        let total_text_bytes: u64 = messages.iter().map(|m| u64::from(m.text_bytes)).sum();
        contract::Request {
            id: r.id,
            model: r.model,
            surface: match r.surface {
                SurfaceJson::Chat => contract::ApiSurface::Chat,
                SurfaceJson::Completion => contract::ApiSurface::Completion,
                SurfaceJson::Embeddings => contract::ApiSurface::Embeddings,
            },
            stream: r.stream,
            messages,
            total_text_bytes,
            input_tokens: r.input_tokens.unwrap_or((total_text_bytes / 4).min(u64::from(u32::MAX)) as u32),
            max_output_tokens: r.max_output_tokens,
            tools: r.tools,
            json_mode: r.json_mode,
            caller: contract::Caller { key_name: r.key_name, user: r.user },
            tags: r.tags.into_iter().map(|(key, value)| contract::Tag { key: key.to_lowercase(), value }).collect(),
            seed: r.seed,
        }
    }
}

impl From<BackendJson> for (contract::Backend, contract::BackendStats) {
    fn from(b: BackendJson) -> Self {
        let backend = contract::Backend {
            model: b.model.unwrap_or_else(|| b.name.clone()),
            name: b.name,
            provider: b.provider,
            tags: b.tags,
            input_price: b.input_price,
            output_price: b.output_price,
            context_window: b.context_window,
            capabilities: contract::Capabilities {
                vision: b.capabilities.vision,
                tools: b.capabilities.tools,
                json_mode: b.capabilities.json_mode,
                stream: b.capabilities.stream,
            },
        };
        let stats = contract::BackendStats {
            circuit: match b.stats.circuit {
                CircuitJson::Closed => contract::CircuitState::Closed,
                CircuitJson::HalfOpen => contract::CircuitState::HalfOpen,
                CircuitJson::Open => contract::CircuitState::Open,
            },
            in_flight: b.stats.in_flight,
            latency_p50_ms: b.stats.latency_p50_ms,
            latency_p95_ms: b.stats.latency_p95_ms,
            ttft_ms: b.stats.ttft_ms,
            error_rate: b.stats.error_rate,
            samples: b.stats.samples,
        };
        (backend, stats)
    }
}

/// Parses a request from JSON text.
pub fn parse_request(text: &str) -> Result<contract::Request, serde_json::Error> {
    serde_json::from_str::<RequestJson>(text).map(Into::into)
}

/// Parses a JSON array of backends, each with its optional `stats`, into the
/// backends and their stats in the same order. Names must be unique.
pub fn parse_backends(text: &str) -> Result<(Vec<contract::Backend>, Vec<contract::BackendStats>), String> {
    let (backends, stats): (Vec<contract::Backend>, Vec<contract::BackendStats>) =
        serde_json::from_str::<Vec<BackendJson>>(text).map_err(|e| e.to_string())?.into_iter().map(Into::into).unzip();
    for (i, b) in backends.iter().enumerate() {
        if backends[..i].iter().any(|other| other.name == b.name) {
            return Err(format!("backend name `{}` appears twice", b.name));
        }
    }
    Ok((backends, stats))
}
