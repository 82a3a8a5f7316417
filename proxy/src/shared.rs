//! State shared by every listener and task of one proxy process.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::Identity;
use crate::live::Live;
use crate::mtls::MeshTls;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;

/// Everything a connection or request needs besides its own data.
pub struct Shared {
    /// The applied configuration.
    pub live: Live,
    /// Metrics.
    pub metrics: Metrics,
    /// Access log sink (none when stdout logging is off).
    pub access_log: Option<AccessLog>,
    /// Cancelled when the proxy starts draining.
    pub shutdown: CancellationToken,
    /// Connection and tunnel tasks, awaited while draining.
    pub tasks: TaskTracker,
    /// The workload's identity, when the proxy has one (`--ca-addr` or `--cert-chain-file`).
    pub identity: Option<Arc<Identity>>,
    /// That identity's SPIFFE ID as text, for metric labels and spans.
    pub principal: Option<Arc<str>>,
    /// Mutual TLS contexts built on that identity.
    pub mtls: Option<Arc<MeshTls>>,
    /// The control-server connection's state, when configuration comes over xDS.
    pub xds_status:
        std::sync::OnceLock<tokio::sync::watch::Receiver<halyard_xds::ads::ClientStatus>>,
    /// Open inbound connections, decided again when the policy changes.
    pub open_conns: Arc<crate::watched::OpenConns>,
    /// Round-robin cursor for targets outside any cluster (the inbound app, passthrough).
    pub unclustered_rr: AtomicUsize,
    /// The tracer of the configuration in force.
    pub tracers: crate::telemetry::tracers::Tracers,
    /// Mirrored requests in flight at most; more are skipped.
    pub mirror_slots: Arc<tokio::sync::Semaphore>,
}

/// Mirrored requests in flight at once, at most.
pub const MIRRORS_IN_FLIGHT: usize = 1024;
