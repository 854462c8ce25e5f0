//! Reading an origin: what it lists (conditionally, so an unchanged origin
//! costs one `304`) and the components themselves, digest checked.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, ETAG, IF_NONE_MATCH, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use super::{lock, Credentials, OriginError, OriginErrorKind, Source};
use crate::policy::signing::digest;

/// Largest listing (an index or a manifest) read.
pub const MAX_LISTING_BYTES: usize = 1 << 20;
/// Largest component downloaded (a Python policy is about 20 MB).
pub const MAX_COMPONENT_BYTES: usize = 256 << 20;
/// Largest answer of a registry's token service read.
const MAX_TOKEN_BYTES: usize = 64 << 10;

/// The `Authorization` a registry last accepted for one source (a bearer
/// token from its token service, or Basic credentials), kept until refused.
pub type Authorization = Mutex<Option<HeaderValue>>;

/// Media type of an OCI image manifest, the only kind of manifest read.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The layer of a WebAssembly component artifact (CNCF TAG Runtime layout).
const WASM_LAYER: &str = "application/wasm";
/// Annotation (on the manifest or its layer) carrying the component's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.switchyard.signature";

/// One policy an origin serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The policy's name (the route's `policy`).
    pub name: String,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// Its signature (base64), if the origin gives one.
    pub signature: Option<String>,
    /// Where its bytes are.
    pub url: reqwest::Url,
    /// Its size, when the origin states it (checked on download).
    pub size: Option<u64>,
}

/// What a source's validator was the last time it was read whole: its
/// ETag. Without one the listing is read whole every time and compared.
/// (`Last-Modified` is never sent: it has a one-second grain, and so do the
/// ETags of servers that make them from it, such as nginx's: an ETag given
/// within two seconds of the listing's `Last-Modified` is not kept, so a
/// version published in the same second as a poll is not missed.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    etag: Option<HeaderValue>,
}

/// One read of a source's listing.
pub enum Listing {
    /// Nothing changed since `Validators` were taken.
    Unchanged,
    /// The listing now, and the validators to send next time.
    Changed(Vec<Listed>, Validators),
}

/// `index.json` of an HTTP origin.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    policies: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexEntry {
    name: String,
    /// Relative to the index's URL, or absolute.
    url: String,
    digest: String,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// Reads `source`'s listing, conditionally on `since`.
pub async fn list(client: &reqwest::Client, source: &Source, auth: &Authorization, since: &Validators) -> Result<Listing, OriginError> {
    let err = |kind, problem: String| OriginError { source: source.to_string(), kind, problem };
    let (url, accept) = match source {
        Source::Http(url) => (url.clone(), "application/json"),
        Source::Oci { .. } => (source.manifest_url(), OCI_MANIFEST),
    };
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(accept));
    if let Some(etag) = &since.etag {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    let response = get(client, source, auth, url, headers, None).await.map_err(|(kind, problem)| err(kind, problem))?;
    match response.status() {
        StatusCode::NOT_MODIFIED => return Ok(Listing::Unchanged),
        StatusCode::OK => {}
        status => return Err(err(OriginErrorKind::Status, format!("answered {status}"))),
    }
    let validators = Validators { etag: response.headers().get(ETAG).filter(|_| settled(response.headers())).cloned() };
    // Relative component URLs are relative to where the index was found.
    let index_url = response.url().clone();
    let body = read_capped(response, MAX_LISTING_BYTES).await.map_err(|(kind, problem)| err(kind, problem))?;
    let listed = match source {
        Source::Http(_) => {
            let index: Index = serde_json::from_slice(&body)
                .map_err(|e| err(OriginErrorKind::Malformed, format!("not an index (`{{\"policies\": [{{name, url, digest}}]}}`): {e}")))?;
            let mut listed = Vec::with_capacity(index.policies.len());
            for entry in index.policies {
                check_name(&entry.name).map_err(|p| err(OriginErrorKind::Malformed, p))?;
                check_digest_text(&entry.digest).map_err(|p| err(OriginErrorKind::Malformed, format!("policy `{}`: {p}", entry.name)))?;
                let url = index_url
                    .join(&entry.url)
                    .map_err(|e| err(OriginErrorKind::Malformed, format!("policy `{}`: url `{}`: {e}", entry.name, entry.url)))?;
                listed.push(Listed { name: entry.name, digest: entry.digest, signature: entry.signature, url, size: entry.size });
            }
            listed
        }
        Source::Oci { name, reference, .. } => {
            if reference.starts_with("sha256:") && digest(&body) != *reference {
                return Err(err(OriginErrorKind::DigestMismatch, format!("the manifest is not the pinned {reference}")));
            }
            let manifest: Manifest =
                serde_json::from_slice(&body).map_err(|e| err(OriginErrorKind::Malformed, format!("not an OCI manifest: {e}")))?;
            if manifest.media_type.as_deref().is_some_and(|t| t != OCI_MANIFEST) {
                return Err(err(OriginErrorKind::Malformed, format!("manifest of type {:?}, not {OCI_MANIFEST}", manifest.media_type)));
            }
            let [layer] = &manifest.layers[..] else {
                return Err(err(
                    OriginErrorKind::Malformed,
                    format!("a WebAssembly component artifact has one layer, this one has {}", manifest.layers.len()),
                ));
            };
            if layer.media_type != WASM_LAYER {
                return Err(err(OriginErrorKind::Malformed, format!("layer of type {}, not {WASM_LAYER}", layer.media_type)));
            }
            check_digest_text(&layer.digest).map_err(|p| err(OriginErrorKind::Malformed, p))?;
            let signature = manifest.annotations.get(SIGNATURE_ANNOTATION).or_else(|| layer.annotations.get(SIGNATURE_ANNOTATION)).cloned();
            vec![Listed {
                name: name.clone(),
                digest: layer.digest.clone(),
                signature,
                url: source.blob_url(&layer.digest),
                size: Some(layer.size),
            }]
        }
    };
    Ok(Listing::Changed(listed, validators))
}

/// Downloads a listed component and checks its size and digest.
pub async fn component(client: &reqwest::Client, source: &Source, auth: &Authorization, listed: &Listed) -> Result<Vec<u8>, OriginError> {
    let err =
        |kind, problem: String| OriginError { source: source.to_string(), kind, problem: format!("policy `{}`: {problem}", listed.name) };
    let response = get(client, source, auth, listed.url.clone(), HeaderMap::new(), Some(Duration::from_secs(120)))
        .await
        .map_err(|(kind, problem)| err(kind, problem))?;
    if response.status() != StatusCode::OK {
        return Err(err(OriginErrorKind::Status, format!("component download answered {}", response.status())));
    }
    let bytes = read_capped(response, MAX_COMPONENT_BYTES).await.map_err(|(kind, problem)| err(kind, problem))?;
    if let Some(size) = listed.size.filter(|s| *s != bytes.len() as u64) {
        return Err(err(OriginErrorKind::SizeMismatch, format!("{} bytes where the listing says {size}", bytes.len())));
    }
    let got = digest(&bytes);
    if got != listed.digest {
        return Err(err(OriginErrorKind::DigestMismatch, format!("bytes with digest {got}, not the listed {}", listed.digest)));
    }
    Ok(bytes)
}

/// GETs `url`. From a registry (an OCI source), a `401` challenge is
/// answered once: `Bearer` with a token from the token service it names (for
/// the scope it names, with the source's credentials if it has any), `Basic`
/// with the credentials. What was accepted is kept in `auth` for the next
/// requests; credentials never go anywhere but the token service and the
/// registry (redirects to other hosts drop `Authorization`).
async fn get(
    client: &reqwest::Client,
    source: &Source,
    auth: &Authorization,
    url: reqwest::Url,
    headers: HeaderMap,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, (OriginErrorKind, String)> {
    let send = |authorization: Option<HeaderValue>| {
        let mut request = client.get(url.clone()).headers(headers.clone());
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        request.send()
    };
    let unreachable = |e: reqwest::Error| (OriginErrorKind::Unreachable, plain(&e));
    let kept = lock(auth).clone();
    let response = send(kept).await.map_err(unreachable)?;
    let Source::Oci { scheme, repository, credentials, .. } = source else { return Ok(response) };
    // Only the registry asked is answered: not a host a redirect led to.
    if response.status() != StatusCode::UNAUTHORIZED || response.url().origin() != url.origin() {
        return Ok(response);
    }
    let Some((challenge, params)) = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).and_then(parse_challenge) else {
        return Ok(response);
    };
    let authorization = match challenge.as_str() {
        "bearer" => {
            let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{repository}:pull"));
            bearer_token(client, scheme, params.get("realm"), params.get("service"), &scope, credentials.as_ref()).await?
        }
        "basic" => match credentials {
            Some(c) => basic(c),
            None => return Ok(response),
        },
        _ => return Ok(response),
    };
    *lock(auth) = Some(authorization.clone());
    send(Some(authorization)).await.map_err(unreachable)
}

/// A token from a registry's token service (the Docker registry token
/// protocol, which Docker Hub, ghcr.io and most registries speak).
async fn bearer_token(
    client: &reqwest::Client,
    registry_scheme: &str,
    realm: Option<&String>,
    service: Option<&String>,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<HeaderValue, (OriginErrorKind, String)> {
    let malformed = |problem: String| (OriginErrorKind::Malformed, problem);
    let realm = realm.ok_or_else(|| malformed("a Bearer challenge without a realm".into()))?;
    let mut url = reqwest::Url::parse(realm).map_err(|e| malformed(format!("token service `{realm}`: {e}")))?;
    // Credentials over plain HTTP only to a registry that is plain HTTP itself.
    if url.scheme() != "https" && !(url.scheme() == "http" && registry_scheme == "http") {
        return Err(malformed(format!("token service `{realm}` is not https")));
    }
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", scope);
    }
    let mut request = client.get(url);
    if let Some(c) = credentials {
        request = request.basic_auth(&c.user, Some(&c.password));
    }
    let response = request.send().await.map_err(|e| (OriginErrorKind::Unreachable, format!("token service: {}", plain(&e))))?;
    if response.status() != StatusCode::OK {
        let hint = if credentials.is_some() { "" } else { " (no credentials in the source: oci://USER:PASSWORD@…)" };
        return Err((OriginErrorKind::Status, format!("the registry's token service answered {}{hint}", response.status())));
    }
    #[derive(Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let body = read_capped(response, MAX_TOKEN_BYTES).await?;
    let answer: Answer = serde_json::from_slice(&body).map_err(|e| malformed(format!("the token service's answer: {e}")))?;
    let token = answer.token.or(answer.access_token).ok_or_else(|| malformed("the token service's answer has no token".into()))?;
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| malformed("a token that is not a header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

fn basic(c: &Credentials) -> HeaderValue {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// `Bearer realm="…",service="…",scope="…"`: the scheme (lower case) and
/// its parameters.
fn parse_challenge(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let text = text.trim();
    let (scheme, mut rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => value.push(chars.next()?.1),
                        (_, c) => value.push(c),
                    }
                };
                (value, &quoted[end + 1..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            }
        };
        params.insert(key.trim().to_ascii_lowercase(), value);
        rest = after;
    }
    Some((scheme.to_ascii_lowercase(), params))
}

/// Whether the listing was last modified at least two seconds before the
/// answer (true when the server does not say).
fn settled(headers: &HeaderMap) -> bool {
    let time = |name| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
    match (time(reqwest::header::DATE), time(reqwest::header::LAST_MODIFIED)) {
        (Some(date), Some(modified)) => date.duration_since(modified).is_ok_and(|d| d >= Duration::from_secs(2)),
        _ => true,
    }
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, (OriginErrorKind, String)> {
    let too_large = || (OriginErrorKind::TooLarge, format!("over {} KiB", cap >> 10));
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| (OriginErrorKind::Unreachable, plain(&e)))? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A policy name that is a plain file name: letters, digits, `-`, `_` and
/// `.`, not first (never a path, a hidden file or a route's `~` instance).
pub fn check_name(name: &str) -> Result<(), String> {
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain && !name.is_empty() && !name.starts_with('.') && name.len() <= 128 {
        Ok(())
    } else {
        Err(format!("policy name `{name}` is not letters, digits, `-`, `_` and `.` (not first)"))
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn check_digest_text(text: &str) -> Result<(), String> {
    match text.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(format!("digest `{text}` is not `sha256:` and 64 lowercase hex digits")),
    }
}

/// A reqwest error without its URL's query (which may hold a token).
fn plain(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_challenge;

    #[test]
    fn reads_registry_challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/x:pull");
        let (scheme, params) = parse_challenge(r#"Basic realm="a \"quoted\" realm", charset=UTF-8"#).unwrap();
        assert_eq!((scheme.as_str(), params["realm"].as_str(), params["charset"].as_str()), ("basic", "a \"quoted\" realm", "UTF-8"));
        assert_eq!(parse_challenge("Bearer").unwrap().1.len(), 0);
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }
}
