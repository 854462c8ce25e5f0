//! The registry of loaded policies: one current version per policy name,
//! swapped atomically when its file changes, and a status per name that says
//! what is serving and what last failed. The last versions of each name are
//! kept (without warm instances) for an instant rollback.
//!
//! Candidates sit beside a policy as files: `NAME.shadow.wasm` (decides
//! every request off its path, to compare) and `NAME.canary.wasm` (serves a
//! share); they take NAME's configuration unless given their own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::error::{PolicyError, PolicyErrorKind};
use super::runtime::{content_hash, PolicyRuntime};
use super::signing::{digest, signature_path, TrustedKeys};
use super::version::LoadedPolicy;
use crate::contract::Backend;

/// File extension of policy components.
pub const POLICY_EXTENSION: &str = "wasm";

/// Configuration a policy receives when none is configured.
pub const EMPTY_CONFIG: &str = "{}";

/// What the registry knows about one policy name.
#[derive(Debug, Clone)]
pub struct PolicyStatus {
    /// The policy's name.
    pub name: String,
    /// The file it is loaded from.
    pub file: PathBuf,
    /// The version serving requests, if any.
    pub version: Option<String>,
    /// When the serving version was loaded.
    pub loaded_at: Option<SystemTime>,
    /// The last failure to load a new version of this file, cleared by the
    /// next successful load.
    pub last_error: Option<PolicyError>,
    /// When `last_error` happened.
    pub failed_at: Option<SystemTime>,
    /// Versions loaded since start.
    pub loads: u64,
    /// Loads that failed since start.
    pub failed_loads: u64,
    /// Earlier versions, newest first, that [`PolicyRegistry::activate`]
    /// can bring back.
    pub kept: Vec<String>,
    /// `sha256:<hex>` of the serving version's component.
    pub digest: Option<String>,
    /// The trusted key that signed the serving version, when keys are configured.
    pub signed_by: Option<String>,
    /// New versions refused for their signature since start.
    pub signature_refusals: u64,
    /// The serving version was activated by hand
    /// ([`PolicyRegistry::activate`]): a reload with new inputs
    /// (configuration, backends) reloads it, not the file, until the file
    /// changes.
    pub activated_by_hand: bool,
}

/// What one rescan of the directory did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RescanReport {
    /// Names whose new version now serves.
    pub loaded: Vec<String>,
    /// Names whose new file failed; the previous version (if any) still serves.
    pub failed: Vec<String>,
    /// Candidates (shadow, canary) whose file disappeared: they no longer
    /// run. A policy whose file disappears keeps serving its loaded version.
    pub unloaded: Vec<String>,
}

/// Identity of a file's content as seen by `stat`, to skip unchanged files
/// without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// A component's stamp and, when signatures are checked, its signature's.
type Stamps = (FileStamp, Option<FileStamp>);

/// Per-name bookkeeping of the reload path.
struct Entry {
    status: PolicyStatus,
    stamp: Option<Stamps>,
    /// What was last tried (loaded or failed): the bytes' hash, the config,
    /// and the generation of the backend list.
    tried: Option<(String, String, u64)>,
    /// Earlier versions, newest first, without warm instances.
    kept: std::collections::VecDeque<Arc<LoadedPolicy>>,
    /// Digest and signer of each version serving or kept, by version.
    provenance: HashMap<String, (String, Option<String>)>,
}

/// Where policies come from.
#[derive(Debug, Clone, Default)]
pub struct PolicySources {
    /// A directory of `NAME.wasm` files, each serving the policy `NAME`.
    pub dir: Option<PathBuf>,
    /// Policies built into the binary; a file of the same name overrides one.
    pub builtin: Vec<(String, &'static [u8])>,
    /// When set, a file loads only with a signature from one of these keys
    /// beside it (`NAME.wasm.sig`); built-in policies are part of the binary.
    pub trust: Option<Arc<TrustedKeys>>,
}

/// Where one policy's bytes are.
#[derive(Clone)]
enum PolicyFile {
    Path(PathBuf),
    Builtin(&'static [u8]),
}

/// Shown as the file of built-in policies.
const BUILTIN_FILE: &str = "<built-in>";

/// Joins a policy's name and a route's model into the name of the policy's
/// instance with that route's own configuration (`fallback-cheaper~eu`).
pub const INSTANCE_SEPARATOR: char = '~';

/// Earlier versions kept per name for a rollback.
pub const KEPT_VERSIONS: usize = 10;

/// The two kinds of candidate beside a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// `NAME.shadow`: decides every request off its path, for comparison.
    Shadow,
    /// `NAME.canary`: serves a share of requests, watched against NAME.
    Canary,
}

impl Candidate {
    /// The file-name suffix (`shadow`, `canary`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Canary => "canary",
        }
    }

    /// The name of the candidate beside `instance` (`NAME` or `NAME~MODEL`).
    pub fn name_for(self, instance: &str) -> String {
        match instance.split_once(INSTANCE_SEPARATOR) {
            Some((base, model)) => format!("{base}.{}{INSTANCE_SEPARATOR}{model}", self.as_str()),
            None => format!("{instance}.{}", self.as_str()),
        }
    }

    /// The policy a candidate's name stands beside, when it is one.
    pub fn base_of(name: &str) -> Option<String> {
        let (file, model) = match name.split_once(INSTANCE_SEPARATOR) {
            Some((file, model)) => (file, Some(model)),
            None => (name, None),
        };
        let base = file.strip_suffix(".shadow").or_else(|| file.strip_suffix(".canary"))?;
        Some(match model {
            Some(model) => format!("{base}{INSTANCE_SEPARATOR}{model}"),
            None => base.to_owned(),
        })
    }
}

/// Policies by name, from a directory and built-in components.
pub struct PolicyRegistry {
    runtime: PolicyRuntime,
    sources: PolicySources,
    /// What requests read: swapped whole on every change.
    serving: ArcSwap<HashMap<String, Arc<LoadedPolicy>>>,
    /// The reload path's state; its lock also serialises reloads.
    reload: Mutex<ReloadState>,
}

struct ReloadState {
    configs: HashMap<String, String>,
    backends: Vec<Backend>,
    /// Bumped whenever `backends` is replaced.
    generation: u64,
    entries: BTreeMap<String, Entry>,
}

impl PolicyRegistry {
    /// Loads every policy in `dir`, initialised with `backends` and, per
    /// policy name, the JSON configuration in `configs`. A policy that fails
    /// is reported in its status and does not serve; the others do.
    pub fn open(
        runtime: PolicyRuntime,
        sources: PolicySources,
        backends: Vec<Backend>,
        configs: HashMap<String, String>,
    ) -> Result<Self, PolicyError> {
        if let Some(dir) = sources.dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(PolicyError::new(
                PolicyErrorKind::Io,
                "-",
                format!("policy directory {} does not exist or is not a directory", dir.display()),
            ));
        }
        let registry = Self {
            runtime,
            sources,
            serving: ArcSwap::from_pointee(HashMap::new()),
            reload: Mutex::new(ReloadState { configs, backends, generation: 0, entries: BTreeMap::new() }),
        };
        registry.rescan();
        Ok(registry)
    }

    /// The directory this registry watches, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.sources.dir.as_deref()
    }

    /// The runtime policies are loaded into.
    pub fn runtime(&self) -> &PolicyRuntime {
        &self.runtime
    }

    /// The version of `name` serving now. Hold on to it for the whole request.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPolicy>> {
        self.serving.load().get(name).cloned()
    }

    /// The names of the policies serving now.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.serving.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// The status of every policy file seen.
    pub fn statuses(&self) -> Vec<PolicyStatus> {
        self.lock().entries.values().map(|e| e.status.clone()).collect()
    }

    /// Serves `version` of `name` again: the current one or one of the
    /// [`KEPT_VERSIONS`] before it, warmed first (outside the registry's
    /// lock). Until the file changes. A kept version loaded with another
    /// configuration or other backends is refused: reload instead.
    pub fn activate(&self, name: &str, version: &str) -> Result<Arc<LoadedPolicy>, String> {
        let current = self.serving.load().get(name).cloned();
        if let Some(current) = current.as_ref().filter(|c| c.version() == version) {
            return Ok(current.clone());
        }
        let chosen = {
            let state = self.lock();
            let entry = state.entries.get(name).ok_or_else(|| format!("no policy `{name}`"))?;
            let found = entry.kept.iter().find(|p| p.version() == version).cloned();
            found.ok_or_else(|| {
                let kept: Vec<&str> = entry.kept.iter().map(|p| p.version()).collect();
                format!("`{name}` has no kept version {version} (kept: {})", kept.join(", "))
            })?
        };
        if let Some(current) = &current {
            if chosen.config() != current.config() || chosen.backends() != current.backends() {
                return Err(format!("version {version} of `{name}` was loaded with another configuration or other backends"));
            }
        }
        chosen.probe_and_warm().map_err(|e| format!("version {version} cannot serve again: {e}"))?;
        let mut state = self.lock();
        let entry = state.entries.get_mut(name).ok_or_else(|| format!("no policy `{name}`"))?;
        let serving_now = self.serving.load().get(name).cloned();
        if serving_now.as_ref().map(|p| p.version()) != current.as_ref().map(|p| p.version()) {
            chosen.cool();
            return Err(format!("`{name}` changed while version {version} was warming; try again"));
        }
        entry.kept.retain(|p| p.version() != version);
        entry.status.activated_by_hand = true;
        if let Some(current) = current {
            current.cool();
            entry.kept.push_front(current);
            entry.kept.truncate(KEPT_VERSIONS);
        }
        entry.status.version = Some(chosen.version().to_owned());
        entry.status.loaded_at = Some(chosen.loaded_at());
        entry.status.kept = entry.kept.iter().map(|p| p.version().to_owned()).collect();
        let (digest, signed_by) = entry.provenance.get(version).cloned().unzip();
        entry.status.digest = digest;
        entry.status.signed_by = signed_by.flatten();
        let mut serving = (**self.serving.load()).clone();
        serving.insert(name.to_owned(), chosen.clone());
        self.serving.store(Arc::new(serving));
        tracing::warn!(policy = %name, version, "policy version activated by hand (until its file changes)");
        Ok(chosen)
    }

    /// The file a policy was loaded from, when it is a file.
    pub fn file_of(&self, name: &str) -> Option<PathBuf> {
        self.lock().entries.get(name).map(|e| e.status.file.clone()).filter(|f| f.as_os_str() != BUILTIN_FILE)
    }

    /// Replaces the backends and the policies' configurations, and reloads
    /// every policy whose inputs changed (all of them when the backends
    /// differ). A refused configuration leaves the previous version serving.
    pub fn reconfigure(&self, backends: Option<Vec<Backend>>, configs: HashMap<String, String>) -> RescanReport {
        let mut state = self.lock();
        state.configs = configs;
        if let Some(backends) = backends.filter(|b| *b != state.backends) {
            state.backends = backends;
            state.generation += 1;
        }
        drop(state);
        self.rescan()
    }

    /// Compares the directory with what serves, and loads, replaces or
    /// unloads accordingly. Safe to call at any time from any thread; runs
    /// one at a time.
    pub fn rescan(&self) -> RescanReport {
        let mut state = self.lock();
        let mut report = RescanReport::default();
        let mut files = match &self.sources.dir {
            None => BTreeMap::new(),
            Some(dir) => match policy_files(dir) {
                Ok(files) => files,
                Err(e) => {
                    // The directory itself is unreadable (being swapped, or
                    // gone): keep serving what we have.
                    tracing::warn!(dir = %dir.display(), "cannot list the policy directory: {e}");
                    return report;
                }
            },
        };
        for (name, bytes) in &self.sources.builtin {
            files.entry(name.clone()).or_insert(PolicyFile::Builtin(bytes));
        }
        // `NAME~MODEL` is NAME's file with a route's own configuration
        // (and so are its candidates').
        for instance in state.configs.keys() {
            if let Some(file) = instance.split_once(INSTANCE_SEPARATOR).and_then(|(base, _)| files.get(base)).cloned() {
                files.insert(instance.clone(), file);
            }
            for candidate in [Candidate::Shadow, Candidate::Canary] {
                let Some((base, _)) = instance.split_once(INSTANCE_SEPARATOR) else { continue };
                if let Some(file) = files.get(&candidate.name_for(base)).cloned() {
                    files.insert(candidate.name_for(instance), file);
                }
            }
        }

        let ReloadState { configs, backends, generation, entries } = &mut *state;
        let generation = *generation;
        let mut serving = (**self.serving.load()).clone();
        let mut changed = false;

        for (name, file) in &files {
            // A candidate takes its policy's configuration unless it has its own.
            let own = configs.get(name).or_else(|| Candidate::base_of(name).and_then(|base| configs.get(&base)));
            let config = own.map_or(EMPTY_CONFIG, String::as_str);
            let path = match file {
                PolicyFile::Path(path) => path.clone(),
                PolicyFile::Builtin(_) => PathBuf::from(BUILTIN_FILE),
            };
            let entry = entries.entry(name.clone()).or_insert_with(|| Entry {
                status: PolicyStatus {
                    name: name.clone(),
                    file: path.clone(),
                    version: None,
                    loaded_at: None,
                    last_error: None,
                    failed_at: None,
                    loads: 0,
                    failed_loads: 0,
                    kept: Vec::new(),
                    digest: None,
                    signed_by: None,
                    signature_refusals: 0,
                    activated_by_hand: false,
                },
                stamp: None,
                tried: None,
                kept: std::collections::VecDeque::new(),
                provenance: HashMap::new(),
            });
            entry.status.file = path.clone();
            let trust = self.sources.trust.as_deref().filter(|_| matches!(file, PolicyFile::Path(_)));
            let stamp = match file {
                PolicyFile::Path(path) => file_stamp(path).map(|s| (s, trust.and_then(|_| file_stamp(&signature_path(path))))),
                PolicyFile::Builtin(bytes) => Some((FileStamp { len: bytes.len() as u64, modified: None, inode: 0 }, None)),
            };
            let inputs_changed = entry.tried.as_ref().is_some_and(|(_, c, g)| c != config || *g != generation);
            if stamp.is_some() && stamp == entry.stamp && !inputs_changed {
                continue;
            }
            if entry.status.activated_by_hand && stamp == entry.stamp {
                // New inputs for a version activated by hand: it gets them,
                // and serves on until its file changes.
                if let Some(current) = serving.get(name).cloned() {
                    entry.tried = entry.tried.take().map(|(hash, _, _)| (hash, config.to_owned(), generation));
                    match current.reinit(config, backends) {
                        Ok(policy) => {
                            tracing::info!(policy = %name, version = %policy.version(), "version activated by hand reloaded with the new configuration (it serves until its file changes)");
                            entry.status.loaded_at = Some(policy.loaded_at());
                            entry.status.last_error = None;
                            entry.status.failed_at = None;
                            entry.status.loads += 1;
                            if let Some(previous) = serving.insert(name.clone(), policy) {
                                previous.cool();
                            }
                            changed = true;
                            report.loaded.push(name.clone());
                        }
                        Err(e) => {
                            record_failure(entry, e);
                            report.failed.push(name.clone());
                        }
                    }
                    continue;
                }
            }
            let read = match file {
                PolicyFile::Path(path) => std::fs::read(path).map(std::borrow::Cow::Owned),
                PolicyFile::Builtin(bytes) => Ok(std::borrow::Cow::Borrowed(*bytes)),
            };
            let bytes = match read {
                Ok(bytes) => bytes,
                Err(e) => {
                    record_failure(entry, PolicyError::new(PolicyErrorKind::Io, name, format!("cannot read {}: {e}", path.display())));
                    report.failed.push(name.clone());
                    continue;
                }
            };
            entry.stamp = stamp;
            let hash = content_hash(&bytes);
            let component_digest = digest(&bytes);
            // Before compiling, and again whenever the signature file changes,
            // even over bytes already tried: an unsigned component never
            // reaches wasmtime, and a serving one shows a bad new signature.
            let signed_by = match trust {
                None => None,
                Some(trust) => {
                    let signature = std::fs::read_to_string(signature_path(&path)).ok();
                    match trust.verify(&bytes, signature.as_deref()) {
                        Ok(key) => Some(key.to_owned()),
                        Err(refusal) => {
                            entry.status.signature_refusals += 1;
                            let error =
                                PolicyError::new(PolicyErrorKind::Signature, name, format!("{} refused: {refusal}", path.display()));
                            record_failure(entry, error);
                            report.failed.push(name.clone());
                            // Not `tried`: the same bytes load once a good signature arrives.
                            continue;
                        }
                    }
                }
            };
            if entry.tried.as_ref().is_some_and(|(h, c, g)| *h == hash && c == config && *g == generation) {
                // Touched but unchanged, or the same broken bytes again; a
                // signature refused earlier over the serving bytes, and now
                // good, clears its error.
                let serving_these = entry.status.digest.as_deref() == Some(component_digest.as_str());
                if serving_these && entry.status.last_error.as_ref().is_some_and(|e| e.kind() == PolicyErrorKind::Signature) {
                    entry.status.last_error = None;
                    entry.status.failed_at = None;
                }
                continue;
            }
            entry.tried = Some((hash.clone(), config.to_owned(), generation));
            match self.runtime.load(name, &bytes, config, backends) {
                Ok(policy) => {
                    entry.provenance.insert(policy.version().to_owned(), (component_digest.clone(), signed_by.clone()));
                    entry.status.digest = Some(component_digest);
                    entry.status.signed_by = signed_by;
                    tracing::info!(policy = %name, version = %policy.version(), file = %path.display(), "policy loaded");
                    entry.status.version = Some(policy.version().to_owned());
                    entry.status.loaded_at = Some(policy.loaded_at());
                    entry.status.last_error = None;
                    entry.status.failed_at = None;
                    entry.status.loads += 1;
                    entry.status.activated_by_hand = false;
                    let loaded = policy.version().to_owned();
                    if let Some(previous) = serving.insert(name.clone(), policy) {
                        previous.cool();
                        entry.kept.retain(|p| p.version() != previous.version());
                        entry.kept.push_front(previous);
                    }
                    // The serving version is not also a kept one (a reload with a new config keeps the hash).
                    entry.kept.retain(|p| p.version() != loaded);
                    entry.kept.truncate(KEPT_VERSIONS);
                    entry.status.kept = entry.kept.iter().map(|p| p.version().to_owned()).collect();
                    let live: Vec<&str> = entry.kept.iter().map(|p| p.version()).chain([loaded.as_str()]).collect();
                    entry.provenance.retain(|v, _| live.contains(&v.as_str()));
                    changed = true;
                    report.loaded.push(name.clone());
                }
                Err(e) => {
                    record_failure(entry, e);
                    report.failed.push(name.clone());
                }
            }
        }

        let gone: Vec<String> = entries.keys().filter(|n| !files.contains_key(*n)).cloned().collect();
        for name in gone {
            // A policy routes requests: losing its file (a mistaken delete,
            // a deploy's gap) must not fail them. It serves on, with its
            // kept versions, until a new file or a restart. A candidate's
            // file going is how it is stopped.
            if Candidate::base_of(&name).is_none() && serving.contains_key(&name) {
                let entry = entries.get_mut(&name).expect("a name listed from the entries");
                if entry.stamp.take().is_some() {
                    tracing::warn!(policy = %name, "policy file removed; the loaded version serves on until a new file or a restart (to retire a policy, remove its routes)");
                }
                continue;
            }
            entries.remove(&name);
            if serving.remove(&name).is_some() {
                tracing::info!(policy = %name, "candidate's file removed; it no longer runs");
                changed = true;
                report.unloaded.push(name);
            }
        }

        if changed {
            self.serving.store(Arc::new(serving));
        }
        report
    }

    fn lock(&self) -> MutexGuard<'_, ReloadState> {
        // A panic while reloading cannot leave `ReloadState` half-updated in a
        // way that matters: the worst is a file tried again.
        self.reload.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn record_failure(entry: &mut Entry, error: PolicyError) {
    let then = if entry.status.version.is_some() { "the previous version keeps serving" } else { "no version of it serves" };
    tracing::error!(policy = %entry.status.name, file = %entry.status.file.display(), "policy not loaded, {then}: {error}");
    entry.status.last_error = Some(error);
    entry.status.failed_at = Some(SystemTime::now());
    entry.status.failed_loads += 1;
}

/// `NAME.wasm` files of the directory, by name. Hidden files (such as the
/// `..data` folder of a Kubernetes ConfigMap) are skipped; symlinks are
/// followed. Names with [`INSTANCE_SEPARATOR`] are skipped: it names a
/// policy's instance with a route's configuration.
fn policy_files(dir: &Path) -> std::io::Result<BTreeMap<String, PolicyFile>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (path.file_stem().and_then(|s| s.to_str()), path.extension()) else { continue };
        if ext != POLICY_EXTENSION || stem.starts_with('.') || !path.is_file() {
            continue;
        }
        if stem.contains(INSTANCE_SEPARATOR) {
            tracing::warn!(file = %path.display(), "skipped: `{INSTANCE_SEPARATOR}` in a policy's name is reserved for routes' own configurations");
            continue;
        }
        files.insert(stem.to_owned(), PolicyFile::Path(path));
    }
    Ok(files)
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { len: meta.len(), modified: meta.modified().ok(), inode: meta.ino() })
}
