//! `halyard-control serve`: the CA on a plaintext and a TLS gRPC port until SIGTERM/SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use halyard_certs::tls::ClientAuth;
use halyard_certs::{CaPolicy, CertStore, CertificateAuthority, SpiffeId, TrustBundle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{watch_tokens, Authenticator};
use crate::ca_service::CaService;
use crate::conn;
use crate::duration;
use crate::serving_cert::ServingIssuer;
use crate::tokens::TokenTable;

/// Namespace and service account of the control server's own identity.
pub const CONTROL_NAMESPACE: &str = "halyard-system";
/// Service account of the control server's own identity.
pub const CONTROL_SERVICE_ACCOUNT: &str = "halyard-control";
/// How long a request may take before it fails with `CANCELLED`/`DEADLINE_EXCEEDED`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests per connection.
const PER_CONNECTION_LIMIT: usize = 16;
/// Largest header block a client may send.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// After SIGTERM, in-flight requests get this long before the process exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory of the self-signed root CA (root-cert.pem, root-key.pem mode 0600); created
    /// with a new root on first start.
    #[arg(long, default_value = "./halyard-data")]
    pub data_dir: PathBuf,
    /// Run as an intermediate CA from Istio's cacerts files in this directory (ca-cert.pem,
    /// ca-key.pem, root-cert.pem, cert-chain.pem) instead of the root under --data-dir.
    #[arg(long)]
    pub cacerts: Option<PathBuf>,
    /// Trust domain of every identity this CA issues for.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Tokens file (YAML or JSON list of {token, namespace, serviceAccount}); reloaded when
    /// it changes and on SIGHUP.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Plaintext gRPC address (development).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub grpc_addr: SocketAddr,
    /// TLS gRPC address; the server presents spiffe://TD/ns/halyard-system/sa/halyard-control.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub grpc_tls_addr: SocketAddr,
    /// Certificate lifetime when a request asks for none (validity_duration 0).
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub default_cert_ttl: Duration,
    /// Longest certificate lifetime a request may ask for; longer requests are refused.
    #[arg(long, default_value = "90d", value_parser = duration::parse)]
    pub max_cert_ttl: Duration,
    /// DNS names in the TLS serving certificate besides its SPIFFE ID, for clients that check
    /// host names (comma-separated or repeated).
    #[arg(
        long = "tls-dns-name",
        value_delimiter = ',',
        default_value = "halyard-control,halyard-control.halyard-system.svc"
    )]
    pub tls_dns_names: Vec<String>,
    /// Write {"grpc": "IP:PORT", "grpc_tls": "IP:PORT"} here once listening.
    #[arg(long)]
    pub address_file: Option<PathBuf>,
    /// Mesh configuration directory (Istio resources and MeshConfig): translated for every
    /// proxy and served over xDS (ADS) on both gRPC ports; watched for changes.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where a workload's sidecar listens when there is no iptables capture, as
    /// `NAMESPACE/NAME=IP:PORT` (repeatable; `up` passes these).
    #[arg(long = "sidecar", value_parser = parse_sidecar)]
    pub sidecars: Vec<(String, SocketAddr)>,
    /// Where a workload's app listens when that is not the WorkloadEntry's address, as
    /// `NAMESPACE/NAME=IP` (repeatable; `up` passes these for addresses not on this machine).
    #[arg(long = "app", value_parser = parse_app)]
    pub apps: Vec<(String, IpAddr)>,
    /// `/metrics` and `/debug/connections` (with `--config`).
    #[arg(long, default_value = crate::mesh_state::DEFAULT_MONITORING)]
    pub monitoring_addr: SocketAddr,
}

/// A problem that stops the server from starting (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// `NAMESPACE/NAME=IP:PORT`.
fn parse_sidecar(s: &str) -> Result<(String, SocketAddr), String> {
    parse_node_value(s, "IP:PORT")
}

/// `NAMESPACE/NAME=IP`.
fn parse_app(s: &str) -> Result<(String, IpAddr), String> {
    parse_node_value(s, "IP")
}

fn parse_node_value<T: std::str::FromStr>(s: &str, what: &str) -> Result<(String, T), String>
where
    T::Err: std::fmt::Display,
{
    let (node, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAMESPACE/NAME={what}"))?;
    if !node.contains('/') {
        return Err(format!("`{node}` is not NAMESPACE/NAME"));
    }
    let value = value.parse().map_err(|e| format!("`{value}`: {e}"))?;
    Ok((node.to_string(), value))
}

fn start_err(what: &str) -> impl FnOnce(String) -> StartError + '_ {
    move |e| StartError(format!("{what}: {e}"))
}

/// Everything `serve` sets up before it accepts connections.
struct Prepared {
    ca: Arc<CertificateAuthority>,
    serving: Arc<ServingIssuer>,
    auth: Arc<Authenticator>,
    store: Arc<CertStore>,
    plain: TcpListener,
    tls: TcpListener,
}

/// Loads the CA and tokens, issues the serving certificate and binds both ports.
async fn prepare(args: &ServeArgs) -> Result<Prepared, StartError> {
    halyard_certs::spiffe::check_trust_domain(&args.trust_domain)
        .map_err(|e| StartError(format!("--trust-domain: {e}")))?;
    if args.default_cert_ttl.is_zero() || args.max_cert_ttl.is_zero() {
        return Err(StartError(
            "--default-cert-ttl and --max-cert-ttl must be positive".into(),
        ));
    }
    if args.default_cert_ttl > args.max_cert_ttl {
        return Err(StartError(format!(
            "--default-cert-ttl {} is longer than --max-cert-ttl {}",
            duration::display(args.default_cert_ttl),
            duration::display(args.max_cert_ttl)
        )));
    }
    let tokens = match &args.tokens {
        Some(path) => {
            let t = TokenTable::load(path, &args.trust_domain)
                .map_err(|e| StartError(format!("invalid tokens file: {e}")))?;
            if t.is_empty() {
                tracing::warn!(file = %path.display(), "the tokens file holds no tokens");
            }
            t
        }
        None => {
            tracing::warn!("no --tokens file: only callers with a client certificate are served");
            TokenTable::empty()
        }
    };
    let policy = CaPolicy {
        default_ttl: args.default_cert_ttl,
        max_ttl: args.max_cert_ttl,
    };
    let ca = match &args.cacerts {
        Some(dir) => CertificateAuthority::from_cacerts(dir, &args.trust_domain, policy)
            .map_err(|e| StartError(format!("--cacerts {}: {e}", dir.display())))?,
        None => CertificateAuthority::load_or_create(&args.data_dir, &args.trust_domain, policy)
            .map_err(|e| StartError(format!("--data-dir {}: {e}", args.data_dir.display())))?,
    };
    let ca = Arc::new(ca);
    let identity = SpiffeId::workload(
        &args.trust_domain,
        CONTROL_NAMESPACE,
        CONTROL_SERVICE_ACCOUNT,
    )
    .map_err(|e| StartError(format!("control identity: {e}")))?;
    let bundle = TrustBundle::new(ca.roots().to_vec())
        .map_err(|e| StartError(format!("trust bundle: {e}")))?;
    let serving = ServingIssuer::new(ca.clone(), identity.clone(), args.tls_dns_names.clone());
    let store = CertStore::new(identity, bundle);
    issue_serving_cert(&serving, &store, args.default_cert_ttl)
        .map_err(start_err("serving certificate"))?;
    let plain = bind(args.grpc_addr, "--grpc-addr").await?;
    let tls = bind(args.grpc_tls_addr, "--grpc-tls-addr").await?;
    Ok(Prepared {
        ca,
        serving: Arc::new(serving),
        auth: Arc::new(Authenticator::new(tokens)),
        store,
        plain,
        tls,
    })
}

async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError(format!("{flag} {addr}: {e}")))
}

/// Issues (or renews) the control server's own certificate into `store`.
fn issue_serving_cert(
    serving: &ServingIssuer,
    store: &CertStore,
    ttl: Duration,
) -> Result<(), String> {
    let (key, chain) = serving.issue(ttl)?;
    store.install(&key, &chain).map_err(|e| e.to_string())?;
    Ok(())
}

/// Renews the serving certificate at half its lifetime (retrying every minute on failure).
async fn renew_serving_cert(
    serving: Arc<ServingIssuer>,
    store: Arc<CertStore>,
    ttl: Duration,
    cancel: CancellationToken,
) {
    loop {
        let wait = store
            .current()
            .map(|leaf| {
                let life = (leaf.info.not_after - leaf.info.not_before).max(0) as u64;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let renew_at = leaf.info.not_before.max(0) as u64 + life / 2;
                Duration::from_secs(renew_at.saturating_sub(now).max(1))
            })
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match issue_serving_cert(&serving, &store, ttl) {
            Ok(()) => tracing::info!("renewed the control server's serving certificate"),
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the serving certificate; retrying in 1m");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}

/// Writes the address file atomically (write, then rename).
fn write_address_file(
    path: &Path,
    grpc: SocketAddr,
    grpc_tls: SocketAddr,
    monitoring: Option<SocketAddr>,
) -> Result<(), String> {
    let text = serde_json::json!({
        "grpc": grpc.to_string(),
        "grpc_tls": grpc_tls.to_string(),
        "monitoring": monitoring.map(|m| m.to_string()),
    })
    .to_string();
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, text + "\n").map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Installs the SIGTERM/SIGINT handlers now (so that a signal arriving at any time after
/// start-up drains instead of killing) and returns a future that resolves on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| StartError(format!("cannot handle {name}: {e}")))
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(PER_CONNECTION_LIMIT)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .tcp_nodelay(true)
}

/// How `serve` ended.
#[derive(Debug)]
pub enum Outcome {
    /// Stopped by a signal after draining.
    Stopped,
    /// Could not start (exit code 2).
    StartFailed(StartError),
    /// A server failed while running (exit code 1).
    Failed(String),
}

/// Runs the server until SIGTERM/SIGINT.
pub async fn run(args: ServeArgs) -> Outcome {
    let p = match prepare(&args).await {
        Ok(p) => p,
        Err(e) => return Outcome::StartFailed(e),
    };
    let (grpc, grpc_tls) = match (p.plain.local_addr(), p.tls.local_addr()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Outcome::StartFailed(StartError(e.to_string())),
    };
    let tls_config =
        match halyard_certs::tls::server_config(p.store.clone(), ClientAuth::Optional, &[b"h2"]) {
            Ok(c) => c,
            Err(e) => return Outcome::StartFailed(StartError(format!("TLS: {e}"))),
        };
    let shutdown = match shutdown_signal() {
        Ok(f) => f,
        Err(e) => return Outcome::StartFailed(e),
    };
    // SIGHUP reloads the tokens file; handled from now on, so it never kills the server.
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => return Outcome::StartFailed(StartError(format!("cannot handle SIGHUP: {e}"))),
    };
    // The mesh configuration: refused at start when it has errors (exit 2, every problem
    // listed); later bad edits are logged and the last good configuration stays.
    let mesh = match &args.config {
        Some(dir) => {
            let placement = crate::translate::Placement {
                sidecars: args.sidecars.iter().cloned().collect(),
                apps: args.apps.iter().cloned().collect(),
            };
            let input = Box::new(crate::model::DirectorySource::new(dir));
            let state = match crate::mesh_state::MeshState::load(input, placement) {
                Ok(s) => s,
                Err(e) => return Outcome::StartFailed(StartError(e.to_string())),
            };
            let monitoring = match crate::mesh_state::bind_monitoring(args.monitoring_addr).await {
                Ok(l) => l,
                Err(e) => {
                    return Outcome::StartFailed(StartError(format!(
                        "--monitoring-addr {}: {e}",
                        args.monitoring_addr
                    )))
                }
            };
            Some((state, monitoring))
        }
        None => None,
    };
    let monitoring_addr = mesh.as_ref().and_then(|(_, l)| l.local_addr().ok());
    if let Some(path) = &args.address_file {
        if let Err(e) = write_address_file(path, grpc, grpc_tls, monitoring_addr) {
            return Outcome::StartFailed(StartError(format!("--address-file {e}")));
        }
    }

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(path) = args.tokens.clone() {
        tasks.spawn(watch_tokens(
            p.auth.clone(),
            path,
            hup,
            args.trust_domain.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(renew_serving_cert(
        p.serving.clone(),
        p.store.clone(),
        args.default_cert_ttl,
        cancel.clone(),
    ));

    let svc = CaService::new(p.ca.clone(), p.auth.clone());
    let ads = mesh.map(|(state, listener)| {
        let ads = halyard_xds::ads::AdsServer::new(state.source.clone())
            .with_authorizer(crate::mesh_state::authorize)
            .with_shutdown(cancel.clone());
        if let Err(e) = ads.register_metrics(state.registry()) {
            tracing::warn!(error = %e, "xDS metrics not registered");
        }
        tasks.spawn(state.clone().watch(cancel.clone()));
        tasks.spawn(crate::mesh_state::monitoring(
            listener,
            state,
            ads.clone(),
            cancel.clone(),
        ));
        ads
    });
    let plain_server = server_builder()
        .add_service(svc.clone().into_server())
        .add_optional_service(ads.clone().map(|a| a.into_service()));
    let tls_server = server_builder()
        .add_service(svc.into_server())
        .add_optional_service(ads.map(|a| a.into_service()));
    let plain = plain_server
        .serve_with_incoming_shutdown(conn::plaintext(p.plain), cancel.clone().cancelled_owned());
    let tls = tls_server.serve_with_incoming_shutdown(
        conn::tls(p.tls, tls_config),
        cancel.clone().cancelled_owned(),
    );
    tracing::info!(
        trust_domain = %args.trust_domain,
        mode = if args.cacerts.is_some() { "intermediate (cacerts)" } else { "self-signed root" },
        default_cert_ttl = %duration::display(args.default_cert_ttl),
        max_cert_ttl = %duration::display(args.max_cert_ttl),
        "CA ready"
    );
    tracing::info!(%grpc, %grpc_tls, "listening");

    let servers = async { tokio::join!(plain, tls) };
    tokio::pin!(servers);
    let outcome = tokio::select! {
        (a, b) = &mut servers => {
            // A server stopped on its own: a failure, since only a signal stops them.
            cancel.cancel();
            let why = [a.err(), b.err()]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            Outcome::Failed(if why.is_empty() { "a server stopped".into() } else { why })
        }
        _ = shutdown => {
            cancel.cancel();
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut servers).await {
                Ok(_) => tracing::info!("drained; bye"),
                Err(_) => tracing::warn!(
                    timeout = %duration::display(DRAIN_TIMEOUT),
                    "in-flight requests did not finish in time; exiting anyway"
                ),
            }
            Outcome::Stopped
        }
    };
    tasks.abort_all();
    outcome
}
