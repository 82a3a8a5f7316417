//! Opening a connection to one of a target's endpoints, trying others when one fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::ctx::ListenerKind;
use crate::io::UpstreamIo;
use crate::mtls::Alpn;
use crate::plan::Target;
use crate::shared::Shared;
use crate::upstream::{pick, Avoid, ConnectError, InFlight, Upstream};

/// An open connection to an endpoint (or what opening it gave), counted in its load while
/// held.
pub struct Connected<T = UpstreamIo> {
    /// The endpoint.
    pub up: Arc<Upstream>,
    /// The connection.
    pub io: T,
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

/// A way to open a connection to an endpoint.
pub trait Opener: Sync {
    /// What opening gives.
    type Opened: Send;
    /// Opens a connection to `up`.
    fn open<'a>(
        &'a self,
        shared: &'a Shared,
        up: &'a Arc<Upstream>,
    ) -> impl Future<Output = Result<Self::Opened, ConnectError>> + Send + 'a;
}

/// A connection over the endpoint's transport, its bytes opaque (no ALPN).
pub struct Opaque;

impl Opener for Opaque {
    type Opened = UpstreamIo;

    async fn open(&self, shared: &Shared, up: &Arc<Upstream>) -> Result<UpstreamIo, ConnectError> {
        up.connect(shared.mtls.as_deref(), Alpn::Opaque).await
    }
}

/// Connects to an endpoint of `target` (opaque ALPN), up to `attempts` times, each time to an
/// endpoint not yet tried when there is one. `on_pick` sees every endpoint chosen.
pub async fn open(
    shared: &Shared,
    target: &Target<'_>,
    attempts: u32,
    on_pick: impl FnMut(&Arc<Upstream>),
) -> Result<Connected, ConnectFailed> {
    open_with(shared, target, attempts, on_pick, &Opaque).await
}

/// [`open`] with `how` as the way to open a connection to the endpoint picked.
pub async fn open_with<O: Opener>(
    shared: &Shared,
    target: &Target<'_>,
    attempts: u32,
    mut on_pick: impl FnMut(&Arc<Upstream>),
    how: &O,
) -> Result<Connected<O::Opened>, ConnectFailed> {
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
        let up = up.clone();
        on_pick(&up);
        let in_flight = up.begin();
        match how.open(shared, &up).await {
            Ok(io) => return Ok(Connected { up, io, in_flight }),
            Err(e) => {
                failed.failures += 1;
                count_connect_failure(shared, &e);
                if let ConnectError::Tls(t) = &e {
                    failed.tls_reason = Some(t.reason());
                }
                tracing::debug!(upstream = %up.authority, error = %e, attempt = failed.failures, "upstream connect failed");
                tried.push(up.clone());
                failed.last = Some(up);
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
