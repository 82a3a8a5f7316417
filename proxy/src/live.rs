//! The live configuration: one immutable snapshot behind an `ArcSwap`, replaced whole on reload
//! (from a file) or on a push (from the control server).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use halyard_filters::jwt::JwksStore;
use halyard_xds::{LoadError, ProxyConfig};
use tokio_util::sync::CancellationToken;

use crate::snapshot::{BuildError, Snapshot};
use crate::telemetry::metrics::Metrics;

/// How often the config file is checked for changes.
const POLL: Duration = Duration::from_millis(500);

/// Why a configuration could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Reading, parsing or validating the file failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Compiling it failed.
    #[error("{}: {source}", path.display())]
    Build {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: BuildError,
    },
    /// A pushed configuration breaks the resource rules.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A pushed configuration could not be compiled.
    #[error(transparent)]
    Compile(#[from] BuildError),
}

/// File identity used to notice changes (also replacement by rename).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Where the configuration comes from.
enum Origin {
    /// A file, re-read when it changes or on SIGHUP.
    File {
        path: PathBuf,
        seen: Mutex<Option<Stamp>>,
    },
    /// Pushes from the control server ([`Live::apply`]).
    Pushed,
}

/// The applied configuration and where it comes from.
pub struct Live {
    current: ArcSwap<Snapshot>,
    /// JWT key sets, kept across snapshots (fetched keys survive config updates).
    jwks: Arc<JwksStore>,
    origin: Origin,
    /// Whether a configuration has been applied (pushed configs start empty).
    applied: AtomicBool,
}

impl Live {
    /// Loads and compiles the file; the first snapshot.
    pub fn from_file(path: &Path, jwks: Arc<JwksStore>) -> Result<Self, ApplyError> {
        let seen = stamp(path);
        let snapshot = Self::build(path, None, &jwks)?;
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot),
            jwks,
            origin: Origin::File {
                path: path.to_path_buf(),
                seen: Mutex::new(seen),
            },
            applied: AtomicBool::new(true),
        })
    }

    /// An empty configuration waiting for the control server's first push.
    pub fn pushed(initial: ProxyConfig, jwks: Arc<JwksStore>) -> Result<Self, ApplyError> {
        Ok(Self {
            current: ArcSwap::from_pointee(Snapshot::build(initial, None, &jwks)?),
            jwks,
            origin: Origin::Pushed,
            applied: AtomicBool::new(false),
        })
    }

    /// Whether a configuration is in force (always, for files; after the first push otherwise).
    pub fn has_config(&self) -> bool {
        self.applied.load(Ordering::Acquire)
    }

    /// Validates, compiles and swaps in a pushed configuration; on error the current
    /// snapshot stays. In-flight requests keep the snapshot they started with.
    pub fn apply(&self, config: ProxyConfig) -> Result<(), ApplyError> {
        let errors = halyard_xds::validate(&config);
        if !errors.is_empty() {
            return Err(ApplyError::Invalid(
                errors.iter().map(ToString::to_string).collect(),
            ));
        }
        let previous = self.current.load();
        let next = Snapshot::build(config, Some(&previous), &self.jwks)?;
        tracing::info!(version = %next.version, "configuration applied");
        self.current.store(Arc::new(next));
        self.applied.store(true, Ordering::Release);
        Ok(())
    }

    fn build(
        path: &Path,
        previous: Option<&Snapshot>,
        jwks: &Arc<JwksStore>,
    ) -> Result<Snapshot, ApplyError> {
        let config = halyard_xds::load_file(path)?;
        Snapshot::build(config, previous, jwks).map_err(|source| ApplyError::Build {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The snapshot in force; keep it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Re-reads the file and swaps in the result; on error the current snapshot stays.
    /// Nothing to do for pushed configurations.
    pub fn reload(&self) -> Result<(), ApplyError> {
        let Origin::File { path, seen } = &self.origin else {
            return Ok(());
        };
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = stamp(path);
        let previous = self.current.load();
        let next = Self::build(path, Some(&previous), &self.jwks)?;
        tracing::info!(version = %next.version, "configuration applied");
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Whether the file changed since it was last read.
    fn changed(&self) -> bool {
        let Origin::File { path, seen } = &self.origin else {
            return false;
        };
        let now = stamp(path);
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        now.is_some() && now != *seen
    }

    fn reload_logged(&self, metrics: &Metrics, why: &str) {
        match self.reload() {
            Ok(()) => metrics.reloads.with_label_values(&["ok"]).inc(),
            Err(e) => {
                metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    trigger = why,
                    "configuration rejected, keeping the previous one: {e}"
                );
            }
        }
    }

    /// Reloads on SIGHUP and when the file changes; also sweeps idle pooled connections.
    /// Ends when `shutdown` is cancelled.
    pub async fn watch(&self, metrics: &Metrics, shutdown: CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; file changes still reload");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweeps = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload_logged(metrics, "SIGHUP");
                }
                _ = tick.tick() => {
                    if self.changed() {
                        self.reload_logged(metrics, "file change");
                    }
                    sweeps += 1;
                    if sweeps.is_multiple_of(10) {
                        self.load().sweep_pools();
                    }
                }
            }
        }
    }
}
