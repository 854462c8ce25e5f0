//! A request as the client sent it, kept for backends that speak the
//! client's API themselves (Anthropic backends for the Messages API,
//! `capabilities.responses` backends for the Responses API): they get it
//! byte for byte, only `model` replaced.

use std::ops::Range;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::GatewayError;
use crate::openai::inbound::AsSent;

/// The API a native request is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeApi {
    /// Anthropic's Messages API.
    Messages,
    /// OpenAI's Responses API.
    Responses,
}

impl NativeApi {
    /// The value of the router's `switchyard.api` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Responses => "responses",
        }
    }
}

/// A JSON body as the client sent it, and where its top-level `model`
/// value is: forwarded byte for byte with only that value replaced, a
/// copy instead of a serialization of the whole (whose string escaping
/// cost 36 µs a request for a 100 KB prompt).
#[derive(Debug, Clone)]
pub struct SentBody {
    bytes: Bytes,
    model_span: Range<usize>,
}

impl SentBody {
    /// `bytes` with its `model` at `raw`, a value borrowed from `bytes`.
    pub fn at(bytes: &Bytes, raw: &RawValue) -> Self {
        // `raw` borrows from `bytes`: its offset there is where `model` is.
        let start = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
        Self { bytes: bytes.clone(), model_span: start..start + raw.get().len() }
    }

    /// `object` serialized, for a body that cannot go on as sent; `None`
    /// without a `model`.
    pub fn serialized(object: &serde_json::Map<String, Value>) -> Option<Self> {
        let bytes = Bytes::from(serde_json::to_vec(object).ok()?);
        let raw = serde_json::from_slice::<ModelField<'_>>(&bytes).ok()?.model?;
        Some(Self::at(&bytes, raw))
    }

    /// The body's size as sent.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The body as sent.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The body as sent, with `model` replaced and nothing else touched.
    pub fn with_model(&self, model: &str) -> Bytes {
        // The quotes and a few escapes beside the name: one allocation.
        let mut out = Vec::with_capacity(self.bytes.len() + model.len() + 8);
        out.extend_from_slice(&self.bytes[..self.model_span.start]);
        // Writing a string to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, model);
        out.extend_from_slice(&self.bytes[self.model_span.end..]);
        Bytes::from(out)
    }
}

/// What a translation to chat left out: the first thing only backends of
/// the request's own API can serve, and text that goes upstream to those
/// backends but that the policy's view does not carry (thinking blocks,
/// blocks chat has no form for). The view counts that text as cut, so a
/// policy that treats cut text as unscanned never routes it unseen.
#[derive(Debug, Default)]
pub struct LeftOut {
    /// The first thing only the native API can serve.
    pub only_native: Option<String>,
    /// Bytes of text the view does not carry.
    pub unseen_text_bytes: u64,
}

impl LeftOut {
    /// Something only the native API can serve (the first one is named).
    pub fn note(&mut self, what: String) {
        self.only_native.get_or_insert(what);
    }

    /// `value` goes upstream as sent, unseen by the policy.
    pub fn unseen(&mut self, value: &Value) {
        self.unseen_text_bytes += text_bytes(value);
    }

    /// `value` goes upstream unseen, and only the native API can serve it.
    pub fn note_unseen(&mut self, what: String, value: &Value) {
        self.note(what);
        self.unseen(value);
    }
}

/// Bytes of the strings in `value` (object keys left out).
pub fn text_bytes(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(fields) => fields.values().map(text_bytes).sum(),
        _ => 0,
    }
}

/// A request as the client sent it.
#[derive(Debug, Clone)]
pub struct NativeRequest {
    /// Its API.
    pub api: NativeApi,
    /// The body, byte for byte.
    body: SentBody,
    /// Client headers passed on as they are (`anthropic-version`, say).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What in it only backends of its own API can serve (server tools,
    /// say), if anything.
    pub only_native: Option<String>,
}

/// The chunk field that carries a backend's own stream event, for a client
/// of the same API: translated streams are OpenAI chunks inside the router,
/// and this is how such a client still gets the events as they came.
pub const NATIVE_EVENT_FIELD: &str = "x_switchyard_native";

#[derive(Deserialize)]
struct NativeOf<'a> {
    #[serde(borrow, rename = "x_switchyard_native")]
    native: Option<&'a RawValue>,
}

/// The backend's own event a chunk carries, if it carries one.
pub fn native_event(chunk: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice::<NativeOf<'_>>(chunk).ok()?.native
}

/// `chunk` (a JSON object) with `event` added as it came.
pub fn with_native_event(chunk: &[u8], event: &[u8]) -> Bytes {
    let body = chunk.strip_suffix(b"}").unwrap_or(chunk);
    let mut out = Vec::with_capacity(chunk.len() + event.len() + NATIVE_EVENT_FIELD.len() + 4);
    out.extend_from_slice(body);
    out.extend_from_slice(format!(",\"{NATIVE_EVENT_FIELD}\":").as_bytes());
    out.extend_from_slice(event.trim_ascii());
    out.push(b'}');
    Bytes::from(out)
}

#[derive(Deserialize)]
struct ModelField<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
}

impl NativeRequest {
    /// Keeps the body `object` was read from, as `as_sent` says it can go on.
    pub fn new(
        api: NativeApi,
        object: &serde_json::Map<String, Value>,
        as_sent: AsSent,
        headers: Vec<(HeaderName, HeaderValue)>,
        only_native: Option<String>,
    ) -> Result<Self, GatewayError> {
        let missing = || GatewayError::bad_request("model: Field required", Some("model"));
        let body = match as_sent {
            AsSent::Yes(body) => body,
            AsSent::Repeated => SentBody::serialized(object).ok_or_else(missing)?,
            AsSent::NoModel => return Err(missing()),
        };
        Ok(Self { api, body, headers, only_native })
    }

    /// The body's size as sent.
    pub fn body_len(&self) -> usize {
        self.body.size()
    }

    /// The body as sent, with `model` replaced and nothing else touched.
    pub fn with_model(&self, model: &str) -> Bytes {
        self.body.with_model(model)
    }

    /// The body, parsed (it was once already), with `model` replaced: for
    /// the few changes a rescue makes.
    pub fn json_with_model(&self, model: &str) -> serde_json::Map<String, Value> {
        let mut body = match serde_json::from_slice::<Value>(self.body.bytes()) {
            Ok(Value::Object(body)) => body,
            _ => serde_json::Map::new(),
        };
        body.insert("model".into(), Value::String(model.to_owned()));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_changes() {
        let native = |body: &'static [u8]| {
            let (object, as_sent) = crate::openai::inbound::object_as_sent(&Bytes::from_static(body))?;
            NativeRequest::new(NativeApi::Messages, &object, as_sent, vec![], None)
        };
        let kept = native(br#"{ "unknown":{"model":"inner"}, "model" : "m\u0031" ,"x":1}"#).unwrap();
        assert_eq!(&kept.with_model("claude-x")[..], br#"{ "unknown":{"model":"inner"}, "model" : "claude-x" ,"x":1}"#);
        assert_eq!(kept.json_with_model("c")["model"], "c");
        assert_eq!(&kept.with_model("a\"b\\")[..], br#"{ "unknown":{"model":"inner"}, "model" : "a\"b\\" ,"x":1}"#);
        // A key named twice: serialized as read (the last of the two).
        let twice = native(br#"{"model":"a","messages":[{"content":"secret","content":"hi"}],"model":"b"}"#).unwrap();
        assert_eq!(&twice.with_model("claude-x")[..], br#"{"model":"claude-x","messages":[{"content":"hi"}]}"#);
        assert_eq!(native(br#"{"x":1}"#).unwrap_err().status, 400);
    }
}
