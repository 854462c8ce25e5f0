//! Pulled policies on disk, in the policy directory the registry reads:
//!
//! - `.origin/sha256-<hex>`: components by digest, written once, checked.
//! - `.origin/good.json`: per name, the last digest that loaded and served;
//!   what a restart serves, whatever the origin says (or if it is down).
//! - `NAME.wasm` (and `NAME.wasm.sig`): what the registry loads, replaced
//!   by a rename so it never reads half a file.
//!
//! Nothing is removed because the origin stopped listing it: an empty or
//! partial listing (a publishing mistake) leaves every policy serving.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::signing::signature_path;
use crate::policy::POLICY_EXTENSION;

/// One policy as placed for the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// Its signature, written beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The policy directory of a node that pulls from an origin.
pub struct Store {
    dir: PathBuf,
    blobs: PathBuf,
}

impl Store {
    /// Opens (creating) `dir` and its `.origin` folder.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let blobs = dir.join(".origin");
        std::fs::create_dir_all(&blobs)?;
        Ok(Self { dir: dir.to_path_buf(), blobs })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs.join(digest.replace(':', "-"))
    }

    /// Whether the component of `digest` is already here.
    pub fn has(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Keeps a downloaded (digest-checked) component.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        write_atomically(&self.blob_path(digest), bytes)
    }

    /// The last good versions, by name (empty when none were recorded yet;
    /// an error when the record cannot be read).
    pub fn good(&self) -> io::Result<BTreeMap<String, Placed>> {
        match std::fs::read(self.blobs.join("good.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    /// Records the last good versions.
    pub fn set_good(&self, good: &BTreeMap<String, Placed>) -> io::Result<()> {
        write_atomically(&self.blobs.join("good.json"), &serde_json::to_vec_pretty(good).map_err(io::Error::other)?)
    }

    /// Puts `wanted` in the directory: changed components (and their
    /// signatures) renamed into place; other files are left alone. Returns
    /// the names written.
    pub fn place(&self, wanted: &BTreeMap<String, Placed>) -> io::Result<Vec<String>> {
        let mut changed = Vec::new();
        for (name, placed) in wanted {
            let wasm = self.dir.join(format!("{name}.{POLICY_EXTENSION}"));
            let sig = signature_path(&wasm);
            let blob = std::fs::read(self.blob_path(&placed.digest))?;
            let current_sig = std::fs::read_to_string(&sig).ok();
            let same_bytes = std::fs::read(&wasm).is_ok_and(|b| b == blob);
            if same_bytes && current_sig.as_deref().map(str::trim) == placed.signature.as_deref().map(str::trim) {
                continue;
            }
            // The signature first: the registry only reads it with new bytes.
            match &placed.signature {
                Some(signature) => write_atomically(&sig, format!("{}\n", signature.trim()).as_bytes())?,
                None => remove_if_there(&sig)?,
            }
            if !same_bytes {
                write_atomically(&wasm, &blob)?;
            }
            changed.push(name.clone());
        }
        Ok(changed)
    }

    /// Removes kept components that neither `a` nor `b` uses.
    pub fn prune(&self, a: &BTreeMap<String, Placed>, b: &BTreeMap<String, Placed>) -> io::Result<()> {
        let used: BTreeSet<String> = a.values().chain(b.values()).map(|p| p.digest.replace(':', "-")).collect();
        for entry in std::fs::read_dir(&self.blobs)? {
            let path = entry?.path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
            if file.starts_with("sha256-") && !used.contains(file) {
                remove_if_there(&path)?;
            }
        }
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Hidden, so the registry's scan skips it while it is being written.
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    // On disk before the rename: a power cut leaves the old file or the new one.
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_what_is_wanted_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (b"component a".as_slice(), b"component b".as_slice());
        let (da, db) = (crate::policy::signing::digest(a), crate::policy::signing::digest(b));
        store.put(&da, a).unwrap();
        store.put(&db, b).unwrap();
        std::fs::write(dir.path().join("stale.wasm"), b"old").unwrap();
        let wanted = BTreeMap::from([
            ("one".to_owned(), Placed { digest: da.clone(), signature: Some("c2ln".into()) }),
            ("two".to_owned(), Placed { digest: db.clone(), signature: None }),
        ]);
        let mut changed = store.place(&wanted).unwrap();
        changed.sort();
        assert_eq!(changed, ["one", "two"]);
        assert_eq!(std::fs::read(dir.path().join("one.wasm")).unwrap(), a);
        assert_eq!(std::fs::read_to_string(dir.path().join("one.wasm.sig")).unwrap(), "c2ln\n");
        assert!(dir.path().join("stale.wasm").exists(), "what the origin does not list stays");
        assert!(store.place(&wanted).unwrap().is_empty(), "nothing to do the second time");

        store.prune(&BTreeMap::from([("one".to_owned(), wanted["one"].clone())]), &BTreeMap::new()).unwrap();
        assert!(store.has(&da) && !store.has(&db));
        assert!(store.good().unwrap().is_empty(), "no record yet");
        store.set_good(&wanted).unwrap();
        assert_eq!(store.good().unwrap(), wanted);
        std::fs::write(dir.path().join(".origin/good.json"), b"{trunc").unwrap();
        assert!(store.good().is_err(), "a damaged record is an error, not an empty one");
    }
}
