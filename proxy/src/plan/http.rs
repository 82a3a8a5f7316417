//! Planning one HTTP request: outbound (route → weighted destination → service port, or the
//! original destination) and inbound (the workload port → the local app).

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use halyard_xds::{LoadBalancer, Protocol};
use http::{header, Method, Request, StatusCode, Version};

use crate::ctx::{ConnInfo, Flags, Form, LocalReply};
use crate::headers;
use crate::routes::{
    lower_host, normalize_host, Action, Destination, Fault, Matched, Redirect, RequestView,
    RetryPolicy,
};
use crate::snapshot::{defaults, Cluster, ClusterPort, Snapshot};
use crate::upstream::hash::Ring;
use crate::upstream::{HttpVersion, Upstream, UpstreamKey};

/// The inbound side's policy: one try (connect failures included, as the app is local).
static NO_RETRIES: RetryPolicy = RetryPolicy::none();
/// Istio's retries for outbound requests no route configured.
static DEFAULT_RETRIES: LazyLock<RetryPolicy> = LazyLock::new(RetryPolicy::default);

/// The endpoints a request may go to.
#[derive(Debug)]
pub enum Endpoints<'s> {
    /// A service port's endpoints, or the inbound app, from the snapshot.
    Shared(&'s [Arc<Upstream>]),
    /// The original destination, which no service covers (ALLOW_ANY).
    Passthrough(Arc<Upstream>),
}

impl Endpoints<'_> {
    /// The endpoints as a list to pick from.
    pub fn as_slice(&self) -> &[Arc<Upstream>] {
        match self {
            Endpoints::Shared(s) => s,
            Endpoints::Passthrough(u) => std::slice::from_ref(u),
        }
    }
}

/// Where a request goes and how endpoints are chosen.
#[derive(Debug)]
pub struct Target<'s> {
    /// The service (or subset) cluster; `None` for the inbound app and passthrough.
    pub cluster: Option<&'s Arc<Cluster>>,
    /// Candidates.
    pub endpoints: Endpoints<'s>,
    /// Balancer.
    pub lb: LoadBalancer,
    /// The cluster's round-robin cursor; `None` where there is one endpoint.
    pub rr: Option<&'s AtomicUsize>,
    /// Consistent-hash ring, when the port has one.
    pub ring: Option<&'s Ring>,
    /// The port's declared protocol.
    pub protocol: Protocol,
    /// Idle timeout of a tunnel (upgrade) to this target.
    pub idle: Duration,
    /// The service (or workload) port the request is routed by.
    pub service_port: Option<u16>,
}

impl<'s> Target<'s> {
    pub(super) fn service(cluster: &'s Arc<Cluster>, cp: &'s ClusterPort) -> Self {
        Target {
            cluster: Some(cluster),
            endpoints: Endpoints::Shared(&cp.endpoints),
            lb: cluster.lb,
            rr: Some(&cluster.rr),
            ring: cp.ring.as_ref(),
            protocol: cp.protocol,
            idle: cluster.tcp_idle_timeout,
            service_port: Some(cp.port),
        }
    }

    pub(super) fn single(endpoints: Endpoints<'s>, protocol: Protocol, port: Option<u16>) -> Self {
        Target {
            cluster: None,
            endpoints,
            lb: LoadBalancer::RoundRobin,
            rr: None,
            ring: None,
            protocol,
            idle: defaults::TCP_IDLE_TIMEOUT,
            service_port: port,
        }
    }

    /// Whether this is the original destination outside the registry.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.endpoints, Endpoints::Passthrough(_))
    }
}

/// Forwarding: everything decided about sending the request upstream.
#[derive(Debug)]
pub struct Forward<'s> {
    /// Where to.
    pub target: Target<'s>,
    /// The weighted destination the route picked (its header operations apply).
    pub dest: Option<&'s Destination>,
    /// Retries.
    pub retry: &'s RetryPolicy,
    /// The HTTP version spoken upstream.
    pub version: HttpVersion,
    /// An HTTP/1.1 `Upgrade` (WebSocket) to tunnel once the upstream switches protocols.
    pub upgrade: bool,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Whether to tell the upstream who calls (Istio's metadata exchange): mesh peers only.
    pub peer_metadata: bool,
}

/// What happens after the route's fault, if any.
#[derive(Debug)]
pub enum Step<'s> {
    /// Send upstream.
    Forward(Forward<'s>),
    /// Answer locally: the route's redirect, or no service port, no such cluster.
    Reply(LocalReply),
}

/// The plan for one HTTP request.
#[derive(Debug)]
pub struct HttpPlan<'s> {
    /// The route that matched (outbound).
    pub route: Option<Matched<'s>>,
    /// The route's fault, applied before the step.
    pub fault: Option<&'s Fault>,
    /// What to do.
    pub step: Step<'s>,
}

/// The request's authority: the URI's, else `Host`.
pub fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The version spoken upstream: declared HTTP/2 and gRPC ports get HTTP/2, declared HTTP gets
/// HTTP/1.1, undeclared ports what the client spoke (HTTP/1.1 if a sidecar says it was
/// HTTP/1.1 before crossing the mesh); upgrades always HTTP/1.1.
fn version_for(protocol: Protocol, client: Version, upgrade: bool, orig_h1: bool) -> HttpVersion {
    match protocol {
        _ if upgrade => HttpVersion::Http1,
        Protocol::Http2 | Protocol::Grpc => HttpVersion::Http2,
        Protocol::Http => HttpVersion::Http1,
        _ if client == Version::HTTP_2 && !orig_h1 => HttpVersion::Http2,
        _ => HttpVersion::Http1,
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers())
}

/// Plans an outbound request. `orig_h1`: a mesh peer said the request was HTTP/1.1;
/// `roll`: a random number for the weighted destination.
pub fn outbound<'s, B>(
    snap: &'s Snapshot,
    req: &Request<B>,
    conn: &ConnInfo,
    orig_h1: bool,
    roll: u64,
) -> Result<HttpPlan<'s>, LocalReply> {
    debug_assert!(req.method() != Method::CONNECT, "CONNECT is planned apart");
    let authority = authority_of(req).ok_or(LocalReply::BAD_REQUEST)?;
    let (host, port) = normalize_host(authority);
    let port = port.or(conn.orig_dst.map(|d| d.port()));
    let host = lower_host(host);
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        host: &host,
        authority,
        scheme: "http",
        port,
        headers: req.headers(),
    };
    let route = snap.outbound.routes.find(&view);
    let action = route.map(|m| &m.route.action);
    let fault = action.and_then(|a| a.fault.as_ref());
    let dest = match action.map(|a| &a.action) {
        Some(Action::Redirect(r)) => {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return Ok(reply(route, fault, redirect(r, &host, port, pq)));
        }
        Some(Action::Forward(split)) => split.pick_at(roll),
        None => None,
    };
    let target = match dest {
        Some(d) => {
            let Some(cluster) = snap.outbound.clusters.get(d.cluster) else {
                return Ok(reply(route, fault, LocalReply::NO_ROUTE));
            };
            let Some(cp) = cluster.port(d.port.or(port)) else {
                return Ok(reply(route, fault, LocalReply::NO_HEALTHY));
            };
            Target::service(cluster, cp)
        }
        None => match conn.orig_dst.and_then(|d| snap.outbound.by_addr(d)) {
            Some((cluster, cp)) => Target::service(cluster, cp),
            None => match conn.orig_dst.filter(|_| !snap.outbound.registry_only) {
                Some(dst) => passthrough(dst.ip().to_string(), dst.port()),
                None => return Ok(reply(route, fault, LocalReply::NO_ROUTE)),
            },
        },
    };
    let upgrade = is_upgrade(req);
    let peer_metadata = target.endpoints.as_slice().iter().any(|e| e.mtls());
    let step = Step::Forward(Forward {
        version: version_for(target.protocol, req.version(), upgrade, orig_h1),
        dest,
        retry: action.map_or(&*DEFAULT_RETRIES, |a| &a.retry),
        upgrade,
        timeout: action.and_then(|a| a.timeout),
        peer_metadata,
        target,
    });
    Ok(HttpPlan { route, fault, step })
}

/// A route's redirect for a request to `host`/`port` with `path_and_query`: its status and
/// `Location`, no body (500 when the location is not a valid header value).
fn redirect(r: &Redirect, host: &str, port: Option<u16>, path_and_query: &str) -> LocalReply {
    let location = r.location("http", host, port, path_and_query);
    match http::HeaderValue::from_str(&location) {
        Ok(v) => LocalReply::new(r.code, Flags::default(), "")
            .in_form(Form::Plain)
            .with_header(header::LOCATION, v),
        Err(_) => LocalReply::new(StatusCode::INTERNAL_SERVER_ERROR, Flags::default(), "")
            .in_form(Form::Plain),
    }
}

/// The original destination, outside the registry: plain, with the default timeouts.
pub(super) fn passthrough(host: String, port: u16) -> Target<'static> {
    let key = UpstreamKey::plain(
        host,
        port,
        defaults::CONNECT_TIMEOUT,
        defaults::IDLE_TIMEOUT,
    );
    Target::single(
        Endpoints::Passthrough(Arc::new(Upstream::new(key))),
        Protocol::Auto,
        None,
    )
}

fn reply<'s>(
    route: Option<Matched<'s>>,
    fault: Option<&'s Fault>,
    local: LocalReply,
) -> HttpPlan<'s> {
    HttpPlan {
        route,
        fault,
        step: Step::Reply(local),
    }
}

/// Plans an inbound request: the workload port it was sent to (the first one when that is
/// unknown) and its app. Retries belong to the caller's sidecar (Istio): one try here.
pub fn inbound<'s, B>(
    snap: &'s Snapshot,
    req: &Request<B>,
    conn: &ConnInfo,
    orig_h1: bool,
) -> Result<HttpPlan<'s>, LocalReply> {
    let t = snap
        .inbound
        .target(conn.dst_port)
        .ok_or(LocalReply::NO_ROUTE)?;
    let upgrade = is_upgrade(req);
    let target = Target::single(
        Endpoints::Shared(std::slice::from_ref(&t.app)),
        t.protocol,
        Some(t.port),
    );
    let step = Step::Forward(Forward {
        version: version_for(t.protocol, req.version(), upgrade, orig_h1),
        dest: None,
        retry: &NO_RETRIES,
        upgrade,
        timeout: None,
        peer_metadata: false,
        target,
    });
    Ok(HttpPlan {
        route: None,
        fault: None,
        step,
    })
}
