//! The workload's identity from PEM files that something else keeps current (a mounted
//! Kubernetes secret, cert-manager, SPIRE's helper): read at start, read again whenever one of
//! them changes. A set of files that does not fit together is refused and the certificate in
//! service stays. The key is read into the rustls signing key and goes nowhere else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use halyard_certs::{CertStore, SpiffeId, TrustBundle};
use tokio_util::sync::CancellationToken;

use super::{Identity, IdentityError};

/// How often the files are checked for a change.
pub const POLL: Duration = Duration::from_secs(5);

/// Where the workload's certificate, key and trust roots are.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The identity the certificate must carry.
    pub identity: SpiffeId,
    /// The certificate chain, leaf first (PEM).
    pub cert_chain: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// Roots trusted for mesh peers and the control server (PEM).
    pub roots: PathBuf,
    /// Expected SPIFFE ID of the control server (default that of `halyard-control`).
    pub control_identity: Option<SpiffeId>,
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|e| IdentityError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn text(path: &Path) -> Result<String, IdentityError> {
    String::from_utf8(read(path)?).map_err(|_| IdentityError::File {
        path: path.display().to_string(),
        reason: "not PEM text".into(),
    })
}

/// The trust bundle of `files.roots`.
fn bundle(files: &CertFiles) -> Result<TrustBundle, IdentityError> {
    TrustBundle::from_pem(&text(&files.roots)?).map_err(|e| IdentityError::Roots {
        path: files.roots.clone(),
        reason: e.to_string(),
    })
}

/// Installs the chain and key of `files` in `store` (checked against the store's bundle).
fn install(store: &CertStore, files: &CertFiles) -> Result<(), IdentityError> {
    let chain = text(&files.cert_chain)?;
    let key = read(&files.key)?;
    store
        .install_key_pem(&key, &[chain])
        .map(drop)
        .map_err(|e| IdentityError::File {
            path: format!(
                "{} with {}",
                files.cert_chain.display(),
                files.key.display()
            ),
            reason: e.to_string(),
        })
}

/// A store holding the certificate of `files`, or why they do not fit together; with the
/// files' stamps from before they were read (so a change while reading is seen later).
pub(super) fn load(files: &CertFiles) -> Result<(Arc<CertStore>, Stamps), IdentityError> {
    let before = stamps(files);
    let store = CertStore::new(files.identity.clone(), bundle(files)?);
    install(&store, files)?;
    Ok((store, before))
}

/// Reads the files again into `store`: first into a store of its own, so that a set that
/// does not fit together changes nothing; then the new bundle and certificate in service.
fn reload(store: &CertStore, files: &CertFiles) -> Result<(), IdentityError> {
    let (trial, _) = load(files)?;
    store.set_bundle((*trial.bundle()).clone());
    install(store, files)
}

/// Modification time and length of each file, `None` for one that cannot be read.
pub(super) type Stamps = [Option<(SystemTime, u64)>; 3];

/// The stamps of the files now (a changed symlink target counts).
fn stamps(files: &CertFiles) -> Stamps {
    [&files.cert_chain, &files.key, &files.roots].map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    })
}

/// Watches `files` every `poll` until `shutdown`, installing each set that fits once it
/// differs from `seen` (the stamps of the set in service).
pub(super) async fn watch(
    identity: Arc<Identity>,
    files: CertFiles,
    mut seen: Stamps,
    poll: Duration,
    expiry: prometheus::Gauge,
    renewals: prometheus::IntCounterVec,
    shutdown: CancellationToken,
) {
    let set_expiry = |store: &CertStore| {
        if let Some(leaf) = store.current() {
            expiry.set(leaf.info.not_after as f64);
        }
    };
    // The certificate read at start counts as the first installed.
    set_expiry(&identity.store);
    renewals.with_label_values(&["ok"]).inc();
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = shutdown.cancelled() => return,
        }
        let now = stamps(&files);
        if now == seen {
            continue;
        }
        // Remembered even when the new set fails: it is tried again once it changes again
        // (a tool that writes the key after the chain).
        seen = now;
        match reload(&identity.store, &files) {
            Ok(()) => {
                set_expiry(&identity.store);
                renewals.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                renewals.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "certificate files changed but do not fit together; the previous certificate stays");
            }
        }
    }
}
