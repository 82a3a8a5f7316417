//! Opening a connection to one of a target's endpoints, trying others when one fails.

use std::sync::Arc;
use std::time::Instant;

use crate::ctx::ListenerKind;
use crate::io::UpstreamIo;
use crate::mtls::Alpn;
use crate::plan::Target;
use crate::shared::Shared;
use crate::upstream::{pick, Avoid, ConnectError, InFlight, Upstream};

/// An open connection to an endpoint, counted in its load while held.
pub struct Connected {
    /// The endpoint.
    pub up: Arc<Upstream>,
    /// The connection.
    pub io: UpstreamIo,
    /// The endpoint's in-flight slot.
    pub in_flight: InFlight,
}

/// Why no connection could be opened.
#[derive(Debug, Default)]
pub struct ConnectFailed {
    /// Connects that failed.
    pub failures: u32,
    /// The last endpoint tried.
    pub last: Option<Arc<Upstream>>,
    /// No endpoint (left) to try.
    pub no_healthy: bool,
    /// The TLS reason of the last failure, when it was one.
    pub tls_reason: Option<&'static str>,
}

/// Connects to an endpoint of `target` (opaque ALPN), up to `attempts` times, each time to an
/// endpoint not yet tried when there is one. `on_pick` sees every endpoint chosen.
pub async fn open(
    shared: &Shared,
    target: &Target<'_>,
    attempts: u32,
    mut on_pick: impl FnMut(&Arc<Upstream>),
) -> Result<Connected, ConnectFailed> {
    let rr = target.rr.unwrap_or(&shared.unclustered_rr);
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut failed = ConnectFailed::default();
    while failed.failures < attempts {
        let avoid = Avoid {
            tried: &tried,
            now: Instant::now(),
        };
        let Some(up) = pick(target.endpoints.as_slice(), target.lb, rr, None, avoid) else {
            failed.no_healthy = true;
            break;
        };
        on_pick(up);
        let in_flight = up.begin();
        match up.connect(shared.mtls.as_deref(), Alpn::Opaque).await {
            Ok(io) => {
                return Ok(Connected {
                    up: up.clone(),
                    io,
                    in_flight,
                })
            }
            Err(e) => {
                failed.failures += 1;
                count_connect_failure(shared, &e);
                if let ConnectError::Tls(t) = &e {
                    failed.tls_reason = Some(t.reason());
                }
                tracing::debug!(upstream = %up.authority, error = %e, attempt = failed.failures, "upstream connect failed");
                tried.push(up.clone());
                failed.last = Some(up.clone());
            }
        }
    }
    Err(failed)
}

/// Counts a failed upstream connect, and a TLS failure by reason when that is what it was.
pub fn count_connect_failure(shared: &Shared, e: &ConnectError) {
    shared.metrics.connect_failures.inc();
    if let ConnectError::Tls(t) = e {
        shared
            .metrics
            .tls_failure(ListenerKind::Outbound, t.reason());
    }
}
