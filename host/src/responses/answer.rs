//! Complete answers in the Responses API's shape: the `response` object.

use serde_json::{json, Map, Value};

/// The fields of a `response` that repeat the request, with the API's
/// defaults; `id`, `model`, `status`, `output` and `usage` are added.
pub fn skeleton(request: &Map<String, Value>, created_at: u64) -> Map<String, Value> {
    let get = |key: &str, default: Value| request.get(key).filter(|v| !v.is_null()).cloned().unwrap_or(default);
    let mut r = Map::new();
    // Set when known; first here so that they lead the object.
    r.insert("id".into(), json!(""));
    r.insert("object".into(), json!("response"));
    r.insert("created_at".into(), json!(created_at));
    r.insert("status".into(), json!("in_progress"));
    r.insert("background".into(), json!(false));
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), Value::Null);
    r.insert("instructions".into(), get("instructions", Value::Null));
    r.insert("max_output_tokens".into(), get("max_output_tokens", Value::Null));
    r.insert("metadata".into(), get("metadata", json!({})));
    r.insert("model".into(), get("model", Value::Null));
    r.insert("output".into(), json!([]));
    r.insert("parallel_tool_calls".into(), get("parallel_tool_calls", json!(true)));
    r.insert("previous_response_id".into(), Value::Null);
    r.insert("store".into(), json!(false));
    r.insert("temperature".into(), get("temperature", json!(1.0)));
    r.insert("text".into(), get("text", json!({"format": {"type": "text"}})));
    r.insert("tool_choice".into(), get("tool_choice", json!("auto")));
    r.insert("tools".into(), get("tools", json!([])));
    r.insert("top_p".into(), get("top_p", json!(1.0)));
    r.insert("truncation".into(), json!("disabled"));
    r.insert("usage".into(), Value::Null);
    r.insert("user".into(), get("user", Value::Null));
    r
}

/// A Responses API id for an upstream's id: `prefix` and its letters and
/// digits (ids end up in URLs and logs).
pub fn id(prefix: &str, upstream_id: &str) -> String {
    let clean: String = upstream_id.chars().filter(char::is_ascii_alphanumeric).take(48).collect();
    format!("{prefix}_{clean}")
}

/// The Responses API's `usage` for an OpenAI chat `usage` object.
pub fn usage(usage: &Value) -> Value {
    let input = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let output = usage["completion_tokens"].as_u64().unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0)},
        "total_tokens": input + output,
    })
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
pub fn status(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A completed message item with `text`.
pub fn message_item(id: &str, text: &str) -> Value {
    json!({"type": "message", "id": id, "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// A completed function call item.
pub fn function_item(id: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"})
}

/// A completed reasoning item with `text`.
pub fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [], "content": [{"type": "reasoning_text", "text": text}], "status": "completed"})
}

/// An OpenAI chat completion as a `response` object; `skeleton` holds the
/// fields that repeat the request.
pub fn response_from_completion(completion: &Value, mut skeleton: Map<String, Value>) -> Value {
    let upstream_id = completion["id"].as_str().unwrap_or_default();
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut output = Vec::new();
    if let Some(thinking) = message.get("reasoning_content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        output.push(reasoning_item(&id("rs", upstream_id), thinking));
    }
    let text = [message.get("content"), message.get("refusal")].into_iter().flatten().filter_map(Value::as_str).collect::<String>();
    if !text.is_empty() {
        output.push(message_item(&id("msg", upstream_id), &text));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let call_id = call["id"].as_str().unwrap_or_default();
        let f = &call["function"];
        output.push(function_item(
            &id("fc", call_id),
            call_id,
            f["name"].as_str().unwrap_or_default(),
            f["arguments"].as_str().unwrap_or("{}"),
        ));
    }
    let (status, incomplete) = status(choice.get("finish_reason").and_then(Value::as_str));
    skeleton.insert("id".into(), json!(id("resp", upstream_id)));
    skeleton.insert("model".into(), completion["model"].clone());
    skeleton.insert("status".into(), json!(status));
    skeleton.insert("incomplete_details".into(), incomplete);
    skeleton.insert("output".into(), Value::Array(output));
    skeleton.insert("usage".into(), usage(&completion["usage"]));
    Value::Object(skeleton)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_become_responses() {
        let request: Map<String, Value> =
            serde_json::from_value(json!({"model": "auto", "instructions": "Be terse.", "input": "hi", "temperature": 0.3})).unwrap();
        let c = json!({"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}});
        let r = response_from_completion(&c, skeleton(&request, 7));
        assert_eq!(
            (r["id"].as_str(), r["object"].as_str(), r["status"].as_str()),
            (Some("resp_chatcmpl1"), Some("response"), Some("completed"))
        );
        assert_eq!(
            (r["instructions"].as_str(), r["temperature"].as_f64(), r["created_at"].as_u64()),
            (Some("Be terse."), Some(0.3), Some(7))
        );
        assert_eq!(r["output"][0]["content"][0]["text"], "Let me look.");
        assert_eq!(r["output"][1], function_item("fc_call1", "call_1", "look", "{\"q\":1}"));
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15})
        );
        let cut = response_from_completion(
            &json!({"choices": [{"finish_reason": "length", "message": {"content": "cu"}}]}),
            skeleton(&request, 1),
        );
        assert_eq!((cut["status"].as_str(), cut["incomplete_details"]["reason"].as_str()), (Some("incomplete"), Some("max_output_tokens")));
    }
}
