//! The workload's identity: a key made in this process, a certificate from the CA, renewed
//! before it expires. Present only when the proxy is started with `--ca-addr`.

mod ca_client;
mod rotate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use halyard_certs::{CertStore, SpiffeId, TrustBundle};

pub use ca_client::{control_channel, CaClient};
pub use rotate::{refresh_delay, run_rotation};

/// How the proxy obtains its certificate.
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
    /// How to reach the CA.
    pub options: IdentityOptions,
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
    /// A certificate library error.
    #[error(transparent)]
    Certs(#[from] halyard_certs::Error),
}

impl Identity {
    /// Prepares the identity (no certificate yet; [`run_rotation`] fetches it).
    pub fn new(options: IdentityOptions) -> Result<Arc<Self>, IdentityError> {
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
            options,
        }))
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
        return json!({ "identity": null, "reason": "started without --ca-addr" });
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
    json!({
        "identity": identity.options.identity.to_string(),
        "ca": identity.options.ca_addr,
        "certificate": current.as_ref().map(|l| info(&l.info)),
        "chain": current.as_ref().map(|l| l.chain_info.iter().map(info).collect::<Vec<_>>()),
        "roots": identity.store.bundle().fingerprints(),
    })
}

fn unix(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}
