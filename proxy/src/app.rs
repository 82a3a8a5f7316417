//! The whole proxy: [`bind`] its listeners and state, then [`Bound::serve`] until shutdown
//! and drain; [`run`] does both and stops on signals. Tests run a proxy in-process this way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Admin, Scope};
use crate::ctx::ListenerKind;
use crate::identity::IdentitySource;
use crate::listeners::accept;
use crate::live::Live;
use crate::shared::Shared;
use crate::telemetry::access_log::{AccessLog, AccessLogWriter};
use crate::telemetry::logging::LogControl;
use crate::telemetry::metrics::Metrics;

/// Start-up options (flags win over the config file).
#[derive(Debug, Clone)]
pub struct Options {
    /// Outbound listener address.
    pub outbound: Option<SocketAddr>,
    /// Inbound listener address.
    pub inbound: Option<SocketAddr>,
    /// Admin listener address.
    pub admin: Option<SocketAddr>,
    /// Prometheus scrape listener address.
    pub stats: Option<SocketAddr>,
    /// Where to write the bound admin address.
    pub admin_address_path: Option<PathBuf>,
    /// How long to wait for in-flight work on shutdown.
    pub drain_timeout: Duration,
    /// Where the workload certificate comes from (the CA, or PEM files); none runs without
    /// identity (plaintext only).
    pub identity: Option<crate::identity::IdentitySource>,
    /// Configuration from the control server over xDS (else from the file).
    pub xds: Option<crate::discovery::XdsOptions>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        /// Which listener.
        which: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The identity could not be set up.
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// The TLS contexts could not be built.
    #[error("mutual TLS: {0}")]
    Tls(#[from] crate::mtls::TlsError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Writing the admin address file or starting the log thread failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn pick_addr(flag: Option<SocketAddr>, config: &str, default: &str) -> SocketAddr {
    flag.or_else(|| config.parse().ok())
        .or_else(|| default.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

async fn bind_one(which: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|source| StartError::Bind {
        which,
        addr,
        source,
    })?;
    let bound = socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(addr))
        .and_then(|()| socket.listen(4096));
    bound.map_err(|source| StartError::Bind {
        which,
        addr,
        source,
    })
}

/// The addresses the proxy's listeners are bound to.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Outbound (app → mesh).
    pub outbound: SocketAddr,
    /// Inbound (mesh → app).
    pub inbound: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// Prometheus scrapes.
    pub stats: SocketAddr,
}

/// Where access-log lines go.
#[derive(Debug, Clone, Default)]
pub enum AccessLogTo {
    /// Standard output, from a writer thread of its own.
    #[default]
    Stdout,
    /// A bounded channel (in-process tests read the lines from it).
    Channel(SyncSender<String>),
}

/// A proxy whose listeners are bound and whose state is built, not yet serving.
pub struct Bound {
    /// Where it listens.
    pub addrs: Addrs,
    shared: Arc<Shared>,
    admin: Arc<Admin>,
    listeners: [TcpListener; 4],
    writer: Option<AccessLogWriter>,
    opts: Options,
}

/// Binds the listeners (flags, else the config file, else Istio's ports) and builds the
/// proxy's shared state; nothing is served until [`Bound::serve`].
pub async fn bind(
    opts: Options,
    live: Live,
    log: Option<LogControl>,
    access_log_to: AccessLogTo,
) -> Result<Bound, StartError> {
    let metrics = Metrics::new()?;
    let (access_log, writer) = match access_log_to {
        AccessLogTo::Stdout => {
            let (a, w) = AccessLog::start(metrics.access_log_dropped.clone())?;
            (a, Some(w))
        }
        AccessLogTo::Channel(tx) => (AccessLog::to(tx, metrics.access_log_dropped.clone()), None),
    };
    let snap = live.load();
    let listeners = snap.config.listeners.clone().unwrap_or_default();
    drop(snap);
    let outbound = pick_addr(opts.outbound, &listeners.outbound, "127.0.0.1:15001");
    let inbound = pick_addr(opts.inbound, &listeners.inbound, "0.0.0.0:15006");
    let admin = pick_addr(opts.admin, &listeners.admin, "127.0.0.1:15000");
    let stats = pick_addr(opts.stats, &listeners.stats, "0.0.0.0:15020");
    let listeners = [
        bind_one("outbound", outbound).await?,
        bind_one("inbound", inbound).await?,
        bind_one("admin", admin).await?,
        bind_one("stats", stats).await?,
    ];
    let addrs = Addrs {
        outbound: listeners[0].local_addr()?,
        inbound: listeners[1].local_addr()?,
        admin: listeners[2].local_addr()?,
        stats: listeners[3].local_addr()?,
    };
    let shared = shared_state(&opts, live, metrics, access_log)?;
    let admin = Arc::new(Admin {
        shared: shared.clone(),
        log,
        ready: AtomicBool::new(false),
        outbound: addrs.outbound,
        inbound: addrs.inbound,
        admin: addrs.admin,
        stats: addrs.stats,
    });
    Ok(Bound {
        addrs,
        shared,
        admin,
        listeners,
        writer,
        opts,
    })
}

fn shared_state(
    opts: &Options,
    live: Live,
    metrics: Metrics,
    access_log: AccessLog,
) -> Result<Arc<Shared>, StartError> {
    let identity = match opts.identity.clone() {
        Some(o) => Some(crate::identity::Identity::new(o)?),
        None => None,
    };
    let mtls = match &identity {
        Some(i) => Some(crate::mtls::MeshTls::new(i.store.clone())?),
        None => None,
    };
    Ok(Arc::new(Shared {
        tracers: crate::telemetry::tracers::Tracers::new(metrics.trace.clone()),
        principal: identity.as_ref().map(|i| i.id().to_string().into()),
        identity,
        mtls,
        xds_status: std::sync::OnceLock::new(),
        live,
        metrics,
        access_log: Some(access_log),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        open_conns: Default::default(),
        unclustered_rr: AtomicUsize::new(0),
        mirror_slots: Arc::new(tokio::sync::Semaphore::new(
            crate::shared::MIRRORS_IN_FLIGHT,
        )),
    }))
}

impl Bound {
    /// Cancelling this token drains and stops the proxy (as SIGTERM or `/quitquitquit` do).
    pub fn shutdown(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Serves until shutdown, then drains (up to the drain timeout). Returns the access-log
    /// writer so the caller can flush it after the runtime has stopped.
    pub async fn serve(self) -> Result<Option<AccessLogWriter>, StartError> {
        let Bound {
            addrs,
            shared,
            admin,
            listeners: [outbound, inbound, admin_l, stats_l],
            writer,
            opts,
        } = self;
        tracing::info!(outbound = %addrs.outbound, inbound = %addrs.inbound, admin = %addrs.admin, stats = %addrs.stats, "listening");
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(admin.clone().run(admin_l, Scope::Admin, admin_stop.clone()));
        let stats_task = tokio::spawn(admin.clone().run(stats_l, Scope::Stats, admin_stop.clone()));
        let out_task = tokio::spawn(accept::run(
            shared.clone(),
            ListenerKind::Outbound,
            outbound,
        ));
        let in_task = tokio::spawn(accept::run(shared.clone(), ListenerKind::Inbound, inbound));
        let watch_shared = shared.clone();
        let watch_task = tokio::spawn(async move {
            watch_shared
                .live
                .watch(&watch_shared.metrics, watch_shared.shutdown.clone())
                .await
        });
        shared.tasks.spawn(recheck_open_connections(shared.clone()));
        start_background(&shared, &opts);
        if let Some(path) = &opts.admin_address_path {
            // Write then rename, so readers never see a partial address.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, addrs.admin.to_string())?;
            std::fs::rename(&tmp, path)?;
        }
        admin.ready.store(true, Ordering::Release);

        shared.shutdown.cancelled().await;
        tracing::info!(drain_timeout = ?opts.drain_timeout, "draining");
        let _ = tokio::join!(out_task, in_task, watch_task);
        shared.tasks.close();
        if tokio::time::timeout(opts.drain_timeout, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tasks.len(),
                "drain timeout: closing remaining connections"
            );
        }
        // Spans of the drained requests reach the collector before the process exits.
        shared.tracers.shutdown(Duration::from_secs(2)).await;
        admin_stop.cancel();
        let _ = tokio::join!(admin_task, stats_task);
        tracing::info!("stopped");
        Ok(writer)
    }
}

/// How often open connections are looked at: a new snapshot or an expired peer certificate
/// closes what it must within this.
const RECHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Decides the open inbound connections again whenever the snapshot changes, and closes
/// those whose peer certificate has expired, until shutdown.
async fn recheck_open_connections(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(RECHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generation = shared.live.load().generation;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = shared.live.load();
        let changed = std::mem::replace(&mut generation, snap.generation) != snap.generation;
        let open = shared.open_conns.len();
        if open == 0 {
            continue;
        }
        let started = std::time::Instant::now();
        let closed = shared
            .open_conns
            .recheck(&snap, &shared.metrics.filters, SystemTime::now());
        let metrics = &shared.metrics;
        if changed {
            let took = started.elapsed();
            metrics.recheck_seconds.set(took.as_secs_f64());
            tracing::info!(open, took_ms = took.as_secs_f64() * 1e3, version = %snap.version, "open connections and streams decided again");
        }
        for (what, counts, counter) in [
            (
                "connections",
                closed.connections,
                &metrics.connections_revoked,
            ),
            ("streams", closed.streams, &metrics.streams_revoked),
        ] {
            for (reason, n) in counts.by_reason() {
                if n > 0 {
                    counter
                        .with_label_values(&[reason.as_str()])
                        .inc_by(n as u64);
                    tracing::info!(reason = reason.as_str(), count = n, "closed open {what}");
                }
            }
        }
    }
}

/// Certificate rotation and the control-server connection, when configured.
fn start_background(shared: &Arc<Shared>, opts: &Options) {
    if let Some(identity) = &shared.identity {
        match &identity.source {
            IdentitySource::Ca(o) => {
                tracing::info!(identity = %identity.id(), ca = %o.ca_addr, "requesting a workload certificate");
            }
            IdentitySource::Files(f) => {
                tracing::info!(identity = %identity.id(), cert_chain = %f.cert_chain.display(), "workload certificate from files");
            }
        }
        shared.tasks.spawn(crate::identity::run_rotation(
            identity.clone(),
            shared.metrics.cert_expiry.clone(),
            shared.metrics.cert_renewals.clone(),
            shared.shutdown.clone(),
        ));
    }
    if let Some(xds) = opts.xds.clone() {
        tracing::info!(control = %xds.addr, node = %xds.node_id, delta = xds.delta, "configuration from the control server");
        shared
            .tasks
            .spawn(crate::discovery::run(shared.clone(), xds));
    }
}

/// Runs the proxy until SIGTERM, SIGINT or `/quitquitquit`, then drains. Returns the
/// access-log writer so the caller can flush it after the runtime has stopped.
pub async fn run(
    opts: Options,
    live: Live,
    log: LogControl,
) -> Result<Option<AccessLogWriter>, StartError> {
    let bound = bind(opts, live, Some(log), AccessLogTo::Stdout).await?;
    let shutdown = bound.shutdown();
    let signals = tokio::spawn(async move {
        wait_for_signal(&shutdown).await;
        shutdown.cancel();
    });
    let result = bound.serve().await;
    signals.abort();
    result
}

async fn wait_for_signal(shutdown: &CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::warn!("cannot install signal handlers; use /quitquitquit to stop");
            shutdown.cancelled().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = shutdown.cancelled() => {}
    }
}
