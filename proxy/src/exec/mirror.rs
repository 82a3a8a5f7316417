//! Request mirroring: a copy of the request goes to another cluster, fire and forget. The
//! copy's outcome never touches the original exchange; copies are bounded in number and time
//! and stop when the proxy drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::Request;
use http_body_util::BodyExt;

use crate::exec::attempts::{adapt_request, version_for};
use crate::io::body::ProxyBody;
use crate::routes::normalize_host;
use crate::shared::Shared;
use crate::snapshot::Cluster;
use crate::upstream::{pick, Avoid, Conn, HttpVersion};
use halyard_xds::Protocol;

/// Longest a mirrored request may take, response body included.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `req` to `cluster` in the background (`port`: the service port wanted).
pub fn spawn(
    shared: &Arc<Shared>,
    cluster: Arc<Cluster>,
    port: Option<u16>,
    mut req: Request<ProxyBody>,
) {
    let traffic = &shared.metrics.traffic;
    let Ok(permit) = shared.mirror_slots.clone().try_acquire_owned() else {
        traffic.mirrors.with_label_values(&["skipped"]).inc();
        return;
    };
    // Envoy's convention: the mirror sees the host with "-shadow" appended.
    shadow_host(&mut req);
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        let _permit = permit;
        let work = send(&shared2, &cluster, port, req);
        let ok = tokio::select! {
            r = tokio::time::timeout(MIRROR_TIMEOUT, work) => matches!(r, Ok(true)),
            () = shared2.shutdown.cancelled() => false,
        };
        let result = if ok { "sent" } else { "failed" };
        shared2
            .metrics
            .traffic
            .mirrors
            .with_label_values(&[result])
            .inc();
    });
}

fn shadow_host(req: &mut Request<ProxyBody>) {
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let Some(authority) = authority else {
        return;
    };
    let shadow = match normalize_host(authority) {
        (name, Some(port)) => format!("{name}-shadow:{port}"),
        (name, None) => format!("{name}-shadow"),
    };
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        req.headers_mut().insert(header::HOST, v);
    }
    if req.uri().authority().is_some() {
        let mut parts = req.uri().clone().into_parts();
        if let Ok(a) = shadow.parse() {
            parts.authority = Some(a);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
}

/// Sends one mirrored request and reads its response to the end; true when it got a response.
async fn send(
    shared: &Shared,
    cluster: &Cluster,
    port: Option<u16>,
    mut req: Request<ProxyBody>,
) -> bool {
    let Some(cp) = cluster.port(port) else {
        return false;
    };
    let Some(up) = pick(
        &cp.endpoints,
        cluster.lb,
        &cluster.rr,
        None,
        Avoid::none(Instant::now()),
    ) else {
        return false;
    };
    let _guard = up.begin();
    let wanted = match (cp.protocol, req.version()) {
        (Protocol::Http2 | Protocol::Grpc, _) => HttpVersion::Http2,
        (Protocol::Http, _) => HttpVersion::Http1,
        (_, http::Version::HTTP_2) => HttpVersion::Http2,
        _ => HttpVersion::Http1,
    };
    let version = version_for(up, wanted, false);
    if adapt_request(&mut req, up, wanted, version).is_err() {
        return false;
    }
    let conn = match up.checkout(version, shared.mtls.as_deref(), 0).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(upstream = %up.authority, error = %e, "mirror connect failed");
            return false;
        }
    };
    let resp = match conn {
        Conn::H1(mut pooled) => {
            let r = pooled.sender.send_request(req).await;
            match r {
                Ok(resp) => {
                    let ok = resp.into_body().collect().await.is_ok();
                    if ok {
                        pooled.release();
                    }
                    return ok;
                }
                Err(e) => Err(e),
            }
        }
        Conn::H2(mut sender) => sender.send_request(req).await,
    };
    match resp {
        Ok(resp) => resp.into_body().collect().await.is_ok(),
        Err(e) => {
            tracing::debug!(upstream = %up.authority, error = %e, "mirror request failed");
            false
        }
    }
}
