//! The workload's identity: a key made in this process and a certificate from the CA, renewed
//! before it expires (`--ca-addr`), or a certificate and key from PEM files kept current by
//! something else (`--cert-chain-file`). Absent without either.

mod ca_client;
mod files;
mod rotate;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use halyard_certs::{CertStore, SpiffeId, TrustBundle};

pub use ca_client::{control_channel, CaClient};
pub use files::CertFiles;
pub use rotate::{refresh_delay, run_rotation};

/// Where the workload's certificate comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// From the CA over gRPC, for a key made in this process.
    Ca(IdentityOptions),
    /// From PEM files, read again when they change.
    Files(CertFiles),
}

impl From<IdentityOptions> for IdentitySource {
    fn from(o: IdentityOptions) -> Self {
        IdentitySource::Ca(o)
    }
}

/// How the proxy obtains its certificate from the CA.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// The CA's gRPC address (`host:port`).
    pub ca_addr: String,
    /// Roots that vouch for the CA's TLS certificate and for mesh peers; without it the CA is
    /// reached in plaintext (development) and the bundle comes from the CA's answer.
    pub ca_root_file: Option<PathBuf>,
    /// Expected SPIFFE ID of the CA server when TLS is used.
    pub ca_identity: Option<SpiffeId>,
    /// Bearer token file presented to the CA (re-read at each request).
    pub token_file: Option<PathBuf>,
    /// The workload's identity.
    pub identity: SpiffeId,
    /// Requested certificate lifetime.
    pub cert_ttl: Duration,
}

/// The workload's identity material and how to renew it.
pub struct Identity {
    /// The certificate in service and the trust bundle.
    pub store: Arc<CertStore>,
    /// Where the certificate comes from.
    pub source: IdentitySource,
    /// With files: their stamps when the certificate in service was read.
    loaded: Option<files::Stamps>,
}

/// Why the identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The root file could not be read or parsed.
    #[error("{path}: {reason}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate or key file could not be read, or they do not fit together.
    #[error("{path}: {reason}")]
    File {
        /// The file (or the pair of files).
        path: String,
        /// Why (never the key's contents).
        reason: String,
    },
    /// A certificate library error.
    #[error(transparent)]
    Certs(#[from] halyard_certs::Error),
}

impl Identity {
    /// Prepares the identity: from the CA, no certificate yet ([`run_rotation`] fetches it);
    /// from files, the certificate they hold, checked now.
    pub fn new(source: impl Into<IdentitySource>) -> Result<Arc<Self>, IdentityError> {
        let options = match source.into() {
            IdentitySource::Ca(o) => o,
            IdentitySource::Files(f) => {
                let (store, stamps) = files::load(&f)?;
                return Ok(Arc::new(Identity {
                    store,
                    source: IdentitySource::Files(f),
                    loaded: Some(stamps),
                }));
            }
        };
        let bundle = match &options.ca_root_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| IdentityError::Roots {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                TrustBundle::from_pem(&text).map_err(|e| IdentityError::Roots {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            // Plaintext development mode: replaced by the CA's root with the first answer.
            None => TrustBundle::empty(),
        };
        Ok(Arc::new(Identity {
            store: CertStore::new(options.identity.clone(), bundle),
            source: IdentitySource::Ca(options),
            loaded: None,
        }))
    }

    /// The workload's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        self.store.identity()
    }

    /// The CA's options, when certificates come from the CA.
    pub fn ca(&self) -> Option<&IdentityOptions> {
        match &self.source {
            IdentitySource::Ca(o) => Some(o),
            IdentitySource::Files(_) => None,
        }
    }

    /// Whether the control server is reached over TLS with this identity: with roots to check
    /// it by (`--ca-root-file`, always given with certificate files).
    pub fn control_over_tls(&self) -> bool {
        match &self.source {
            IdentitySource::Ca(o) => o.ca_root_file.is_some(),
            IdentitySource::Files(_) => true,
        }
    }

    /// The control server's expected SPIFFE ID when one was given.
    pub fn control_identity(&self) -> Option<&SpiffeId> {
        match &self.source {
            IdentitySource::Ca(o) => o.ca_identity.as_ref(),
            IdentitySource::Files(f) => f.control_identity.as_ref(),
        }
    }

    /// Whether a certificate is in service.
    pub fn ready(&self) -> bool {
        self.store.current().is_some()
    }
}

/// What `GET /certs` shows: identity, certificate validity and serial, chain and root
/// fingerprints. Never key material.
pub fn certs_json(identity: Option<&Identity>) -> serde_json::Value {
    use serde_json::json;
    let Some(identity) = identity else {
        return json!({ "identity": null, "reason": "started without --ca-addr or --cert-chain-file" });
    };
    let info = |i: &halyard_certs::verify::CertInfo| {
        json!({
            "identity": i.identity.as_ref().map(|id| id.to_string()),
            "serial": i.serial,
            "not_before": crate::telemetry::access_log::rfc3339(unix(i.not_before)),
            "not_after": crate::telemetry::access_log::rfc3339(unix(i.not_after)),
            "not_after_unix": i.not_after,
            "sha256": i.fingerprint,
        })
    };
    let current = identity.store.current();
    let files = match &identity.source {
        IdentitySource::Ca(_) => serde_json::Value::Null,
        IdentitySource::Files(f) => json!({
            "cert_chain": f.cert_chain.display().to_string(),
            "key": f.key.display().to_string(),
            "roots": f.roots.display().to_string(),
        }),
    };
    json!({
        "identity": identity.id().to_string(),
        "ca": identity.ca().map(|o| o.ca_addr.as_str()),
        "files": files,
        "certificate": current.as_ref().map(|l| info(&l.info)),
        "chain": current.as_ref().map(|l| l.chain_info.iter().map(info).collect::<Vec<_>>()),
        "roots": identity.store.bundle().fingerprints(),
    })
}

fn unix(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}
