//! Inbound policy on a request: JWT authentication (RequestAuthentication), path
//! normalisation, then authorization (AuthorizationPolicy), with the workload's compiled
//! policies from the snapshot. A workload without policies skips all of it.

use std::net::IpAddr;

use bytes::Bytes;
use halyard_filters::attrs::{Authenticated, Connection, Request as Attrs};
use halyard_filters::jwt::realm_url;
use halyard_filters::rbac::{Decision, Verdict};
use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode, Uri};

use crate::ctx::ConnInfo;
use crate::ctx::LocalReply;
use crate::io::body::ProxyBody;
use crate::request::RequestCtx;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

/// Why a request does not go on to the app.
pub enum Refusal {
    /// A local reply (403 from authorization, 400 for a path that cannot be normalised).
    LocalReply(LocalReply),
    /// 401 from authentication, with its `www-authenticate` challenge.
    Unauthenticated(Response<ProxyBody>),
}

/// The connection attributes a decision looks at.
pub fn connection<'a>(conn: &'a ConnInfo, port: u16) -> Connection<'a> {
    let unspecified = IpAddr::from([0, 0, 0, 0]);
    Connection {
        source_ip: conn.peer.ip(),
        // No proxy in front of a sidecar is trusted to report the client: the peer it is.
        remote_ip: conn.peer.ip(),
        destination_ip: conn.orig_dst.or(conn.local).map_or(unspecified, |d| d.ip()),
        destination_port: port,
        principal: conn
            .peer_cert
            .as_ref()
            .map(|p| p.identity.as_str())
            .map(|id| id.strip_prefix("spiffe://").unwrap_or(id)),
        sni: conn.sni.as_deref(),
    }
}

/// Applies the workload's policies to an inbound request; on success the request may have
/// changed (token removed, claim headers set, path normalised).
pub async fn inbound(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    port: u16,
    parts: &mut Parts,
    ex: &mut RequestCtx,
) -> Result<(), Refusal> {
    if snap.rbac.is_empty() && snap.authn.is_empty() {
        return Ok(());
    }
    let metrics = &shared.metrics;
    let auth = authenticate(snap, conn, parts, ex, metrics).await?;

    // The app gets the path that was authorized, so it cannot resolve a spelling the policy
    // did not see (`/public/%2e%2e/admin`).
    let path =
        halyard_filters::path::normalize(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            .map_err(|e| {
                tracing::debug!(peer = %conn.peer, error = %e, "request path cannot be normalised");
                Refusal::LocalReply(LocalReply::BAD_PATH)
            })?;
    if path != parts.uri.path() {
        let rewritten = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(
            rewritten
                .parse()
                .map_err(|_| Refusal::LocalReply(LocalReply::BAD_PATH))?,
        );
        parts.uri = Uri::from_parts(uri).map_err(|_| Refusal::LocalReply(LocalReply::BAD_PATH))?;
    }
    if snap.rbac.is_empty() {
        return Ok(());
    }
    let path = parts.uri.path();
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let attrs = Attrs {
        method: parts.method.as_str(),
        path,
        host,
        headers: &parts.headers,
        auth: auth.as_ref(),
    };
    let decision = snap.rbac.evaluate_http(&connection(conn, port), &attrs);
    record(metrics, &decision);
    if decision.allowed() {
        return Ok(());
    }
    let policy = decision.policy_label();
    tracing::debug!(
        peer = %conn.peer,
        policy,
        reason = decision.reason().as_str(),
        method = %parts.method,
        path,
        "request denied by authorization policy"
    );
    if !policy.is_empty() {
        ex.denied_by = Some(policy.into());
    }
    Err(Refusal::LocalReply(LocalReply::FORBIDDEN))
}

async fn authenticate(
    snap: &Snapshot,
    conn: &ConnInfo,
    parts: &mut Parts,
    ex: &mut RequestCtx,
    metrics: &Metrics,
) -> Result<Option<Authenticated>, Refusal> {
    if snap.authn.is_empty() {
        return Ok(None);
    }
    let before = parts.uri.clone();
    match snap.authn.authenticate(parts).await {
        Ok(auth) => {
            if parts.uri != before {
                ex.redact_uri(&parts.uri);
            }
            let result = if auth.is_some() {
                "verified"
            } else {
                "no_token"
            };
            metrics.jwt_authn.with_label_values(&[result]).inc();
            if let Some(a) = &auth {
                ex.request_principal = Some(a.principal.as_str().into());
            }
            Ok(auth)
        }
        Err(e) => {
            metrics.jwt_authn.with_label_values(&["rejected"]).inc();
            // The URI may still hold the token; the reason never does.
            let scheme = if conn.peer_cert.is_some() {
                "https"
            } else {
                "http"
            };
            ex.redact_uri(&strip_query(&parts.uri));
            tracing::debug!(peer = %conn.peer, reason = %e, "JWT authentication failed");
            let challenge = e.www_authenticate(&realm_url(parts, scheme));
            let mut resp = if ex.grpc {
                crate::io::reply::grpc_reply(16, &e.to_string())
            } else {
                let mut r = Response::new(ProxyBody::full(Bytes::from(format!("{e}\n"))));
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            };
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
            Err(Refusal::Unauthenticated(resp))
        }
    }
}

/// The URI without its query (a refused token may sit there).
fn strip_query(uri: &Uri) -> Uri {
    let mut parts = uri.clone().into_parts();
    if let Some(pq) = &parts.path_and_query {
        parts.path_and_query = pq.path().parse().ok();
    }
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// Counts a decision: the enforced verdict, the matching AUDIT policy, the shadow verdict.
pub fn record(metrics: &Metrics, d: &Decision<'_>) {
    let count = |action: &str, policy: &str, result: &str| {
        let policy = if policy.is_empty() { "none" } else { policy };
        metrics
            .rbac_decisions
            .with_label_values(&[action, policy, result])
            .inc();
    };
    let v: &Verdict<'_> = &d.enforced;
    count(v.action_label(), v.policy_label(), v.result_label());
    if let Some(audit) = d.audit {
        count("AUDIT", audit, "audited");
    }
    if let Some(s) = &d.shadow {
        let result = if s.allowed() {
            "shadow_allowed"
        } else {
            "shadow_denied"
        };
        count(s.action_label(), s.policy_label(), result);
    }
}
