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

/// A request as the client sent it.
#[derive(Debug, Clone)]
pub struct NativeRequest {
    /// Its API.
    pub api: NativeApi,
    /// The body, byte for byte.
    bytes: Bytes,
    /// Where the top-level `model` value is in `bytes`.
    model_span: Range<usize>,
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
    /// Keeps `bytes` (a JSON object with a `model`), finding its model.
    pub fn new(
        api: NativeApi,
        bytes: &Bytes,
        headers: Vec<(HeaderName, HeaderValue)>,
        only_native: Option<String>,
    ) -> Result<Self, GatewayError> {
        let model_span = match serde_json::from_slice::<ModelField<'_>>(bytes) {
            Ok(ModelField { model: Some(raw) }) => {
                // `raw` borrows from `bytes`: its offset there is where `model` is.
                let start = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
                start..start + raw.get().len()
            }
            Ok(ModelField { model: None }) => return Err(GatewayError::bad_request("model: Field required", Some("model"))),
            Err(e) => return Err(GatewayError::bad_request(format!("the request body cannot be read: {e}"), None)),
        };
        Ok(Self { api, bytes: bytes.clone(), model_span, headers, only_native })
    }

    /// The body's size as sent.
    pub fn body_len(&self) -> usize {
        self.bytes.len()
    }

    /// The body as sent, with `model` replaced and nothing else touched.
    pub fn with_model(&self, model: &str) -> Bytes {
        let model = Value::String(model.to_owned()).to_string();
        let mut out = Vec::with_capacity(self.bytes.len() + model.len());
        out.extend_from_slice(&self.bytes[..self.model_span.start]);
        out.extend_from_slice(model.as_bytes());
        out.extend_from_slice(&self.bytes[self.model_span.end..]);
        Bytes::from(out)
    }

    /// The body, parsed (it was once already), with `model` replaced: for
    /// the few changes a rescue makes.
    pub fn json_with_model(&self, model: &str) -> serde_json::Map<String, Value> {
        let mut body = match serde_json::from_slice::<Value>(&self.bytes) {
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
        let raw = Bytes::from_static(br#"{ "unknown":{"model":"inner"}, "model" : "m\u0031" ,"x":1}"#);
        let native = NativeRequest::new(NativeApi::Messages, &raw, vec![], None).unwrap();
        assert_eq!(&native.with_model("claude-x")[..], br#"{ "unknown":{"model":"inner"}, "model" : "claude-x" ,"x":1}"#);
        assert_eq!(native.json_with_model("c")["model"], "c");
        for bad in [&br#"{"x":1}"#[..], br#"{"model":1,"model":2}"#] {
            assert_eq!(NativeRequest::new(NativeApi::Messages, &Bytes::copy_from_slice(bad), vec![], None).unwrap_err().status, 400);
        }
    }
}
