//! A minimal bounded HTTP(S) GET for JWKS and OpenID Connect discovery documents.
//!
//! One connection per fetch (fetches are minutes apart), HTTP/1.1, TLS by rustls with the
//! web PKI roots plus optional extra CAs; the whole exchange is bounded by a timeout and the
//! body by a size limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;

/// Fetches documents over HTTP or HTTPS.
pub struct HttpClient {
    tls: Result<tokio_rustls::TlsConnector, String>,
    max_body: usize,
}

impl HttpClient {
    /// A client trusting `roots` (see [`roots`]), reading at most `max_body` bytes.
    pub fn new(roots: rustls::RootCertStore, max_body: usize) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                let mut config = b.with_root_certificates(roots).with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                tokio_rustls::TlsConnector::from(Arc::new(config))
            })
            .map_err(|e| e.to_string());
        HttpClient { tls, max_body }
    }

    /// GETs `url` and returns the body of a 2xx answer, within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Bytes, String> {
        match tokio::time::timeout(timeout, self.get_unbounded(url)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn get_unbounded(&self, url: &str) -> Result<Bytes, String> {
        let uri: Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http or https URL".to_owned()),
        };
        let authority = uri.authority().ok_or("URL without host")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        // Never the userinfo of the URL.
        let host_header = match authority.port() {
            Some(p) => format!("{}:{}", authority.host(), p.as_str()),
            None => authority.host().to_owned(),
        };
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(header::HOST, host_header)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "halyard")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        if https {
            let tls = self.tls.as_ref().map_err(Clone::clone)?;
            let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            self.exchange(TokioIo::new(stream), request).await
        } else {
            self.exchange(TokioIo::new(tcp), request).await
        }
    }

    async fn exchange<T>(&self, io: T, request: Request<Empty<Bytes>>) -> Result<Bytes, String>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        // Ends with the exchange (or when this future is dropped at the timeout).
        let _conn = AbortOnDropHandle::new(tokio::spawn(conn));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {}", status.as_u16()));
        }
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || format!("body larger than {} bytes", self.max_body);
        if declared.is_some_and(|len| len > self.max_body as u64) {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    format!("HTTP body: {e}")
                }
            })?;
        Ok(body.to_bytes())
    }
}

/// The web PKI roots plus `extra` CAs.
pub fn roots(extra: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, String> {
    let mut roots: rustls::RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// Whether `url` is an absolute http(s) URL with a host.
pub fn is_http_url(url: &str) -> bool {
    url.parse::<Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
}
