//! rustls configurations for mesh traffic, with verifiers that check the chain against the
//! store's trust bundle *and* the peer's SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::store::CertStore;
use crate::verify::{to_rustls, Usage, VerifyError};
use crate::{Error, SpiffeId};

/// ALPN for HTTP/2 between sidecars.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Whether inbound connections must present a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A valid client certificate is required (STRICT).
    Required,
    /// A client certificate is verified when offered (gateways, PERMISSIVE TLS).
    Optional,
}

/// Verifies client certificates: chain to the bundle, SPIFFE ID in our trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    store: Arc<CertStore>,
    auth: ClientAuth,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = self
            .store
            .bundle()
            .verify(end_entity, intermediates, now, Usage::Client)
            .map_err(to_rustls)?;
        let want = self.store.identity().trust_domain();
        if id.trust_domain() != want {
            return Err(to_rustls(VerifyError::TrustDomain {
                got: id,
                want: want.to_string(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies a server: chain to the bundle and exactly the expected SPIFFE ID (the server
/// name is not used; mesh identity is the SPIFFE ID).
#[derive(Debug)]
struct SpiffeServerVerifier {
    store: Arc<CertStore>,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self
            .store
            .bundle()
            .verify(end_entity, intermediates, now, Usage::Server)
            .map_err(to_rustls)?;
        if id != self.expected {
            return Err(to_rustls(VerifyError::Identity {
                got: id,
                want: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A server config presenting the store's certificate and verifying clients' SPIFFE IDs.
/// TLS 1.3 preferred, 1.2 minimum; rustls never renegotiates. Sessions are not resumed: a
/// resumed session would carry the client certificate of its first handshake, which may
/// have expired or been replaced since, so every connection proves the current one.
pub fn server_config(
    store: Arc<CertStore>,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, Error> {
    let verifier = Arc::new(SpiffeClientVerifier {
        store: store.clone(),
        auth,
        algs: algs(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A client config presenting the store's certificate and accepting only a server whose
/// SPIFFE ID is `expected`.
pub fn client_config(
    store: Arc<CertStore>,
    expected: SpiffeId,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, Error> {
    let verifier = Arc::new(SpiffeServerVerifier {
        store: store.clone(),
        expected,
        algs: algs(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(store);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The SPIFFE ID of a connection's verified peer (from its first certificate).
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::verify::spiffe_id_of(c).ok())
}

/// A short, stable label for why a TLS handshake failed (for logs and metric labels).
pub fn failure_reason(err: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::UnknownIssuer | C::BadSignature => "untrusted",
            C::Other(other) => match other.0.downcast_ref::<VerifyError>() {
                Some(VerifyError::Identity { .. }) => "identity_mismatch",
                Some(VerifyError::TrustDomain { .. }) => "trust_domain",
                Some(VerifyError::NoSpiffeId | VerifyError::SeveralIds | VerifyError::BadId(_)) => {
                    "bad_identity"
                }
                _ => "untrusted",
            },
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::AlertReceived(_) => "peer_alert",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        _ => "handshake",
    }
}

/// The rustls error inside an I/O error from a TLS stream, if that is what it is.
pub fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}
