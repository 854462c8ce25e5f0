//! Upstream backends: one configured backend each, with its provider client
//! and live stats. Every provider answers in OpenAI's shapes, so the rest of
//! the router handles one format.

mod anthropic;
mod failure;
mod http;
mod mock;
mod openai;
mod responses;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

pub use failure::AttemptFailure;

use crate::config::{BackendConfig, ProviderKind};
use crate::contract::{self, ApiSurface};
use crate::native::NativeApi;
use crate::openai::inbound::InboundRequest;
use crate::openai::sse::SseEvent;
use crate::stats::LiveStats;

/// Events of a streamed answer, OpenAI-shaped; the stream ends after
/// [`SseEvent::Done`] or with an error.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SseEvent, AttemptFailure>> + Send>>;

/// A complete JSON answer.
pub struct Answer {
    /// The body, as the client gets it.
    pub body: Bytes,
    /// `(prompt_tokens, completion_tokens)`, when the answer reports them.
    pub usage: Option<(u64, u64)>,
    /// Its API's shape.
    pub shape: AnswerShape,
    /// Whether its first choice has a finish reason, when read in the pass
    /// that found its usage (`None`: not read).
    pub finished: Option<bool>,
}

/// Which API's shape an answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerShape {
    /// OpenAI's (chat, completions, embeddings): what every provider gives
    /// for OpenAI clients.
    Chat,
    /// The Messages API's: an Anthropic backend's own answer to a Messages
    /// API client, passed as it is.
    Messages,
    /// The Responses API's: a Responses backend's own answer to a Responses
    /// API client, passed as it is.
    Responses,
}

/// What an upstream answered.
pub enum Reply {
    /// A complete JSON answer.
    Complete(Answer),
    /// A stream; its first event is yet to come.
    Stream(EventStream),
}

/// One call to an upstream.
pub struct Call<'a> {
    /// The client's request.
    pub inbound: &'a InboundRequest,
    /// The model to ask for.
    pub model: &'a str,
    /// The router's request id, passed on.
    pub request_id: &'a str,
    /// An assistant turn to continue (chat only): the text a broken stream
    /// had sent, added as the last message.
    pub prefill: Option<&'a str>,
}

/// A configured backend.
pub struct Upstream {
    /// Its configuration.
    pub config: BackendConfig,
    /// Its live stats (kept across configuration reloads).
    pub stats: Arc<LiveStats>,
    client: Client,
}

// One per backend, behind an `Arc<Upstream>`: its size does not matter, an
// indirection on every request would.
#[allow(clippy::large_enum_variant)]
enum Client {
    OpenAi(openai::OpenAiClient),
    Anthropic(anthropic::AnthropicClient),
    Mock(mock::MockClient),
}

impl Upstream {
    /// Builds the provider client for `config`.
    pub fn new(config: BackendConfig, stats: Arc<LiveStats>) -> Result<Self, String> {
        let client = match config.provider {
            ProviderKind::Openai => Client::OpenAi(openai::OpenAiClient::new(&config)?),
            ProviderKind::Anthropic => Client::Anthropic(anthropic::AnthropicClient::new(&config)?),
            ProviderKind::Mock => Client::Mock(mock::MockClient::new(&config)),
        };
        Ok(Self { config, stats, client })
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this backend's provider serves `surface` at all.
    pub fn supports(&self, surface: ApiSurface) -> bool {
        match self.client {
            Client::Anthropic(_) => surface == ApiSurface::Chat,
            _ => true,
        }
    }

    /// Why this backend can never serve `inbound`, if it cannot: its API, or
    /// something in it only backends of the request's own API can take.
    pub fn cannot_serve(&self, inbound: &InboundRequest) -> Option<String> {
        if !self.supports(inbound.surface) {
            return Some("cannot serve this API".into());
        }
        let native = inbound.native.as_ref()?;
        let what = native.only_native.as_deref().filter(|_| !self.serves_natively(native.api))?;
        let backends = match native.api {
            NativeApi::Messages => "Anthropic backends",
            NativeApi::Responses => "backends that serve the Responses API",
        };
        Some(format!("only {backends} can take {what}"))
    }

    /// Sends the request. For streams, returns once the upstream accepted it.
    pub async fn call(&self, call: &Call<'_>) -> Result<Reply, AttemptFailure> {
        if let Some(why) = self.cannot_serve(call.inbound) {
            return Err(AttemptFailure::Unsupported(why));
        }
        match &self.client {
            Client::OpenAi(c) => c.call(call).await,
            Client::Anthropic(c) => c.call(call).await,
            Client::Mock(c) => c.call(call).await,
        }
    }

    /// Whether this backend takes requests in `api` as they came.
    pub fn serves_natively(&self, api: NativeApi) -> bool {
        match (api, &self.client) {
            (NativeApi::Messages, Client::Anthropic(_)) => true,
            (NativeApi::Responses, Client::OpenAi(_)) => self.config.capabilities.responses,
            _ => false,
        }
    }

    /// Counts a Messages API request's input tokens, when this backend can
    /// (Anthropic backends); `None` when it cannot.
    pub async fn count_tokens(&self, inbound: &InboundRequest, model: &str, request_id: &str) -> Option<Result<Answer, AttemptFailure>> {
        match &self.client {
            Client::Anthropic(c) => Some(c.count_tokens(inbound, model, request_id).await),
            _ => None,
        }
    }

    /// The backend as `init` sees it.
    pub fn contract(&self) -> contract::Backend {
        contract_backend(&self.config)
    }
}

/// A configured backend as a policy's `init` sees it.
pub fn contract_backend(c: &BackendConfig) -> contract::Backend {
    contract::Backend {
        name: c.name.clone(),
        provider: c.provider.as_str().to_owned(),
        model: c.model().to_owned(),
        tags: c.tags.clone(),
        input_price: c.input_price,
        output_price: c.output_price,
        context_window: c.context_window,
        capabilities: contract::Capabilities {
            vision: c.capabilities.vision,
            tools: c.capabilities.tools,
            json_mode: c.capabilities.json_mode,
            stream: c.capabilities.stream,
        },
    }
}

/// The fields every chat chunk of a translated stream repeats.
#[derive(Debug, Default)]
struct ChunkHead {
    id: String,
    model: String,
    created: u64,
}

impl ChunkHead {
    /// A chunk with `delta` (and `finish`) for the first choice.
    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> Result<SseEvent, AttemptFailure> {
        let chunk = serde_json::json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        Ok(SseEvent::Data(Bytes::from(chunk.to_string())))
    }

    /// A chunk with no choice: `usage`'s, or empty.
    fn without_choices(&self, usage: Option<serde_json::Value>) -> Result<SseEvent, AttemptFailure> {
        let mut chunk = serde_json::json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": []});
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Ok(SseEvent::Data(Bytes::from(chunk.to_string())))
    }

    /// Puts the backend's own `event` on the first chunk it became (or on
    /// a chunk of its own when it became none), for a client of the same
    /// API (`native::NATIVE_EVENT_FIELD`). Failures carry nothing.
    fn carry(&self, out: &mut Vec<Result<SseEvent, AttemptFailure>>, event: &[u8]) {
        if !out.iter().all(Result::is_ok) {
            return;
        }
        let at = match out.iter().position(|e| matches!(e, Ok(SseEvent::Data(_)))) {
            Some(at) => at,
            None => {
                let at = out.iter().position(|e| matches!(e, Ok(SseEvent::Done))).unwrap_or(out.len());
                out.insert(at, self.without_choices(None));
                at
            }
        };
        if let Some(Ok(SseEvent::Data(chunk))) = out.get_mut(at) {
            *chunk = crate::native::with_native_event(chunk, event);
        }
    }
}
