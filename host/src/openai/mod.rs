//! The OpenAI-compatible API as the router speaks it: reading client
//! requests, and Server-Sent Events.

pub mod inbound;
pub mod sse;

/// `(prompt_tokens, completion_tokens)` of an answer or chunk that reports
/// its `usage`.
pub fn usage(answer: &serde_json::Value) -> Option<(u64, u64)> {
    usage_counts(answer.get("usage")?)
}

/// `(prompt_tokens, completion_tokens)` of a `usage` object.
pub fn usage_counts(usage: &serde_json::Value) -> Option<(u64, u64)> {
    token_counts(usage.get("prompt_tokens"), usage.get("completion_tokens"))
}

/// `(prompt_tokens, completion_tokens)` from the two fields: none without
/// a count of prompt tokens; no count of completion tokens is 0.
pub fn token_counts(prompt: Option<&serde_json::Value>, completion: Option<&serde_json::Value>) -> Option<(u64, u64)> {
    Some((prompt?.as_u64()?, completion.and_then(serde_json::Value::as_u64).unwrap_or(0)))
}

/// Prompt tokens an answer says the backend read from its prompt cache
/// (`usage.prompt_tokens_details.cached_tokens`); 0 when it says nothing.
/// Reads only that field of the body.
pub fn cached_tokens(answer: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens_details: Option<Details>,
    }
    #[derive(serde::Deserialize)]
    struct Details {
        cached_tokens: Option<u64>,
    }
    serde_json::from_slice::<Answer>(answer).ok().and_then(|a| a.usage?.prompt_tokens_details?.cached_tokens).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_reads_come_from_the_usage_details() {
        for (body, cached) in [
            (&br#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4}}}"#[..], 4),
            (br#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":null}}"#, 0),
            (br#"{"usage":{"prompt_tokens":9}}"#, 0),
            (br#"{"choices":[]}"#, 0),
            (b"not json", 0),
        ] {
            assert_eq!(super::cached_tokens(body), cached, "{}", String::from_utf8_lossy(body));
        }
    }
}
