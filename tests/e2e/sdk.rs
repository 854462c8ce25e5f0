//! The official `openai` Python package as a client of the real router.
//! The package must be installed (`scripts/test` does): a missing one fails
//! the test rather than skipping it.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

#[test]
fn the_openai_python_sdk_works_against_the_router() {
    let has_sdk = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "the `openai` Python package is missing: run `scripts/test`, which installs it, or `python3 -m pip install openai==3.54.0`"
    );
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    // `rescued`: a stream that breaks mid-answer, continued on `canon`.
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::copy(switchyard_tests::artifacts::CHEAPEST_HEALTHY, dir.path().join("policies/rescue-order.wasm")).unwrap();
    let config = format!(
        r#"
[[clients]]
name = "sdk-test"
key = "sk-client-key-1"

[[routes]]
model = "auto"
policy = "cheapest-healthy"

[[backends]]
name = "good"
provider = "openai"
base_url = "{m}/v1"
model = "good-model"

[[backends]]
name = "cut"
provider = "openai"
base_url = "{m}/v1"
model = "cut?fault=cut&chunks=3"
input_price = 5.0

[[backends]]
name = "broken"
provider = "openai"
base_url = "{m}/v1"
model = "broken?fault=503"
input_price = 5.0

[policies]
dir = "policies"

[[routes]]
model = "rescued"
policy = "rescue-order"

[policies.config.rescue-order]
require_tag = "rescue"

[[backends]]
name = "cut-canon"
provider = "openai"
base_url = "{m}/v1"
model = "canon?fault=cut&chunks=4&answer=canonical"
tags = ["rescue"]
input_price = 0.5

[[backends]]
name = "canon"
provider = "openai"
base_url = "{m}/v1"
model = "canon?answer=canonical"
tags = ["rescue"]
input_price = 1.0
capabilities = {{ prefill = true }}
"#,
        m = mock.url
    );
    let router = support::router(dir.path(), &config, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sdk/openai_client.py");
    let out = Command::new("python3").args([script, &router.url, &mock.url, "sk-client-key-1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}\nrouter log:\n{}", String::from_utf8_lossy(&out.stderr), router.logs());
}
