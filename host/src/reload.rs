//! Hot reload of the configuration file: on change, the new file is parsed
//! and checked whole; only a valid one replaces the configuration serving
//! now. A broken file is reported and changes nothing.

use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::gateway::Gateway;

/// Keeps the watcher alive; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Watches the gateway's configuration file (through its directory, so that
/// replacing the file by a rename or a ConfigMap symlink swap is seen) and
/// applies every valid version. `None` when it serves no file.
pub fn watch_config(gateway: &Arc<Gateway>) -> notify::Result<Option<ConfigWatcher>> {
    let Some(file) = gateway.config_file() else { return Ok(None) };
    let path = file.path.clone();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let (tx, rx) = channel::<()>();
    let name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only changes to the file itself, or a ConfigMap's `..data` swap;
        // other files in the directory (logs, say) must not delay a reload.
        let relevant = match &event {
            Ok(e) => {
                !e.kind.is_access()
                    && e.paths
                        .iter()
                        .any(|p| p.file_name().is_some_and(|n| Some(n) == name.as_deref() || n.to_string_lossy().starts_with("..")))
            }
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let gateway: Weak<Gateway> = Arc::downgrade(gateway);
    let mut last = std::fs::read(&path).ok();
    std::thread::Builder::new().name("config-watch".into()).spawn(move || {
        crate::debounce::run(&rx, Duration::from_millis(100), None, || {
            let current = std::fs::read(&path).ok();
            if current == last {
                return true;
            }
            last = current;
            let Some(gateway) = gateway.upgrade() else { return false };
            match gateway.reload_file() {
                Ok(Some(report)) => tracing::info!(
                    file = %path.display(),
                    loaded = ?report.loaded, failed = ?report.failed, unloaded = ?report.unloaded,
                    "configuration reloaded"
                ),
                Ok(None) => {}
                Err(e) => tracing::error!("configuration not reloaded, the previous one keeps serving: {e}"),
            }
            true
        })
    })?;
    Ok(Some(ConfigWatcher { _watcher: watcher }))
}
