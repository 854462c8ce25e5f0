//! The configuration `switchyard serve` uses without `--config`: three mock
//! backends and the example `cheapest-healthy` policy, built into the binary,
//! so the router runs offline with nothing else.

use std::path::Path;

use super::{Config, ConfigError};

/// The name of the embedded default policy.
pub const EMBEDDED_POLICY_NAME: &str = "cheapest-healthy";

/// The embedded policy component (built from `policies/cheapest-healthy`).
pub static EMBEDDED_POLICY: &[u8] = include_bytes!(env!("SWITCHYARD_DEFAULT_POLICY_WASM"));

/// The embedded default configuration's text (`switchyard config print-default`).
pub const EMBEDDED_TOML: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[routes]]
model = "auto"
policy = "cheapest-healthy"

[[routes]]
model = "*"
policy = "cheapest-healthy"

[[backends]]
name = "mock-large"
provider = "mock"
model = "mock-large"
tags = ["quality"]
input_price = 2.5
output_price = 10.0
capabilities = { vision = true, tools = true, json_mode = true, stream = true }
mock = { latency_ms = 40, ttft_ms = 20, tokens_per_second = 200, answer_tokens = 24 }

[[backends]]
name = "mock-small"
provider = "mock"
model = "mock-small"
tags = ["cheap"]
input_price = 0.15
output_price = 0.6
capabilities = { vision = false, tools = true, json_mode = true, stream = true }
mock = { latency_ms = 10, ttft_ms = 5, tokens_per_second = 400, answer_tokens = 16 }

[[backends]]
name = "mock-private"
provider = "mock"
model = "mock-private"
tags = ["private"]
input_price = 0.0
output_price = 0.0
context_window = 8192
mock = { latency_ms = 20, ttft_ms = 10, tokens_per_second = 100, answer_tokens = 16 }
"#;

/// The embedded configuration, listening on `listen` when given.
pub fn embedded(listen: Option<std::net::SocketAddr>) -> Result<Config, ConfigError> {
    let mut config = Config::parse(EMBEDDED_TOML, "<embedded>", Path::new("."), &|_| None)?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    Ok(config)
}
