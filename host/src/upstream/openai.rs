//! OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, llama.cpp server,
//! OpenRouter, Groq, ...): the client's body goes through with only `model`
//! replaced.

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::Uri;

use super::http::{body_stream, endpoint, read_capped, Answered, HttpClient};
use super::{Answer, AnswerShape, AttemptFailure, Call, EventStream, Reply};
use crate::config::BackendConfig;
use crate::contract::ApiSurface;
use crate::native::NativeApi;
use crate::openai::sse::{SseEvent, SseParser};

/// Most bytes of a complete answer accepted.
pub(super) const MAX_ANSWER: usize = 64 << 20;

pub(super) struct OpenAiClient {
    http: HttpClient,
    /// Endpoint URIs, parsed once: chat, completions, embeddings.
    urls: [Uri; 3],
    /// `/responses`, when the backend serves the Responses API itself.
    responses_url: Option<Uri>,
    auth: Option<HeaderValue>,
}

impl OpenAiClient {
    pub(super) fn new(config: &BackendConfig) -> Result<Self, String> {
        let base_url = config.base_url.clone().ok_or("base_url is required")?.trim_end_matches('/').to_owned();
        let url = |path: &str| endpoint(&base_url, path);
        let urls = [url("/chat/completions")?, url("/completions")?, url("/embeddings")?];
        let auth = match config.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| "api_key has characters a header cannot carry")?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let responses_url = if config.capabilities.responses { Some(url("/responses")?) } else { None };
        Ok(Self { http: HttpClient::new(config)?, urls, responses_url, auth })
    }

    /// Posts `body`; a non-2xx answer is a failure with its body.
    async fn post(&self, url: &Uri, body: Bytes, request_id: &str) -> Result<Answered, AttemptFailure> {
        let mut headers = HeaderMap::with_capacity(4);
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", id);
        }
        if let Some(auth) = &self.auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        self.http.post(url, headers, body).await
    }

    pub(super) async fn call(&self, call: &Call<'_>) -> Result<Reply, AttemptFailure> {
        let native = call.inbound.native.as_ref().filter(|n| n.api == NativeApi::Responses);
        if let (Some(native), Some(url)) = (native, &self.responses_url) {
            // A Responses API client's own request, to a backend that serves the API.
            let response = self.post(url, super::responses::body(native, call.model, call.prefill), call.request_id).await?;
            if call.inbound.stream {
                return Ok(Reply::Stream(super::responses::events(response, call.inbound.include_usage)));
            }
            return Ok(Reply::Complete(super::responses::answer(response).await?));
        }
        let url = match call.inbound.surface {
            // The Messages and Responses APIs arrive translated to chat.
            ApiSurface::Chat | ApiSurface::Messages | ApiSurface::Responses => &self.urls[0],
            ApiSurface::Completion => &self.urls[1],
            ApiSurface::Embeddings => &self.urls[2],
        };
        let bytes = match (&call.inbound.sent, call.prefill) {
            (Some(sent), None) => sent.with_model(call.model),
            // A rescue's partial turn changes `messages`.
            _ => {
                let body = WithModel { body: &call.inbound.body, model: call.model, prefill: call.prefill };
                // Sized up front: growing by doubling copied the body several times.
                let extra = call.prefill.map_or(0, |p| p.len() + 40);
                let mut bytes = Vec::with_capacity(call.inbound.body_len + call.model.len() + 16 + extra);
                serde_json::to_writer(&mut bytes, &body).map_err(|e| AttemptFailure::Protocol(e.to_string()))?;
                Bytes::from(bytes)
            }
        };
        let response = self.post(url, bytes, call.request_id).await?;
        if call.inbound.stream {
            return Ok(Reply::Stream(sse_events(response)));
        }
        let body = read_capped(response, MAX_ANSWER).await?;
        // One pass checks that the answer is a JSON object and finds its
        // usage and whether it finished (the response cache keeps only those).
        #[derive(serde::Deserialize)]
        struct Read {
            usage: Option<Usage>,
            choices: Option<Vec<Choice>>,
        }
        // Only the two counts: the rest of `usage` is skipped, not built.
        #[derive(serde::Deserialize)]
        struct Usage {
            prompt_tokens: Option<serde_json::Value>,
            completion_tokens: Option<serde_json::Value>,
        }
        #[derive(serde::Deserialize)]
        struct Choice {
            finish_reason: Option<serde::de::IgnoredAny>,
        }
        #[derive(serde::Deserialize)]
        struct UsageOf {
            usage: Option<serde_json::Value>,
        }
        let (usage, finished) = match serde_json::from_slice::<Read>(&body) {
            Ok(read) => {
                let usage = read.usage.and_then(|u| crate::openai::token_counts(u.prompt_tokens.as_ref(), u.completion_tokens.as_ref()));
                (usage, read.choices.as_ref().is_some_and(|c| c.first().is_some_and(|c| c.finish_reason.is_some())))
            }
            // Choices (or usage) of another shape: passed on as they are, never cached.
            Err(_) => match serde_json::from_slice::<UsageOf>(&body) {
                Ok(read) => (read.usage.as_ref().and_then(crate::openai::usage_counts), false),
                Err(_) => return Err(AttemptFailure::Protocol("the answer is not a JSON object".into())),
            },
        };
        Ok(Reply::Complete(Answer { body, usage, shape: AnswerShape::Chat, finished: Some(finished) }))
    }
}

/// The client's body with `model` replaced (and an assistant turn to
/// continue added to `messages`), serialised without copying the body first.
struct WithModel<'a> {
    body: &'a serde_json::Map<String, serde_json::Value>,
    model: &'a str,
    prefill: Option<&'a str>,
}

impl serde::Serialize for WithModel<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.body.len()))?;
        for (key, value) in self.body {
            match (key.as_str(), self.prefill, value) {
                ("model", _, _) => map.serialize_entry(key, self.model)?,
                ("messages", Some(prefill), serde_json::Value::Array(messages)) => {
                    map.serialize_entry(key, &WithPrefill { messages, prefill })?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

/// `messages` and then the assistant's partial turn.
struct WithPrefill<'a> {
    messages: &'a [serde_json::Value],
    prefill: &'a str,
}

impl serde::Serialize for WithPrefill<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.messages.len() + 1))?;
        for m in self.messages {
            seq.serialize_element(m)?;
        }
        seq.serialize_element(&serde_json::json!({"role": "assistant", "content": self.prefill}))?;
        seq.end()
    }
}

/// The SSE events of a streamed answer. A stream that ends without
/// `[DONE]` ends with an error.
pub(super) fn sse_events(response: Answered) -> EventStream {
    struct State {
        body: futures_util::stream::BoxStream<'static, Result<Bytes, AttemptFailure>>,
        parser: SseParser,
        ready: std::collections::VecDeque<SseEvent>,
        finished: bool,
    }
    let state = State { body: body_stream(response), parser: SseParser::default(), ready: Default::default(), finished: false };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.finished {
                return None;
            }
            if let Some(event) = s.ready.pop_front() {
                if event == SseEvent::Done {
                    s.finished = true;
                }
                return Some((Ok(event), s));
            }
            match s.body.next().await {
                Some(Ok(bytes)) => match s.parser.push(&bytes) {
                    Ok(events) => s.ready.extend(events),
                    Err(e) => {
                        s.finished = true;
                        return Some((Err(AttemptFailure::Protocol(e.0)), s));
                    }
                },
                Some(Err(e)) => {
                    s.finished = true;
                    let broke = match e {
                        AttemptFailure::Connect(e) => AttemptFailure::Connect(format!("the stream broke: {e}")),
                        other => other,
                    };
                    return Some((Err(broke), s));
                }
                None => {
                    s.finished = true;
                    return Some((Err(AttemptFailure::StreamEnded), s));
                }
            }
        }
    }))
}
