//! The control server's own TLS certificate, issued in-process by its CA.
//!
//! It carries the SPIFFE ID `spiffe://TD/ns/halyard-system/sa/halyard-control` (which
//! Halyard's proxies verify) *and* DNS names (`--tls-dns-name`), because ordinary gRPC
//! clients — grpcio, grpcurl, istio-agent — check a host name and cannot be told to check a
//! URI SAN instead. Workload CSRs never get DNS names; this issuance is the CA's own.

use std::sync::Arc;
use std::time::Duration;

use halyard_certs::{CertificateAuthority, SpiffeId, WorkloadKey};

/// Issues the control server's serving certificates.
pub struct ServingIssuer {
    ca: Arc<CertificateAuthority>,
    identity: SpiffeId,
    dns_names: Vec<String>,
}

impl ServingIssuer {
    /// An issuer for `identity` with `dns_names`, signing with `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, identity: SpiffeId, dns_names: Vec<String>) -> Self {
        ServingIssuer {
            ca,
            identity,
            dns_names,
        }
    }

    /// A new key and certificate chain (leaf first, root last) living `ttl`.
    pub fn issue(&self, ttl: Duration) -> Result<(WorkloadKey, Vec<String>), String> {
        self.ca
            .issue_server(&self.identity, &self.dns_names, ttl)
            .map_err(|e| format!("signing the serving certificate: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_certs::pem::certs_from_pem;
    use halyard_certs::{CaPolicy, CertStore, TrustBundle};

    #[test]
    fn serving_certificate_has_spiffe_id_and_dns_names() {
        let dir = std::env::temp_dir().join(format!("halyard-control-ut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CertificateAuthority::load_or_create(&dir, "cluster.local", CaPolicy::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let id = SpiffeId::workload("cluster.local", "halyard-system", "halyard-control")
            .unwrap_or_else(|e| panic!("{e}"));
        let ca = Arc::new(ca);
        let issuer = ServingIssuer::new(
            ca.clone(),
            id.clone(),
            vec!["halyard-control".into(), "localhost".into()],
        );
        let (key, chain) = issuer
            .issue(Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chain.len(), 2);
        let bundle = TrustBundle::new(ca.roots().to_vec()).unwrap_or_else(|e| panic!("{e}"));
        let store = CertStore::new(id, bundle);
        let leaf = store
            .install(&key, &chain)
            .unwrap_or_else(|e| panic!("{e}"));
        let life = leaf.info.not_after - leaf.info.not_before;
        assert!((3600..=3660).contains(&life), "{life}");
        let der = certs_from_pem(&chain[0]).unwrap_or_default();
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der[0]).unwrap_or_else(|e| panic!("{e}"));
        let san = format!("{:?}", cert.subject_alternative_name());
        assert!(
            san.contains("halyard-control") && san.contains("localhost"),
            "{san}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
