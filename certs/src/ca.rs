//! The certificate authority: a self-signed root kept on disk, or an intermediate from
//! Istio's "cacerts" files, that signs workload CSRs for an authenticated identity.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::pem::{certs_from_pem, to_pem};
use crate::{Error, SpiffeId, WorkloadKey};

/// How long a workload certificate lives unless the request says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a request may ask for unless configured otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a self-signed root made on first start.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaf certificates start this far in the past, for clocks that lag the CA's.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why a CSR was refused. Each maps to a gRPC status in the CA service.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Not a parseable, correctly self-signed CSR.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// The CSR names an identity the caller may not claim.
    #[error("CSR asks for {requested}, but the caller may only claim {allowed}")]
    IdentityMismatch {
        /// What the CSR asked for.
        requested: String,
        /// What the caller's credential allows.
        allowed: String,
    },
    /// The CSR asks for a CA certificate.
    #[error("CSR asks for a CA certificate")]
    CaRequested,
    /// The requested lifetime exceeds the maximum.
    #[error("requested lifetime {requested:?} exceeds the maximum {max:?}")]
    TtlTooLong {
        /// Requested.
        requested: Duration,
        /// Allowed.
        max: Duration,
    },
    /// Signing failed for a reason of the CA's own.
    #[error("signing failed: {0}")]
    Internal(String),
}

/// Lifetimes the CA enforces.
#[derive(Debug, Clone, Copy)]
pub struct CaPolicy {
    /// Lifetime when the request asks for none.
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for.
    pub max_ttl: Duration,
}

impl Default for CaPolicy {
    fn default() -> Self {
        CaPolicy {
            default_ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
        }
    }
}

/// A signing CA and the chain that vouches for it.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, then its issuers up to and including the root.
    chain: Vec<CertificateDer<'static>>,
    /// The roots handed out as the trust bundle.
    roots: Vec<CertificateDer<'static>>,
    trust_domain: String,
    not_after: OffsetDateTime,
    policy: CaPolicy,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The files of a self-signed root under `--data-dir`.
const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";

impl CertificateAuthority {
    /// Makes a new self-signed root CA for `trust_domain` (in memory).
    pub fn self_signed(trust_domain: &str, policy: CaPolicy) -> Result<Self, Error> {
        crate::spiffe::check_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Halyard root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_TTL;
        let cert = params.self_signed(&key)?;
        let der = cert.der().clone();
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            chain: vec![der.clone()],
            roots: vec![der],
            trust_domain: trust_domain.to_string(),
            not_after: now + ROOT_TTL,
            policy,
        })
    }

    /// Loads the self-signed root kept in `dir`, creating it (key mode 0600) on first start.
    pub fn load_or_create(dir: &Path, trust_domain: &str, policy: CaPolicy) -> Result<Self, Error> {
        let cert_path = dir.join(ROOT_CERT);
        let key_path = dir.join(ROOT_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert = read(&cert_path)?;
                let key = read_key(&key_path)?;
                Self::from_parts(&cert, &key, &cert, None, trust_domain, policy)
                    .map_err(|e| e.in_file(&cert_path))
            }
            (false, false) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                let ca = Self::self_signed(trust_domain, policy)?;
                write_private(&key_path, &ca.issuer.key().serialize_pem())?;
                let tmp = cert_path.with_extension("tmp");
                std::fs::write(&tmp, to_pem(&ca.chain[0])).map_err(|e| Error::io(&tmp, e))?;
                std::fs::rename(&tmp, &cert_path).map_err(|e| Error::io(&cert_path, e))?;
                tracing::info!(dir = %dir.display(), "created a self-signed root CA");
                Ok(ca)
            }
            (c, _) => Err(Error::Invalid(format!(
                "{}: found {} without {}; remove it or restore the other",
                dir.display(),
                if c { ROOT_CERT } else { ROOT_KEY },
                if c { ROOT_KEY } else { ROOT_CERT }
            ))),
        }
    }

    /// Runs as an intermediate CA from Istio's "cacerts" layout in `dir`: `ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem` and `cert-chain.pem` (the CA cert up to the root).
    pub fn from_cacerts(dir: &Path, trust_domain: &str, policy: CaPolicy) -> Result<Self, Error> {
        let p = |n: &str| dir.join(n);
        let ca_cert = read(&p("ca-cert.pem"))?;
        let ca_key = read_key(&p("ca-key.pem"))?;
        let root = read(&p("root-cert.pem"))?;
        let chain_path = p("cert-chain.pem");
        let chain = if chain_path.exists() {
            Some(read(&chain_path)?)
        } else {
            None
        };
        Self::from_parts(
            &ca_cert,
            &ca_key,
            &root,
            chain.as_deref(),
            trust_domain,
            policy,
        )
        .map_err(|e| e.in_file(dir))
    }

    fn from_parts(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        roots_pem: &str,
        chain_pem: Option<&str>,
        trust_domain: &str,
        policy: CaPolicy,
    ) -> Result<Self, Error> {
        crate::spiffe::check_trust_domain(trust_domain)?;
        let ca_cert = certs_from_pem(ca_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid("no certificate in the CA certificate file".into()))?;
        let key = KeyPair::from_pem(ca_key_pem)?;
        let roots = certs_from_pem(roots_pem)?;
        if roots.is_empty() {
            return Err(Error::Invalid("no root certificate".into()));
        }
        let mut chain = match chain_pem {
            Some(text) => certs_from_pem(text)?,
            None => vec![ca_cert.clone()],
        };
        if chain.first() != Some(&ca_cert) {
            chain.insert(0, ca_cert.clone());
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca_cert)
            .map_err(|e| Error::Invalid(format!("CA certificate: {e}")))?;
        if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        {
            return Err(Error::Invalid(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        match parsed.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => {
                return Err(Error::Invalid(
                    "the CA certificate is not a CA (basicConstraints)".into(),
                ))
            }
        }
        crate::verify::check_signed_chain(&chain, &roots)?;
        let not_after =
            OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
                .map_err(|e| Error::Invalid(format!("CA certificate expiry: {e}")))?;
        if not_after <= OffsetDateTime::now_utc() {
            return Err(Error::Invalid("the CA certificate has expired".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)?;
        if chain.last().is_some_and(|last| !roots.contains(last)) {
            // cert-chain.pem may stop below the root; the response always ends with it.
            chain.push(roots[0].clone());
        }
        Ok(CertificateAuthority {
            issuer,
            chain,
            roots,
            trust_domain: trust_domain.to_string(),
            not_after,
            policy,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificates (the trust bundle), PEM.
    pub fn roots_pem(&self) -> Vec<String> {
        self.roots.iter().map(to_pem).collect()
    }

    /// The root certificates, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Signs `csr_pem` for `caller` (the identity its credential proves), returning the PEM
    /// chain: the new certificate first, the root last.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            SignError::InvalidCsr(match e {
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "the CSR's signature does not verify".into()
                }
                rcgen::Error::UnsupportedExtension => "the CSR has an unsupported extension".into(),
                other => format!("cannot parse the CSR: {other}"),
            })
        })?;
        check_extension_requests(csr_pem)?;
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(SignError::CaRequested);
        }
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
                other => format!("{other:?}"),
            })
            .collect();
        match requested.as_slice() {
            [] => return Err(SignError::InvalidCsr("the CSR names no SPIFFE ID".into())),
            [one] if one == caller.as_str() => {}
            _ => {
                return Err(SignError::IdentityMismatch {
                    requested: requested.join(", "),
                    allowed: caller.to_string(),
                })
            }
        }
        if caller.trust_domain() != self.trust_domain {
            return Err(SignError::IdentityMismatch {
                requested: caller.to_string(),
                allowed: format!("identities in trust domain {}", self.trust_domain),
            });
        }
        let ttl = match ttl {
            None => self.policy.default_ttl,
            Some(t) if t.is_zero() => self.policy.default_ttl,
            Some(t) if t > self.policy.max_ttl => {
                return Err(SignError::TtlTooLong {
                    requested: t,
                    max: self.policy.max_ttl,
                })
            }
            Some(t) => t,
        };
        self.sign_leaf(&csr.public_key, caller, &[], ttl)
            .map_err(|e| SignError::Internal(e.to_string()))
    }

    /// Certifies `public_key` as `id` (plus `dns_names`) for `ttl`; returns the PEM chain.
    fn sign_leaf(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>, Error> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        for name in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| Error::Invalid(format!("DNS name `{name}`: {e}")))?,
            ));
        }
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
        params.not_before = now - BACKDATE;
        // A leaf never outlives the CA that signed it.
        params.not_after = (now + ttl).min(self.not_after);
        let cert = params.signed_by(public_key, &self.issuer)?;
        let mut out = Vec::with_capacity(self.chain.len() + 1);
        out.push(to_pem(cert.der()));
        out.extend(self.chain.iter().map(to_pem));
        Ok(out)
    }

    /// Issues a serving certificate for `id` that also names `dns_names`, for servers whose
    /// clients check a host name (the control server itself). Workload CSRs never get DNS
    /// names; this is the CA's own, in-process issuance.
    pub fn issue_server(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<(WorkloadKey, Vec<String>), Error> {
        let key = WorkloadKey::generate()?;
        let chain = self.sign_leaf(key.rcgen_pair(), id, dns_names, ttl)?;
        Ok((key, chain))
    }

    /// Issues a key and certificate chain directly (tests and tools; the proxy uses CSRs).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<(WorkloadKey, Vec<String>), Error> {
        let key = WorkloadKey::generate()?;
        let chain = self
            .sign_csr(&key.csr_pem(id)?, id, Some(ttl))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok((key, chain))
    }

    /// A new intermediate CA signed by this one, as Istio's cacerts files would hold it
    /// (for tests and for splitting a root from its issuers): `(ca-cert, ca-key, cert-chain)`.
    pub fn new_intermediate(&self, name: &str) -> Result<(String, String, String), Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).min(self.not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = to_pem(cert.der());
        for c in &self.chain {
            chain.push_str(&to_pem(c));
        }
        Ok((to_pem(cert.der()), key.serialize_pem(), chain))
    }
}

/// What rcgen's CSR parsing lets through: it reads only the first extensionRequest attribute
/// (x509-parser only the first value of it) and a repeated extension overrides the earlier
/// one, so a CA flag or another SAN could hide from `sign_csr`'s checks. Reads every
/// extension request: a CA flag anywhere is a CA request; a repeated extension, a second
/// extension request or a second value in one makes the CSR invalid.
fn check_extension_requests(csr_pem: &str) -> Result<(), SignError> {
    use x509_parser::asn1_rs::{FromDer, Header, Length};
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::cri_attributes::ParsedCriAttribute;
    use x509_parser::extensions::ParsedExtension;

    let invalid = |what: String| SignError::InvalidCsr(what);
    let der = pem::parse(csr_pem).map_err(|e| invalid(format!("cannot parse the CSR: {e}")))?;
    let (_, csr) = X509CertificationRequest::from_der(der.contents())
        .map_err(|e| invalid(format!("cannot parse the CSR: {e}")))?;
    let mut seen = Vec::new();
    let mut requests = 0;
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        requests += 1;
        // `value` is the SET header and the one value x509-parser read.
        let single = Header::from_der(attr.value)
            .is_ok_and(|(first, set)| set.length() == Length::Definite(first.len()));
        if requests > 1 || !single {
            return Err(invalid(
                "the CSR has more than one extension request".into(),
            ));
        }
        for ext in &req.extensions {
            if let ParsedExtension::BasicConstraints(bc) = ext.parsed_extension() {
                if bc.ca {
                    return Err(SignError::CaRequested);
                }
            }
            if seen.contains(&&ext.oid) {
                return Err(invalid(format!(
                    "the CSR repeats the extension {}",
                    ext.oid
                )));
            }
            seen.push(&ext.oid);
        }
    }
    Ok(())
}

/// A random positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS has no entropy source; a zero serial is then still
    // a valid (if poor) serial, and signing goes on.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Reads a private key file, refusing one that others may read.
fn read_key(path: &Path) -> Result<String, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Invalid(format!(
            "{}: private key is accessible to others (mode {mode:o}); run `chmod 600` on it",
            path.display()
        )));
    }
    read(path)
}

/// Writes a private key file created with mode 0600 (never wider, even briefly).
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}
