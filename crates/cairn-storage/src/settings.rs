//! # Hub settings: small values changed while Cairn runs, kept where the hub lives
//!
//! The retention policy set through `/api/retention` must outlive the process that took it,
//! and in cluster mode the node: it lives wherever the hub lives. [`HubSettings`] is that seam,
//! a durable key → bytes map for a handful of small values. [`FileSettings`] keeps each value
//! in a file of the hub's directory (the embedded default); the cluster keeps them in its KV
//! bucket. It holds no partition state and is never on a hot path.

use std::path::{Path, PathBuf};

/// A durable map of a few small hub-wide values.
pub trait HubSettings: Send + Sync + std::fmt::Debug {
    /// The value kept under `key`, if any.
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Keeps `value` under `key`; durable when it returns.
    fn store(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Where `key` is kept, for messages that tell people what to fix.
    fn location(&self, key: &str) -> String;
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old content or the new,
/// never a mix, and the new one survives once this returns: written aside, fsynced, renamed
/// over, the directory fsynced.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut aside = path.as_os_str().to_owned();
    aside.push(".tmp");
    let aside = PathBuf::from(aside);
    let mut f = std::fs::File::create(&aside)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&aside, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Each value in `<dir>/<key>.json`, replaced with [`write_file_atomically`].
#[derive(Debug, Clone)]
pub struct FileSettings {
    dir: PathBuf,
}

impl FileSettings {
    pub fn new(dir: &Path) -> FileSettings {
        FileSettings {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }
}

impl HubSettings for FileSettings {
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let file = self.file(key);
        match std::fs::read(&file) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", file.display())),
        }
    }

    fn store(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let file = self.file(key);
        write_file_atomically(&file, value)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }

    fn location(&self, key: &str) -> String {
        self.file(key).display().to_string()
    }
}

/// Checks that `settings` behaves as a durable map: absent keys read as `None`, a value reads
/// back as stored, a second store replaces it, keys are independent, and `reopen` (a new handle
/// on the same place) sees the same values.
pub fn check_settings(settings: &dyn HubSettings, reopen: &dyn Fn() -> Box<dyn HubSettings>) {
    assert_eq!(settings.load("conformance-a").unwrap(), None);
    settings.store("conformance-a", b"{\"v\":1}").unwrap();
    settings.store("conformance-b", b"other").unwrap();
    assert_eq!(
        settings.load("conformance-a").unwrap().as_deref(),
        Some(&b"{\"v\":1}"[..])
    );
    settings.store("conformance-a", b"{\"v\":2}").unwrap();
    let again = reopen();
    assert_eq!(
        again.load("conformance-a").unwrap().as_deref(),
        Some(&b"{\"v\":2}"[..])
    );
    assert_eq!(
        again.load("conformance-b").unwrap().as_deref(),
        Some(&b"other"[..])
    );
    assert!(settings.location("conformance-a").contains("conformance-a"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_keep_values_across_handles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        check_settings(&FileSettings::new(&path), &|| {
            Box::new(FileSettings::new(&path))
        });
        assert!(path.join("conformance-a.json").exists());
        assert!(!path.join("conformance-a.json.tmp").exists());
    }
}
