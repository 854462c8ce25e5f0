//! Builds the example policy that the embedded default configuration serves
//! (`switchyard serve` without `--config`) and embeds it in the binary.

fn main() {
    let root = switchyard_build_support::repo_root();
    let files = switchyard_build_support::build_guests(&root, "policies", &["cheapest-healthy"]);
    println!("cargo:rustc-env=SWITCHYARD_DEFAULT_POLICY_WASM={}", files[0].display());
}
