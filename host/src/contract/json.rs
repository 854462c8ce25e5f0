//! The JSON form of the contract's request and backend stats: what the
//! decision log writes and `switchyard policy eval` reads (a log record's
//! `request` and `backends` replay as they are), and what people write by
//! hand for `policy eval` and test fixtures. One definition serves both
//! directions. Every field but a few names has a default; unknown fields are
//! errors, so typos do not pass silently. Names are the WIT's (`half-open`,
//! `user`), which is why this is not the generated types' own serde form:
//! `bindgen!` can add derives to them but no renames or defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract;

/// A request in JSON. See `wit/policy.wit` for each field's meaning.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    #[serde(default = "default_request_id")]
    id: String,
    model: String,
    #[serde(default)]
    surface: SurfaceJson,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    messages: Vec<MessageJson>,
    /// Defaults to the sum of the messages' `text_bytes`; more when the
    /// router passed only the newest messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total_text_bytes: Option<u64>,
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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum SurfaceJson {
    #[default]
    Chat,
    Completion,
    Embeddings,
    Messages,
    Responses,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum RoleJson {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MessageJson {
    role: RoleJson,
    /// Left out of the decision log unless it includes prompts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
struct BackendJson {
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

#[derive(Debug, Default, Deserialize, Serialize)]
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

#[derive(Debug, Default, Deserialize, Serialize)]
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
                role: m.role.into(),
                text_bytes: m.text_bytes.unwrap_or(m.text.len() as u32),
                text: m.text,
                has_image: m.has_image,
                has_audio: m.has_audio,
                has_file: m.has_file,
                has_tool_calls: m.has_tool_calls,
            })
            .collect();
        let total_text_bytes = r.total_text_bytes.unwrap_or_else(|| messages.iter().map(|m| u64::from(m.text_bytes)).sum());
        contract::Request {
            id: r.id,
            model: r.model,
            surface: r.surface.into(),
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
        (backend, b.stats.into())
    }
}

/// The JSON form of `request`, with message text only when `include_text`.
pub fn request_json(r: &contract::Request, include_text: bool) -> Value {
    let messages = r
        .messages
        .iter()
        .map(|m| MessageJson {
            role: m.role.into(),
            text: if include_text { m.text.clone() } else { String::new() },
            text_bytes: Some(m.text_bytes),
            has_image: m.has_image,
            has_audio: m.has_audio,
            has_file: m.has_file,
            has_tool_calls: m.has_tool_calls,
        })
        .collect();
    let seen_bytes: u64 = r.messages.iter().map(|m| u64::from(m.text_bytes)).sum();
    let json = RequestJson {
        id: r.id.clone(),
        model: r.model.clone(),
        surface: r.surface.into(),
        stream: r.stream,
        messages,
        total_text_bytes: (r.total_text_bytes != seen_bytes).then_some(r.total_text_bytes),
        input_tokens: Some(r.input_tokens),
        max_output_tokens: r.max_output_tokens,
        tools: r.tools.clone(),
        json_mode: r.json_mode,
        key_name: r.caller.key_name.clone(),
        user: r.caller.user.clone(),
        tags: r.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
        seed: r.seed,
    };
    serde_json::to_value(json).unwrap_or(Value::Null)
}

/// Backends' stats as `[{"name", "stats"}]`, which `policy eval` reads as
/// backends (their other fields take defaults).
pub fn stats_json(names: &[String], stats: &[contract::BackendStats]) -> Value {
    names.iter().zip(stats).map(|(name, s)| serde_json::json!({"name": name, "stats": StatsJson::from(s)})).collect()
}

/// The JSON form of a circuit state (`closed`, `half-open`, `open`).
pub fn circuit_json(state: contract::CircuitState) -> Value {
    serde_json::to_value(CircuitJson::from(state)).unwrap_or(Value::Null)
}

/// Both directions of each enum's JSON form.
macro_rules! json_enum {
    ($json:ident <-> $contract:ty { $($case:ident),* }) => {
        impl From<$json> for $contract {
            fn from(v: $json) -> Self {
                match v { $($json::$case => Self::$case),* }
            }
        }
        impl From<$contract> for $json {
            fn from(v: $contract) -> Self {
                match v { $(<$contract>::$case => Self::$case),* }
            }
        }
    };
}
json_enum!(SurfaceJson <-> contract::ApiSurface { Chat, Completion, Embeddings, Messages, Responses });
json_enum!(RoleJson <-> contract::Role { System, Developer, User, Assistant, Tool });
json_enum!(CircuitJson <-> contract::CircuitState { Closed, HalfOpen, Open });

impl From<StatsJson> for contract::BackendStats {
    fn from(s: StatsJson) -> Self {
        Self {
            circuit: s.circuit.into(),
            in_flight: s.in_flight,
            latency_p50_ms: s.latency_p50_ms,
            latency_p95_ms: s.latency_p95_ms,
            ttft_ms: s.ttft_ms,
            error_rate: s.error_rate,
            samples: s.samples,
        }
    }
}

impl From<&contract::BackendStats> for StatsJson {
    fn from(s: &contract::BackendStats) -> Self {
        Self {
            circuit: s.circuit.into(),
            in_flight: s.in_flight,
            latency_p50_ms: s.latency_p50_ms,
            latency_p95_ms: s.latency_p95_ms,
            ttft_ms: s.ttft_ms,
            error_rate: s.error_rate,
            samples: s.samples,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{ApiSurface, Caller, Message, Request, Role, Tag};

    fn request() -> Request {
        let message = |role, text: &str, text_bytes| Message {
            role,
            text: text.into(),
            text_bytes,
            has_image: role == Role::User,
            has_audio: false,
            has_file: false,
            has_tool_calls: false,
        };
        Request {
            id: "r1".into(),
            model: "auto".into(),
            surface: ApiSurface::Completion,
            stream: true,
            // Older messages were left out: the total says so.
            messages: vec![message(Role::System, "Be brief.", 9), message(Role::User, "Hel", 5)],
            total_text_bytes: 900,
            input_tokens: 230,
            max_output_tokens: Some(64),
            tools: vec!["lookup".into()],
            json_mode: true,
            caller: Caller { key_name: Some("team-a".into()), user: Some("u1".into()) },
            tags: vec![Tag { key: "tier".into(), value: "gold".into() }],
            seed: 42,
        }
    }

    #[test]
    fn a_logged_request_replays_as_the_policy_saw_it() {
        let original = request();
        let logged = request_json(&original, true);
        assert_eq!(parse_request(&logged.to_string()).unwrap(), original);
        // Without prompts, only the text is gone: its lengths stay.
        let replayed = parse_request(&request_json(&original, false).to_string()).unwrap();
        assert_eq!(
            replayed,
            Request { messages: original.messages.iter().map(|m| Message { text: String::new(), ..m.clone() }).collect(), ..original }
        );
    }

    #[test]
    fn logged_stats_read_back_as_backends() {
        let stats = contract::BackendStats { circuit: contract::CircuitState::HalfOpen, in_flight: 3, ..contract::idle_stats() };
        let logged = stats_json(&["a".into()], std::slice::from_ref(&stats));
        assert_eq!(logged[0]["stats"]["circuit"], "half-open");
        let (backends, read) = parse_backends(&logged.to_string()).unwrap();
        assert_eq!((backends[0].name.as_str(), read), ("a", vec![stats]));
    }
}
