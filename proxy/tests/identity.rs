//! Certificate bootstrap and rotation against an in-process CA speaking Istio's protocol.

use std::sync::Arc;
use std::time::Duration;

use halyard_certs::caservice::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use halyard_certs::caservice::{IstioCertificateRequest, IstioCertificateResponse};
use halyard_certs::{CaPolicy, CertificateAuthority, SpiffeId};
use halyard_proxy::identity::{run_rotation, Identity, IdentityOptions};
use tokio_util::sync::CancellationToken;

/// A CA that signs for one fixed identity, counting requests.
struct TestCa {
    ca: CertificateAuthority,
    id: SpiffeId,
    calls: std::sync::atomic::AtomicUsize,
}

struct Svc(Arc<TestCa>);

#[tonic::async_trait]
impl IstioCertificateService for Svc {
    async fn create_certificate(
        &self,
        req: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.0
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = req.into_inner();
        let ttl = Duration::from_secs(r.validity_duration.max(0) as u64);
        let chain = self
            .0
            .ca
            .sign_csr(&r.csr, &self.0.id, Some(ttl))
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

#[tokio::test]
async fn fetches_then_renews_before_expiry() {
    let id = SpiffeId::workload("cluster.local", "demo", "web").unwrap();
    let ca = Arc::new(TestCa {
        ca: CertificateAuthority::self_signed("cluster.local", CaPolicy::default()).unwrap(),
        id: id.clone(),
        calls: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(Svc(ca.clone())))
            .serve_with_incoming_shutdown(tokio_stream_from(listener), async move {
                server_stop.cancelled().await
            }),
    );

    let identity = Identity::new(IdentityOptions {
        ca_addr: addr.to_string(),
        ca_root_file: None,
        ca_identity: None,
        token_file: None,
        identity: id.clone(),
        // Four seconds: renewal is due after about two. (not_after has whole-second
        // precision, so the remaining life seen on arrival is 3–4 s.)
        cert_ttl: Duration::from_secs(4),
    })
    .unwrap();
    assert!(!identity.ready());
    let expiry = prometheus::Gauge::new("e", "e").unwrap();
    let renewals =
        prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["result"]).unwrap();
    let task = tokio::spawn(run_rotation(
        identity.clone(),
        expiry.clone(),
        renewals.clone(),
        stop.clone(),
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !identity.ready() {
        assert!(tokio::time::Instant::now() < deadline, "no certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = identity.store.current().unwrap();
    assert_eq!(first.info.identity.as_ref(), Some(&id));
    assert!(expiry.get() > 0.0);
    // Renewed before the first one expires (not at once: about half of it), new serial.
    let got_first = tokio::time::Instant::now();
    loop {
        let now = identity.store.current().unwrap();
        if now.info.serial != first.info.serial {
            assert!(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64
                    <= first.info.not_after
            );
            let after = got_first.elapsed();
            assert!(
                after >= Duration::from_millis(1200),
                "renewed too early: {after:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(renewals.with_label_values(&["ok"]).get() >= 2);

    // The CA going away: the rotation retries, the current certificate stays in service.
    stop.cancel();
    let _ = server.await;
    task.await.unwrap();
    assert!(identity.ready());
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}
