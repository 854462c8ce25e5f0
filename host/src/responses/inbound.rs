//! A Responses API request: kept as sent for backends that serve the API,
//! translated to an OpenAI chat body for everything else.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::error::GatewayError;
use crate::native::{LeftOut, NativeApi, NativeRequest};
use crate::openai::inbound::{self, InboundRequest, ParseContext};

/// Parses a `/v1/responses` body.
pub fn parse(body: &Bytes, cx: ParseContext<'_>) -> Result<InboundRequest, GatewayError> {
    let (native_body, as_sent) = inbound::object_as_sent(body)?;
    let translated = to_chat_body(&native_body)?;
    let native = NativeRequest::new(NativeApi::Responses, &native_body, as_sent, Vec::new(), translated.only_native)?;
    inbound::from_translation(translated.body, native, translated.unseen_text_bytes, cx)
}

/// A Responses request in OpenAI's chat shape.
#[derive(Debug)]
pub struct ChatBody {
    /// The chat completions body.
    pub body: Map<String, Value>,
    /// The first thing in the request that the chat shape cannot carry.
    pub only_native: Option<String>,
    /// Bytes of text that go to Responses backends but not into the chat
    /// shape, which the policy's view is read from.
    pub unseen_text_bytes: u64,
}

fn bad(param: &str, what: &str) -> GatewayError {
    GatewayError::bad_request(format!("{param}: {what}"), Some(param))
}

/// Translates a (stateless) Responses request to a chat completions
/// request. What needs stored state (`previous_response_id`, `store: true`,
/// `conversation`, item references, `background`) is refused; what only
/// tunes OpenAI's own models (`reasoning`, `include`, `truncation`,
/// `prompt_cache_key`, `service_tier`) is left out; what changes the answer
/// and has no chat equivalent (built-in tools, stored prompts) is named in
/// `only_native`.
pub fn to_chat_body(body: &Map<String, Value>) -> Result<ChatBody, GatewayError> {
    for (field, what) in [
        (
            "previous_response_id",
            "continuing a stored response needs a response store, which this router does not keep; send the whole conversation in `input`",
        ),
        (
            "conversation",
            "stored conversations need a response store, which this router does not keep; send the whole conversation in `input`",
        ),
    ] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(bad(field, what));
        }
    }
    if body.get("store").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            "store",
            "this router does not store responses; send `store: false` (or leave it out) and the whole conversation in `input`",
        ));
    }
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(bad("background", "background responses need a response store, which this router does not keep"));
    }
    let mut left = LeftOut::default();
    let mut out = Map::new();
    if let Some(model) = body.get("model") {
        out.insert("model".into(), model.clone());
    }
    let mut messages: Vec<Value> = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(bad("instructions", "must be a string")),
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(&format!("input[{i}]"), item, &mut messages, &mut left)?;
            }
        }
        None | Some(Value::Null) => return Err(bad("input", "Field required")),
        Some(_) => return Err(bad("input", "must be a string or a list of items")),
    }
    if messages.iter().all(|m| m["role"] == "system") {
        return Err(bad("input", "must hold at least one message"));
    }
    out.insert("messages".into(), Value::Array(messages));
    match body.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
            out.insert("max_tokens".into(), Value::Number(n.clone()));
        }
        Some(_) => return Err(bad("max_output_tokens", "must be a positive integer")),
    }
    for key in ["temperature", "top_p", "parallel_tool_calls", "metadata"] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(user) = body.get("user").or_else(|| body.get("safety_identifier")).and_then(Value::as_str) {
        out.insert("user".into(), json!(user));
    }
    match body.get("stream") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(stream)) => {
            out.insert("stream".into(), json!(stream));
            if *stream {
                // `response.completed` carries the usage.
                out.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        Some(_) => return Err(bad("stream", "must be a boolean")),
    }
    if let Some(format) = body.get("text").and_then(|t| t.get("format")).filter(|f| !f.is_null()) {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = Map::new();
                for key in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(key) {
                        schema.insert(key.into(), v.clone());
                    }
                }
                if !schema.contains_key("name") {
                    return Err(bad("text.format.name", "Field required"));
                }
                out.insert("response_format".into(), json!({"type": "json_schema", "json_schema": schema}));
            }
            _ => return Err(bad("text.format.type", "must be text, json_object or json_schema")),
        }
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        let Value::Array(tools) = tools else { return Err(bad("tools", "must be a list of tools")) };
        let mut functions = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {}
                Some(kind) => {
                    left.note(format!("the built-in tool `{kind}`"));
                    continue;
                }
                None => return Err(bad(&format!("tools[{i}].type"), "Field required")),
            }
            let Some(name) = t.get("name").and_then(Value::as_str) else { return Err(bad(&format!("tools[{i}].name"), "Field required")) };
            let mut function = json!({"name": name});
            for key in ["description", "parameters", "strict"] {
                if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                    function[key] = v.clone();
                }
            }
            functions.push(json!({"type": "function", "function": function}));
        }
        if !functions.is_empty() {
            out.insert("tools".into(), Value::Array(functions));
        }
    }
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        let chosen = match (choice.as_str(), choice.get("type").and_then(Value::as_str)) {
            (Some(mode @ ("auto" | "none" | "required")), _) => json!(mode),
            (None, Some("function")) => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            (None, Some(kind)) => {
                left.note(format!("`tool_choice` `{kind}`"));
                json!("auto")
            }
            _ => return Err(bad("tool_choice", "must be auto, none, required or a function")),
        };
        out.insert("tool_choice".into(), chosen);
    }
    if body.get("prompt").is_some_and(|p| !p.is_null()) {
        left.note("a stored `prompt`".into());
    }
    Ok(ChatBody { body: out, only_native: left.only_native, unseen_text_bytes: left.unseen_text_bytes })
}

/// One input item as chat messages: a message, a function call (joined to
/// the assistant message before it) or a function call's output.
fn input_item(at: &str, item: &Value, messages: &mut Vec<Value>, left: &mut LeftOut) -> Result<(), GatewayError> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(role @ ("user" | "assistant" | "system" | "developer")) => role,
                _ => return Err(bad(&format!("{at}.role"), "must be user, assistant, system or developer")),
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => json!(s),
                Some(Value::Array(parts)) => {
                    let mut out = Vec::new();
                    for (j, part) in parts.iter().enumerate() {
                        out.extend(content_part(&format!("{at}.content[{j}]"), part, left)?);
                    }
                    if role == "assistant" {
                        // Chat takes an assistant turn's text, not parts.
                        json!(out.iter().filter_map(|p| p["text"].as_str()).collect::<String>())
                    } else {
                        Value::Array(out)
                    }
                }
                _ => return Err(bad(&format!("{at}.content"), "must be a string or a list of content parts")),
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let (Some(call_id), Some(name)) = (item.get("call_id").and_then(Value::as_str), item.get("name").and_then(Value::as_str))
            else {
                return Err(bad(at, "a function_call item needs `call_id` and `name`"));
            };
            let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("{}");
            let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => last["tool_calls"] = json!([call]),
                },
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                return Err(bad(&format!("{at}.call_id"), "Field required"));
            };
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
                }
                _ => return Err(bad(&format!("{at}.output"), "must be a string or a list of content parts")),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Earlier reasoning is the model's own; chat backends take none.
        "reasoning" => left.unseen(item),
        "item_reference" => return Err(bad(at, "item references need a response store, which this router does not keep")),
        other => left.note_unseen(format!("`{other}` input items"), item),
    }
    Ok(())
}

/// A content part in chat's shape; `None` for parts chat cannot carry.
fn content_part(at: &str, part: &Value, left: &mut LeftOut) -> Result<Option<Value>, GatewayError> {
    let text = |key: &str| part.get(key).and_then(Value::as_str).ok_or_else(|| bad(&format!("{at}.{key}"), "Field required"));
    Ok(match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => Some(json!({"type": "text", "text": text("text")?})),
        Some("refusal") => Some(json!({"type": "text", "text": text("refusal")?})),
        Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
            Some(url) => {
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                    image["detail"] = detail.clone();
                }
                Some(json!({"type": "image_url", "image_url": image}))
            }
            None => {
                left.note("images by `file_id`".into());
                None
            }
        },
        Some("input_file") => match part.get("file_data").and_then(Value::as_str) {
            Some(data) => {
                let filename = part.get("filename").and_then(Value::as_str).unwrap_or("file.pdf");
                Some(json!({"type": "file", "file": {"filename": filename, "file_data": data}}))
            }
            None => {
                left.note("files by `file_id` or `file_url`".into());
                None
            }
        },
        Some(other) => {
            left.note_unseen(format!("`{other}` content parts"), part);
            None
        }
        None => return Err(bad(&format!("{at}.type"), "Field required")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<ChatBody, GatewayError> {
        let Value::Object(body) = body else { unreachable!() };
        to_chat_body(&body)
    }

    #[test]
    fn an_agent_style_request_translates_to_chat() {
        let out = chat(json!({
            "model": "gpt-x", "instructions": "Be terse.", "max_output_tokens": 300, "temperature": 0.2, "stream": true,
            "safety_identifier": "user-9", "metadata": {"team": "a"}, "parallel_tool_calls": false, "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "name": "lookup", "description": "Looks up", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "lookup"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Find it"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{\"q\":1}"},
                {"type": "function_call", "call_id": "call_2", "name": "lookup", "arguments": "{\"q\":2}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "one"},
                {"type": "function_call_output", "call_id": "call_2", "output": "two"},
            ],
        }))
        .unwrap();
        assert_eq!(out.only_native, None);
        let b = Value::Object(out.body);
        assert_eq!(b["messages"][0], json!({"role": "system", "content": "Be terse."}));
        assert_eq!(
            b["messages"][1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}})
        );
        assert_eq!(b["messages"][2]["content"], "Looking.");
        assert_eq!(b["messages"][2]["tool_calls"].as_array().unwrap().len(), 2, "calls join the assistant turn");
        assert_eq!(b["messages"][4], json!({"role": "tool", "tool_call_id": "call_2", "content": "two"}));
        assert_eq!(b["response_format"]["json_schema"]["name"], "answer");
        assert_eq!(
            b["tools"][0]["function"],
            json!({"name": "lookup", "description": "Looks up", "parameters": {"type": "object"}, "strict": true})
        );
        assert_eq!(b["tool_choice"], json!({"type": "function", "function": {"name": "lookup"}}));
        assert_eq!(
            (b["max_tokens"].clone(), b["user"].clone(), b["parallel_tool_calls"].clone()),
            (json!(300), json!("user-9"), json!(false))
        );
        assert!(b.get("reasoning").is_none());
        let plain = Value::Object(chat(json!({"model": "m", "input": "Hi"})).unwrap().body);
        assert_eq!(plain["messages"], json!([{"role": "user", "content": "Hi"}]));
    }

    #[test]
    fn stored_state_is_refused_naming_the_field_and_built_in_tools_are_named() {
        for (body, param) in [
            (json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}), "previous_response_id"),
            (json!({"model": "m", "input": "x", "store": true}), "store"),
            (json!({"model": "m", "input": "x", "conversation": "conv_1"}), "conversation"),
            (json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}), "input[0]"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}), "input[0].role"),
            (json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}), "text.format.type"),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some(param)), "{}", e.message);
        }
        assert!(chat(json!({"model": "m", "input": "x", "store": false})).is_ok());
        let out = chat(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})).unwrap();
        assert_eq!(out.only_native.as_deref(), Some("the built-in tool `web_search`"));
    }
}
