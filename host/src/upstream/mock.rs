//! The `mock` provider: answers locally, deterministically, with configured
//! latency, time to first token and speed. For demos, the embedded default
//! configuration and benchmarks of the router itself.

use std::time::Duration;

use bytes::Bytes;

use super::{Answer, AnswerShape, AttemptFailure, Call, Reply};
use crate::config::{BackendConfig, MockConfig};
use crate::contract::ApiSurface;
use crate::mock_answers as answers;
use crate::openai::sse::SseEvent;

pub(super) struct MockClient {
    config: MockConfig,
}

impl MockClient {
    pub(super) fn new(config: &BackendConfig) -> Self {
        Self { config: config.mock.clone().unwrap_or_default() }
    }

    pub(super) async fn call(&self, call: &Call<'_>) -> Result<Reply, AttemptFailure> {
        let inbound = call.inbound;
        let surface = inbound.surface;
        let model = call.model.to_owned();
        let id = call.request_id.to_owned();
        let created = answers::unix_now();
        let prompt = answers::prompt_text(surface, &inbound.body);
        let mut tokens = answers::answer_tokens(&model, &prompt, self.config.answer_tokens);
        if let Some(prefill) = call.prefill {
            tokens = answers::continuation(&tokens, prefill);
        }
        if !inbound.stream {
            sleep_ms(self.config.latency_ms).await;
            let answer = answers::complete(surface, &id, &model, created, &inbound.body, &tokens);
            let usage = crate::openai::usage(&answer);
            return Ok(Reply::Complete(Answer { body: Bytes::from(answer.to_string()), usage, shape: AnswerShape::Chat, finished: None }));
        }
        if surface == ApiSurface::Embeddings {
            return Err(AttemptFailure::Unsupported("embeddings cannot be streamed".into()));
        }
        let ttft = self.config.ttft_ms;
        let gap = if self.config.tokens_per_second == 0 { 0 } else { 1000 / u64::from(self.config.tokens_per_second) };
        let usage = inbound
            .include_usage
            .then(|| answers::usage_chunk(surface, &id, &model, created, answers::count_tokens(&prompt), tokens.len() as u32));
        // Events: role chunk, one per token, the finish chunk, usage, [DONE].
        let mut events: Vec<(u64, SseEvent)> = Vec::with_capacity(tokens.len() + 4);
        let chunk = |token: Option<&str>, first: bool, finish: bool| {
            SseEvent::Data(Bytes::from(answers::chunk(surface, &id, &model, created, token, first, finish).to_string()))
        };
        if surface == ApiSurface::Chat {
            events.push((ttft, chunk(None, true, false)));
        }
        for (i, token) in tokens.iter().enumerate() {
            let delay = if i == 0 && surface != ApiSurface::Chat { ttft } else { gap };
            events.push((delay, chunk(Some(token), false, false)));
        }
        events.push((0, chunk(None, false, true)));
        if let Some(usage) = usage {
            events.push((0, SseEvent::Data(Bytes::from(usage.to_string()))));
        }
        events.push((0, SseEvent::Done));
        Ok(Reply::Stream(Box::pin(futures_util::stream::unfold(events.into_iter(), |mut events| async move {
            let (delay, event) = events.next()?;
            sleep_ms(delay).await;
            Some((Ok(event), events))
        }))))
    }
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
