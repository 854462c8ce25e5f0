//! Watches the policy directory and rescans the registry when it changes.

use std::sync::mpsc::channel;
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};

use super::error::{PolicyError, PolicyErrorKind};
use super::registry::PolicyRegistry;

/// How long the directory must stay quiet before a rescan, so that a file
/// being written is read once, when it is complete.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// A rescan also happens this often without any event, in case an event was
/// missed (overflowed inotify queue, network file systems).
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// Keeps the watcher alive; dropping it stops watching.
pub struct PolicyWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching `registry`'s directory on a thread of its own. Loads run on
/// that thread, off the request path.
pub fn watch(registry: &Arc<PolicyRegistry>, debounce: Duration, poll: Duration) -> Result<PolicyWatcher, PolicyError> {
    let Some(dir) = registry.dir().map(|d| d.to_path_buf()) else {
        return Err(PolicyError::new(PolicyErrorKind::Io, "-", "the registry has no policy directory to watch"));
    };
    let (tx, rx) = channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) must not trigger rescans; everything else
        // may mean a new file: create, close-after-write, rename, remove,
        // and the rename of a ConfigMap's `..data` symlink.
        let relevant = match &event {
            Ok(e) => !matches!(
                e.kind,
                EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read | AccessMode::Execute))
            ),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| watch_error(&dir, e))?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| watch_error(&dir, e))?;

    let registry: Weak<PolicyRegistry> = Arc::downgrade(registry);
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            crate::debounce::run(&rx, debounce, Some(poll), || {
                let Some(registry) = registry.upgrade() else { return false };
                let report = registry.rescan();
                if report != Default::default() {
                    tracing::debug!(?report, "policy directory rescanned");
                }
                true
            })
        })
        .map_err(|e| PolicyError::new(PolicyErrorKind::Runtime, "-", format!("cannot start the policy watcher: {e}")))?;
    Ok(PolicyWatcher { _watcher: watcher })
}

fn watch_error(dir: &std::path::Path, e: notify::Error) -> PolicyError {
    PolicyError::new(PolicyErrorKind::Io, "-", format!("cannot watch {}: {e}", dir.display()))
}
