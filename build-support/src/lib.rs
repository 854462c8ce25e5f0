//! Used by build scripts (`host/build.rs`, `tests/build.rs`) to build guest
//! components: a cargo workspace of `cdylib` crates, built for
//! `wasm32-wasip2` in release mode with the same toolchain as the host.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root, from a build script's `CARGO_MANIFEST_DIR` (one level
/// below it).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("run from a build script"));
    manifest_dir.parent().expect("crate below the repository root").to_path_buf()
}

/// Builds the guest workspace at `root/workspace` into `root/target/guests`
/// and returns the path of each crate's component, in the order of `crates`.
/// Tells cargo to rerun the build script when the guests, the SDK or the WIT
/// change.
pub fn build_guests(root: &Path, workspace: &str, crates: &[&str]) -> Vec<PathBuf> {
    let ws = root.join(workspace);
    let target_dir = root.join("target").join("guests");
    for path in [root.join("wit"), root.join("guest-sdk/src"), root.join("guest-sdk/Cargo.toml"), ws.join("Cargo.toml")] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for krate in crates {
        println!("cargo:rerun-if-changed={}", ws.join(krate).display());
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&ws)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the guests'.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        status.success(),
        "building the guests in {} failed; if the wasm32-wasip2 target is missing, run `rustup target add wasm32-wasip2`",
        ws.display()
    );

    crates
        .iter()
        .map(|krate| {
            let file = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", krate.replace('-', "_")));
            assert!(file.exists(), "{} was not built", file.display());
            file
        })
        .collect()
}
