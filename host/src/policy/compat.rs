//! Components built against contract 0.1 keep loading and deciding: the
//! router's (0.2) records converted to 0.1's and back. 0.2 only added
//! things, so every conversion is total: the new surfaces are `chat` to a
//! 0.1 component (the view's `switchyard.api` tag still tells them apart).

use super::bindings::v0_1::types as old;
use crate::contract as new;

pub(super) fn request(r: &new::Request) -> old::Request {
    old::Request {
        id: r.id.clone(),
        model: r.model.clone(),
        surface: match r.surface {
            new::ApiSurface::Completion => old::ApiSurface::Completion,
            new::ApiSurface::Embeddings => old::ApiSurface::Embeddings,
            new::ApiSurface::Chat | new::ApiSurface::Messages | new::ApiSurface::Responses => old::ApiSurface::Chat,
        },
        stream: r.stream,
        messages: r.messages.iter().map(message).collect(),
        total_text_bytes: r.total_text_bytes,
        input_tokens: r.input_tokens,
        max_output_tokens: r.max_output_tokens,
        tools: r.tools.clone(),
        json_mode: r.json_mode,
        caller: old::Caller { key_name: r.caller.key_name.clone(), user: r.caller.user.clone() },
        tags: r.tags.iter().map(|t| old::Tag { key: t.key.clone(), value: t.value.clone() }).collect(),
        seed: r.seed,
    }
}

fn message(m: &new::Message) -> old::Message {
    old::Message {
        role: match m.role {
            new::Role::System => old::Role::System,
            new::Role::Developer => old::Role::Developer,
            new::Role::User => old::Role::User,
            new::Role::Assistant => old::Role::Assistant,
            new::Role::Tool => old::Role::Tool,
        },
        text: m.text.clone(),
        text_bytes: m.text_bytes,
        has_image: m.has_image,
        has_audio: m.has_audio,
        has_file: m.has_file,
        has_tool_calls: m.has_tool_calls,
    }
}

pub(super) fn backend(b: &new::Backend) -> old::Backend {
    let c = &b.capabilities;
    old::Backend {
        name: b.name.clone(),
        provider: b.provider.clone(),
        model: b.model.clone(),
        tags: b.tags.clone(),
        input_price: b.input_price,
        output_price: b.output_price,
        context_window: b.context_window,
        capabilities: old::Capabilities { vision: c.vision, tools: c.tools, json_mode: c.json_mode, stream: c.stream },
    }
}

pub(super) fn stats(s: &new::BackendStats) -> old::BackendStats {
    old::BackendStats {
        circuit: match s.circuit {
            new::CircuitState::Closed => old::CircuitState::Closed,
            new::CircuitState::HalfOpen => old::CircuitState::HalfOpen,
            new::CircuitState::Open => old::CircuitState::Open,
        },
        in_flight: s.in_flight,
        latency_p50_ms: s.latency_p50_ms,
        latency_p95_ms: s.latency_p95_ms,
        ttft_ms: s.ttft_ms,
        error_rate: s.error_rate,
        samples: s.samples,
    }
}

pub(super) fn decision(d: old::Decision) -> new::Decision {
    match d {
        old::Decision::Route(r) => new::Decision::Route(new::Route {
            targets: r.targets.into_iter().map(|t| new::Target { backend: t.backend, model: t.model }).collect(),
            labels: r.labels.into_iter().map(|t| new::Tag { key: t.key, value: t.value }).collect(),
        }),
        old::Decision::Reject(r) => new::Decision::Reject(new::Rejection { status: r.status, message: r.message }),
    }
}
