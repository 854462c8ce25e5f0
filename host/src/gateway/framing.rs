//! How a stream's events are framed for the API the client called: OpenAI
//! `data:` events ending in `[DONE]`, or the Messages API's named events.
//! The relay works on OpenAI chunks either way.

use bytes::Bytes;
use serde_json::Value;

use crate::anthropic::stream::StreamEncoder;
use crate::openai::inbound::InboundRequest;
use crate::openai::sse::{frame, DONE_FRAME};

/// The client's stream format.
pub(super) enum Framing {
    /// OpenAI chat and completions streams.
    OpenAi,
    /// The Anthropic Messages API's stream.
    Messages(Box<StreamEncoder>),
}

impl Framing {
    /// The format of `inbound`'s answer.
    pub(super) fn of(inbound: &InboundRequest) -> Self {
        match inbound.anthropic {
            Some(_) => Self::Messages(Box::new(StreamEncoder::new(u64::from(inbound.view.input_tokens)))),
            None => Self::OpenAi,
        }
    }

    /// What the client gets for a chunk; may be empty.
    pub(super) fn chunk(&mut self, payload: &[u8]) -> Bytes {
        match self {
            Self::OpenAi => frame(payload),
            Self::Messages(encoder) => encoder.chunk(payload),
        }
    }

    /// The end of a stream that ended well.
    pub(super) fn done(&mut self) -> Bytes {
        match self {
            Self::OpenAi => Bytes::from_static(DONE_FRAME),
            Self::Messages(encoder) => encoder.end(),
        }
    }

    /// The error event of a stream that cannot go on; `error` is the OpenAI
    /// error object.
    pub(super) fn error(&mut self, error: &Value) -> Bytes {
        match self {
            Self::OpenAi => frame(error.to_string().as_bytes()),
            Self::Messages(encoder) => encoder.error(error),
        }
    }
}
