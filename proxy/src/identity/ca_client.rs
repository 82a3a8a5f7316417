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

    async fn channel(&self) -> Result<Channel, String> {
        let opts = &self.identity.options;
        let endpoint = Endpoint::from_shared(format!("http://{}", opts.ca_addr))
            .map_err(|e| format!("CA address {}: {e}", opts.ca_addr))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if opts.ca_root_file.is_none() {
            return endpoint
                .connect()
                .await
                .map_err(|e| format!("connect to CA {}: {e}", opts.ca_addr));
        }
        let expected = match &opts.ca_identity {
            Some(id) => id.clone(),
            None => SpiffeId::workload(
                opts.identity.trust_domain(),
                "halyard-system",
                "halyard-control",
            )
            .map_err(|e| e.to_string())?,
        };
        // The verifier checks the CA's SPIFFE ID, so the server name is only for SNI. Once we
        // hold a certificate it is presented too, letting the CA renew without a token.
        let tls =
            halyard_certs::tls::client_config(self.identity.store.clone(), expected, &[b"h2"])
                .map_err(|e| e.to_string())?;
        let connector = tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            async move {
                let host = uri.host().unwrap_or("localhost").to_string();
                let port = uri.port_u16().unwrap_or(15012);
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
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
            .map_err(|e| format!("connect to CA {} over TLS: {e}", opts.ca_addr))
    }

    /// Sends `csr` and returns the PEM chain (leaf first).
    pub async fn create_certificate(&self, csr: String) -> Result<Vec<String>, String> {
        let opts = &self.identity.options;
        let channel = self.channel().await?;
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
