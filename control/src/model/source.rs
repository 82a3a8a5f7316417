//! Where the mesh model is read from: the [`ModelSource`] trait, and [`DirectorySource`], a
//! directory of YAML (`--config DIR`, `check DIR`). A Kubernetes source implements the same
//! trait; what loads and watches the model ([`MeshState`](crate::mesh_state::MeshState),
//! `check`) only knows the trait.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{load_dir, Diagnostic, Model};

/// An input the mesh model is read from. Its methods block (they read files or wait on an
/// API): async callers run [`ModelSource::load`] on a blocking thread.
pub trait ModelSource: Send + Sync {
    /// Reads the whole input: the model of everything that loaded, and every problem found,
    /// sorted by origin.
    fn load(&self) -> (Model, Vec<Diagnostic>);

    /// The input, for messages: a directory's path.
    fn describe(&self) -> String;

    /// A fingerprint of the input as it is now: while it stays the same, [`ModelSource::load`]
    /// reads the same model. Far cheaper than loading; a watcher polls it.
    fn fingerprint(&self) -> u64;
}

/// A directory of YAML manifests, read by [`load_dir`].
#[derive(Debug, Clone)]
pub struct DirectorySource {
    dir: PathBuf,
}

impl DirectorySource {
    /// The manifests under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl ModelSource for DirectorySource {
    fn load(&self) -> (Model, Vec<Diagnostic>) {
        load_dir(&self.dir)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    /// A hash of the names, sizes and modification times of the directory's YAML files.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        yaml_files(&self.dir).hash(&mut h);
        h.finish()
    }
}

/// Names, sizes and modification times of the YAML files under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push((p, m.len(), m.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_loads_and_its_fingerprint_follows_its_yaml_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = DirectorySource::new(dir.path());
        assert_eq!(src.describe(), dir.path().display().to_string());
        let empty = src.fingerprint();
        assert_eq!(src.fingerprint(), empty, "stable while nothing changes");
        std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(src.fingerprint(), empty, "only YAML files count");
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n\
                    spec: {hosts: [a.example.com], ports: [{number: 80, name: http}]}\n";
        std::fs::create_dir(dir.path().join("sub")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("sub/a.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        let one = src.fingerprint();
        assert_ne!(one, empty);
        let (model, diags) = src.load();
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(model.service_entries.len(), 1);
        // A change of size is seen even within the file system's time resolution.
        std::fs::write(dir.path().join("sub/a.yaml"), format!("{yaml}# more\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(src.fingerprint(), one);
    }
}
