//! The mesh configuration in force (`serve --config DIR`): [`MeshState`] loads and checks the
//! model, translates it for every proxy, publishes the result to the [`MemorySource`] the ADS
//! server serves from, and watches the input for changes (debounced), keeping the last good
//! configuration when an edit has errors. It does not speak xDS itself (`halyard_xds::ads` does).
//! Also here: which node a stream may ask for ([`authorize`]) and the monitoring port
//! (`/metrics`, `/debug/connections`, `/ready`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use halyard_xds::ads::{AdsServer, Encoder, MemorySource};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::conn::ConnInfo;
use crate::model::{ModelSource, Severity};
use crate::translate::{translate, Placement, Translation};

/// How often the input's fingerprint is checked for changes.
const POLL: Duration = Duration::from_millis(150);
/// A change is applied once the input has been quiet this long (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The mesh configuration being served.
pub struct MeshState {
    /// Where the model is read from.
    input: Box<dyn ModelSource>,
    placement: Placement,
    /// What proxies get.
    pub source: Arc<MemorySource>,
    nodes: Mutex<Vec<String>>,
    registry: prometheus::Registry,
    reloads: prometheus::IntCounterVec,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in {}:\n{}", .problems.len(), .input, .problems.join("\n"))]
pub struct ConfigError {
    /// The input, as its source describes it.
    input: String,
    problems: Vec<String>,
}

impl MeshState {
    /// Loads, checks and translates the model of `input`; every error is reported at once.
    pub fn load(
        input: Box<dyn ModelSource>,
        placement: Placement,
    ) -> Result<Arc<Self>, ConfigError> {
        let registry = prometheus::Registry::new();
        let reloads = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "halyard_control_config_loads_total",
                "Loads of the mesh configuration, by result.",
            ),
            &["result"],
        )
        .map_err(|e| ConfigError {
            input: input.describe(),
            problems: vec![e.to_string()],
        })?;
        let _ = registry.register(Box::new(reloads.clone()));
        let state = Arc::new(Self {
            input,
            placement,
            source: Arc::new(MemorySource::new()),
            nodes: Mutex::new(Vec::new()),
            registry,
            reloads,
        });
        let t = state.translate()?;
        state.publish(&t);
        Ok(state)
    }

    /// The registry holding the control server's metrics.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    fn translate(&self) -> Result<Translation, ConfigError> {
        let (model, diags) = self.input.load();
        let errors: Vec<String> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        for d in diags.iter().filter(|d| d.severity != Severity::Error) {
            tracing::warn!("{d}");
        }
        if !errors.is_empty() {
            return Err(ConfigError {
                input: self.input.describe(),
                problems: errors,
            });
        }
        let t = translate(&model, &self.placement);
        for n in &t.notes {
            tracing::warn!("not applied: {n}");
        }
        Ok(t)
    }

    /// Hands every node its resources; nodes that disappeared lose theirs.
    fn publish(&self, t: &Translation) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        for gone in nodes.iter().filter(|n| !t.nodes.contains_key(*n)) {
            self.source.remove_node(gone);
        }
        // Nodes of one namespace share their service and route sets (the same `Arc`): the
        // encoder encodes each set once and hands every node the encoded resources.
        let mut encoder = Encoder::new();
        for (node, r) in &t.nodes {
            self.source.set_node_state(node, encoder.encode(node, r));
        }
        *nodes = t.nodes.keys().cloned().collect();
        tracing::info!(proxies = nodes.len(), "configuration published");
    }

    /// Re-reads the input; an input with errors is logged and the last good configuration
    /// stays in force.
    pub fn reload(&self) {
        let started = Instant::now();
        match self.translate() {
            Ok(t) => {
                self.publish(&t);
                self.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.reloads.with_label_values(&["error"]).inc();
                tracing::error!("configuration rejected, proxies keep the previous one: {e}");
            }
        }
    }

    /// Watches the input until `cancel` (polling its fingerprint), reloading (debounced)
    /// after changes.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut seen = self.input.fingerprint();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let now = self.input.fingerprint();
            if now == seen {
                continue;
            }
            // Wait until the input stops changing.
            let mut settled = now;
            loop {
                tokio::time::sleep(DEBOUNCE).await;
                let again = self.input.fingerprint();
                if again == settled {
                    break;
                }
                settled = again;
            }
            seen = settled;
            let me = self.clone();
            // Parsing is blocking work; keep it off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }
}

/// Allows a stream when the node's namespace is the caller's: over TLS the client
/// certificate's SPIFFE ID must name the node's namespace; the plaintext port is for
/// development and trusts the node id.
pub fn authorize(node_id: &str, ext: &tonic::Extensions) -> Result<(), tonic::Status> {
    let Some((ns, _name)) = node_id.split_once('/') else {
        return Err(tonic::Status::invalid_argument(format!(
            "node id `{node_id}` is not namespace/workload"
        )));
    };
    let conn = ext.get::<ConnInfo>().cloned().unwrap_or_default();
    if !conn.tls {
        return Ok(());
    }
    match &conn.peer_identity {
        Some(id) if id.namespace() == Some(ns) => Ok(()),
        Some(id) => Err(tonic::Status::permission_denied(format!(
            "{id} may not ask for the configuration of {node_id}"
        ))),
        None => Err(tonic::Status::unauthenticated(
            "a client certificate is required on the TLS port",
        )),
    }
}

/// Serves `/metrics`, `/debug/connections` and `/ready` until `cancel`.
pub async fn monitoring(
    listener: tokio::net::TcpListener,
    state: Arc<MeshState>,
    ads: AdsServer,
    cancel: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "monitoring accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (state, ads) = (state.clone(), ads.clone());
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (state, ads) = (state.clone(), ads.clone());
            async move { Ok::<_, Infallible>(answer(&req, &state, &ads)) }
        });
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

fn answer<B>(req: &Request<B>, state: &MeshState, ads: &AdsServer) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") | (&Method::GET, "/stats/prometheus") => {
            let mut out = String::new();
            let enc = prometheus::TextEncoder::new();
            let _ = enc.encode_utf8(&state.registry.gather(), &mut out);
            (StatusCode::OK, "text/plain; version=0.0.4", out)
        }
        (&Method::GET, "/debug/connections") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&ads.connections()).unwrap_or_default(),
        ),
        (&Method::GET, "/ready") => (StatusCode::OK, "text/plain", "ready\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// The monitoring address default (istiod's monitoring port).
pub const DEFAULT_MONITORING: &str = "127.0.0.1:15014";

/// Binds the monitoring port.
pub async fn bind_monitoring(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
