//! Where a client request is parsed: the JSON body is kept whole (fields the
//! router does not know pass through untouched) and the policy's view of it
//! is extracted.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use hyper::HeaderMap;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::contract::{ApiSurface, Caller, Message, Request, Role, Tag};
use crate::error::GatewayError;
use crate::native::SentBody;

/// Prefix of headers that become policy tags.
pub const TAG_HEADER_PREFIX: &str = "x-switchyard-";

/// Most tags taken from a request.
const MAX_TAGS: usize = 32;
/// Longest tag key or value kept, in bytes.
const MAX_TAG_BYTES: usize = 256;
/// Most tool names passed to a policy (OpenAI accepts at most 128 tools).
const MAX_VIEW_TOOLS: usize = 128;
/// Longest tool name, `user` or `model` passed to a policy, in bytes; longer
/// ones are cut on a character boundary.
const MAX_VIEW_NAME_BYTES: usize = 256;
/// Tags whose keys start with this are the router's; clients cannot set them.
pub const ROUTER_TAG_PREFIX: &str = "switchyard.";
/// The router's tag with the number of messages the client sent, present
/// when the policy sees fewer (only the newest `view_max_messages`).
pub const MESSAGE_COUNT_TAG: &str = "switchyard.message-count";
/// The router's tag with the largest fraction of the caller's spend
/// budget used (`0.83`), present when the caller has a budget.
pub const BUDGET_USED_TAG: &str = "switchyard.budget-used";

/// How much of a request a policy sees. Whatever a client sends within the
/// body limit, the view stays this small, so that no request can make a
/// policy run out of its budget just by being large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewLimits {
    /// Bytes of message text, spent from the newest message backwards.
    pub text_bytes: usize,
    /// Messages, the newest.
    pub messages: usize,
}

/// A parsed client request.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// Which API was called.
    pub surface: ApiSurface,
    /// The body as sent, to forward with only `model` changed.
    pub body: Map<String, Value>,
    /// The body's size in bytes as sent, to size the forwarded copy.
    pub body_len: usize,
    /// The model asked for.
    pub model: String,
    /// The client asked for SSE.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// What the policy sees (shared with wherever it decides).
    pub view: Arc<Request>,
    /// The request as sent, when it came in on another API than OpenAI's
    /// chat, completions or embeddings (`body` is then its translation).
    pub native: Option<crate::native::NativeRequest>,
    /// `body` as sent, when it came in on OpenAI's API and names `model`
    /// once: forwarded with only `model` replaced.
    pub sent: Option<SentBody>,
}

/// Who sent the request, from authentication.
#[derive(Debug, Clone, Default)]
pub struct CallerIdentity {
    /// The configured name of the client key used.
    pub key_name: Option<String>,
}

/// What parsing a request needs besides its body.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    /// The request's headers (`x-switchyard-*` become tags).
    pub headers: &'a HeaderMap,
    /// Who sent it.
    pub caller: &'a CallerIdentity,
    /// The router's id for it.
    pub request_id: &'a str,
    /// How much of it the policy sees.
    pub limits: ViewLimits,
    /// Its random bits.
    pub seed: u64,
    /// The API it came in on, when that is not OpenAI's `surface` (whose
    /// body it then is a translation of): the policy's surface, and the
    /// router's `switchyard.api` tag (for 0.1 policies, which see `chat`).
    pub api: Option<crate::native::NativeApi>,
}

/// Parses a body for `surface`; `cx.limits` bound the policy's view of it.
pub fn parse(surface: ApiSurface, body: &Bytes, cx: ParseContext<'_>) -> Result<InboundRequest, GatewayError> {
    let (object, as_sent) = object_as_sent(body)?;
    let mut request = from_body(surface, object, body.len(), cx)?;
    request.sent = match as_sent {
        AsSent::Yes(sent) => Some(sent),
        AsSent::NoModel | AsSent::Repeated => None,
    };
    Ok(request)
}

/// Whether a body can go on as the client sent it.
#[derive(Debug)]
pub enum AsSent {
    /// Yes, with only its `model` replaced.
    Yes(SentBody),
    /// It names no `model`.
    NoModel,
    /// An object in it names a key twice: the router reads the last of the
    /// two, and an upstream might read the first (a policy would route on
    /// other messages than it serves), so it goes serialized.
    Repeated,
}

/// The body as a JSON object, and whether it can go on as sent: one pass.
pub fn object_as_sent(body: &Bytes) -> Result<(Map<String, Value>, AsSent), GatewayError> {
    match serde_json::from_slice::<ObjectAsSent<'_>>(body) {
        Ok(ObjectAsSent { object, model, repeated }) => {
            let as_sent = match model {
                _ if repeated => AsSent::Repeated,
                Some(raw) => AsSent::Yes(SentBody::at(body, raw)),
                None => AsSent::NoModel,
            };
            Ok((object, as_sent))
        }
        // The same words as a parse into a `Value`.
        Err(_) => Err(json_object(body).err().unwrap_or_else(|| GatewayError::bad_request("the request body is not valid JSON", None))),
    }
}

/// A JSON object read in one pass, with its top-level `model` as it
/// appears in the bytes, and whether any object in it names a key twice.
struct ObjectAsSent<'a> {
    object: Map<String, Value>,
    model: Option<&'a RawValue>,
    repeated: bool,
}

impl<'de> Deserialize<'de> for ObjectAsSent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = ObjectAsSent<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Self::Value, A::Error> {
                let repeated = Cell::new(false);
                let mut object = Map::new();
                let mut model = None;
                while let Some(key) = fields.next_key::<String>()? {
                    let value = if key == "model" {
                        let raw: &RawValue = fields.next_value()?;
                        model = Some(raw);
                        serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?
                    } else {
                        fields.next_value_seed(NoteRepeats(&repeated))?
                    };
                    if object.insert(key, value).is_some() {
                        repeated.set(true);
                    }
                }
                Ok(ObjectAsSent { object, model, repeated: repeated.get() })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Reads a JSON value as [`Value`] does, and sets the flag when an object
/// in it names a key twice.
struct NoteRepeats<'r>(&'r Cell<bool>);

impl<'de> DeserializeSeed<'de> for NoteRepeats<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoteRepeats<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut array = Vec::with_capacity(items.size_hint().unwrap_or(0));
        while let Some(item) = items.next_element_seed(NoteRepeats(self.0))? {
            array.push(item);
        }
        Ok(Value::Array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = fields.next_key::<String>()? {
            let value = fields.next_value_seed(NoteRepeats(self.0))?;
            if object.insert(key, value).is_some() {
                self.0.set(true);
            }
        }
        Ok(Value::Object(object))
    }
}

/// The body as a JSON object, or the client's error.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::bad_request(format!("the request body is not valid JSON: {e}"), None))?;
    match value {
        Value::Object(body) => Ok(body),
        _ => Err(GatewayError::bad_request("the request body must be a JSON object", None)),
    }
}

/// Reads a request that came in on another API (`native`, as sent) through
/// its translation to a chat body.
/// `unseen_text_bytes`: text that goes to the native API's backends but
/// that the chat body leaves out, counted as cut text in the view.
pub fn from_translation(
    chat: Map<String, Value>,
    native: crate::native::NativeRequest,
    unseen_text_bytes: u64,
    cx: ParseContext<'_>,
) -> Result<InboundRequest, GatewayError> {
    let cx = ParseContext { api: Some(native.api), ..cx };
    let mut request = from_body(ApiSurface::Chat, chat, native.body_len(), cx)?;
    request.native = Some(native);
    if unseen_text_bytes > 0 {
        let view = Arc::make_mut(&mut request.view);
        count_unseen(view, unseen_text_bytes);
    }
    Ok(request)
}

/// Text that goes upstream but not into the view's messages: counted in
/// `total_text_bytes` (so the view reads as cut, and a policy that treats
/// cut text as unscanned does so) and in the input estimate.
fn count_unseen(view: &mut Request, bytes: u64) {
    view.total_text_bytes += bytes;
    view.input_tokens = view.input_tokens.saturating_add((bytes / 4).min(u64::from(u32::MAX)) as u32);
}

/// Reads an OpenAI-shaped body for `surface` (`body_len`: its size as sent).
pub fn from_body(
    surface: ApiSurface,
    body: Map<String, Value>,
    body_len: usize,
    cx: ParseContext<'_>,
) -> Result<InboundRequest, GatewayError> {
    let ParseContext { headers, caller, request_id, limits, seed, api } = cx;
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(GatewayError::bad_request("`model` must be a non-empty string", Some("model"))),
        None => return Err(GatewayError::bad_request("you must provide a model parameter", Some("model"))),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(GatewayError::bad_request("`stream` must be a boolean", Some("stream"))),
    };
    if stream && surface == ApiSurface::Embeddings {
        return Err(GatewayError::bad_request("embeddings cannot be streamed", Some("stream")));
    }
    let include_usage = body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);

    let mut messages = match surface {
        ApiSurface::Chat | ApiSurface::Messages | ApiSurface::Responses => chat_messages(&body)?,
        ApiSurface::Completion => input_texts(&body, "prompt")?,
        ApiSurface::Embeddings => input_texts(&body, "input")?,
    };
    let total_text_bytes: u64 = messages.iter().map(|m| u64::from(m.text_bytes)).sum();
    let message_count = messages.len();
    let image_tokens: u64 = messages.iter().filter(|m| m.has_image).count() as u64 * 765;
    if message_count > limits.messages {
        let dropped: Vec<Message> = messages.drain(..message_count - limits.messages).collect();
        // "Some message has an image" (and audio, files, tool calls) stays
        // true: the dropped messages' flags go to the oldest one kept.
        let oldest = &mut messages[0];
        for m in &dropped {
            oldest.has_image |= m.has_image;
            oldest.has_audio |= m.has_audio;
            oldest.has_file |= m.has_file;
            oldest.has_tool_calls |= m.has_tool_calls;
        }
    }
    apply_text_budget(&mut messages, limits.text_bytes);

    // What limits reserve for the answer: a value that is not a count would
    // reserve nothing, so it is refused here, as the upstream would refuse it.
    for key in ["max_completion_tokens", "max_tokens", "n"] {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if count(v).is_some_and(|n| key != "n" || n >= 1) => {}
            Some(_) => {
                let what = if key == "n" { "a positive integer" } else { "a non-negative integer" };
                return Err(GatewayError::bad_request(format!("`{key}` must be {what}"), Some(key)));
            }
        }
    }
    let max_output_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(count))
        .map(|v| v.min(u64::from(u32::MAX)) as u32);
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str))
                .take(MAX_VIEW_TOOLS)
                .map(view_name)
                .collect()
        })
        .unwrap_or_default();
    let json_mode = body
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_object" || t == "json_schema");
    let user = body.get("user").and_then(Value::as_str).map(view_name);
    let mut tags = tags(&body, headers);
    if message_count > messages.len() {
        tags.push(Tag { key: MESSAGE_COUNT_TAG.to_owned(), value: message_count.to_string() });
    }
    if let Some(api) = api {
        tags.push(Tag { key: crate::anthropic::API_TAG.to_owned(), value: api.as_str().to_owned() });
    }

    // Predicted output goes upstream as text the view has no place for.
    let unseen_text_bytes = body.get("prediction").map_or(0, crate::native::text_bytes);
    let mut view = Request {
        id: request_id.to_owned(),
        model: view_name(&model),
        surface: match api {
            Some(crate::native::NativeApi::Messages) => ApiSurface::Messages,
            Some(crate::native::NativeApi::Responses) => ApiSurface::Responses,
            None => surface,
        },
        stream,
        input_tokens: (total_text_bytes / 4 + message_count as u64 * 4 + image_tokens).min(u64::from(u32::MAX)) as u32,
        messages,
        total_text_bytes,
        max_output_tokens,
        tools,
        json_mode,
        caller: Caller { key_name: caller.key_name.clone(), user },
        tags,
        seed,
    };
    if unseen_text_bytes > 0 {
        count_unseen(&mut view, unseen_text_bytes);
    }
    Ok(InboundRequest { surface, body, body_len, model, stream, include_usage, view: Arc::new(view), native: None, sent: None })
}

/// A JSON number that is a count: a non-negative integer, written as one
/// or as a whole number (`1e0`, `500.0`) that a double holds exactly.
pub fn count(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f)).map(|f| f as u64))
}

/// A name as a policy sees it: cut to [`MAX_VIEW_NAME_BYTES`].
fn view_name(name: &str) -> String {
    crate::text::cut_at_char_boundary(name, MAX_VIEW_NAME_BYTES).to_owned()
}

fn role(value: &str) -> Option<Role> {
    Some(match value {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" | "function" => Role::Tool,
        _ => return None,
    })
}

fn chat_messages(body: &Map<String, Value>) -> Result<Vec<Message>, GatewayError> {
    let Some(Value::Array(items)) = body.get("messages") else {
        return Err(GatewayError::bad_request("`messages` must be an array of messages", Some("messages")));
    };
    if items.is_empty() {
        return Err(GatewayError::bad_request("`messages` must not be empty", Some("messages")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let param = format!("messages[{i}]");
            let bad = |what: &str| GatewayError::bad_request(format!("{param}: {what}"), Some(&param));
            let Value::Object(m) = item else { return Err(bad("must be an object")) };
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .and_then(role)
                .ok_or_else(|| bad("`role` must be one of system, developer, user, assistant, tool"))?;
            let mut message = Message {
                role,
                text: String::new(),
                text_bytes: 0,
                has_image: false,
                has_audio: false,
                has_file: false,
                has_tool_calls: false,
            };
            // The message's texts, one line apart.
            let mut text = String::new();
            let mut add = |t: Option<&str>| {
                if let Some(t) = t {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(t);
                }
            };
            match m.get("content") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => add(Some(s)),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        match part.get("type").and_then(Value::as_str) {
                            Some("text") | Some("input_text") => add(part.get("text").and_then(Value::as_str)),
                            Some("image_url") | Some("input_image") | Some("image") => message.has_image = true,
                            Some("input_audio") | Some("audio") => message.has_audio = true,
                            Some("file") | Some("input_file") => message.has_file = true,
                            Some("refusal") => add(part.get("refusal").and_then(Value::as_str)),
                            _ => return Err(bad("every content part needs a known `type` (text, image_url, input_audio, file)")),
                        }
                    }
                }
                Some(_) => return Err(bad("`content` must be a string or an array of parts")),
            }
            // The rest of what the model reads, and the upstream receives:
            // a policy that looks for private data must see it too.
            add(m.get("refusal").and_then(Value::as_str));
            let calls = m.get("tool_calls").and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("function"));
            for function in calls.chain(m.get("function_call")) {
                add(function.get("name").and_then(Value::as_str));
                add(function.get("arguments").and_then(Value::as_str));
            }
            add(m.get("name").and_then(Value::as_str));
            message.text = text;
            message.has_tool_calls = role == Role::Tool || m.get("tool_calls").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
            message.text_bytes = message.text.len().min(u32::MAX as usize) as u32;
            Ok(message)
        })
        .collect()
}

/// `prompt` or `input`: a string or an array of strings (token arrays count
/// as input without text).
fn input_texts(body: &Map<String, Value>, field: &str) -> Result<Vec<Message>, GatewayError> {
    let texts: Vec<String> = match body.get(field) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).or_else(|| v.is_array().then(String::new)).or_else(|| v.is_number().then(String::new)))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                GatewayError::bad_request(format!("`{field}` must be a string or an array of strings or token arrays"), Some(field))
            })?,
        _ => return Err(GatewayError::bad_request(format!("`{field}` must be a string or a non-empty array"), Some(field))),
    };
    Ok(texts
        .into_iter()
        .map(|text| Message {
            role: Role::User,
            text_bytes: text.len().min(u32::MAX as usize) as u32,
            text,
            has_image: false,
            has_audio: false,
            has_file: false,
            has_tool_calls: false,
        })
        .collect())
}

/// Cuts message texts so that together they fit `budget` bytes, spending it
/// from the newest message backwards.
fn apply_text_budget(messages: &mut [Message], budget: usize) {
    let mut left = budget;
    for m in messages.iter_mut().rev() {
        if m.text.len() > left {
            let keep = crate::text::cut_at_char_boundary(&m.text, left).len();
            m.text.truncate(keep);
        }
        left -= m.text.len();
    }
}

/// Tags from `metadata` (string values) and `x-switchyard-*` headers, which
/// win on a clash. Keys are lower-cased; sizes are capped; keys the router
/// reserves are dropped.
fn tags(body: &Map<String, Value>, headers: &HeaderMap) -> Vec<Tag> {
    let mut tags: Vec<Tag> = Vec::new();
    let mut put = |key: &str, value: &str| {
        if key.is_empty() || key.len() > MAX_TAG_BYTES || value.len() > MAX_TAG_BYTES {
            return;
        }
        let key = key.to_ascii_lowercase();
        if key.starts_with(ROUTER_TAG_PREFIX) {
            return;
        }
        match tags.iter().position(|t| t.key == key) {
            Some(i) => tags[i].value = value.to_owned(),
            None if tags.len() < MAX_TAGS => tags.push(Tag { key, value: value.to_owned() }),
            None => {}
        }
    };
    if let Some(Value::Object(meta)) = body.get("metadata") {
        for (k, v) in meta {
            if let Some(v) = v.as_str() {
                put(k, v);
            }
        }
    }
    for (name, value) in headers {
        if let (Some(key), Ok(value)) = (name.as_str().strip_prefix(TAG_HEADER_PREFIX), value.to_str()) {
            put(key, value);
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(headers: &HeaderMap, limits: ViewLimits) -> ParseContext<'_> {
        const NOBODY: CallerIdentity = CallerIdentity { key_name: None };
        ParseContext { headers, caller: &NOBODY, request_id: "r", limits, seed: 1, api: None }
    }

    fn parse_chat(body: &str, headers: &HeaderMap, budget: usize) -> Result<InboundRequest, GatewayError> {
        let cx = ParseContext {
            headers,
            caller: &CallerIdentity::default(),
            request_id: "r1",
            limits: ViewLimits { text_bytes: budget, messages: 256 },
            seed: 7,
            api: None,
        };
        parse(ApiSurface::Chat, &Bytes::copy_from_slice(body.as_bytes()), cx)
    }

    #[test]
    fn a_body_goes_on_as_sent_unless_an_object_in_it_names_a_key_twice() {
        // (body as sent, what goes upstream for model `x` when it goes as sent)
        let cases: [(&str, Option<&str>); 6] = [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"a\u0062"}],"temperature":0.70,"n":1e0}"#,
                Some(r#"{"model":"x","messages":[{"role":"user","content":"a\u0062"}],"temperature":0.70,"n":1e0}"#),
            ),
            (
                r#" { "messages" : [ {"role":"user","content":"hi"} ] , "model" : "m\u0031" , "x":{"model":"inner"} } "#,
                Some(r#" { "messages" : [ {"role":"user","content":"hi"} ] , "model" : "x" , "x":{"model":"inner"} } "#),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"big":123456789012345678901234567890,"neg":-7}"#,
                Some(r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"big":123456789012345678901234567890,"neg":-7}"#),
            ),
            // Named twice: the router reads the last one, an upstream might read the first.
            (r#"{"model":"private","messages":[{"role":"user","content":"hi"}],"model":"m"}"#, None),
            (r#"{"model":"m","messages":[{"role":"user","content":"secret","content":"hi"}]}"#, None),
            (r#"{"model":"m","messages":[{"role":"user","content":"secret"}],"messages":[{"role":"user","content":"hi"}]}"#, None),
        ];
        for (body, as_sent) in cases {
            let request = parse_chat(body, &HeaderMap::new(), 1024).unwrap();
            let forwarded = request.sent.as_ref().map(|sent| sent.with_model("x"));
            assert_eq!(forwarded.as_deref(), as_sent.map(str::as_bytes), "{body}");
            // The one pass reads what serde_json's own `Value` reads.
            let read: Map<String, Value> = serde_json::from_str(body).unwrap();
            assert_eq!(request.body, read, "{body}");
            assert_eq!(request.body_len, body.len());
        }
        // Errors keep their words.
        for (body, words) in [("[1]", "must be a JSON object"), ("{\"model\":", "not valid JSON"), ("{\"messages\":[]}", "model")] {
            let error = parse_chat(body, &HeaderMap::new(), 1024).unwrap_err();
            assert!(error.message.contains(words), "{body}: {}", error.message);
        }
    }

    #[test]
    fn extracts_the_policy_view() {
        let mut headers = HeaderMap::new();
        headers.insert("x-switchyard-tier", "gold".parse().unwrap());
        headers.insert("x-switchyard-team", "from-header".parse().unwrap());
        let body = r#"{
            "model": "auto", "stream": true, "stream_options": {"include_usage": true},
            "user": "u-42", "max_tokens": 50, "max_completion_tokens": 100,
            "metadata": {"Team": "from-body", "env": "prod", "n": 3},
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:..."}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1"}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"}
            ],
            "some_future_field": {"kept": true}
        }"#;
        let r = parse_chat(body, &headers, 1000).unwrap();
        assert!(r.stream && r.include_usage);
        assert_eq!(r.body["some_future_field"], serde_json::json!({"kept": true}));
        let v = &r.view;
        assert_eq!((v.model.as_str(), v.max_output_tokens, v.json_mode, v.seed), ("auto", Some(100), true, 7));
        assert_eq!(v.tools, ["lookup"]);
        assert_eq!(v.caller.user.as_deref(), Some("u-42"));
        assert_eq!(v.messages.len(), 4);
        assert!(v.messages[1].has_image && !v.messages[0].has_image);
        assert!(v.messages[2].has_tool_calls && v.messages[3].has_tool_calls);
        assert_eq!(v.messages[1].text, "What is this?");
        let tag = |k: &str| v.tags.iter().find(|t| t.key == k).map(|t| t.value.as_str());
        assert_eq!((tag("team"), tag("tier"), tag("env"), tag("n")), (Some("from-header"), Some("gold"), Some("prod"), None));
    }

    #[test]
    fn text_outside_the_parts_is_in_the_view_or_counted_as_cut() {
        let body = r#"{"model": "auto", "prediction": {"type": "content", "content": "predicted"}, "messages": [
            {"role": "user", "name": "ann", "content": "Mail him."},
            {"role": "assistant", "content": null, "refusal": "No.", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mail", "arguments": "{\"to\":\"bob\"}"}}]},
            {"role": "assistant", "content": "Legacy.", "function_call": {"name": "old", "arguments": "{}"}}
        ]}"#;
        let v = parse_chat(body, &HeaderMap::new(), 1000).unwrap().view;
        let texts: Vec<&str> = v.messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["Mail him.\nann", "No.\nmail\n{\"to\":\"bob\"}", "Legacy.\nold\n{}"]);
        // The prediction has no place in the view: counted as cut text.
        let seen: u64 = v.messages.iter().map(|m| u64::from(m.text_bytes)).sum();
        assert_eq!(v.total_text_bytes, seen + "predicted".len() as u64 + "content".len() as u64);
    }

    #[test]
    fn text_budget_keeps_the_newest_text_and_full_lengths() {
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "aaaaaaaaaa"}, {"role": "assistant", "content": "bbbb"}, {"role": "user", "content": "ccéc"}]}"#;
        let r = parse_chat(body, &HeaderMap::new(), 8).unwrap();
        let texts: Vec<&str> = r.view.messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["", "bbb", "ccéc"]);
        assert_eq!(r.view.messages.iter().map(|m| m.text_bytes).collect::<Vec<_>>(), [10, 4, 5]);
        assert_eq!(r.view.total_text_bytes, 19);
    }

    #[test]
    fn the_view_stays_bounded_whatever_the_request_holds() {
        let mut messages = vec![serde_json::json!({"role": "user", "content": [{"type": "text", "text": "old"}, {"type": "image_url"}]})];
        messages.extend((0..9).map(|i| serde_json::json!({"role": "user", "content": format!("m{i}")})));
        let tools: Vec<Value> = (0..500).map(|i| serde_json::json!({"type": "function", "function": {"name": format!("t{i}")}})).collect();
        let body = serde_json::json!({
            "model": "m".repeat(1000), "user": "é".repeat(1000), "messages": messages, "tools": tools,
            "metadata": {"switchyard.message-count": "1", "team": "a"},
        });
        let limits = ViewLimits { text_bytes: 1000, messages: 4 };
        let r = parse(ApiSurface::Chat, &Bytes::from(body.to_string()), cx(&HeaderMap::new(), limits)).unwrap();
        let v = &r.view;
        // The newest 4 messages; the dropped image still shows; the full count and text bytes are reported.
        assert_eq!(v.messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["m5", "m6", "m7", "m8"]);
        assert!(v.messages[0].has_image);
        assert_eq!(v.total_text_bytes, 3 + 9 * 2);
        let tag = |k: &str| v.tags.iter().find(|t| t.key == k).map(|t| t.value.as_str());
        assert_eq!((tag("switchyard.message-count"), tag("team")), (Some("10"), Some("a")), "the client cannot set the router's tags");
        assert_eq!(v.tools.len(), MAX_VIEW_TOOLS);
        assert_eq!((v.model.len(), r.model.len()), (MAX_VIEW_NAME_BYTES, 1000), "the view's model is cut, the routed one is not");
        assert!(v.caller.user.as_ref().unwrap().len() <= MAX_VIEW_NAME_BYTES);
    }

    #[test]
    fn garbage_gets_a_clear_error_naming_the_field() {
        let cases = [
            ("nope", None, "not valid JSON"),
            ("[1,2]", None, "must be a JSON object"),
            (r#"{"messages": []}"#, Some("model"), "provide a model"),
            (r#"{"model": 3, "messages": []}"#, Some("model"), "non-empty string"),
            (r#"{"model": "m"}"#, Some("messages"), "array of messages"),
            (r#"{"model": "m", "messages": []}"#, Some("messages"), "must not be empty"),
            (r#"{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}"#, Some("messages[0]"), "`role`"),
            (r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#, Some("messages[0]"), "`content`"),
            (r#"{"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}"#, Some("stream"), "boolean"),
        ];
        for (body, param, message) in cases {
            let e = parse_chat(body, &HeaderMap::new(), 100).expect_err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}");
            assert!(e.message.contains(message), "{body}: {}", e.message);
        }
    }

    #[test]
    fn completions_and_embeddings_inputs() {
        let r = parse(
            ApiSurface::Embeddings,
            &Bytes::from_static(br#"{"model": "e", "input": ["a", "bb"]}"#),
            cx(&HeaderMap::new(), ViewLimits { text_bytes: 100, messages: 256 }),
        )
        .unwrap();
        assert_eq!(r.view.messages.len(), 2);
        let e = parse(
            ApiSurface::Embeddings,
            &Bytes::from_static(br#"{"model": "e", "input": "x", "stream": true}"#),
            cx(&HeaderMap::new(), ViewLimits { text_bytes: 100, messages: 256 }),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream"));
        let r = parse(
            ApiSurface::Completion,
            &Bytes::from_static(br#"{"model": "c", "prompt": "Say hi"}"#),
            cx(&HeaderMap::new(), ViewLimits { text_bytes: 100, messages: 256 }),
        )
        .unwrap();
        assert_eq!(r.view.messages[0].text, "Say hi");
    }
}
