//! `halyard-proxy`: the sidecar/gateway proxy binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use halyard_certs::SpiffeId;
use halyard_filters::jwt::JwksStore;
use halyard_proxy::app::{self, Options};
use halyard_proxy::identity::{CertFiles, IdentityOptions, IdentitySource};
use halyard_proxy::live::Live;
use halyard_proxy::telemetry::logging;
use halyard_xds::parse_duration;
use tokio_util::sync::CancellationToken;

/// jemalloc gives pages freed after a burst of connections back to the OS; glibc's arenas
/// kept the peak resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Halyard's sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "halyard-proxy", version, args_override_self = true)]
struct Args {
    /// Configuration file (YAML or JSON rendering of the proxy's resources).
    #[arg(
        long,
        required_unless_present = "xds_addr",
        conflicts_with = "xds_addr"
    )]
    config: Option<PathBuf>,
    /// The control server's gRPC address: configuration comes over xDS (ADS) instead of a file.
    #[arg(long, env = "XDS_ADDR")]
    xds_addr: Option<String>,
    /// Node id presented to the control server: `namespace/workload-name`.
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// xDS streams: `delta` (incremental) or `sotw` (state of the world).
    #[arg(long, default_value = "delta", value_parser = ["delta", "sotw"])]
    xds_mode: String,
    /// Outbound listener (default 127.0.0.1:15001).
    #[arg(long)]
    outbound_addr: Option<SocketAddr>,
    /// Inbound listener (default 0.0.0.0:15006).
    #[arg(long)]
    inbound_addr: Option<SocketAddr>,
    /// Admin listener (default 127.0.0.1:15000).
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// Prometheus scrape listener, `/stats/prometheus` (default 0.0.0.0:15020).
    #[arg(long)]
    stats_addr: Option<SocketAddr>,
    /// Write the bound admin address to this file once listening.
    #[arg(long)]
    admin_address_path: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests, e.g. `5s`, `500ms`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Log filter, e.g. `info` or `info,halyard_proxy=debug`.
    #[arg(long, env = "HALYARD_LOG", default_value = "info")]
    log_level: String,
    /// Format of the proxy's own logs on stderr.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// The CA's gRPC address (Istio's certificate service); enables identity and mTLS.
    #[arg(long, env = "CA_ADDR")]
    ca_addr: Option<String>,
    /// Root certificates (PEM) trusted for the control server and mesh peers; without it the
    /// CA is reached in plaintext (development only). Required with `--cert-chain-file`.
    #[arg(long)]
    ca_root_file: Option<PathBuf>,
    /// Expected SPIFFE ID of the control server, CA and xDS (default spiffe://TD/ns/halyard-system/sa/halyard-control).
    #[arg(long)]
    ca_identity: Option<String>,
    /// File holding the bearer token presented to the CA.
    #[arg(long)]
    ca_token_file: Option<PathBuf>,
    /// Trust domain of the workload's SPIFFE ID.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace of the workload's identity (default: the config's workload namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Service account of the workload's identity (default: the config's, else `default`).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Requested certificate lifetime, e.g. `24h`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// The workload's certificate chain (PEM, leaf first) from a file that another tool keeps
    /// current, instead of the CA; with `--key-file` and `--ca-root-file`. Re-read on change.
    #[arg(long, conflicts_with = "ca_addr", requires_all = ["key_file", "ca_root_file"])]
    cert_chain_file: Option<PathBuf>,
    /// The private key of `--cert-chain-file` (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, requires = "cert_chain_file")]
    key_file: Option<PathBuf>,
}

/// Where the identity comes from, by flags and the config's workload: the CA with
/// `--ca-addr`, files with `--cert-chain-file`, else none.
fn identity_options(args: &Args, live: &Live) -> Result<Option<IdentitySource>, String> {
    if args.ca_addr.is_none() && args.cert_chain_file.is_none() {
        return Ok(None);
    }
    let snap = live.load();
    let workload = snap.config.workload.clone().unwrap_or_default();
    let namespace = args
        .namespace
        .clone()
        .or_else(|| Some(workload.namespace.clone()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "default".into());
    let sa = args
        .service_account
        .clone()
        .or_else(|| Some(workload.service_account.clone()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "default".into());
    let identity = SpiffeId::workload(&args.trust_domain, &namespace, &sa)
        .map_err(|e| format!("workload identity: {e}"))?;
    let ca_identity = match &args.ca_identity {
        Some(s) => Some(SpiffeId::parse(s).map_err(|e| format!("--ca-identity: {e}"))?),
        None => None,
    };
    let Some(ca_addr) = args.ca_addr.clone() else {
        return cert_files(args, identity, ca_identity).map(Some);
    };
    Ok(Some(IdentitySource::Ca(IdentityOptions {
        ca_addr,
        ca_root_file: args.ca_root_file.clone(),
        ca_identity,
        token_file: args.ca_token_file.clone(),
        identity,
        cert_ttl: args.cert_ttl,
    })))
}

/// The certificate files of `--cert-chain-file`, `--key-file` and `--ca-root-file`.
fn cert_files(
    args: &Args,
    identity: SpiffeId,
    control_identity: Option<SpiffeId>,
) -> Result<IdentitySource, String> {
    // clap already requires the three together; this names them if it ever does not.
    match (&args.cert_chain_file, &args.key_file, &args.ca_root_file) {
        (Some(chain), Some(key), Some(roots)) => Ok(IdentitySource::Files(CertFiles {
            identity,
            cert_chain: chain.clone(),
            key: key.clone(),
            roots: roots.clone(),
            control_identity,
        })),
        _ => Err("--cert-chain-file needs --key-file and --ca-root-file".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log = match logging::init(&args.log_level, args.log_format == "json") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("halyard-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("halyard-worker");
    if let Some(n) = args.concurrency.filter(|n| *n > 0) {
        rt.worker_threads(n);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("halyard-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // JWT key fetches run on the runtime and end with `stop`, after the proxy has drained.
    let entered = rt.enter();
    let stop = CancellationToken::new();
    let jwks = JwksStore::new(stop.clone());
    let (live, xds) = match (&args.config, &args.xds_addr) {
        (Some(path), _) => match Live::from_file(path, jwks) {
            Ok(l) => (l, None),
            Err(e) => {
                eprintln!("halyard-proxy: invalid configuration:\n{e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(addr)) => {
            let Some((ns, name)) = args.node_id.as_deref().and_then(|n| n.split_once('/')) else {
                eprintln!("halyard-proxy: --xds-addr needs --node-id NAMESPACE/WORKLOAD");
                return ExitCode::from(2);
            };
            // Until the first push: the workload's namespace, no services.
            let initial = halyard_xds::ProxyConfig {
                workload: Some(halyard_xds::Workload {
                    name: name.into(),
                    namespace: ns.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match Live::pushed(initial, jwks) {
                Ok(l) => (
                    l,
                    Some(halyard_proxy::discovery::XdsOptions {
                        addr: addr.clone(),
                        node_id: format!("{ns}/{name}"),
                        delta: args.xds_mode == "delta",
                    }),
                ),
                Err(e) => {
                    eprintln!("halyard-proxy: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        (None, None) => {
            eprintln!("halyard-proxy: one of --config or --xds-addr is required");
            return ExitCode::from(2);
        }
    };
    let identity = match identity_options(&args, &live) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("halyard-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        outbound: args.outbound_addr,
        inbound: args.inbound_addr,
        admin: args.admin_addr,
        stats: args.stats_addr,
        admin_address_path: args.admin_address_path,
        drain_timeout: args.drain_timeout,
        identity,
        xds,
    };
    let result = rt.block_on(app::run(opts, live, log));
    stop.cancel();
    drop(entered);
    // Stopping the runtime drops the last access-log senders; then the writer can finish.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(writer) => {
            if let Some(w) = writer {
                w.join();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("halyard-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from([&["halyard-proxy", "--config", "c.yaml"], args].concat())
    }

    #[test]
    fn certificate_files_come_as_a_set_instead_of_the_ca() {
        let files = [
            "--cert-chain-file",
            "chain.pem",
            "--key-file",
            "key.pem",
            "--ca-root-file",
            "root.pem",
        ];
        let a = parse(&files).expect("the three files");
        assert_eq!(a.key_file.as_deref(), Some(std::path::Path::new("key.pem")));
        assert!(parse(&files[..4]).is_err(), "no roots");
        assert!(parse(&files[2..]).is_err(), "a key without a chain");
        let with_ca = [&files[..], &["--ca-addr", "127.0.0.1:15012"]].concat();
        assert!(parse(&with_ca).is_err(), "files and a CA at once");
    }
}
