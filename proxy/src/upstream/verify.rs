//! Server verification for originated TLS — the chain to the roots, then one of the subject
//! alt names (DNS names, IP addresses, SPIFFE IDs), else the server name — and short labels
//! for why a handshake failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use halyard_certs::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

/// What the server certificate must carry besides a valid chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// DNS names or IP addresses; any one will do.
    pub names: Vec<ServerName<'static>>,
    /// SPIFFE IDs (URI SANs); any one will do.
    pub ids: Vec<SpiffeId>,
}

impl Expect {
    /// Parses subject alt names; empty: the server name is verified instead.
    pub fn parse(sans: &[String]) -> Result<Self, String> {
        let mut e = Expect::default();
        for san in sans {
            if san.starts_with("spiffe://") {
                let id = san
                    .parse()
                    .map_err(|err| format!("`{san}` is not a SPIFFE ID: {err}"))?;
                e.ids.push(id);
            } else {
                let name = ServerName::try_from(san.clone()).map_err(|_| {
                    format!("`{san}` is not a DNS name, IP address or spiffe:// URI")
                })?;
                e.names.push(name);
            }
        }
        Ok(e)
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.ids.is_empty()
    }
}

/// Why a client config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The roots make no verifier (e.g. none at all).
    #[error("no usable CA certificates: {0}")]
    Roots(String),
    /// The client certificate and key do not go together, or the key type is unsupported.
    #[error("{0}")]
    ClientCert(String),
    /// rustls refused the protocol versions (a programming error).
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config (no ALPN yet) verifying servers per `expect` against `roots` — or not at
/// all when `insecure` — and presenting `client` when the server asks. TLS 1.2 minimum.
pub fn client_config(
    roots: RootCertStore,
    expect: Expect,
    insecure: bool,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = provider();
    let verifier = verifier(roots, expect, insecure, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cfg = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ConfigError::ClientCert(format!("does not go with privateKey: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The server verifier of [`client_config`].
fn verifier(
    roots: RootCertStore,
    expect: Expect,
    insecure: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, ConfigError> {
    if insecure {
        let algs = provider.signature_verification_algorithms;
        return Ok(Arc::new(AnyServer { algs }));
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ConfigError::Roots(e.to_string()))?;
    Ok(Arc::new(SanVerifier { inner, expect }))
}

/// A name no certificate carries: verifying it checks the chain alone (webpki checks the
/// chain before the name).
const CHAIN_ONLY: &str = "chain-only.halyard.invalid";

fn name_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// The chain from the roots, then a subject alt name from the list (or the server name).
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expect: Expect,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |name: &ServerName<'_>| {
            self.inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        };
        if self.expect.is_empty() {
            return verify(server_name);
        }
        let mut chain_ok = false;
        for name in &self.expect.names {
            match verify(name) {
                Ok(v) => return Ok(v),
                Err(e) if name_error(&e) => chain_ok = true,
                Err(e) => return Err(e),
            }
        }
        if !self.expect.ids.is_empty() {
            if !chain_ok {
                let probe = ServerName::try_from(CHAIN_ONLY)
                    .map_err(|_| rustls::Error::General("chain-only name".into()))?;
                match verify(&probe) {
                    Ok(_) => {}
                    Err(e) if name_error(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            let id = halyard_certs::verify::spiffe_id_of(end_entity).ok();
            if id.is_some_and(|id| self.expect.ids.contains(&id)) {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate; the handshake signatures are still checked.
#[derive(Debug)]
struct AnyServer {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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

/// Wraps a connection's client-certificate resolver to learn whether the server asked for a
/// certificate and whether one was sent.
#[derive(Debug)]
pub struct Asked {
    inner: Arc<dyn ResolvesClientCert>,
    asked: AtomicBool,
    sent: AtomicBool,
}

impl Asked {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ResolvesClientCert>) -> Self {
        Self {
            inner,
            asked: AtomicBool::new(false),
            sent: AtomicBool::new(false),
        }
    }

    /// Whether the server sent a CertificateRequest.
    pub fn asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    /// Whether a certificate was sent.
    pub fn sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for Asked {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        let key = self.inner.resolve(root_hint_subjects, sigschemes);
        self.sent.store(key.is_some(), Ordering::Relaxed);
        key
    }

    fn only_raw_public_keys(&self) -> bool {
        self.inner.only_raw_public_keys()
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// A short label for why an originated handshake failed; `asked` tells whether the server
/// wanted a client certificate (and whether it got one).
pub fn failure_reason(err: &rustls::Error, asked: &Asked) -> &'static str {
    use AlertDescription as A;
    use CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => "san_mismatch",
            C::Expired | C::ExpiredContext { .. } => "certificate_expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate_not_yet_valid",
            C::UnknownIssuer | C::BadSignature | C::Other(_) => "untrusted_certificate",
            _ => "bad_certificate",
        },
        rustls::Error::AlertReceived(A::CertificateRequired) => "certificate_required",
        rustls::Error::AlertReceived(_) if asked.asked() && !asked.sent() => "certificate_required",
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied,
        ) => "certificate_rejected",
        rustls::Error::AlertReceived(A::ProtocolVersion) | rustls::Error::PeerIncompatible(_) => {
            "protocol_mismatch"
        }
        _ => "handshake_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    /// A CA and a leaf it signed for `sans` (DER), plus a foreign CA's root.
    fn pki(sans: Vec<SanType>) -> (RootCertStore, CertificateDer<'static>, RootCertStore) {
        let root = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = p.self_signed(&key).expect("self-signed");
            let mut store = RootCertStore::empty();
            store.add(cert.der().clone()).expect("root");
            (store, Issuer::new(p, key))
        };
        let (roots, issuer) = root("ca");
        let (foreign, _) = root("foreign");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        let leaf = p.signed_by(&key, &issuer).expect("leaf");
        (roots, leaf.der().clone(), foreign)
    }

    #[derive(Debug)]
    struct NoCert;

    impl ResolvesClientCert for NoCert {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
        fn has_certs(&self) -> bool {
            false
        }
    }

    fn checker(
        roots: RootCertStore,
        expect: Expect,
        insecure: bool,
    ) -> Arc<dyn ServerCertVerifier> {
        verifier(roots, expect, insecure, &provider()).expect("verifier")
    }

    fn verify(
        cfg: &Arc<dyn ServerCertVerifier>,
        leaf: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("name");
        cfg.verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn reason(r: Result<(), rustls::Error>) -> &'static str {
        let asked = Asked::new(Arc::new(NoCert));
        match r {
            Ok(()) => "ok",
            Err(e) => failure_reason(&e, &asked),
        }
    }

    fn dns(n: &str) -> SanType {
        SanType::DnsName(n.try_into().expect("DNS name"))
    }

    #[test]
    fn server_name_is_verified_without_subject_alt_names() {
        let (roots, leaf, foreign) = pki(vec![dns("server.test")]);
        let cfg = checker(roots, Expect::default(), false);
        assert_eq!(reason(verify(&cfg, &leaf, "server.test")), "ok");
        assert_eq!(reason(verify(&cfg, &leaf, "other.test")), "san_mismatch");
        let cfg = checker(foreign, Expect::default(), false);
        assert_eq!(
            reason(verify(&cfg, &leaf, "server.test")),
            "untrusted_certificate"
        );
    }

    #[test]
    fn subject_alt_names_replace_the_server_name() {
        let id = "spiffe://td/ns/a/sa/b";
        let (roots, leaf, foreign) = pki(vec![
            dns("server.test"),
            SanType::URI(id.try_into().expect("URI")),
        ]);
        let expect = |sans: &[&str]| {
            Expect::parse(&sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("SANs")
        };
        let cfg = |sans: &[&str]| checker(roots.clone(), expect(sans), false);
        // Any listed name will do, whatever the SNI was.
        assert_eq!(
            reason(verify(&cfg(&["x.test", "server.test"]), &leaf, "sni.test")),
            "ok"
        );
        assert_eq!(reason(verify(&cfg(&[id]), &leaf, "sni.test")), "ok");
        assert_eq!(
            reason(verify(&cfg(&["x.test"]), &leaf, "server.test")),
            "san_mismatch"
        );
        assert_eq!(
            reason(verify(
                &cfg(&["spiffe://td/ns/a/sa/c"]),
                &leaf,
                "server.test"
            )),
            "san_mismatch"
        );
        // A SPIFFE ID in an untrusted certificate is still untrusted.
        let foreign_cfg = checker(foreign, expect(&[id]), false);
        assert_eq!(
            reason(verify(&foreign_cfg, &leaf, "server.test")),
            "untrusted_certificate"
        );
        assert!(Expect::parse(&["a b".to_string()]).is_err());
        assert!(Expect::parse(&["spiffe://".to_string()]).is_err());
    }

    #[test]
    fn insecure_accepts_any_certificate() {
        let (_, leaf, foreign) = pki(vec![dns("server.test")]);
        let cfg = checker(foreign, Expect::default(), true);
        assert_eq!(reason(verify(&cfg, &leaf, "anything.test")), "ok");
    }

    #[test]
    fn alerts_after_a_certificate_request_name_the_client_certificate() {
        let none = Asked::new(Arc::new(NoCert));
        let alert = |a| rustls::Error::AlertReceived(a);
        assert_eq!(
            failure_reason(&alert(AlertDescription::CertificateRequired), &none),
            "certificate_required"
        );
        assert_eq!(
            failure_reason(&alert(AlertDescription::HandshakeFailure), &none),
            "handshake_failed"
        );
        let _ = none.resolve(&[], &[]);
        assert!(none.asked() && !none.sent());
        assert_eq!(
            failure_reason(&alert(AlertDescription::HandshakeFailure), &none),
            "certificate_required"
        );
        assert_eq!(
            failure_reason(&alert(AlertDescription::UnknownCA), &none),
            "certificate_required"
        );
    }
}
