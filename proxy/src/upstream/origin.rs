//! TLS origination (Istio DestinationRule `tls` SIMPLE and MUTUAL): settings read from their
//! PEM files when a configuration is applied, a rustls client config per ALPN offer that
//! verifies the server (its chain to the configured CA file or the public web roots, then one
//! of the subject alt names, else the server name), and the handshake with short failure
//! reasons for metrics and access logs.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::verify::{self as v, Asked};
use crate::mtls::Alpn;

/// Why TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{field}: {}: {reason}", file.display())]
    File {
        /// The setting naming the file (`caCertificates`, `clientCertificate`, `privateKey`).
        field: &'static str,
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting other than a file is unusable.
    #[error("{field}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What identifies TLS settings: two equal specs make the same connections (the digest
/// covers the files' contents, so a changed file makes a new pool).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginSpec {
    /// Server name sent and verified (the configured SNI, else the service's host).
    pub server_name: Option<String>,
    /// CA file; `None`: the public web roots.
    pub ca_certificates: Option<PathBuf>,
    /// Client certificate file (mutual TLS).
    pub client_certificate: Option<PathBuf>,
    /// Client key file (mutual TLS).
    pub private_key: Option<PathBuf>,
    /// Names the server certificate must carry one of.
    pub subject_alt_names: Vec<String>,
    /// Whether the server is not verified at all.
    pub insecure_skip_verify: bool,
    /// SHA-256 over the files' contents.
    digest: String,
}

/// TLS origination to one group of endpoints: ready client configs, one per ALPN offer.
pub struct TlsOrigin {
    spec: OriginSpec,
    server_name: Option<ServerName<'static>>,
    /// Offering `h2`, `http/1.1` and nothing.
    configs: [Arc<ClientConfig>; 3],
}

impl std::fmt::Debug for TlsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths and names only: key material never reaches logs.
        f.debug_struct("TlsOrigin")
            .field("spec", &self.spec)
            .finish()
    }
}

impl PartialEq for TlsOrigin {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for TlsOrigin {}

impl Hash for TlsOrigin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.spec.hash(state);
    }
}

fn path_of(p: &str) -> Option<PathBuf> {
    (!p.is_empty()).then(|| PathBuf::from(p))
}

fn file_error(field: &'static str, file: &Path, reason: impl Into<String>) -> OriginError {
    OriginError::File {
        field,
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(field: &'static str, file: &Path) -> Result<Vec<u8>, OriginError> {
    std::fs::read(file).map_err(|e| file_error(field, file, format!("cannot read: {e}")))
}

/// Every certificate of a PEM file (at least one).
fn certs(
    field: &'static str,
    file: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, OriginError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(field, file, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(field, file, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The SNI to send: a DNS name or an IP address (no SNI is sent for an IP).
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

impl TlsOrigin {
    /// Reads the files of `t` and builds its client configs; `host` is the service's host,
    /// the server name when `t` sets no SNI (`None`: the endpoint's address).
    pub fn from_xds(
        t: &halyard_xds::UpstreamTls,
        host: Option<&str>,
    ) -> Result<Arc<Self>, OriginError> {
        let (name, server_name) = name_of(t, host)?;
        let mut digest = Vec::new();
        let mut file =
            |field: &'static str, p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, OriginError> {
                let Some(p) = p else { return Ok(None) };
                let bytes = read(field, p)?;
                digest.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
                digest.extend_from_slice(&bytes);
                Ok(Some(bytes))
            };
        let ca_path = path_of(&t.ca_certificates);
        let cert_path = path_of(&t.client_certificate);
        let key_path = path_of(&t.private_key);
        let ca = file("caCertificates", &ca_path)?;
        let cert = file("clientCertificate", &cert_path)?;
        let key = file("privateKey", &key_path)?;

        let roots = match (&ca_path, &ca) {
            (Some(p), Some(pem)) => roots_from(p, pem)?,
            _ => public_roots(),
        };
        let client = client_of((&cert_path, cert), (&key_path, key))?;
        let expect =
            v::Expect::parse(&t.subject_alt_names).map_err(|reason| OriginError::Setting {
                field: "subjectAltNames",
                reason,
            })?;
        let base = v::client_config(roots, expect, t.insecure_skip_verify, client).map_err(
            |e| match (&cert_path, e) {
                (Some(cp), v::ConfigError::ClientCert(reason)) => {
                    file_error("clientCertificate", cp, reason)
                }
                (_, e) => OriginError::Setting {
                    field: "caCertificates",
                    reason: e.to_string(),
                },
            },
        )?;
        let with = |alpn: Alpn| {
            let mut c = (*base).clone();
            c.alpn_protocols = alpn_offer(alpn).iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        let spec = OriginSpec {
            server_name: name.map(str::to_string),
            ca_certificates: ca_path,
            client_certificate: cert_path,
            private_key: key_path,
            subject_alt_names: t.subject_alt_names.clone(),
            insecure_skip_verify: t.insecure_skip_verify,
            digest: halyard_certs::verify::sha256_hex(&digest),
        };
        Ok(Arc::new(Self {
            spec,
            server_name,
            configs: [with(Alpn::H2), with(Alpn::Http1), with(Alpn::Opaque)],
        }))
    }

    /// What the settings are (paths and names, no contents).
    pub fn spec(&self) -> &OriginSpec {
        &self.spec
    }

    /// The client config offering `alpn`.
    pub fn config(&self, alpn: Alpn) -> &Arc<ClientConfig> {
        match alpn {
            Alpn::H2 => &self.configs[0],
            Alpn::Http1 => &self.configs[1],
            Alpn::Opaque => &self.configs[2],
        }
    }

    /// The server name for an endpoint at `host`: the configured one, else the host itself.
    pub fn server_name_for(&self, host: &str) -> Option<ServerName<'static>> {
        self.server_name.clone().or_else(|| server_name(host))
    }

    /// A config for one connection offering `alpn`, with a probe telling whether the server
    /// asked for a client certificate (and whether one was sent).
    pub fn per_connection(&self, alpn: Alpn) -> (Arc<ClientConfig>, Arc<Asked>) {
        let base = self.config(alpn);
        let asked = Arc::new(Asked::new(base.client_auth_cert_resolver.clone()));
        let mut cfg = (**base).clone();
        cfg.client_auth_cert_resolver = asked.clone();
        (Arc::new(cfg), asked)
    }
}

/// The configured SNI, else the service host (no wildcard), and its TLS form.
fn name_of<'a>(
    t: &'a halyard_xds::UpstreamTls,
    host: Option<&'a str>,
) -> Result<(Option<&'a str>, Option<ServerName<'static>>), OriginError> {
    let name = Some(t.sni.as_str())
        .filter(|s| !s.is_empty())
        .or(host.filter(|h| !h.is_empty() && !h.starts_with('*')));
    let Some(n) = name else {
        return Ok((None, None));
    };
    let sn = server_name(n).ok_or_else(|| OriginError::Setting {
        field: "sni",
        reason: format!("`{n}` is not a DNS name or IP address"),
    })?;
    Ok((name, Some(sn)))
}

type File<'a> = (&'a Option<PathBuf>, Option<Vec<u8>>);

/// The client certificate and key, when both are configured (one without the other is an
/// error).
fn client_of(cert: File<'_>, key: File<'_>) -> Result<Option<ClientPair>, OriginError> {
    match (cert, key) {
        ((Some(cp), Some(c)), (Some(kp), Some(k))) => Ok(Some(client_pair(cp, &c, kp, &k)?)),
        ((None, _), (None, _)) => Ok(None),
        ((Some(_), _), (None, _)) => Err(OriginError::Setting {
            field: "privateKey",
            reason: "clientCertificate needs privateKey".into(),
        }),
        _ => Err(OriginError::Setting {
            field: "clientCertificate",
            reason: "privateKey needs clientCertificate".into(),
        }),
    }
}

/// Protocols offered in ALPN: HTTP/1.1 upstreams get only `http/1.1`, opaque TCP nothing.
pub fn alpn_offer(alpn: Alpn) -> &'static [&'static [u8]] {
    use halyard_certs::tls::{ALPN_H2, ALPN_HTTP11};
    match alpn {
        Alpn::H2 => &[ALPN_H2],
        Alpn::Http1 => &[ALPN_HTTP11],
        Alpn::Opaque => &[],
    }
}

fn roots_from(file: &Path, pem: &[u8]) -> Result<RootCertStore, OriginError> {
    let mut roots = RootCertStore::empty();
    for c in certs("caCertificates", file, pem)? {
        roots
            .add(c)
            .map_err(|e| file_error("caCertificates", file, format!("not a usable CA: {e}")))?;
    }
    Ok(roots)
}

/// Mozilla's root program (the `webpki-roots` crate), for servers with public certificates.
fn public_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

type ClientPair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_pair(
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<ClientPair, OriginError> {
    let chain = certs("clientCertificate", cert_file, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        // The parser's message never quotes the key's bytes.
        file_error(
            "privateKey",
            key_file,
            format!("no usable private key: {e}"),
        )
    })?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).expect("CA").pem()
    }

    fn tls(ca: &Path) -> halyard_xds::UpstreamTls {
        halyard_xds::UpstreamTls {
            ca_certificates: ca.display().to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn files_names_and_alpn() {
        let dir = std::env::temp_dir().join(format!("halyard-origin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem()).expect("ca");

        let o = TlsOrigin::from_xds(&tls(&ca), Some("svc.test")).expect("origin");
        assert_eq!(o.spec().server_name.as_deref(), Some("svc.test"));
        assert_eq!(o.config(Alpn::H2).alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(
            o.config(Alpn::Http1).alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        assert!(o.config(Alpn::Opaque).alpn_protocols.is_empty());
        // The SNI wins over the service host; without either, the endpoint's address.
        let mut t = tls(&ca);
        t.sni = "sni.test".into();
        let o2 = TlsOrigin::from_xds(&t, Some("svc.test")).expect("origin");
        assert_eq!(o2.spec().server_name.as_deref(), Some("sni.test"));
        assert_ne!(*o, *o2);
        let o3 = TlsOrigin::from_xds(&tls(&ca), None).expect("origin");
        assert_eq!(o3.server_name_for("10.0.0.1"), server_name("10.0.0.1"));
        // Same settings and contents: the same key; new contents: another.
        assert_eq!(
            *o,
            *TlsOrigin::from_xds(&tls(&ca), Some("svc.test")).expect("origin")
        );
        std::fs::write(&ca, ca_pem()).expect("ca");
        assert_ne!(
            *o,
            *TlsOrigin::from_xds(&tls(&ca), Some("svc.test")).expect("origin")
        );

        let missing = dir.join("missing.pem");
        let e = TlsOrigin::from_xds(&tls(&missing), None).expect_err("missing file");
        let text = e.to_string();
        assert!(
            text.starts_with("caCertificates: ") && text.contains("missing.pem"),
            "{text}"
        );
        std::fs::write(&missing, "not PEM").expect("write");
        let e = TlsOrigin::from_xds(&tls(&missing), None).expect_err("no certificates");
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let mut t = tls(&ca);
        t.client_certificate = ca.display().to_string();
        t.private_key = ca.display().to_string();
        let e = TlsOrigin::from_xds(&t, None).expect_err("a certificate is no key");
        assert!(e.to_string().starts_with("privateKey: "), "{e}");
        // Debug shows paths, never contents.
        assert!(!format!("{o:?}").contains("BEGIN"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
