//! Hot reload of the configuration file: on change, the new file is parsed
//! and checked whole; only a valid one replaces the configuration serving
//! now. A broken file is reported and changes nothing.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config::Config;
use crate::gateway::Gateway;

/// Keeps the watcher alive; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `path` (through its directory, so that replacing the file by a
/// rename or a ConfigMap symlink swap is seen) and applies every valid
/// version to `gateway`.
pub fn watch_config(path: &Path, gateway: &Arc<Gateway>) -> notify::Result<ConfigWatcher> {
    let path = path.to_path_buf();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let (tx, rx) = channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let gateway: Weak<Gateway> = Arc::downgrade(gateway);
    let mut last = std::fs::read(&path).ok();
    std::thread::Builder::new().name("config-watch".into()).spawn(move || loop {
        match rx.recv() {
            Ok(()) => {}
            Err(_) => return,
        }
        // Let a burst of events (a rename, a slow write) settle.
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let current = std::fs::read(&path).ok();
        if current == last {
            continue;
        }
        last = current;
        let Some(gateway) = gateway.upgrade() else { return };
        match Config::load(&path).and_then(|config| gateway.reconfigure(config)) {
            Ok(report) => tracing::info!(file = %path.display(), ?report, "configuration reloaded"),
            Err(e) => tracing::error!("configuration not reloaded, the previous one keeps serving: {e}"),
        }
    })?;
    Ok(ConfigWatcher { _watcher: watcher })
}
