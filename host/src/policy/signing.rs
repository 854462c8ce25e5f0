//! Signed policies: an Ed25519 signature over a component's digest, checked
//! against the operator's trusted keys before the component is compiled.
//!
//! The signed message is the ASCII text `sha256:<hex>`: the SHA-256 digest of
//! the component's bytes, the same digest the router reports and an origin
//! pins. A signature travels beside its component as `NAME.wasm.sig` (one
//! line of base64, 64 bytes once decoded), or inside an origin's listing.
//! Private keys are PKCS#8 PEM files (`switchyard policy keygen`, or
//! `openssl genpkey -algorithm ed25519`); public keys are configured as the
//! base64 of their 32 bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

/// Suffix of a detached signature beside its component (`NAME.wasm.sig`).
pub const SIGNATURE_SUFFIX: &str = ".sig";

/// `NAME.wasm.sig` beside `NAME.wasm`.
pub fn signature_path(component: &Path) -> PathBuf {
    let mut path = component.as_os_str().to_owned();
    path.push(SIGNATURE_SUFFIX);
    PathBuf::from(path)
}

/// The digest of a component: `sha256:<64 hex digits>`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for b in hash.as_ref() {
        text.push_str(&format!("{b:02x}"));
    }
    text
}

/// Why a component's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureRefusal {
    /// No signature beside the component (or in its listing).
    Unsigned,
    /// The signature is not base64 of 64 bytes.
    Malformed,
    /// No trusted key made this signature over these bytes: the wrong key, or
    /// bytes changed since signing.
    Untrusted,
}

impl SignatureRefusal {
    /// A short stable name, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::Malformed => "malformed",
            Self::Untrusted => "untrusted",
        }
    }
}

impl fmt::Display for SignatureRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unsigned => "unsigned: no signature beside it (NAME.wasm.sig) and trusted keys are configured",
            Self::Malformed => "its signature is not the base64 of an Ed25519 signature (64 bytes)",
            Self::Untrusted => "its signature is not from a trusted key over these bytes (wrong key, or bytes changed since signing)",
        })
    }
}

/// The public keys whose signatures the router accepts, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<String, [u8; 32]>,
}

impl TrustedKeys {
    /// Parses `name = base64 public key` pairs; the error names the key.
    pub fn parse(keys: &BTreeMap<String, String>) -> Result<Self, (String, String)> {
        let mut parsed = BTreeMap::new();
        for (name, text) in keys {
            parsed.insert(name.clone(), public_key(text).map_err(|problem| (name.clone(), problem))?);
        }
        Ok(Self { keys: parsed })
    }

    /// Whether no key is trusted (signatures are then not checked).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name of the trusted key that signed `bytes`, given the base64
    /// signature (`None`: the component came without one).
    pub fn verify(&self, bytes: &[u8], signature: Option<&str>) -> Result<&str, SignatureRefusal> {
        let text = signature.map(str::trim).filter(|s| !s.is_empty()).ok_or(SignatureRefusal::Unsigned)?;
        let signature = BASE64.decode(text).ok().filter(|s| s.len() == 64).ok_or(SignatureRefusal::Malformed)?;
        let message = digest(bytes);
        self.keys
            .iter()
            .find(|(_, key)| UnparsedPublicKey::new(&ED25519, key).verify(message.as_bytes(), &signature).is_ok())
            .map(|(name, _)| name.as_str())
            .ok_or(SignatureRefusal::Untrusted)
    }
}

/// A public key from the base64 of its 32 bytes.
pub fn public_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| format!("not base64: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("an Ed25519 public key is 32 bytes, this one is {}", b.len()))
}

/// PKCS#8 v1 for Ed25519 (RFC 8410): a sequence of version 0, the
/// algorithm 1.3.101.112 and the 32-byte seed as an octet string, which
/// follows this prefix.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// A signing key, read from a PKCS#8 PEM file's text.
pub struct SigningKey(Ed25519KeyPair);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret half.
        write!(f, "SigningKey({})", self.public_base64())
    }
}

impl SigningKey {
    /// Reads a `-----BEGIN PRIVATE KEY-----` PEM (v1, as openssl writes, or v2).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let der = pem_body(text, "PRIVATE KEY")?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map(Self).map_err(|e| format!("not an Ed25519 private key in PKCS#8: {e}"))
    }

    /// A new key, as PKCS#8 v1 PEM text: the form openssl writes and reads
    /// (OpenSSL 3.0 refuses the v2 form, with the public key, that ring
    /// generates).
    pub fn generate_pem() -> Result<String, String> {
        let mut der = PKCS8_V1_ED25519_PREFIX.to_vec();
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).map_err(|e| format!("cannot generate a key: {e}"))?;
        der.extend_from_slice(&seed);
        // The same reader as `from_pem`: what is written can be read back.
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| format!("cannot generate a key: {e}"))?;
        let body = BASE64.encode(&der);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    /// The public key, as configured in `[policies.trusted_keys]`.
    pub fn public_base64(&self) -> String {
        BASE64.encode(self.0.public_key().as_ref())
    }

    /// The signature of a component, base64, as written to `NAME.wasm.sig`.
    pub fn sign(&self, component: &[u8]) -> String {
        BASE64.encode(self.0.sign(digest(component).as_bytes()).as_ref())
    }
}

/// The DER bytes of a PEM block of the given label.
fn pem_body(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(|| format!("no `{begin}` line"))? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(|| format!("no `{end}` line"))? + start;
    let body: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    BASE64.decode(body).map_err(|e| format!("the PEM body is not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &SigningKey)]) -> TrustedKeys {
        let map = pairs.iter().map(|(n, k)| ((*n).to_owned(), k.public_base64())).collect();
        TrustedKeys::parse(&map).unwrap()
    }

    #[test]
    fn accepts_only_a_trusted_key_over_the_same_bytes() {
        let ours = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let theirs = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let trusted = keys(&[("release", &ours)]);
        let component = b"\0asm component bytes";
        let signature = ours.sign(component);
        // (case, bytes, signature, verdict)
        type Case<'a> = (&'a str, &'a [u8], Option<String>, Result<&'a str, SignatureRefusal>);
        let table: [Case; 6] = [
            ("right key", component, Some(signature.clone()), Ok("release")),
            ("unsigned", component, None, Err(SignatureRefusal::Unsigned)),
            ("empty file", component, Some(" \n".into()), Err(SignatureRefusal::Unsigned)),
            ("wrong key", component, Some(theirs.sign(component)), Err(SignatureRefusal::Untrusted)),
            ("tampered bytes", b"\0asm component bytez", Some(signature.clone()), Err(SignatureRefusal::Untrusted)),
            ("not a signature", component, Some("bm90IGEgc2lnbmF0dXJl".into()), Err(SignatureRefusal::Malformed)),
        ];
        for (case, bytes, signature, expected) in table {
            assert_eq!(trusted.verify(bytes, signature.as_deref()), expected, "{case}");
        }
    }

    #[test]
    fn reads_keys_openssl_writes_and_names_bad_public_keys() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1).
        let pem =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBS8Gk0JUtyOB1Nb1Cw0XQi35FjDixyl2O38t4BC0Nsr\n-----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pem(pem).unwrap();
        assert_eq!(key.public_base64().len(), 44);
        // What keygen writes has the same form: the prefix of that key, a new seed.
        let ours = pem_body(&SigningKey::generate_pem().unwrap(), "PRIVATE KEY").unwrap();
        let theirs = pem_body(pem, "PRIVATE KEY").unwrap();
        assert_eq!((ours.len(), &ours[..16]), (theirs.len(), &theirs[..16]));
        assert!(SigningKey::from_pem("garbage").unwrap_err().contains("BEGIN PRIVATE KEY"));
        let bad = BTreeMap::from([("ops".to_owned(), "AAAA".to_owned())]);
        let (name, problem) = TrustedKeys::parse(&bad).unwrap_err();
        assert_eq!(name, "ops");
        assert!(problem.contains("32 bytes"), "{problem}");
    }

    #[test]
    fn digest_is_sha256_in_hex() {
        assert_eq!(digest(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
