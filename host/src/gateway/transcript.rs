//! What a chat stream has said, piece by piece, and the splice rule: a
//! regenerated answer may continue a broken stream only from where it
//! starts with exactly what the client already has.
//!
//! A piece is text of one part of a choice's delta: content, reasoning,
//! refusal, a tool call's start (index, id, type and name: matched whole)
//! or its arguments. Chunk boundaries do not matter: the pieces of one
//! part are compared as one text.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Most bytes of a stream's text kept for a rescue; a longer stream is not
/// rescued (its text is not kept).
pub(super) const MAX_KEPT_BYTES: usize = 256 << 10;

/// Which part of a choice's delta a piece belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Content,
    /// `reasoning_content` (DeepSeek, vLLM).
    ReasoningContent,
    /// `reasoning` (OpenRouter, Ollama).
    Reasoning,
    Refusal,
    /// A tool call's start, by index: `id`, `type` and `name`, joined by U+001F.
    ToolHead(u32),
    /// A tool call's arguments, by index.
    ToolArgs(u32),
}

impl Part {
    fn field(self) -> &'static str {
        match self {
            Self::Content => "content",
            Self::ReasoningContent => "reasoning_content",
            Self::Reasoning => "reasoning",
            Self::Refusal => "refusal",
            Self::ToolHead(_) | Self::ToolArgs(_) => "tool_calls",
        }
    }
}

/// Text of one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Piece {
    pub part: Part,
    pub text: String,
}

/// What the relay reads of a chunk, borrowed where it can be; the rest is
/// skipped without being built (a `serde_json::Value` per event was ~8 % of
/// a streaming profile).
#[derive(Deserialize)]
pub(super) struct ChunkView<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
    /// Completions stream `text`, not a delta.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct FunctionView<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UsageView {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<UsageDetailsView>,
}

#[derive(Deserialize)]
struct UsageDetailsView {
    cached_tokens: Option<u64>,
}

impl<'a> ChunkView<'a> {
    /// Reads a chunk; `None` when it is not a JSON object.
    pub(super) fn read(chunk: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(chunk).ok()
    }

    /// The stream's id.
    pub(super) fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The message of an error object sent as a chunk.
    pub(super) fn error(&self) -> Option<String> {
        let error = self.error.as_ref()?;
        let message = error.get("message").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_owned);
        Some(crate::text::cut_at_char_boundary(&message, 512).to_owned())
    }

    /// `(prompt_tokens, completion_tokens)`, when the chunk reports usage.
    pub(super) fn usage(&self) -> Option<(u64, u64)> {
        let usage = self.usage.as_ref()?;
        Some((usage.prompt_tokens?, usage.completion_tokens.unwrap_or(0)))
    }

    /// Prompt tokens the backend read from its prompt cache, when the
    /// chunk reports usage.
    pub(super) fn cached_tokens(&self) -> u64 {
        self.usage.as_ref().and_then(|u| u.prompt_tokens_details.as_ref()).and_then(|d| d.cached_tokens).unwrap_or(0)
    }

    fn first(&self) -> Option<&ChoiceView<'a>> {
        self.choices.as_deref()?.iter().find(|c| c.index == 0)
    }

    /// Whether the first choice finished.
    pub(super) fn finished(&self) -> bool {
        self.first().is_some_and(|c| c.finish_reason.is_some())
    }

    /// Whether the chunk carries a choice other than the first (`n` > 1).
    pub(super) fn other_choices(&self) -> bool {
        self.choices.as_deref().is_some_and(|c| c.iter().any(|c| c.index != 0))
    }

    /// The first choice's pieces, in order.
    pub(super) fn pieces(&self) -> Vec<(Part, Cow<'_, str>)> {
        let mut out = Vec::new();
        let Some(choice) = self.first() else { return out };
        if let Some(text) = &choice.text {
            out.push((Part::Content, Cow::Borrowed(text.as_ref())));
        }
        let Some(delta) = &choice.delta else { return out };
        for (part, text) in [
            (Part::ReasoningContent, &delta.reasoning_content),
            (Part::Reasoning, &delta.reasoning),
            (Part::Content, &delta.content),
            (Part::Refusal, &delta.refusal),
        ] {
            if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
                out.push((part, Cow::Borrowed(text)));
            }
        }
        for call in delta.tool_calls.iter().flatten() {
            let function = call.function.as_ref();
            let name = function.and_then(|f| f.name.as_deref());
            if call.id.is_some() || name.is_some() {
                let head = [call.id.as_deref(), call.kind.as_deref(), name].map(Option::unwrap_or_default).join("\u{1f}");
                out.push((Part::ToolHead(call.index), Cow::Owned(head)));
            }
            if let Some(arguments) = function.and_then(|f| f.arguments.as_deref()).filter(|a| !a.is_empty()) {
                out.push((Part::ToolArgs(call.index), Cow::Borrowed(arguments)));
            }
        }
        out
    }
}

/// The pieces a client has received, merged by part. Kept up to
/// [`MAX_KEPT_BYTES`]; past that, dropped and marked so.
#[derive(Debug, Default)]
pub(super) struct Transcript {
    pieces: Vec<Piece>,
    bytes: usize,
    overflowed: bool,
}

impl Transcript {
    /// Adds a piece the client received.
    pub(super) fn push(&mut self, part: Part, text: &str) {
        if self.overflowed {
            return;
        }
        self.bytes += text.len();
        if self.bytes > MAX_KEPT_BYTES {
            self.overflowed = true;
            self.pieces = Vec::new();
            return;
        }
        match self.pieces.last_mut() {
            Some(last) if last.part == part && !matches!(part, Part::ToolHead(_)) => last.text.push_str(text),
            _ => self.pieces.push(Piece { part, text: text.to_owned() }),
        }
    }

    /// Bytes received.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the text grew past what is kept.
    pub(super) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Whether any tool call started.
    pub(super) fn has_tool_calls(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p.part, Part::ToolHead(_) | Part::ToolArgs(_)))
    }

    /// The text to continue by prefill: the content, when the stream sent
    /// content and nothing else (a tool call cannot be resumed reliably,
    /// reasoning is not part of the turn).
    pub(super) fn prefill(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [Piece { part: Part::Content, text }] if !text.trim().is_empty() => Some(text),
            _ => None,
        }
    }
}

/// Matches a regenerated answer against what the client has: pieces it
/// already has are dropped, the first one that differs stops the splice,
/// and what comes after the client's text passes.
#[derive(Debug)]
pub(super) struct Splicer {
    sent: Vec<Piece>,
    /// The piece of `sent` being matched, and the bytes of it matched.
    at: usize,
    offset: usize,
}

impl Splicer {
    /// Splices onto what `sent` holds.
    pub(super) fn new(sent: &Transcript) -> Self {
        Self { sent: sent.pieces.clone(), at: 0, offset: 0 }
    }

    /// Whether the regeneration has reached the end of the client's text.
    pub(super) fn covered(&self) -> bool {
        self.at == self.sent.len()
    }

    /// Takes the regeneration's next piece; returns what of it is new to
    /// the client, or why it cannot follow what the client has.
    pub(super) fn take<'t>(&mut self, part: Part, text: &'t str) -> Result<&'t str, String> {
        let Some(sent) = self.sent.get(self.at) else { return Ok(text) };
        if sent.part != part {
            return Err(self.differs());
        }
        if matches!(part, Part::ToolHead(_)) {
            if text != sent.text {
                return Err(self.differs());
            }
            self.at += 1;
            return Ok("");
        }
        let rest = &sent.text[self.offset..];
        if text.len() <= rest.len() {
            if !rest.starts_with(text) {
                return Err(self.differs());
            }
            self.offset += text.len();
            if self.offset == sent.text.len() {
                (self.at, self.offset) = (self.at + 1, 0);
            }
            return Ok("");
        }
        if !text.starts_with(rest) {
            return Err(self.differs());
        }
        (self.at, self.offset) = (self.at + 1, 0);
        // Past the end of this part: new only if the client has nothing after it.
        if self.covered() {
            Ok(&text[rest.len()..])
        } else {
            Err(self.differs())
        }
    }

    fn differs(&self) -> String {
        let matched = self.sent[..self.at].iter().map(|p| p.text.len()).sum::<usize>() + self.offset;
        format!("it differs from what the client has after {matched} bytes")
    }
}

/// Rewrites a continuation's chunk: the stream's `id`, the first choice's
/// delta holding only `kept` (no `role`: the client has it), and `usage`
/// when given. `None` when the chunk has nothing left to say.
pub(super) fn rewrite(chunk: &[u8], id: Option<&str>, kept: &[Piece], usage: Option<(u64, u64)>) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(chunk) else { return None };
    // A continuation's own events are not the client's stream.
    chunk.remove(crate::native::NATIVE_EVENT_FIELD);
    if let Some(id) = id {
        chunk.insert("id".into(), json!(id));
    }
    let mut finished = false;
    if let Some(choice) = chunk.get_mut("choices").and_then(Value::as_array_mut).and_then(|c| c.iter_mut().find(|c| c["index"] == 0)) {
        finished = !choice["finish_reason"].is_null();
        if let Some(Value::Object(delta)) = choice.get_mut("delta") {
            for field in ["role", "content", "reasoning_content", "reasoning", "refusal", "tool_calls"] {
                delta.remove(field);
            }
            put_pieces(delta, kept);
        }
    }
    if let Some((prompt, completion)) = usage {
        chunk
            .insert("usage".into(), json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}));
    }
    let has_usage = chunk.get("usage").is_some_and(|u| !u.is_null());
    (finished || has_usage || !kept.is_empty()).then(|| serde_json::to_vec(&chunk).unwrap_or_default())
}

fn put_pieces(delta: &mut Map<String, Value>, kept: &[Piece]) {
    let mut calls: Vec<Value> = Vec::new();
    for piece in kept {
        match piece.part {
            Part::ToolHead(index) | Part::ToolArgs(index) => {
                let at = match calls.iter().position(|c| c["index"] == index) {
                    Some(at) => at,
                    None => {
                        calls.push(json!({"index": index, "function": {}}));
                        calls.len() - 1
                    }
                };
                let call = &mut calls[at];
                if let Part::ToolHead(_) = piece.part {
                    let mut head = piece.text.split('\u{1f}');
                    let (id, kind, name) = (head.next().unwrap_or(""), head.next().unwrap_or(""), head.next().unwrap_or(""));
                    call["id"] = json!(id);
                    call["type"] = json!(if kind.is_empty() { "function" } else { kind });
                    call["function"]["name"] = json!(name);
                    call["function"]["arguments"] = json!("");
                } else {
                    let before = call["function"]["arguments"].as_str().unwrap_or_default().to_owned();
                    call["function"]["arguments"] = json!(before + &piece.text);
                }
            }
            part => {
                let field = part.field();
                let before = delta.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
                delta.insert(field.into(), json!(before + &piece.text));
            }
        }
    }
    if !calls.is_empty() {
        delta.insert("tool_calls".into(), Value::Array(calls));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(chunks: &[&str]) -> Transcript {
        let mut t = Transcript::default();
        for chunk in chunks {
            for (part, text) in ChunkView::read(chunk.as_bytes()).unwrap().pieces() {
                t.push(part, &text);
            }
        }
        t
    }

    fn text(content: &str) -> String {
        json!({"id": "x", "choices": [{"index": 0, "delta": {"content": content}}]}).to_string()
    }

    fn tool(index: u32, id: Option<&str>, args: &str) -> String {
        let mut call = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
            call["function"]["name"] = json!("search");
        }
        json!({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}).to_string()
    }

    /// What a splice onto `sent` passes of `regenerated`, chunk by chunk,
    /// or where it stops.
    fn splice(sent: &[String], regenerated: &[String]) -> Result<Vec<Vec<Piece>>, String> {
        let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
        let mut splicer = Splicer::new(&transcript(&sent));
        let mut out = Vec::new();
        for chunk in regenerated {
            let view = ChunkView::read(chunk.as_bytes()).unwrap();
            let mut kept = Vec::new();
            for (part, text) in view.pieces() {
                let new = splicer.take(part, &text)?;
                if !new.is_empty() {
                    kept.push(Piece { part, text: new.to_owned() });
                }
            }
            out.push(kept);
        }
        Ok(out)
    }

    fn content(text: &str) -> Piece {
        Piece { part: Part::Content, text: text.into() }
    }

    #[test]
    fn pieces_of_text_reasoning_and_tool_calls() {
        let t = transcript(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"text":"lo"}]}"#,
            &tool(0, Some("call_1"), "{\"q\""),
            &tool(0, None, ":1}"),
            r#"{"choices":[{"index":1,"delta":{"content":"other choice"}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        ]);
        let parts: Vec<(Part, &str)> = t.pieces.iter().map(|p| (p.part, p.text.as_str())).collect();
        assert_eq!(
            parts,
            [
                (Part::ReasoningContent, "think"),
                (Part::Content, "Hello"),
                (Part::ToolHead(0), "call_1\u{1f}function\u{1f}search"),
                (Part::ToolArgs(0), "{\"q\":1}"),
            ]
        );
        assert!(t.has_tool_calls());
        assert_eq!(t.prefill(), None, "reasoning and tool calls are not continued by prefill");
        assert_eq!(transcript(&[&text("Hel"), &text("lo ")]).prefill(), Some("Hello "));
        assert_eq!(transcript(&[&text(" ")]).prefill(), None, "nothing to continue");
    }

    #[test]
    fn a_regeneration_passes_only_what_follows_the_clients_text() {
        let sent = [text("The quick"), text(" bro")];
        // Other chunk boundaries, the seam inside a chunk.
        let regenerated = [text("The"), text(" quick b"), text("rown fox"), text(" jumps")];
        assert_eq!(splice(&sent, &regenerated).unwrap(), [vec![], vec![], vec![content("wn fox")], vec![content(" jumps")]]);
        // Nothing sent yet: everything passes.
        assert_eq!(splice(&[], &[text("A"), text("B")]).unwrap(), [vec![content("A")], vec![content("B")]]);
    }

    #[test]
    fn a_regeneration_that_differs_or_ends_short_is_refused() {
        let sent = [text("The quick"), text(" bro")];
        for (case, regenerated) in [
            ("another word", vec![text("The slow")]),
            ("a different continuation past the seam", vec![text("The quick bread")]),
            ("a tool call instead", vec![tool(0, Some("call_1"), "{}")]),
        ] {
            assert!(splice(&sent, &regenerated).is_err(), "{case}");
        }
        let mut splicer = Splicer::new(&transcript(&[&text("The quick")]));
        assert_eq!(splicer.take(Part::Content, "The"), Ok(""));
        assert!(!splicer.covered(), "a shorter regeneration has not covered the text");
    }

    #[test]
    fn tool_calls_splice_only_when_identical() {
        let sent = [tool(0, Some("call_1"), "{\"query\":"), tool(0, None, "\"cats")];
        let same = [tool(0, Some("call_1"), ""), tool(0, None, "{\"query\":\"ca"), tool(0, None, "ts\",\"limit\":3}")];
        assert_eq!(
            splice(&sent, &same).unwrap(),
            [vec![], vec![], vec![Piece { part: Part::ToolArgs(0), text: "\",\"limit\":3}".into() }]]
        );
        let other_id = [tool(0, Some("call_2"), "{\"query\":\"cats\"}")];
        assert!(splice(&sent, &other_id).is_err(), "another call id is another call");
        let other_args = [tool(0, Some("call_1"), "{\"query\":\"dogs\"}")];
        assert!(splice(&sent, &other_args).is_err());
    }

    #[test]
    fn a_rewritten_chunk_keeps_the_stream_id_and_only_the_new_text() {
        let chunk = r#"{"id":"new","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"The quick brown"},"finish_reason":null}]}"#;
        let out = rewrite(chunk.as_bytes(), Some("orig"), &[content("own")], None).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "orig");
        assert_eq!(v["choices"][0]["delta"], json!({"content": "own"}));
        assert_eq!(rewrite(chunk.as_bytes(), Some("orig"), &[], None), None, "a covered chunk is dropped");
        let finish = r#"{"id":"new","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert!(rewrite(finish.as_bytes(), Some("orig"), &[], None).is_some(), "the finish is kept");
        let usage = r#"{"id":"new","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let v: Value = serde_json::from_slice(&rewrite(usage.as_bytes(), None, &[], Some((10, 9))).unwrap()).unwrap();
        assert_eq!(v["usage"], json!({"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}));
        let head = Piece { part: Part::ToolHead(0), text: "call_1\u{1f}function\u{1f}search".into() };
        let args = Piece { part: Part::ToolArgs(0), text: "{}".into() };
        let v: Value = serde_json::from_slice(&rewrite(chunk.as_bytes(), None, &[head, args], None).unwrap()).unwrap();
        assert_eq!(
            v["choices"][0]["delta"]["tool_calls"],
            json!([{"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}])
        );
    }
}
