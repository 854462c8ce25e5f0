//! `switchyard policy new`: a buildable policy from templates.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::ValueEnum;

/// The language of a new policy.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Lang {
    /// Rust, with the `switchyard-policy` SDK.
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
}

const WIT: &str = include_str!("../../../wit/policy.wit");

/// Example inputs of `switchyard policy eval`, the same as the test fixtures
/// (which the CLI tests evaluate).
const EXAMPLE_REQUEST: &str = include_str!("../../../tests/fixtures/request.json");
const EXAMPLE_BACKENDS: &str = include_str!("../../../tests/fixtures/backends.json");

/// The SDK next to the sources this binary was built from.
const DEFAULT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// Writes the policy `name` in `lang` into `parent/name` and returns that path.
pub fn new_policy(name: &str, lang: Lang, parent: &Path, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("`{name}` is not a policy name: use lower-case letters, digits and `-`, starting with a letter (it becomes the file name NAME.wasm)");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let type_name: String = name.split('-').map(|part| part[..1].to_uppercase() + &part[1..]).collect();
    let sdk = match sdk {
        Some(sdk) => sdk.to_path_buf(),
        None => PathBuf::from(DEFAULT_SDK),
    };
    let fill = |template: &str| -> anyhow::Result<String> {
        let sdk =
            sdk.canonicalize().with_context(|| format!("the Rust SDK is not at {}: pass --sdk <path to guest-sdk>", sdk.display()))?;
        Ok(template
            .replace("{{name}}", name)
            .replace("{{type}}", &type_name)
            .replace("{{file}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.display().to_string()))
    };
    let plain = |template: &str| template.replace("{{name}}", name);
    let files: Vec<(&str, String)> = match lang {
        Lang::Rust => vec![
            ("Cargo.toml", fill(include_str!("../../templates/rust/Cargo.toml.tmpl"))?),
            ("src/lib.rs", fill(include_str!("../../templates/rust/lib.rs.tmpl"))?),
            ("README.md", fill(include_str!("../../templates/rust/README.md.tmpl"))?),
        ],
        Lang::Python => vec![
            ("app.py", plain(include_str!("../../templates/python/app.py.tmpl"))),
            ("wit/policy.wit", WIT.to_owned()),
            ("README.md", plain(include_str!("../../templates/python/README.md.tmpl"))),
        ],
        Lang::Js => vec![
            ("app.js", plain(include_str!("../../templates/js/app.js.tmpl"))),
            ("package.json", plain(include_str!("../../templates/js/package.json.tmpl"))),
            ("build.mjs", plain(include_str!("../../templates/js/build.mjs.tmpl"))),
            ("wit/policy.wit", WIT.to_owned()),
            ("README.md", plain(include_str!("../../templates/js/README.md.tmpl"))),
        ],
    };
    let examples = [("request.json", EXAMPLE_REQUEST.to_owned()), ("backends.json", EXAMPLE_BACKENDS.to_owned())];
    for (path, content) in files.into_iter().chain(examples) {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}
