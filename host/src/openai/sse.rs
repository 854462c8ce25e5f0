//! Server-Sent Events as OpenAI streams them: `data: <json>` events ending
//! with `data: [DONE]`.

use bytes::{Bytes, BytesMut};

/// One event of an OpenAI-style stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// A `data:` payload (a JSON chunk, checked).
    Data(Bytes),
    /// `data: [DONE]`.
    Done,
}

/// A stream that cannot be passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseError(pub String);

/// Longest event accepted; anything longer is a broken stream.
const MAX_EVENT_BYTES: usize = 8 << 20;

/// Splits a byte stream into events, incrementally.
#[derive(Default)]
pub struct SseParser {
    buf: BytesMut,
}

impl SseParser {
    /// Adds bytes and returns the complete events they finish.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some((end, sep)) = find_event_end(&self.buf) {
            let raw = self.buf.split_to(end + sep);
            if let Some(event) = parse_event(&raw[..end])? {
                events.push(event);
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(SseError(format!("an event longer than {MAX_EVENT_BYTES} bytes")));
        }
        Ok(events)
    }

    /// Whether bytes of an unfinished event are waiting.
    pub fn has_partial(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }
}

/// End of the first event and the length of its separator.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buf[i] == b'\r' && buf.get(i + 1..i + 4) == Some(b"\n\r\n") {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

fn parse_event(raw: &[u8]) -> Result<Option<SseEvent>, SseError> {
    let text = std::str::from_utf8(raw).map_err(|_| SseError("an event that is not UTF-8".into()))?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        // Comments (`: keep-alive`) and other fields (`event:`, `id:`) carry no chunk.
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        } else if let Some(error) = line.strip_prefix("error:") {
            return Err(SseError(format!("the upstream sent an error event: {}", error.trim())));
        }
    }
    let Some(data) = data else { return Ok(None) };
    if data.trim() == "[DONE]" {
        return Ok(Some(SseEvent::Done));
    }
    match serde_json::from_str::<serde_json::Value>(&data) {
        Ok(v) if v.get("error").is_some() => Err(SseError(format!("the upstream reported an error mid-stream: {}", v["error"]))),
        Ok(_) => Ok(Some(SseEvent::Data(Bytes::from(data)))),
        Err(e) => Err(SseError(format!("a malformed chunk ({e})"))),
    }
}

/// Appends a named event (`event: NAME`, then `data: DATA`), as the
/// Messages and Responses APIs stream them; `data` is one line of JSON.
pub fn put_named_event(out: &mut BytesMut, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Frames a chunk for the client.
pub fn frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// The final frame of a good stream.
pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: {\"a\":").unwrap(), vec![]);
        assert!(p.has_partial());
        let events = p.push(b"1}\n\n: keep-alive\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n").unwrap();
        assert_eq!(events, vec![SseEvent::Data(Bytes::from("{\"a\":1}")), SseEvent::Data(Bytes::from("{\"b\":2}")), SseEvent::Done]);
        assert!(!p.has_partial());
    }

    #[test]
    fn malformed_and_error_events_are_errors() {
        assert!(SseParser::default().push(b"data: {nope\n\n").unwrap_err().0.contains("malformed chunk"));
        assert!(SseParser::default().push(b"data: {\"error\":{\"message\":\"x\"}}\n\n").unwrap_err().0.contains("error mid-stream"));
    }
}
