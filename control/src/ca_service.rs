//! Istio's `istio.v1.auth.IstioCertificateService`: authenticate the caller, sign its CSR
//! for exactly its own identity, answer with the chain (leaf first, root last).

use std::sync::Arc;
use std::time::Duration;

use halyard_certs::caservice::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use halyard_certs::caservice::{IstioCertificateRequest, IstioCertificateResponse};
use halyard_certs::{CertificateAuthority, SignError};
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

use crate::auth::{AuthError, Authenticator, Caller};
use crate::conn::ConnInfo;

/// Largest request accepted (a P-256 CSR is well under 1 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How many CSRs are signed at once; further requests wait for a slot.
const MAX_CONCURRENT_SIGNINGS: usize = 64;
/// The request metadata key with which Istio's node agents ask to act for another identity.
const IMPERSONATION_KEY: &str = "ImpersonatedIdentity";

/// The CA service, shared by the plaintext and TLS listeners.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: Arc<Authenticator>,
    signing: Arc<Semaphore>,
}

impl CaService {
    /// A service signing with `ca` for callers that `auth` authenticates.
    pub fn new(ca: Arc<CertificateAuthority>, auth: Arc<Authenticator>) -> Self {
        CaService {
            ca,
            auth,
            signing: Arc::new(Semaphore::new(MAX_CONCURRENT_SIGNINGS)),
        }
    }

    /// The tonic server for this service, with the request size bounded.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// Handles one request; `Err` is the refusal with the caller, if it was known.
    async fn handle(
        &self,
        conn: &ConnInfo,
        request: Request<IstioCertificateRequest>,
    ) -> Result<(Caller, Vec<String>), (Option<Caller>, Refusal)> {
        let caller = self
            .auth
            .authenticate(request.metadata(), conn.peer_identity.as_ref())
            .map_err(|e| (None, Refusal::from(e)))?;
        let refuse = |r: Refusal| (Some(caller.clone()), r);
        let msg = request.into_inner();
        if msg
            .metadata
            .as_ref()
            .is_some_and(|m| m.fields.contains_key(IMPERSONATION_KEY))
        {
            return Err(refuse(Refusal::new(
                Code::PermissionDenied,
                "impersonating another identity is not supported",
            )));
        }
        let ttl = requested_ttl(msg.validity_duration).map_err(refuse)?;
        if msg.csr.trim().is_empty() {
            return Err(refuse(Refusal::new(
                Code::InvalidArgument,
                "the CSR is empty",
            )));
        }
        let _slot = self
            .signing
            .acquire()
            .await
            .map_err(|_| refuse(Refusal::new(Code::Unavailable, "the CA is shutting down")))?;
        let chain = self
            .ca
            .sign_csr(&msg.csr, &caller.identity, ttl)
            .map_err(|e| refuse(Refusal::from(e)))?;
        Ok((caller, chain))
    }
}

/// `validity_duration` (seconds) as the CA takes it: 0 asks for the default.
fn requested_ttl(seconds: i64) -> Result<Option<Duration>, Refusal> {
    match u64::try_from(seconds) {
        Err(_) => Err(Refusal::new(
            Code::InvalidArgument,
            format!("validity_duration must not be negative (got {seconds})"),
        )),
        Ok(0) => Ok(None),
        Ok(s) => Ok(Some(Duration::from_secs(s))),
    }
}

/// A refused request: the status code, what the caller is told and what the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The gRPC status code.
    pub code: Code,
    /// The message sent to the caller.
    pub message: String,
    /// The reason logged (the same as `message` unless the cause is internal).
    pub reason: String,
}

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Self {
        let message = message.into();
        Refusal {
            code,
            reason: message.clone(),
            message,
        }
    }

    fn status(&self) -> Status {
        Status::new(self.code, self.message.clone())
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::new(Code::Unauthenticated, e.to_string())
    }
}

impl From<SignError> for Refusal {
    fn from(e: SignError) -> Self {
        match e {
            SignError::IdentityMismatch { .. } => {
                Refusal::new(Code::PermissionDenied, e.to_string())
            }
            SignError::InvalidCsr(_) | SignError::CaRequested | SignError::TtlTooLong { .. } => {
                Refusal::new(Code::InvalidArgument, e.to_string())
            }
            SignError::Internal(_) => Refusal {
                code: Code::Internal,
                message: "the CA could not sign the certificate".into(),
                reason: e.to_string(),
            },
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let conn = request
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .unwrap_or_default();
        match self.handle(&conn, request).await {
            Ok((caller, chain)) => {
                log_issued(&conn, &caller, &chain);
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: chain,
                }))
            }
            Err((caller, refusal)) => {
                tracing::warn!(
                    peer = %conn.remote_display(),
                    transport = conn.transport(),
                    caller = caller.as_ref().map(|c| c.identity.as_str()).unwrap_or("-"),
                    credential = caller.as_ref().map(|c| c.credential.to_string()).unwrap_or_else(|| "-".into()),
                    code = ?refusal.code,
                    reason = %refusal.reason,
                    "refused a certificate request"
                );
                Err(refusal.status())
            }
        }
    }
}

fn log_issued(conn: &ConnInfo, caller: &Caller, chain: &[String]) {
    let info = chain
        .first()
        .and_then(|pem| halyard_certs::pem::certs_from_pem(pem).ok())
        .and_then(|certs| certs.into_iter().next())
        .and_then(|der| halyard_certs::verify::cert_info(&der).ok());
    let (serial, not_after) = info
        .map(|i| (i.serial, i.not_after))
        .unwrap_or_else(|| ("?".into(), 0));
    tracing::info!(
        peer = %conn.remote_display(),
        transport = conn.transport(),
        identity = %caller.identity,
        credential = %caller.credential,
        serial = %serial,
        not_after,
        "issued a certificate"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TokenTable;
    use halyard_certs::{CaPolicy, SpiffeId, WorkloadKey};
    use std::path::Path;

    const TOKEN: &str = "tok-reviews-0001";

    fn service(max_ttl: Duration) -> CaService {
        let policy = CaPolicy {
            default_ttl: Duration::from_secs(3600),
            max_ttl,
        };
        let ca = CertificateAuthority::self_signed("cluster.local", policy)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = format!("- token: {TOKEN}\n  namespace: default\n  serviceAccount: reviews\n");
        let tokens = TokenTable::parse(&text, Path::new("t.yaml"), "cluster.local")
            .unwrap_or_else(|e| panic!("{e}"));
        CaService::new(Arc::new(ca), Arc::new(Authenticator::new(tokens)))
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::workload("cluster.local", "default", sa).unwrap_or_else(|e| panic!("{e}"))
    }

    fn csr(sa: &str) -> String {
        let key = WorkloadKey::generate().unwrap_or_else(|e| panic!("{e}"));
        key.csr_pem(&id(sa)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn request(csr: String, ttl: i64, token: Option<&str>) -> Request<IstioCertificateRequest> {
        let mut r = Request::new(IstioCertificateRequest {
            csr,
            validity_duration: ttl,
            metadata: None,
        });
        if let Some(t) = token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                r.metadata_mut().insert("authorization", v);
            }
        }
        r
    }

    async fn call(svc: &CaService, r: Request<IstioCertificateRequest>) -> Result<usize, Code> {
        svc.create_certificate(r)
            .await
            .map(|resp| resp.into_inner().cert_chain.len())
            .map_err(|s| s.code())
    }

    #[tokio::test]
    async fn status_mapping() {
        let svc = service(Duration::from_secs(7200));
        assert_eq!(
            call(&svc, request(csr("reviews"), 0, Some(TOKEN))).await,
            Ok(2)
        );
        assert_eq!(
            call(&svc, request(csr("reviews"), 3600, Some(TOKEN))).await,
            Ok(2)
        );
        assert_eq!(
            call(&svc, request(csr("reviews"), 0, None)).await,
            Err(Code::Unauthenticated)
        );
        assert_eq!(
            call(&svc, request(csr("reviews"), 0, Some("wrong"))).await,
            Err(Code::Unauthenticated)
        );
        assert_eq!(
            call(&svc, request(csr("ratings"), 0, Some(TOKEN))).await,
            Err(Code::PermissionDenied)
        );
        assert_eq!(
            call(&svc, request(csr("reviews"), 7201, Some(TOKEN))).await,
            Err(Code::InvalidArgument)
        );
        assert_eq!(
            call(&svc, request(csr("reviews"), -1, Some(TOKEN))).await,
            Err(Code::InvalidArgument)
        );
        assert_eq!(
            call(&svc, request("not a CSR".into(), 0, Some(TOKEN))).await,
            Err(Code::InvalidArgument)
        );
        assert_eq!(
            call(&svc, request(String::new(), 0, Some(TOKEN))).await,
            Err(Code::InvalidArgument)
        );
    }

    #[tokio::test]
    async fn client_certificate_renews_its_own_identity() {
        let svc = service(Duration::from_secs(7200));
        let conn = ConnInfo {
            remote: None,
            peer_identity: Some(id("ratings")),
            tls: true,
        };
        let mut r = request(csr("ratings"), 0, None);
        r.extensions_mut().insert(conn.clone());
        assert_eq!(call(&svc, r).await, Ok(2));
        let mut r = request(csr("reviews"), 0, None);
        r.extensions_mut().insert(conn);
        assert_eq!(call(&svc, r).await, Err(Code::PermissionDenied));
    }

    #[tokio::test]
    async fn impersonation_is_refused() {
        let svc = service(Duration::from_secs(7200));
        let mut r = request(csr("reviews"), 0, Some(TOKEN));
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(IMPERSONATION_KEY.to_string(), prost_types::Value::default());
        r.get_mut().metadata = Some(prost_types::Struct { fields });
        assert_eq!(call(&svc, r).await, Err(Code::PermissionDenied));
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let r = Refusal::from(SignError::Internal("key store path /x".into()));
        assert_eq!(r.code, Code::Internal);
        assert!(!r.message.contains("/x"));
        assert!(r.reason.contains("/x"));
    }
}
