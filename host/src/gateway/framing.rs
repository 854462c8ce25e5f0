//! How a stream's events are framed for the API the client called: OpenAI
//! `data:` events ending in `[DONE]`, or the Messages or Responses API's
//! named events.
//! The relay works on OpenAI chunks either way.

use bytes::Bytes;
use serde_json::Value;

use crate::anthropic::stream::StreamEncoder;
use crate::native::NativeApi;
use crate::openai::inbound::InboundRequest;
use crate::openai::sse::{frame, DONE_FRAME};
use crate::responses::stream::ResponsesEncoder;
use crate::upstream::Upstream;

/// The client's stream format.
pub(super) enum Framing {
    /// OpenAI chat and completions streams.
    OpenAi,
    /// The Anthropic Messages API's stream.
    Messages(Box<StreamEncoder>),
    /// The OpenAI Responses API's stream.
    Responses(Box<ResponsesEncoder>),
}

impl Framing {
    /// The format of `inbound`'s answer.
    pub(super) fn of(inbound: &InboundRequest) -> Self {
        match &inbound.native {
            Some(native) if native.api == NativeApi::Messages => {
                Self::Messages(Box::new(StreamEncoder::new(u64::from(inbound.view.input_tokens))))
            }
            Some(native) => Self::Responses(Box::new(ResponsesEncoder::new(&native.json_with_model(&inbound.model)))),
            None => Self::OpenAi,
        }
    }

    /// What the client gets for a chunk from `upstream`; may be empty.
    /// `original`: the chunk is of the stream's first upstream (not a
    /// rescue's continuation), whose own events may then pass as they came
    /// when it speaks the client's API.
    pub(super) fn chunk(&mut self, payload: &[u8], upstream: &Upstream, original: bool) -> Bytes {
        match self {
            Self::OpenAi => frame(payload),
            Self::Messages(encoder) => encoder.chunk(payload, original && upstream.serves_natively(NativeApi::Messages)),
            Self::Responses(encoder) => encoder.chunk(payload, original && upstream.serves_natively(NativeApi::Responses)),
        }
    }

    /// What the client gets for a chunk replayed from the response cache
    /// (never a backend's own event).
    pub(super) fn replayed(&mut self, payload: &[u8]) -> Bytes {
        match self {
            Self::OpenAi => frame(payload),
            Self::Messages(encoder) => encoder.chunk(payload, false),
            Self::Responses(encoder) => encoder.chunk(payload, false),
        }
    }

    /// The end of a stream that ended well.
    pub(super) fn done(&mut self) -> Bytes {
        match self {
            Self::OpenAi => Bytes::from_static(DONE_FRAME),
            Self::Messages(encoder) => encoder.end(),
            Self::Responses(encoder) => encoder.end(),
        }
    }

    /// The error event of a stream that cannot go on; `error` is the OpenAI
    /// error object.
    pub(super) fn error(&mut self, error: &Value) -> Bytes {
        match self {
            Self::OpenAi => frame(error.to_string().as_bytes()),
            Self::Messages(encoder) => encoder.error(error),
            Self::Responses(encoder) => encoder.error(error),
        }
    }
}
