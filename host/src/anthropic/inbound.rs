//! A Messages API request: kept as sent for Anthropic backends, translated
//! to an OpenAI chat body for everything else.

use bytes::Bytes;
use hyper::header::HeaderName;
use serde_json::{json, Map, Value};

use crate::error::GatewayError;
use crate::native::{LeftOut, NativeApi, NativeRequest};
use crate::openai::inbound::{self, InboundRequest, ParseContext};

/// Client headers an Anthropic backend gets as they are.
const PASSED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// The body with `model` replaced and `prefill` (the text a broken stream
/// had sent) added as the start of the assistant's turn.
pub fn with_prefill(native: &NativeRequest, model: &str, prefill: &str) -> Bytes {
    let mut body = native.json_with_model(model);
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        let block = json!({"type": "text", "text": prefill});
        match messages.last_mut() {
            Some(last) if last["role"] == "assistant" => match &mut last["content"] {
                Value::Array(blocks) => blocks.push(block),
                content => {
                    let text = content.as_str().unwrap_or_default().to_owned();
                    *content = json!([{"type": "text", "text": text}, block]);
                }
            },
            _ => messages.push(json!({"role": "assistant", "content": [block]})),
        }
    }
    Bytes::from(Value::Object(body).to_string())
}

/// Parses a `/v1/messages` body (`count_only`: a `/count_tokens` one, which
/// has no `max_tokens`).
pub fn parse(body: &Bytes, cx: ParseContext<'_>, count_only: bool) -> Result<InboundRequest, GatewayError> {
    let (native, as_sent) = inbound::object_as_sent(body)?;
    let translated = to_chat_body(&native, count_only)?;
    let passed = PASSED_HEADERS.iter().filter_map(|name| Some((HeaderName::from_static(name), cx.headers.get(*name)?.clone()))).collect();
    let native = NativeRequest::new(NativeApi::Messages, &native, as_sent, passed, translated.anthropic_only)?;
    inbound::from_translation(translated.body, native, translated.unseen_text_bytes, cx)
}

/// A Messages request in OpenAI's chat shape.
#[derive(Debug)]
pub struct ChatBody {
    /// The chat completions body.
    pub body: Map<String, Value>,
    /// The first thing in the request that the chat shape cannot carry.
    pub anthropic_only: Option<String>,
    /// Bytes of text that go to Anthropic backends but not into the chat
    /// shape, which the policy's view is read from.
    pub unseen_text_bytes: u64,
}

/// Translates a Messages request to a chat completions request. Fields
/// that only tune Anthropic models (`top_k`, `thinking`, `cache_control`,
/// `service_tier`) are left out; what changes the answer and has no chat
/// equivalent is named in `anthropic_only`.
pub fn to_chat_body(body: &Map<String, Value>, count_only: bool) -> Result<ChatBody, GatewayError> {
    let bad = |param: &str, what: &str| GatewayError::bad_request(format!("{param}: {what}"), Some(param));
    let mut left = LeftOut::default();
    let mut out = Map::new();
    if let Some(model) = body.get("model") {
        out.insert("model".into(), model.clone());
    }
    let mut messages: Vec<Value> = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => parts.push(text),
                    _ => return Err(bad(&format!("system.{i}"), "system blocks must be text blocks")),
                }
            }
            // One string: some OpenAI-compatible servers take no parts here.
            messages.push(json!({"role": "system", "content": parts.join("\n\n")}));
        }
        Some(_) => return Err(bad("system", "must be a string or a list of text blocks")),
    }
    let Some(Value::Array(items)) = body.get("messages") else {
        return Err(bad("messages", "Field required (a list of messages)"));
    };
    if items.is_empty() {
        return Err(bad("messages", "at least one message is required"));
    }
    for (i, m) in items.iter().enumerate() {
        let param = format!("messages.{i}");
        let role = m.get("role").and_then(Value::as_str);
        let blocks: Vec<Value> = match m.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(blocks)) => blocks.clone(),
            _ => return Err(bad(&format!("{param}.content"), "must be a string or a list of content blocks")),
        };
        match role {
            Some("user") => user_turn(&param, &blocks, &mut messages, &mut left)?,
            Some("assistant") => messages.push(assistant_turn(&param, &blocks, &mut left)?),
            _ => return Err(bad(&format!("{param}.role"), "must be `user` or `assistant`")),
        }
    }
    if messages.is_empty() {
        // Every block was one chat has no form for: the request goes to
        // Anthropic backends only (noted), and the view keeps one empty
        // turn, its text counted as cut.
        messages.push(json!({"role": "user", "content": ""}));
    }
    out.insert("messages".into(), Value::Array(messages));
    match body.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
            out.insert("max_tokens".into(), Value::Number(n.clone()));
        }
        None if count_only => {}
        None => return Err(bad("max_tokens", "Field required")),
        Some(_) => return Err(bad("max_tokens", "must be a positive integer")),
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = body.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
        Some(_) => return Err(bad("stop_sequences", "must be a list of strings")),
    }
    if let Some(user) = body.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str) {
        out.insert("user".into(), json!(user));
    }
    match body.get("stream") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(stream)) => {
            out.insert("stream".into(), json!(stream));
            if *stream {
                // The closing `message_delta` carries the usage.
                out.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        Some(_) => return Err(bad("stream", "must be a boolean")),
    }
    if let Some(tools) = body.get("tools") {
        let Value::Array(tools) = tools else { return Err(bad("tools", "must be a list of tools")) };
        let mut functions = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(kind) => {
                    left.note(format!("the server tool `{kind}`"));
                    continue;
                }
            }
            let Some(name) = t.get("name").and_then(Value::as_str) else { return Err(bad(&format!("tools.{i}.name"), "Field required")) };
            let mut function = json!({"name": name, "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"}))});
            if let Some(d) = t.get("description") {
                function["description"] = d.clone();
            }
            functions.push(json!({"type": "function", "function": function}));
        }
        if !functions.is_empty() {
            out.insert("tools".into(), Value::Array(functions));
        }
    }
    if let Some(choice) = body.get("tool_choice") {
        let chosen = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}}),
            _ => return Err(bad("tool_choice", "`type` must be auto, any, tool or none")),
        };
        out.insert("tool_choice".into(), chosen);
        if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if body.get("mcp_servers").is_some_and(|v| !v.is_null()) {
        left.note("`mcp_servers`".into());
    }
    if body.get("container").is_some_and(|v| !v.is_null()) {
        left.note("`container`".into());
    }
    Ok(ChatBody { body: out, anthropic_only: left.only_native, unseen_text_bytes: left.unseen_text_bytes })
}

/// A user turn: its tool results become `tool` messages (first, as OpenAI
/// wants them right after the assistant's calls), the rest a user message.
fn user_turn(param: &str, blocks: &[Value], messages: &mut Vec<Value>, left: &mut LeftOut) -> Result<(), GatewayError> {
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("{param}.content.{j}");
        match block_type(&at, b)? {
            "tool_result" => {
                let id = b.get("tool_use_id").and_then(Value::as_str).ok_or_else(|| {
                    GatewayError::bad_request(format!("{at}.tool_use_id: Field required"), Some(&format!("{at}.tool_use_id")))
                })?;
                let mut text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => {
                        let mut texts = Vec::new();
                        for (k, p) in inner.iter().enumerate() {
                            let inner_at = format!("{at}.content.{k}");
                            match block_type(&inner_at, p)? {
                                "text" => texts.push(text_of(&inner_at, p)?),
                                // A chat tool message holds text only: its images
                                // follow in the user message after the results.
                                "image" => parts.push(image_part(&inner_at, p, left)?),
                                "document" => match document_part(p, left) {
                                    Some(part) => parts.push(part),
                                    None => left.note_unseen("a document that is not base64 PDF or plain text".into(), p),
                                },
                                other => left.note_unseen(format!("`{other}` blocks in tool results"), p),
                            }
                        }
                        texts.join("\n")
                    }
                    Some(_) => {
                        return Err(GatewayError::bad_request(format!("{at}.content: must be a string or a list of blocks"), Some(&at)))
                    }
                };
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    // Chat has no error flag on tool results: the model reads it.
                    text = format!("Error: {text}");
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            "text" => parts.push(json!({"type": "text", "text": text_of(&at, b)?})),
            "image" => parts.push(image_part(&at, b, left)?),
            "document" => match document_part(b, left) {
                Some(part) => parts.push(part),
                None => left.note_unseen("a document that is not base64 PDF or plain text".into(), b),
            },
            other => left.note_unseen(format!("`{other}` content blocks"), b),
        }
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// An assistant turn: text, and tool uses as tool calls. Thinking blocks
/// are Anthropic's own and left out.
fn assistant_turn(param: &str, blocks: &[Value], left: &mut LeftOut) -> Result<Value, GatewayError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("{param}.content.{j}");
        match block_type(&at, b)? {
            "text" => text.push_str(text_of(&at, b)?),
            "tool_use" => {
                let (Some(id), Some(name)) = (b.get("id").and_then(Value::as_str), b.get("name").and_then(Value::as_str)) else {
                    return Err(GatewayError::bad_request(format!("{at}: a tool_use block needs `id` and `name`"), Some(&at)));
                };
                let input = b.get("input").cloned().unwrap_or(json!({}));
                calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}));
            }
            // Anthropic's own; chat backends get none, Anthropic backends all.
            "thinking" | "redacted_thinking" => left.unseen(b),
            other => left.note_unseen(format!("`{other}` content blocks"), b),
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(message)
}

fn block_type<'a>(at: &str, block: &'a Value) -> Result<&'a str, GatewayError> {
    block
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| GatewayError::bad_request(format!("{at}.type: Field required"), Some(&format!("{at}.type"))))
}

fn text_of<'a>(at: &str, block: &'a Value) -> Result<&'a str, GatewayError> {
    block
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| GatewayError::bad_request(format!("{at}.text: Field required"), Some(&format!("{at}.text"))))
}

fn image_part(at: &str, block: &Value, left: &mut LeftOut) -> Result<Value, GatewayError> {
    let source = &block["source"];
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media_type = source.get("media_type").and_then(Value::as_str).unwrap_or("image/png");
            format!("data:{media_type};base64,{}", source.get("data").and_then(Value::as_str).unwrap_or_default())
        }
        Some("url") => source.get("url").and_then(Value::as_str).unwrap_or_default().to_owned(),
        Some(other) => {
            left.note(format!("`{other}` image sources"));
            String::new()
        }
        None => return Err(GatewayError::bad_request(format!("{at}.source: Field required"), Some(&format!("{at}.source")))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A document as a chat `file` part (base64 PDF) or text, if it has one
/// (its title and context go to Anthropic backends only).
fn document_part(block: &Value, left: &mut LeftOut) -> Option<Value> {
    let source = &block["source"];
    for key in ["title", "context"] {
        left.unseen(&block[key]);
    }
    match source.get("type")?.as_str()? {
        "base64" => {
            let media_type = source.get("media_type")?.as_str()?;
            let data = source.get("data")?.as_str()?;
            Some(json!({"type": "file", "file": {"filename": "document.pdf", "file_data": format!("data:{media_type};base64,{data}")}}))
        }
        "text" => Some(json!({"type": "text", "text": source.get("data")?.as_str()?})),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> ChatBody {
        let Value::Object(body) = body else { unreachable!() };
        to_chat_body(&body, false).unwrap()
    }

    #[test]
    fn a_request_of_blocks_chat_cannot_carry_goes_native_only() {
        let out =
            chat(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "zzz", "text": "secret"}]}]}));
        assert_eq!(out.anthropic_only.as_deref(), Some("`zzz` content blocks"));
        assert_eq!(out.unseen_text_bytes, ("zzz".len() + "secret".len()) as u64);
        assert_eq!(Value::Object(out.body)["messages"], json!([{"role": "user", "content": ""}]));
    }

    #[test]
    fn a_claude_code_style_request_translates_to_chat() {
        let out = chat(json!({
            "model": "claude-sonnet-4", "max_tokens": 32000, "stream": true, "temperature": 1,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "metadata": {"user_id": "user_abc"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "Read", "description": "Reads a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Read a.txt"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "Reading."}, {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.txt"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "hello"}]}, {"type": "text", "text": "Now summarise."}]},
            ],
        }));
        assert_eq!(out.anthropic_only, None);
        // The thinking block goes to Anthropic backends only: its text and signature are unseen by the view.
        assert_eq!(out.unseen_text_bytes, ("thinking".len() + "hm".len() + "s".len()) as u64);
        let b = Value::Object(out.body);
        assert_eq!(b["messages"][0], json!({"role": "system", "content": "You are Claude Code."}));
        assert_eq!(b["messages"][1]["content"][1], json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}));
        assert_eq!(b["messages"][2]["content"], "Reading.");
        assert_eq!(b["messages"][2]["tool_calls"][0]["function"], json!({"name": "Read", "arguments": "{\"path\":\"a.txt\"}"}));
        assert_eq!(b["messages"][3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "hello"}));
        assert_eq!(b["messages"][4], json!({"role": "user", "content": [{"type": "text", "text": "Now summarise."}]}));
        assert_eq!(b["tools"][0]["function"]["parameters"]["properties"]["path"]["type"], "string");
        assert_eq!((b["tool_choice"].clone(), b["parallel_tool_calls"].clone()), (json!("auto"), json!(false)));
        assert_eq!((b["user"].clone(), b["stop"].clone(), b["max_tokens"].clone()), (json!("user_abc"), json!(["END"]), json!(32000)));
        assert_eq!(b["stream_options"], json!({"include_usage": true}));
        assert!(b.get("thinking").is_none());
    }

    #[test]
    fn what_chat_cannot_carry_is_named() {
        let out = chat(json!({"model": "m", "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(out.anthropic_only.as_deref(), Some("the server tool `web_search_20250305`"));
        assert!(out.body.get("tools").is_none());
    }

    #[test]
    fn a_failed_tool_and_a_screenshot_in_a_tool_result_reach_chat() {
        let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}});
        let out = chat(json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Shot", "input": {}}, {"type": "tool_use", "id": "t2", "name": "Run", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "taken"}, image]},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": true, "content": "permission denied"},
            ]},
        ]}));
        assert_eq!(out.anthropic_only, None);
        let m = &Value::Object(out.body)["messages"];
        assert_eq!(m[1], json!({"role": "tool", "tool_call_id": "t1", "content": "taken"}));
        assert_eq!(m[2], json!({"role": "tool", "tool_call_id": "t2", "content": "Error: permission denied"}));
        assert_eq!(m[3], json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 5}), "messages"),
            (json!({"model": "m", "max_tokens": 5, "messages": []}), "messages"),
            (json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}), "messages.0.role"),
            (json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}), "messages.0.content"),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
                "messages.0.content.0.type",
            ),
            (json!({"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 5, "system": 3, "messages": [{"role": "user", "content": "x"}]}), "system"),
        ];
        for (body, param) in cases {
            let Value::Object(body) = body else { unreachable!() };
            let e = to_chat_body(&body, false).expect_err(param);
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some(param)), "{}", e.message);
        }
    }

    #[test]
    fn the_native_body_changes_only_in_its_model() {
        let raw = Bytes::from_static(
            br#"{ "unknown_field":{"model":"inner"}, "model" : "auto" ,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let headers = hyper::HeaderMap::new();
        let caller = inbound::CallerIdentity::default();
        let limits = inbound::ViewLimits { text_bytes: 100, messages: 10 };
        let cx = ParseContext { headers: &headers, caller: &caller, request_id: "r", limits, seed: 1, api: None };
        let r = parse(&raw, cx, false).unwrap();
        let native = r.native.as_ref().unwrap();
        assert_eq!(
            &native.with_model("claude-x")[..],
            br#"{ "unknown_field":{"model":"inner"}, "model" : "claude-x" ,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#
        );
        assert_eq!(r.model, "auto");
        assert!(r.view.tags.iter().any(|t| t.key == crate::anthropic::API_TAG && t.value == "messages"));
        let prefilled: Value = serde_json::from_slice(&with_prefill(native, "c", "Hel")).unwrap();
        assert_eq!(prefilled["messages"][1], json!({"role": "assistant", "content": [{"type": "text", "text": "Hel"}]}));
    }
}
