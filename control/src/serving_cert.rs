//! The control server's own TLS certificate, issued by its CA.
//!
//! It carries the SPIFFE ID `spiffe://TD/ns/halyard-system/sa/halyard-control` (which
//! Halyard's proxies verify) *and* DNS names (`--tls-dns-name`), because ordinary gRPC
//! clients — grpcio, grpcurl, istio-agent — check a host name and cannot be told to check a
//! URI SAN instead. `CertificateAuthority::sign_csr` rightly refuses DNS names for workloads,
//! so this module signs with the CA's key files directly.
// TODO(certs): replace with a `CertificateAuthority` method issuing a server certificate
// with extra DNS SANs, so that the CA key is read in one place only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use halyard_certs::pem::{certs_from_pem, to_pem};
use halyard_certs::{SpiffeId, WorkloadKey};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;

/// Certificates start this far in the past, for clocks that lag ours.
const BACKDATE: Duration = Duration::from_secs(60);

/// Where the CA's certificate, key and chain (up to the root) are kept.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// The signing CA's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA certificate and its issuers up to the root, if kept separately.
    pub chain: Option<PathBuf>,
    /// The root certificate(s).
    pub root: PathBuf,
}

impl CaFiles {
    /// The self-signed root under `--data-dir`.
    pub fn self_signed(dir: &Path) -> Self {
        CaFiles {
            cert: dir.join("root-cert.pem"),
            key: dir.join("root-key.pem"),
            chain: None,
            root: dir.join("root-cert.pem"),
        }
    }

    /// Istio's cacerts layout.
    pub fn cacerts(dir: &Path) -> Self {
        let chain = dir.join("cert-chain.pem");
        CaFiles {
            cert: dir.join("ca-cert.pem"),
            key: dir.join("ca-key.pem"),
            chain: chain.exists().then_some(chain),
            root: dir.join("root-cert.pem"),
        }
    }
}

/// Issues the control server's serving certificates.
pub struct ServingIssuer {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate up to the root, PEM.
    ca_chain: Vec<String>,
    ca_not_after: OffsetDateTime,
    identity: SpiffeId,
    dns_names: Vec<String>,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl ServingIssuer {
    /// Loads the CA's signing material from `files` (already validated by the CA loader).
    pub fn load(
        files: &CaFiles,
        identity: SpiffeId,
        dns_names: Vec<String>,
    ) -> Result<Self, String> {
        let ca_pem = read(&files.cert)?;
        let ca_der = certs_from_pem(&ca_pem)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no certificate", files.cert.display()))?;
        let key = KeyPair::from_pem(&read(&files.key)?)
            .map_err(|e| format!("{}: {e}", files.key.display()))?;
        let ca_not_after = OffsetDateTime::from_unix_timestamp(expiry(&ca_der)?)
            .map_err(|e| format!("{}: expiry: {e}", files.cert.display()))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        let mut ca_chain: Vec<String> = match &files.chain {
            Some(p) => certs_from_pem(&read(p)?)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .iter()
                .map(to_pem)
                .collect(),
            None => vec![to_pem(&ca_der)],
        };
        if ca_chain.first() != Some(&to_pem(&ca_der)) {
            ca_chain.insert(0, to_pem(&ca_der));
        }
        if files.cert != files.root {
            let roots = certs_from_pem(&read(&files.root)?)
                .map_err(|e| format!("{}: {e}", files.root.display()))?;
            if let Some(root) = roots.first().map(to_pem) {
                if !ca_chain.contains(&root) {
                    ca_chain.push(root);
                }
            }
        }
        Ok(ServingIssuer {
            issuer,
            ca_chain,
            ca_not_after,
            identity,
            dns_names,
        })
    }

    /// A new key and certificate chain (leaf first, root last) living `ttl`.
    pub fn issue(&self, ttl: Duration) -> Result<(WorkloadKey, Vec<String>), String> {
        let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
        let spki = SubjectPublicKeyInfo::from_der(&key.public_key_der())
            .map_err(|e| format!("serving key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "halyard-control");
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(
            self.identity
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| e.to_string())?,
        )];
        for name in &self.dns_names {
            sans.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| format!("DNS name `{name}`: {e}"))?,
            ));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = (now + ttl).min(self.ca_not_after);
        let cert = params
            .signed_by(&spki, &self.issuer)
            .map_err(|e| format!("signing the serving certificate: {e}"))?;
        let mut chain = vec![to_pem(cert.der())];
        chain.extend(self.ca_chain.iter().cloned());
        Ok((key, chain))
    }
}

/// The expiry (Unix seconds) of a DER certificate.
fn expiry(der: &[u8]) -> Result<i64, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("CA certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// A random positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // Only fails without an OS entropy source; the serial then stays valid, if poor.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_certs::{CaPolicy, CertStore, CertificateAuthority, TrustBundle};

    #[test]
    fn serving_certificate_has_spiffe_id_and_dns_names() {
        let dir = std::env::temp_dir().join(format!("halyard-control-ut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CertificateAuthority::load_or_create(&dir, "cluster.local", CaPolicy::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let id = SpiffeId::workload("cluster.local", "halyard-system", "halyard-control")
            .unwrap_or_else(|e| panic!("{e}"));
        let issuer = ServingIssuer::load(
            &CaFiles::self_signed(&dir),
            id.clone(),
            vec!["halyard-control".into(), "localhost".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
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
