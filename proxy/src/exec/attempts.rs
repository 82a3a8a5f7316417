//! Sending a request upstream: pick an endpoint, connect, send — and try again on another
//! endpoint when the route's retry policy says so, within the retry budget, with jittered
//! backoff; every outcome feeds outlier detection.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_xds::LoadBalancer;
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::ctx::Flags;
use crate::ctx::LocalReply;
use crate::headers;
use crate::io::body::ProxyBody;
use crate::io::replay::ReplayBody;
use crate::request::RequestCtx;
use crate::routes::RetryPolicy;
use crate::shared::Shared;
use crate::snapshot::Cluster;
use crate::telemetry::peer::{PEER_METADATA, PEER_METADATA_ID};
use crate::upstream::breaker::RetrySlot;
use crate::upstream::hash::Ring;
use crate::upstream::outlier::Outcome;
use crate::upstream::{pick, Avoid, Conn, ConnectError, HttpVersion, PooledH1, Upstream};

/// Sends retried after finding a pooled connection closed (not counted as tries).
const STALE_RETRIES: u32 = 3;

/// Where and how a request is sent.
pub struct Call<'a> {
    /// The cluster, for breakers, outlier detection and metrics (none: passthrough, inbound).
    pub cluster: Option<&'a Cluster>,
    /// Candidate endpoints.
    pub endpoints: &'a [Arc<Upstream>],
    /// Balancing.
    pub lb: LoadBalancer,
    /// Round-robin cursor.
    pub rr: &'a AtomicUsize,
    /// Consistent-hash ring and the request's key.
    pub hash: Option<(&'a Ring, u64)>,
    /// HTTP version the service wants.
    pub version: HttpVersion,
    /// A protocol upgrade (never sent as HTTP/2, never retried).
    pub upgrade: bool,
    /// Retry policy.
    pub retry: &'a RetryPolicy,
    /// Requests per upstream connection (0 = unlimited).
    pub max_requests_per_connection: usize,
}

/// What is needed to build the request again for a retry.
pub struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Option<ReplayBody<Incoming>>,
}

impl Template {
    /// Keeps a copy of `req`'s head; `body` replays the body (None: the body is empty).
    pub fn of<B>(req: &Request<B>, body: Option<ReplayBody<Incoming>>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        }
    }

    /// A fresh request for another try, unless the body can no longer be replayed.
    fn rebuild(&self) -> Option<Request<ProxyBody>> {
        let body = match &self.body {
            None => ProxyBody::Empty,
            Some(b) => ProxyBody::Replay { body: b.replay()? },
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }

    fn replayable(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.replayable())
    }
}

/// A response and the HTTP/1 connection to return to its pool once the body is read.
pub type Sent = (Response<Incoming>, Option<PooledH1>);

/// How one try ended when it produced no usable response.
enum Failed {
    Connect(ConnectError),
    /// The client's own request body failed: its fault, not the upstream's (no retry, no
    /// outlier record).
    Downstream(LocalReply),
    Reset {
        refused: bool,
    },
    Timeout,
}

/// Sends `req` per `call`, retrying as the policy allows; `template` rebuilds it for retries
/// (None: not retried beyond connect failures, e.g. an upgrade).
pub async fn send(
    shared: &Shared,
    call: &Call<'_>,
    req: Request<ProxyBody>,
    template: Option<&Template>,
    ex: &mut RequestCtx,
) -> Result<Sent, LocalReply> {
    let mut next = Some(req);
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut stale = 0;
    let max_tries = 1 + call.retry.attempts;
    let mut tries = 0;
    let mut _retry_slot = None;
    loop {
        let now = Instant::now();
        tries += 1;
        let up = choose(call, &tried, now, tries, ex)?;
        let guard = up.begin();
        let actual = version_for(&up, call.version, call.upgrade);

        let result = attempt(shared, call, &up, actual, &mut next, &mut stale).await;
        let can_retry = tries < max_tries
            && !call.upgrade
            && (next.is_some() || template.is_some_and(Template::replayable));
        let (outcome, retry, final_result) = match judge(shared, call, &up, result, tries, ex) {
            Judged::Done(r) => return r,
            Judged::Retriable(outcome, r) => (outcome, true, r),
            Judged::Final(outcome, r) => (outcome, false, r),
        };
        if final_result.is_ok() && !(retry && can_retry) {
            // A response the policy would retry, with no retry left, is the client's answer.
            if retry && tries > 1 {
                ex.flags.set(Flags::URX);
            }
            record(shared, call, &up, outcome, now);
            ex.guards.in_flight = Some(guard);
            return final_result;
        }
        record(shared, call, &up, outcome, now);
        drop(guard);
        if !(retry && can_retry) {
            return final_result.map_err(|mut local| {
                if tries > 1 {
                    local.flags.set(Flags::URX);
                }
                local
            });
        }
        // The retry just made (if any) is over: its budget slot is free again.
        _retry_slot = None;
        // Back off first, keeping the answer being retried: if the budget refuses the retry,
        // that answer is what the client gets.
        tokio::time::sleep(call.retry.backoff(tries)).await;
        // The budget counts retries in flight, not waiting ones: occasional failures are
        // always retried, while in an outage retries cannot multiply the load.
        match retry_budget(shared, call) {
            Ok(slot) => _retry_slot = slot,
            Err(()) => {
                return final_result.map_err(|mut l| {
                    l.flags.set(Flags::UO);
                    l
                })
            }
        }
        // The response being retried is dropped unread (its connection is not reused).
        drop(final_result);
        tried.push(up);
        if next.is_none() {
            next = template.and_then(Template::rebuild);
            if next.is_none() {
                return Err(LocalReply::UPSTREAM_RESET);
            }
        }
    }
}

/// The endpoint of try number `tries` (one not tried yet where the balancer can), noted in
/// the record.
fn choose(
    call: &Call<'_>,
    tried: &[Arc<Upstream>],
    now: Instant,
    tries: u32,
    ex: &mut RequestCtx,
) -> Result<Arc<Upstream>, LocalReply> {
    let up = pick(
        call.endpoints,
        call.lb,
        call.rr,
        call.hash,
        Avoid { tried, now },
    )
    .ok_or(LocalReply::NO_HEALTHY)?
    .clone();
    ex.attempts = tries;
    ex.upstream = Some(up.authority.clone());
    ex.upstream_identity = up.identity.clone();
    Ok(up)
}

/// What a try's result means for the request.
enum Judged {
    /// The request ends with the client's own failure.
    Done(Result<Sent, LocalReply>),
    /// The policy retries this, if a try is left.
    Retriable(Outcome, Result<Sent, LocalReply>),
    /// The policy does not retry this failure.
    Final(Outcome, Result<Sent, LocalReply>),
}

/// Judges one try by the retry policy; a failure becomes the local reply the client gets if
/// no retry follows.
fn judge(
    shared: &Shared,
    call: &Call<'_>,
    up: &Arc<Upstream>,
    result: Result<Sent, Failed>,
    tries: u32,
    ex: &mut RequestCtx,
) -> Judged {
    let retried = tries > 1;
    let (outcome, retry, r) = match result {
        Ok(sent) => {
            let status = sent.0.status().as_u16();
            let grpc = grpc_status(sent.0.headers());
            let retry = call.retry.retry_status(status, grpc);
            (Outcome::Status(status), retry, Ok(sent))
        }
        Err(Failed::Connect(e)) => {
            note_connect_failure(shared, ex, &e);
            tracing::debug!(upstream = %up.authority, error = %e, attempt = tries, "upstream connect failed");
            (
                Outcome::ConnectFailure,
                call.retry.retry_connect_failure(),
                Err(LocalReply::connect_failed(retried)),
            )
        }
        Err(Failed::Downstream(local)) => {
            ex.flags.set(local.flags);
            return Judged::Done(Err(local));
        }
        Err(Failed::Reset { refused }) => (
            Outcome::Reset,
            call.retry.retry_reset(refused),
            Err(LocalReply::UPSTREAM_RESET),
        ),
        Err(Failed::Timeout) => (
            Outcome::Timeout,
            call.retry.retry_timeout(),
            Err(LocalReply::TIMEOUT),
        ),
    };
    if retry {
        Judged::Retriable(outcome, r)
    } else {
        Judged::Final(outcome, r)
    }
}

/// Takes a slot of the cluster's retry budget (none needed without a cluster); `Err` when
/// the budget is spent, counted.
fn retry_budget(shared: &Shared, call: &Call<'_>) -> Result<Option<RetrySlot>, ()> {
    let Some(c) = call.cluster else {
        return Ok(None);
    };
    match c.breaker.try_retry(c.limits.max_retries) {
        Ok(slot) => {
            shared
                .metrics
                .traffic
                .retries
                .with_label_values(&[&c.name])
                .inc();
            Ok(Some(slot))
        }
        Err(_) => {
            shared
                .metrics
                .traffic
                .retry_overflow
                .with_label_values(&[&c.name])
                .inc();
            Err(())
        }
    }
}

/// One try on one endpoint: connect, send, wait for the response head (within the per-try
/// timeout). `next` is taken when the request is sent and given back if it never left.
async fn attempt(
    shared: &Shared,
    call: &Call<'_>,
    up: &Arc<Upstream>,
    actual: HttpVersion,
    next: &mut Option<Request<ProxyBody>>,
    stale: &mut u32,
) -> Result<Sent, Failed> {
    let work = async {
        loop {
            let conn = up
                .checkout(
                    actual,
                    shared.mtls.as_deref(),
                    call.max_requests_per_connection,
                )
                .await
                .map_err(Failed::Connect)?;
            let Some(mut r) = next.take() else {
                return Err(Failed::Reset { refused: false });
            };
            if adapt_request(&mut r, up, call.version, actual).is_err() {
                return Err(Failed::Reset { refused: false });
            }
            let outcome = match conn {
                Conn::H1(mut pooled) => match pooled.sender.try_send_request(r).await {
                    Ok(resp) => Ok((resp, Some(pooled))),
                    Err(mut e) => Err((e.take_message(), e.into_error())),
                },
                Conn::H2(mut sender) => match sender.try_send_request(r).await {
                    Ok(resp) => Ok((resp, None)),
                    Err(mut e) => Err((e.take_message(), e.into_error())),
                },
            };
            match outcome {
                Ok(sent) => return Ok(sent),
                Err((Some(unsent), e)) if *stale < STALE_RETRIES => {
                    *stale += 1;
                    tracing::debug!(upstream = %up.authority, error = %e, "pooled connection was closed; retrying");
                    *next = Some(unsent);
                }
                Err((unsent, e)) => {
                    if let Some(local) = downstream_fault(&e) {
                        tracing::debug!(error = %e, "the downstream request body failed");
                        return Err(Failed::Downstream(local));
                    }
                    tracing::debug!(upstream = %up.authority, error = %e, "upstream request failed");
                    let refused = unsent.is_some();
                    *next = unsent;
                    return Err(if e.is_timeout() {
                        Failed::Timeout
                    } else {
                        Failed::Reset { refused }
                    });
                }
            }
        }
    };
    match call.retry.per_try_timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(Failed::Timeout)),
        None => work.await,
    }
}

/// When sending failed because the downstream's request body did (a body error reaches the
/// client connection as the user body's error): a malformed body is 400 `DPE`, a client that
/// went away `DC`.
fn downstream_fault(e: &hyper::Error) -> Option<LocalReply> {
    if !e.is_user() {
        return None;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            let malformed = h.is_parse()
                || std::error::Error::source(h)
                    .and_then(|c| c.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| {
                        matches!(
                            io.kind(),
                            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                        )
                    });
            return Some(if malformed {
                LocalReply::BAD_BODY
            } else {
                LocalReply::DOWNSTREAM_GONE
            });
        }
        source = s.source();
    }
    None
}

/// Feeds an outcome to the cluster's outlier detection.
fn record(shared: &Shared, call: &Call<'_>, up: &Upstream, outcome: Outcome, now: Instant) {
    let Some(cluster) = call.cluster else {
        return;
    };
    let Some(cfg) = &cluster.outlier else {
        return;
    };
    let peers = call.endpoints.iter().map(|u| &u.health);
    if up.health.record(cfg, outcome, now, peers) {
        shared
            .metrics
            .traffic
            .ejections
            .with_label_values(&[&cluster.name])
            .inc();
        tracing::info!(cluster = %cluster.name, upstream = %up.authority, ejections = up.health.ejections(), "endpoint ejected by outlier detection");
    }
}

/// The gRPC status of a trailers-only response (in the headers).
fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The version spoken to one endpoint: sidecars are always reached over HTTP/2 (except for
/// protocol upgrades, which HTTP/2 cannot carry), so requests share one mTLS connection.
pub fn version_for(up: &Upstream, wanted: HttpVersion, upgrade: bool) -> HttpVersion {
    if up.mtls() && !upgrade {
        HttpVersion::Http2
    } else {
        wanted
    }
}

/// Prepares `req` for endpoint `up`: its HTTP version, the marker telling the peer sidecar
/// that an HTTP/1.1 request travels as HTTP/2, and no workload metadata for an endpoint that
/// is not a mesh peer (a service may mix sidecar and plain endpoints).
pub fn adapt_request<B>(
    req: &mut Request<B>,
    up: &Upstream,
    wanted: HttpVersion,
    actual: HttpVersion,
) -> Result<(), LocalReply> {
    let [meta, meta_id, orig_proto] = headers::present(
        req.headers(),
        [&PEER_METADATA, &PEER_METADATA_ID, &headers::ORIG_PROTO],
    );
    if !up.mtls() && meta {
        req.headers_mut().remove(&PEER_METADATA);
        if meta_id {
            req.headers_mut().remove(&PEER_METADATA_ID);
        }
    }
    // Already in the right form (the usual case) when the version matches.
    if (req.version() == Version::HTTP_2) != (actual == HttpVersion::Http2) {
        super::http::set_uri_for(req, actual)?;
    }
    if wanted == HttpVersion::Http1 && actual == HttpVersion::Http2 {
        req.headers_mut().insert(
            headers::ORIG_PROTO.clone(),
            HeaderValue::from_static("HTTP/1.1"),
        );
    } else if orig_proto {
        req.headers_mut().remove(&headers::ORIG_PROTO);
    }
    Ok(())
}

/// Counts a failed connect and keeps a TLS failure's reason for the access log.
pub fn note_connect_failure(shared: &Shared, ex: &mut RequestCtx, e: &ConnectError) {
    super::connect::count_connect_failure(shared, e);
    if let ConnectError::Tls(t) = e {
        ex.transport_failure = Some(t.reason());
    }
}

/// Waits for a circuit-breaker slot of `cluster`, failing fast (503 UO) when too many
/// requests already wait, and giving up after `max_wait`.
pub async fn admit(
    shared: &Shared,
    cluster: &Cluster,
    http1: bool,
    max_wait: Duration,
) -> Result<crate::upstream::breaker::Active, LocalReply> {
    let overflow = || {
        shared
            .metrics
            .traffic
            .overflow
            .with_label_values(&[&cluster.name])
            .inc();
        LocalReply::OVERFLOW
    };
    let cap = cluster.limits.concurrency(http1);
    let admitted = tokio::time::timeout(
        max_wait,
        cluster.breaker.admit(cap, cluster.limits.max_pending),
    )
    .await;
    match admitted {
        Ok(Ok(active)) => Ok(active),
        Ok(Err(_)) | Err(_) => Err(overflow()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamKey;
    use std::time::Duration;

    fn endpoint(identity: Option<&str>) -> Upstream {
        let mut key = UpstreamKey::plain(
            "127.0.0.1".into(),
            8080,
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        key.transport = crate::upstream::Transport::mesh_or_plain(
            identity.map(|i| i.parse().expect("SPIFFE ID")),
            None,
        );
        Upstream::new(key)
    }

    fn with_metadata() -> Request<()> {
        let mut r = Request::builder()
            .uri("http://backend:8080/")
            .body(())
            .expect("request");
        r.headers_mut().insert(
            PEER_METADATA,
            HeaderValue::from_static("Cg0KBE5BTUUSBRoDYXBw"),
        );
        r.headers_mut().insert(
            PEER_METADATA_ID,
            HeaderValue::from_static("sidecar~~app.demo~demo.svc.cluster.local"),
        );
        r
    }

    #[test]
    fn workload_metadata_goes_to_mesh_peers_only() {
        let plain = endpoint(None);
        let mut r = with_metadata();
        adapt_request(&mut r, &plain, HttpVersion::Http1, HttpVersion::Http1).expect("adapt");
        assert!(!r.headers().contains_key(&PEER_METADATA));
        assert!(!r.headers().contains_key(&PEER_METADATA_ID));

        let peer = endpoint(Some("spiffe://cluster.local/ns/demo/sa/backend"));
        let mut r = with_metadata();
        adapt_request(&mut r, &peer, HttpVersion::Http1, HttpVersion::Http1).expect("adapt");
        assert!(r.headers().contains_key(&PEER_METADATA));
        assert!(r.headers().contains_key(&PEER_METADATA_ID));
    }
}
