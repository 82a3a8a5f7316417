//! The client side of Istio's certificate service, over TLS (verifying the CA's SPIFFE ID
//! against the root file) or plaintext for development.

use std::sync::Arc;
use std::time::Duration;

use halyard_certs::caservice::istio_certificate_service_client::IstioCertificateServiceClient;
use halyard_certs::caservice::IstioCertificateRequest;
use halyard_certs::SpiffeId;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Identity;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Calls the CA for the workload's certificates.
pub struct CaClient {
    identity: Arc<Identity>,
}

impl CaClient {
    /// A client for the CA in `identity`'s options.
    pub fn new(identity: Arc<Identity>) -> Self {
        CaClient { identity }
    }

    /// Sends a CSR to the CA; the signed chain, leaf first, as PEM.
    pub async fn create_certificate(&self, csr: String) -> Result<Vec<String>, String> {
        let Some(opts) = self.identity.ca() else {
            return Err("the identity does not come from a CA".into());
        };
        let channel =
            control_channel(Some(&self.identity), &opts.ca_addr, Some(REQUEST_TIMEOUT)).await?;
        let mut client = IstioCertificateServiceClient::new(channel);
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: opts.cert_ttl.as_secs() as i64,
            metadata: None,
        });
        if let Some(path) = &opts.token_file {
            // Re-read each time: projected tokens are rotated on disk.
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
                format!("{}: the token is not a valid header value", path.display())
            })?;
            req.metadata_mut().insert("authorization", value);
        }
        let resp = client
            .create_certificate(req)
            .await
            .map_err(|s| format!("CA refused: {} ({:?})", s.message(), s.code()))?;
        let chain = resp.into_inner().cert_chain;
        if chain.is_empty() {
            return Err("CA answered with an empty chain".into());
        }
        Ok(chain)
    }
}

/// A gRPC channel to the control server at `addr` (CA or xDS): with `--ca-root-file` (or
/// certificate files), TLS that accepts only the control server's SPIFFE ID and presents the
/// workload certificate once there is one; otherwise plaintext (development). `request_timeout` must be `None` for
/// long-lived streams.
pub async fn control_channel(
    identity: Option<&Identity>,
    addr: &str,
    request_timeout: Option<Duration>,
) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("control server address {addr}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(t) = request_timeout {
        endpoint = endpoint.timeout(t);
    }
    let Some(identity) = identity.filter(|i| i.control_over_tls()) else {
        return endpoint
            .connect()
            .await
            .map_err(|e| format!("connect to {addr}: {e}"));
    };
    let expected = match identity.control_identity() {
        Some(id) => id.clone(),
        None => SpiffeId::workload(
            identity.id().trust_domain(),
            "halyard-system",
            "halyard-control",
        )
        .map_err(|e| e.to_string())?,
    };
    let tls = halyard_certs::tls::client_config(identity.store.clone(), expected, &[b"h2"])
        .map_err(|e| e.to_string())?;
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let host = uri.host().unwrap_or("localhost").to_string();
            let port = uri.port_u16().unwrap_or(15012);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from("halyard-control")
                .map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connect to {addr} over TLS: {e}"))
}
