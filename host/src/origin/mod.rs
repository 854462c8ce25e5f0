//! Policies pulled from an origin, for fleets: an HTTP index
//! (`https://…/index.json`) or OCI artifacts (`oci://registry/repo:tag`, one
//! WebAssembly component each), polled with conditional requests.
//!
//! A poll that finds a change downloads only components it does not have
//! (content addressed, digest checked), places them in the policy directory
//! ([`store`]) and has the registry rescan it: compiled, signature-checked
//! and loaded exactly like local files, the last good version serving when
//! a new one fails. The last good versions are recorded on disk, so a node
//! restarted while the origin is down (or serving a broken version) serves
//! them.

mod fetch;
mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

pub use fetch::{check_digest_text, check_name, Listed, SIGNATURE_ANNOTATION};
use fetch::{Listing, Validators};
use store::{Placed, Store};

use crate::policy::{PolicyErrorKind, PolicyRegistry};

/// Default time between two polls of an origin.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// One place policies are pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An index of several policies (`{"policies": [{name, url, digest, signature}]}`).
    Http(reqwest::Url),
    /// One policy as an OCI artifact: `oci://host/repo:tag` (HTTPS), or
    /// `oci+http://` for a registry without TLS. The name is the
    /// repository's last segment.
    Oci {
        /// `https` or `http`.
        scheme: &'static str,
        /// `host[:port]`.
        registry: String,
        /// `team/policies/NAME`.
        repository: String,
        /// A tag, or `sha256:…` to pin a digest.
        reference: String,
        /// The policy's name.
        name: String,
        /// `user:password@` of the source, for the registry's token
        /// service (or its Basic challenge); never shown.
        credentials: Option<Credentials>,
    },
}

/// A registry user and password (or token), from `oci://USER:PASSWORD@…`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password or access token.
    pub password: String,
}

impl Credentials {
    /// `user:password` as written in a source (a lone `token` is a password-less user).
    fn from_userinfo(userinfo: &str) -> Self {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        Self { user: user.to_owned(), password: password.to_owned() }
    }

    /// How they are shown: `user:…`, or `…` when the user name is all there is
    /// (then it is the secret).
    fn shown(&self) -> String {
        if self.password.is_empty() {
            "…".to_owned()
        } else {
            format!("{}:…", self.user)
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({})", self.shown())
    }
}

impl Source {
    /// Parses one `[policies] source` entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let oci = |rest: &str, scheme| {
            // `user:password@`, as written: anything up to the last `@`.
            let (credentials, rest) = match split_userinfo(rest) {
                Some((userinfo, after)) => (Some(Credentials::from_userinfo(userinfo)), after),
                None => (None, rest),
            };
            let text = Self::redact(text);
            let text = text.as_str();
            let (registry, path) = rest.split_once('/').ok_or_else(|| format!("`{text}`: expected oci://HOST/REPOSITORY:TAG"))?;
            let (repository, reference) = match path.split_once('@') {
                Some((repo, digest)) => {
                    check_digest_text(digest).map_err(|p| format!("`{text}`: {p}"))?;
                    (repo, digest)
                }
                None => path.rsplit_once(':').ok_or_else(|| format!("`{text}`: no tag (oci://HOST/REPOSITORY:TAG or @sha256:…)"))?,
            };
            let name = repository.rsplit('/').next().unwrap_or_default();
            check_name(name).map_err(|p| format!("`{text}`: {p}"))?;
            let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
            if registry.is_empty() || !valid(repository) || !valid(reference.trim_start_matches("sha256:")) || name.is_empty() {
                return Err(format!("`{text}`: expected oci://HOST/REPOSITORY:TAG"));
            }
            Ok(Self::Oci {
                scheme,
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                reference: reference.to_owned(),
                name: name.to_owned(),
                credentials,
            })
        };
        if let Some(rest) = text.strip_prefix("oci://") {
            oci(rest, "https")
        } else if let Some(rest) = text.strip_prefix("oci+http://") {
            oci(rest, "http")
        } else if text.starts_with("https://") || text.starts_with("http://") {
            reqwest::Url::parse(text).map(Self::Http).map_err(|e| format!("`{}`: {e}", Self::redact(text)))
        } else {
            Err(format!("`{}`: expected https://…/index.json, oci://HOST/REPOSITORY:TAG or oci+http://…", Self::redact(text)))
        }
    }

    /// `text` without what comes before the `@` of `user:password@` (the
    /// user name stays when a password follows it).
    fn redact(text: &str) -> String {
        let Some((scheme, rest)) = text.split_once("://") else { return text.to_owned() };
        match split_userinfo(rest) {
            Some((userinfo, after)) => format!("{scheme}://{}@{after}", Credentials::from_userinfo(userinfo).shown()),
            None => text.to_owned(),
        }
    }

    fn manifest_url(&self) -> reqwest::Url {
        self.oci_url("manifests", None)
    }

    fn blob_url(&self, digest: &str) -> reqwest::Url {
        self.oci_url("blobs", Some(digest))
    }

    fn oci_url(&self, kind: &str, digest: Option<&str>) -> reqwest::Url {
        match self {
            Self::Http(url) => url.clone(),
            Self::Oci { scheme, registry, repository, reference, .. } => {
                let text = format!("{scheme}://{registry}/v2/{repository}/{kind}/{}", digest.unwrap_or(reference));
                // Checked by `parse`: host and path characters only.
                reqwest::Url::parse(&text).unwrap_or_else(|_| reqwest::Url::parse("http://invalid.").expect("a valid URL"))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(url) => {
                // Never a password or a query (which may hold a token).
                let mut shown = url.clone();
                let _ = shown.set_password(None);
                let _ = shown.set_username("");
                let query = shown.query().is_some();
                shown.set_query(None);
                write!(f, "{shown}{}", if query { "?…" } else { "" })
            }
            Self::Oci { scheme, registry, repository, reference, credentials, .. } => {
                let prefix = if *scheme == "http" { "oci+http" } else { "oci" };
                let registry = match credentials {
                    Some(c) => format!("{}@{registry}", c.shown()),
                    None => registry.clone(),
                };
                let sep = if reference.starts_with("sha256:") { '@' } else { ':' };
                write!(f, "{prefix}://{registry}/{repository}{sep}{reference}")
            }
        }
    }
}

/// What went wrong reading an origin. Every kind is retried at the next poll;
/// what serves does not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginErrorKind {
    /// No answer: refused, timed out, reset.
    Unreachable,
    /// An answer other than 200 or 304.
    Status,
    /// Past the size cap.
    TooLarge,
    /// Not an index or manifest the router reads.
    Malformed,
    /// Bytes that are not what the listing says.
    DigestMismatch,
    /// A size other than the listing says.
    SizeMismatch,
    /// Two sources list the same policy name.
    Conflict,
    /// The local policy directory could not be written.
    Io,
    /// Applying a listing failed inside the router (a bug: reported, retried).
    Internal,
}

impl OriginErrorKind {
    /// A short stable name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Status => "status",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::DigestMismatch => "digest_mismatch",
            Self::SizeMismatch => "size_mismatch",
            Self::Conflict => "conflict",
            Self::Io => "io",
            Self::Internal => "internal",
        }
    }
}

/// A failed poll: which source, what kind of failure, what exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginError {
    /// The source as configured.
    pub source: String,
    /// What kind of failure.
    pub kind: OriginErrorKind,
    /// What exactly, for people.
    pub problem: String,
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.problem)
    }
}

/// What the node reports about its origin (`/admin/policies`, metrics).
#[derive(Debug, Clone, Default)]
pub struct OriginStatus {
    /// Polls that found nothing new.
    pub unchanged: u64,
    /// Polls that found and applied a change.
    pub changed: u64,
    /// Polls that failed.
    pub failed: u64,
    /// When the last poll ended, whatever its result.
    pub last_poll_at: Option<SystemTime>,
    /// When a poll last succeeded.
    pub last_success_at: Option<SystemTime>,
    /// When a poll last applied a change.
    pub last_change_at: Option<SystemTime>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<(OriginError, SystemTime)>,
    /// Every failure of the last poll (one per failing source or component).
    pub errors: Vec<OriginError>,
    /// What the origin lists now, by name: digest.
    pub listed: BTreeMap<String, String>,
}

/// Per source: the validators and listing of its last whole read.
#[derive(Clone)]
struct SourceState {
    validators: Validators,
    listed: Vec<Listed>,
    /// Its listing is not (wholly) applied yet: until a first listing is,
    /// even an empty one is a change; a component that failed to download
    /// is tried again.
    pending: bool,
}

/// Pulls policies from the configured sources into a policy directory.
pub struct OriginSync {
    sources: Vec<Source>,
    interval: Duration,
    store: Store,
    client: reqwest::Client,
    status: Mutex<OriginStatus>,
    /// Only the poll task touches it; a lock keeps `OriginSync` shareable.
    state: Mutex<Vec<SourceState>>,
    /// Per source: what its registry last accepted as `Authorization`.
    auth: Vec<fetch::Authorization>,
    /// What the last successful apply placed: a poll that would place the
    /// same (a source still failing) does not apply it again.
    applied: Mutex<Option<BTreeMap<String, Placed>>>,
}

impl OriginSync {
    /// Opens the policy directory `dir` (creating it) and places the last
    /// good versions recorded there, before the registry first reads it.
    pub fn open(sources: Vec<Source>, interval: Duration, dir: &Path) -> std::io::Result<Arc<Self>> {
        let store = Store::open(dir)?;
        match store.good() {
            Ok(good) => {
                // Over whatever was placed after them and did not serve.
                let there = good.into_iter().filter(|(_, p)| store.has(&p.digest)).collect();
                store.place(&there)?;
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), "cannot read the record of good pulled policies, serving the directory as it is: {e}")
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            // Blob stores behind registries redirect; a few hops at most.
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        let fresh = SourceState { validators: Validators::default(), listed: Vec::new(), pending: true };
        let state = Mutex::new(vec![fresh; sources.len()]);
        let auth = sources.iter().map(|_| fetch::Authorization::default()).collect();
        let (status, applied) = (Mutex::new(OriginStatus::default()), Mutex::new(None));
        Ok(Arc::new(Self { sources, interval, store, client, status, state, auth, applied }))
    }

    /// The sources, as configured.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Time between polls.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// What the node reports.
    pub fn status(&self) -> OriginStatus {
        lock(&self.status).clone()
    }

    /// Polls every `interval` until `registry` is gone, the first poll at once.
    pub fn spawn(self: &Arc<Self>, registry: Weak<PolicyRegistry>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(this.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(registry) = registry.upgrade() else { return };
                this.poll(registry).await;
            }
        });
    }

    /// One poll: read every source, apply a change, record the outcome.
    pub async fn poll(self: &Arc<Self>, registry: Arc<PolicyRegistry>) {
        let (changed, errors) = self.poll_once(registry).await;
        let now = SystemTime::now();
        let mut status = lock(&self.status);
        status.last_poll_at = Some(now);
        if changed {
            status.last_change_at = Some(now);
        }
        // One line per new problem, not one per poll.
        let before = std::mem::take(&mut status.errors);
        for e in errors.iter().filter(|e| !before.contains(e)) {
            tracing::error!(source = %e.source, kind = e.kind.as_str(), "policy origin: {}; what serves under its names is unchanged", e.problem);
        }
        match errors.first() {
            None => {
                if changed {
                    status.changed += 1;
                } else {
                    status.unchanged += 1;
                }
                if status.last_error.take().is_some() {
                    tracing::info!("policy origin reachable again");
                }
                status.last_success_at = Some(now);
            }
            // A poll with a failure is a failed poll, even when the other
            // sources' changes were applied.
            Some(e) => {
                status.failed += 1;
                status.last_error = Some((e.clone(), now));
            }
        }
        status.errors = errors;
    }

    /// Reads every source and applies what changed. A failing source (or
    /// component) holds back only itself: its policies keep serving as they
    /// are and it is read whole again at the next poll. Returns whether a
    /// change was applied, and the failures.
    async fn poll_once(self: &Arc<Self>, registry: Arc<PolicyRegistry>) -> (bool, Vec<OriginError>) {
        let mut states = lock(&self.state).clone();
        let mut errors = Vec::new();
        let mut changed = false;
        for ((source, state), auth) in self.sources.iter().zip(states.iter_mut()).zip(&self.auth) {
            match fetch::list(&self.client, source, auth, &state.validators).await {
                Ok(Listing::Changed(listed, validators)) => {
                    // The same listing read again (no ETag, or a new one over the same content) is no change.
                    let differs = listed != state.listed;
                    *state = SourceState { validators, listed, pending: state.pending || differs };
                }
                Ok(Listing::Unchanged) => {}
                Err(e) => errors.push(e),
            }
            changed |= state.pending;
        }
        if !changed {
            // New validators over the same content are kept.
            *lock(&self.state) = states;
            return (false, errors);
        }
        // By name. A name listed twice is ambiguous: what serves under it
        // stays, and the sources that list it are applied again next poll.
        let mut wanted: BTreeMap<String, (Placed, usize, &Listed)> = BTreeMap::new();
        let mut held_back = vec![false; self.sources.len()];
        let mut ambiguous = Vec::new();
        for (index, (source, state)) in self.sources.iter().zip(&states).enumerate() {
            for listed in &state.listed {
                if let Some((_, first, _)) = wanted.get(&listed.name) {
                    let also =
                        if *first == index { "twice in this listing".to_owned() } else { format!("also by {}", self.sources[*first]) };
                    errors.push(OriginError {
                        source: source.to_string(),
                        kind: OriginErrorKind::Conflict,
                        problem: format!("policy `{}` is listed {also}", listed.name),
                    });
                    (held_back[index], held_back[*first]) = (true, true);
                    ambiguous.push(listed.name.clone());
                    continue;
                }
                let placed = Placed { digest: listed.digest.clone(), signature: listed.signature.clone() };
                wanted.insert(listed.name.clone(), (placed, index, listed));
            }
        }
        for name in ambiguous {
            wanted.remove(&name);
        }
        let listed_now = wanted.iter().map(|(n, (p, _, _))| (n.clone(), p.digest.clone())).collect();
        let mut placed: BTreeMap<String, Placed> = BTreeMap::new();
        for (name, (want, index, listed)) in wanted {
            if !self.store.has(&want.digest) {
                let fetched = fetch::component(&self.client, &self.sources[index], &self.auth[index], listed).await;
                if let Err(e) = fetched.and_then(|bytes| self.store.put(&want.digest, &bytes).map_err(|e| self.io_error(&e))) {
                    // What serves under this name stays; the source is applied again next poll.
                    errors.push(e);
                    held_back[index] = true;
                    continue;
                }
            }
            placed.insert(name, want);
        }
        // The same placement as the last (a source still held back) is not applied again.
        let new_placement = lock(&self.applied).as_ref() != Some(&placed);
        if new_placement {
            let this = self.clone();
            let applied = placed.clone();
            // Files and compiles: off the async workers.
            let outcome = tokio::task::spawn_blocking(move || this.apply(&registry, &applied)).await.unwrap_or_else(|e| {
                Err(OriginError {
                    source: "policies.dir".into(),
                    kind: OriginErrorKind::Internal,
                    problem: format!("placing pulled policies failed: {e}"),
                })
            });
            if let Err(e) = outcome {
                // Nothing recorded: every source is read whole and applied again next poll.
                errors.push(e);
                return (false, errors);
            }
            lock(&self.status).listed = listed_now;
            *lock(&self.applied) = Some(placed);
        }
        // Sources held back are applied again next poll.
        for (state, held) in states.iter_mut().zip(held_back) {
            state.pending = held;
        }
        *lock(&self.state) = states;
        (new_placement, errors)
    }

    /// Places `wanted`, has the registry load it, and records what serves.
    fn apply(&self, registry: &PolicyRegistry, wanted: &BTreeMap<String, Placed>) -> Result<(), OriginError> {
        let changed = self.store.place(wanted).map_err(|e| self.io_error(&e))?;
        if !changed.is_empty() {
            let report = registry.rescan();
            tracing::info!(loaded = ?report.loaded, failed = ?report.failed, unloaded = ?report.unloaded, "policies pulled from the origin");
        }
        // A version is good once it serves with its signature accepted; a
        // failed one leaves the last good, and so does a name no longer listed.
        let accepted: BTreeMap<String, String> = registry
            .statuses()
            .into_iter()
            .filter(|s| s.last_error.as_ref().is_none_or(|e| e.kind() != PolicyErrorKind::Signature))
            .filter_map(|s| Some((s.name, s.digest?)))
            .collect();
        let mut good = self.store.good().unwrap_or_else(|e| {
            tracing::warn!("the record of good pulled policies was unreadable; writing it anew: {e}");
            BTreeMap::new()
        });
        for (name, placed) in wanted {
            if accepted.get(name) == Some(&placed.digest) {
                good.insert(name.clone(), placed.clone());
            }
        }
        self.store.set_good(&good).map_err(|e| self.io_error(&e))?;
        self.store.prune(wanted, &good).map_err(|e| self.io_error(&e))
    }

    fn io_error(&self, e: &std::io::Error) -> OriginError {
        OriginError { source: "policies.dir".into(), kind: OriginErrorKind::Io, problem: format!("cannot write pulled policies: {e}") }
    }
}

/// `(userinfo, the rest)` of what follows `scheme://`: up to the last `@`
/// (a pinned `@sha256:` aside), so that a password may hold `/`, `:` or `@`.
fn split_userinfo(rest: &str) -> Option<(&str, &str)> {
    let unpinned = rest.split("@sha256:").next().unwrap_or_default();
    let (userinfo, _) = unpinned.rsplit_once('@')?;
    Some((userinfo, &rest[userinfo.len() + 1..]))
}

/// Where pulled policies are kept when `policies.dir` is not set:
/// `$XDG_CACHE_HOME/switchyard/origin`, else `$HOME/.cache/switchyard/origin`.
pub fn default_dir() -> Option<PathBuf> {
    crate::policy::default_cache_dir().and_then(|d| d.parent().map(|p| p.join("origin")))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data, always consistent between statements.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources_and_names_bad_ones() {
        let ok = [
            ("https://origin.example/policies/index.json", "https://origin.example/policies/index.json"),
            ("oci://registry.example/team/policies/keep-private:v3", "oci://registry.example/team/policies/keep-private:v3"),
            ("oci+http://127.0.0.1:5000/policies/fallback-cheaper:prod", "oci+http://127.0.0.1:5000/policies/fallback-cheaper:prod"),
        ];
        for (text, shown) in ok {
            assert_eq!(Source::parse(text).unwrap().to_string(), shown);
        }
        let pinned = format!("oci://r.example/p/a@sha256:{}", "0".repeat(64));
        assert!(
            matches!(Source::parse(&pinned).unwrap(), Source::Oci { name, reference, .. } if name == "a" && reference.starts_with("sha256:"))
        );
        let Source::Oci { name, .. } = Source::parse("oci+http://127.0.0.1:5000/policies/fallback-cheaper:prod").unwrap() else { panic!() };
        assert_eq!(name, "fallback-cheaper");
        for bad in [
            "ftp://x/index.json",
            "oci://r.example/policies/..:1",
            "oci://registry-only",
            "oci://r.example/repo",
            "oci://r.example/p/a@sha256:12",
            "policies/index.json",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Source::parse("oci+http://127.0.0.1:5000/policies/a:prod").unwrap().manifest_url().as_str(),
            "http://127.0.0.1:5000/v2/policies/a/manifests/prod"
        );
    }

    #[test]
    fn registry_credentials_are_read_and_never_shown() {
        // A password may hold `/`, `:` and `@` as written (ECR and ACR passwords do).
        let source = Source::parse("oci://bot:s3cr@t/x:y%41@ghcr.io/team/policies/p:v1").unwrap();
        let Source::Oci { credentials: Some(c), registry, repository, .. } = &source else { panic!("{source:?}") };
        assert_eq!(
            (c.user.as_str(), c.password.as_str(), registry.as_str(), repository.as_str()),
            ("bot", "s3cr@t/x:y%41", "ghcr.io", "team/policies/p")
        );
        for shown in [source.to_string(), format!("{source:?}")] {
            assert!(!shown.contains("s3cr"), "{shown}");
        }
        assert_eq!(source.to_string(), "oci://bot:…@ghcr.io/team/policies/p:v1");
        // Refused sources never show it either, whatever the scheme.
        for (bad, shown) in [
            ("oci://bot:s3cret@ghcr.io", "bot:…@ghcr.io"),
            ("oci://bot:s3/cr@t@ghcr.io/p", "bot:…@ghcr.io/p"),
            ("oci://s3cret@ghcr.io/p", "…@ghcr.io/p"),
            ("https://bot:s3cret@exa mple/index.json", "bot:…@exa mple"),
            ("ftp://bot:s3cret@origin/index.json", "bot:…@origin"),
        ] {
            let problem = Source::parse(bad).unwrap_err();
            assert!(!problem.contains("s3") && problem.contains(shown), "{problem}");
        }
        let token_only = Source::parse("oci://s3cret@ghcr.io/p:v1").unwrap();
        assert_eq!(token_only.to_string(), "oci://…@ghcr.io/p:v1");
        assert!(!format!("{token_only:?}").contains("s3cret"));
        let pinned = format!("oci://bot:pw@ghcr.io/p@sha256:{}", "0".repeat(64));
        assert!(matches!(Source::parse(&pinned).unwrap(), Source::Oci { credentials: Some(c), .. } if c.password == "pw"));
        assert!(matches!(Source::parse("oci://ghcr.io/p:v1").unwrap(), Source::Oci { credentials: None, .. }));
    }
}
