//! Chain validation against a trust bundle and SPIFFE ID extraction from certificates.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::spiffe::{IdError, SpiffeId};
use crate::Error;

/// Why a peer certificate was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// The chain does not lead to a trusted root, is expired, not yet valid or misused.
    #[error("certificate chain rejected: {0}")]
    Chain(String),
    /// Not parseable as X.509.
    #[error("unparseable certificate: {0}")]
    Parse(String),
    /// No URI SAN holding a SPIFFE ID.
    #[error("certificate has no SPIFFE ID")]
    NoSpiffeId,
    /// More than one URI SAN.
    #[error("certificate has several URI SANs")]
    SeveralIds,
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("certificate SPIFFE ID is malformed: {0}")]
    BadId(#[from] IdError),
    /// From another trust domain.
    #[error("peer {got} is not in trust domain {want}")]
    TrustDomain {
        /// The peer's ID.
        got: SpiffeId,
        /// The trust domain expected.
        want: String,
    },
    /// Not the identity the destination should run as.
    #[error("peer is {got}, expected {want}")]
    Identity {
        /// The peer's ID.
        got: SpiffeId,
        /// The expected ID.
        want: SpiffeId,
    },
}

/// What a certificate is for, as the peer uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (checked by clients).
    Server,
    /// A TLS client (checked by servers).
    Client,
}

/// The set of trusted roots; several during a root rotation.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// A bundle from DER roots.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        if roots.is_empty() {
            return Err(Error::Invalid("the trust bundle has no roots".into()));
        }
        let anchors = roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| Error::Invalid(format!("bad root certificate: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustBundle { roots, anchors })
    }

    /// A bundle that trusts nothing (until replaced).
    pub fn empty() -> Self {
        TrustBundle {
            roots: Vec::new(),
            anchors: Vec::new(),
        }
    }

    /// A bundle from PEM text holding one or more roots.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        Self::new(crate::pem::certs_from_pem(text)?)
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// SHA-256 fingerprints of the roots, hex with colons (as `openssl x509 -fingerprint`).
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(|r| fingerprint(r)).collect()
    }

    /// Checks `end_entity` (with `intermediates`) against the bundle at `now` for `usage`
    /// and returns its SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<SpiffeId, VerifyError> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| VerifyError::Parse(e.to_string()))?;
        let eku = match usage {
            Usage::Server => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        };
        cert.verify_for_usage(
            algorithms(),
            &self.anchors,
            intermediates,
            now,
            eku,
            None,
            None,
        )
        .map_err(|e| VerifyError::Chain(e.to_string()))?;
        spiffe_id_of(end_entity)
    }
}

/// The signature algorithms peers may use (ring's set, as rustls has them).
pub(crate) fn algorithms(
) -> &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm] {
    webpki::ALL_VERIFICATION_ALGS
}

/// The single SPIFFE ID in a certificate's URI SANs.
pub fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| VerifyError::Parse(e.to_string()))?;
    let mut uris = san
        .into_iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
    let first = uris.next().ok_or(VerifyError::NoSpiffeId)?;
    if uris.next().is_some() {
        return Err(VerifyError::SeveralIds);
    }
    Ok(SpiffeId::parse(first)?)
}

/// What `/certs` shows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its SPIFFE ID, if it has one.
    pub identity: Option<SpiffeId>,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// SHA-256 fingerprint.
    pub fingerprint: String,
}

/// Reads the facts `/certs` shows from a certificate.
pub fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, VerifyError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    Ok(CertInfo {
        identity: spiffe_id_of(der).ok(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        fingerprint: fingerprint(der),
    })
}

/// SHA-256 of a DER certificate as lower-case hex (the `Hash` of `x-forwarded-client-cert`).
pub fn sha256_hex(der: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of a DER certificate, upper-case hex pairs joined by `:`.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(95);
    for (i, b) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Checks that each certificate of `chain` is signed by the next, and the last by a root.
pub(crate) fn check_signed_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), Error> {
    fn parse<'a>(d: &'a CertificateDer<'static>) -> Result<X509Certificate<'a>, Error> {
        x509_parser::parse_x509_certificate(d)
            .map(|(_, c)| c)
            .map_err(|e| Error::Invalid(format!("bad certificate in chain: {e}")))
    }
    let parsed: Vec<_> = chain.iter().map(parse).collect::<Result<_, _>>()?;
    let roots: Vec<_> = roots.iter().map(parse).collect::<Result<_, _>>()?;
    for (i, cert) in parsed.iter().enumerate() {
        let signed_by_next = parsed
            .get(i + 1)
            .is_some_and(|next| cert.verify_signature(Some(next.public_key())).is_ok());
        let signed_by_root = roots
            .iter()
            .any(|r| cert.verify_signature(Some(r.public_key())).is_ok());
        if !(signed_by_next || signed_by_root) {
            return Err(Error::Invalid(format!(
                "certificate {} of the CA chain ({}) is not signed by the next one or by a root",
                i + 1,
                cert.subject()
            )));
        }
        if signed_by_root {
            return Ok(());
        }
    }
    Err(Error::Invalid("the CA chain does not reach a root".into()))
}

/// A verification error as rustls carries it, keeping our reason for logs and metrics.
pub(crate) fn to_rustls(e: VerifyError) -> rustls::Error {
    let cert_err = match &e {
        VerifyError::Chain(m) if m.contains("Expired") => rustls::CertificateError::Expired,
        VerifyError::Chain(m) if m.contains("NotValidYet") => rustls::CertificateError::NotValidYet,
        VerifyError::Chain(m) if m.contains("UnknownIssuer") => {
            rustls::CertificateError::UnknownIssuer
        }
        _ => rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}
