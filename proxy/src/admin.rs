//! The admin server: readiness, bound listeners, config dump, metrics, log level, exit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::io::body::ProxyBody;
use crate::shared::Shared;
use crate::telemetry::access_log::rfc3339;
use crate::telemetry::logging::LogControl;

/// What the admin endpoints need beyond [`Shared`].
pub struct Admin {
    /// Process state.
    pub shared: Arc<Shared>,
    /// Runtime log filter.
    pub log: Option<LogControl>,
    /// Set once every listener is bound and a config applied.
    pub ready: AtomicBool,
    /// Bound addresses.
    pub outbound: SocketAddr,
    /// Bound addresses.
    pub inbound: SocketAddr,
    /// Bound addresses.
    pub admin: SocketAddr,
    /// Bound addresses.
    pub stats: SocketAddr,
}

/// What a listener of the admin server exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the admin port, loopback by default).
    Admin,
    /// Metrics and readiness only (the Prometheus scrape port, reachable from outside).
    Stats,
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    let mut s = body.into();
    s.push('\n');
    reply(status, "text/plain; charset=utf-8", s)
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl Admin {
    fn route(&self, req: &Request<Incoming>, scope: Scope) -> Response<ProxyBody> {
        let (method, path) = (req.method(), req.uri().path());
        if scope == Scope::Stats
            && !matches!(path, "/stats/prometheus" | "/metrics" | "/healthz/ready")
        {
            return text(
                StatusCode::NOT_FOUND,
                "endpoints: /stats/prometheus /healthz/ready",
            );
        }
        match (method, path) {
            (&Method::GET, "/ready") | (&Method::GET, "/healthz/ready") => {
                if self.shared.shutdown.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING")
                } else if !self.ready.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING")
                } else if !self.shared.live.has_config() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "WAITING_FOR_CONFIG")
                } else if self.shared.identity.as_ref().is_some_and(|i| !i.ready()) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "WAITING_FOR_CERTIFICATE")
                } else if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "LIVE")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING")
                }
            }
            (&Method::GET, "/certs") => reply(
                StatusCode::OK,
                "application/json",
                crate::identity::certs_json(self.shared.identity.as_deref()).to_string(),
            ),
            (&Method::GET, "/listeners") => {
                let body = json!({
                    "outbound": self.outbound.to_string(),
                    "inbound": self.inbound.to_string(),
                    "admin": self.admin.to_string(),
                    "stats": self.stats.to_string(),
                });
                reply(StatusCode::OK, "application/json", body.to_string())
            }
            (&Method::GET, "/config_dump") => {
                let snap = self.shared.live.load();
                let xds = self
                    .shared
                    .xds_status
                    .get()
                    .map(|s| serde_json::to_value(&*s.borrow()).unwrap_or_default());
                let body = json!({
                    "version": snap.version,
                    "applied_at": rfc3339(snap.applied_at),
                    "xds": xds,
                    "config": snap.config,
                });
                match serde_json::to_string_pretty(&body) {
                    Ok(s) => reply(StatusCode::OK, "application/json", s),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render config: {e}")),
                }
            }
            (&Method::GET, "/stats/prometheus") | (&Method::GET, "/metrics") => {
                let snap = self.shared.live.load();
                let xds = self.shared.xds_status.get().map(|s| s.borrow().clone());
                self.shared
                    .metrics
                    .health
                    .refresh(xds.as_ref(), &snap.version, snap.applied_at);
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.shared.metrics.render(),
                )
            }
            (&Method::GET | &Method::POST, "/logging") if self.log.is_none() => {
                text(StatusCode::NOT_FOUND, "this proxy's logging is not managed here")
            }
            (&Method::GET, "/logging") => text(
                StatusCode::OK,
                format!("level: {}", self.log.as_ref().map(LogControl::current).unwrap_or_default()),
            ),
            (&Method::POST, "/logging") => match (query_param(req, "level"), &self.log) {
                (None, _) | (_, None) => {
                    text(StatusCode::BAD_REQUEST, "usage: POST /logging?level=<filter>")
                }
                (Some(level), Some(log)) => match log.set(level) {
                    Ok(()) => text(StatusCode::OK, format!("level: {level}")),
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                },
            },
            (&Method::POST, "/quitquitquit") => {
                tracing::info!("exit requested through the admin port");
                self.shared.shutdown.cancel();
                text(StatusCode::OK, "OK")
            }
            (_, "/quitquitquit" | "/logging") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            _ => text(
                StatusCode::NOT_FOUND,
                "endpoints: /ready /listeners /certs /config_dump /stats/prometheus /logging /quitquitquit",
            ),
        }
    }

    /// Serves the endpoints of `scope` on `listener` until `stop` is cancelled.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        scope: Scope,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(&req, scope)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}
