//! The official `openai` Python package as a client of the real router.
//! In CI (`CI` set) the package must be there: `.ci/run` installs it.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

#[test]
fn the_openai_python_sdk_works_against_the_router() {
    let has_sdk = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !has_sdk {
        assert!(std::env::var_os("CI").is_none(), "the `openai` Python package is missing in CI; .ci/run installs it");
        eprintln!("SKIPPED: the `openai` Python package is not installed (pip install openai)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
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
