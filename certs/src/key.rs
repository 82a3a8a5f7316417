//! Workload key pairs (ECDSA P-256) and the CSRs that ask the CA to certify them.
//!
//! The private key never leaves this type except into a rustls signing key in the same
//! process; it has no `Debug`/`Display` that shows it and no accessor returning its bytes
//! outside the crate.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Error, SpiffeId};

/// A freshly generated P-256 key pair.
pub struct WorkloadKey {
    pair: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(P-256, private)")
    }
}

impl WorkloadKey {
    /// Generates a new ECDSA P-256 key pair.
    pub fn generate() -> Result<Self, Error> {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Ok(WorkloadKey { pair })
    }

    /// A PEM CSR for `id` (one URI SAN, no other names), signed with this key.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, Error> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, id.trust_domain());
        Ok(params.serialize_request(&self.pair)?.pem()?)
    }

    /// The key pair for in-crate signing of its own certificate (the public half is used).
    pub(crate) fn rcgen_pair(&self) -> &KeyPair {
        &self.pair
    }

    /// The private key for rustls; crate-private so it stays in this process's TLS stack.
    pub(crate) fn private_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }
}
