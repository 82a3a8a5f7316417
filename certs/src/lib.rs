//! Halyard's identity core: SPIFFE IDs, the CA, workload keys and CSRs, trust bundles, the
//! rotating certificate store and rustls configs whose verifiers check SPIFFE identities.

pub mod ca;
pub mod caservice;
mod key;
pub mod pem;
pub mod spiffe;
pub mod store;
pub mod tls;
pub mod verify;

use std::path::{Path, PathBuf};

pub use ca::{CaPolicy, CertificateAuthority, SignError};
pub use key::WorkloadKey;
pub use spiffe::{IdError, SpiffeId};
pub use store::CertStore;
pub use verify::{TrustBundle, VerifyError};

/// Errors of the identity crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed SPIFFE ID or trust domain.
    #[error(transparent)]
    Id(#[from] IdError),
    /// Key or certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Invalid input (certificates, keys, chains).
    #[error("{0}")]
    Invalid(String),
    /// rustls refused a key or configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Prefixes the message with the file it concerns (I/O errors already name theirs).
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Error::Io { .. } => self,
            other => Error::Invalid(format!("{}: {other}", path.display())),
        }
    }
}
