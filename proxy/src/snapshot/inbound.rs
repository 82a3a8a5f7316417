//! The inbound section: the local workload's ports, each with its application address and
//! its effective mutual TLS mode.

use std::net::SocketAddr;
use std::sync::Arc;

use halyard_xds::{MtlsMode, Protocol, ProxyConfig};

use super::defaults;
use super::reuse::Reuse;
use crate::upstream::{Upstream, UpstreamKey};

/// A port of the local workload.
#[derive(Debug)]
pub struct InboundTarget {
    /// Original destination port.
    pub port: u16,
    /// Declared protocol.
    pub protocol: Protocol,
    /// Inbound mutual TLS mode (never `MtlsUnset`).
    pub mtls: MtlsMode,
    /// The application.
    pub app: Arc<Upstream>,
}

/// Where inbound traffic goes and how it must be secured.
#[derive(Debug)]
pub struct Inbound {
    /// The workload's ports, in config order.
    pub targets: Vec<InboundTarget>,
    /// The mode of a destination without a workload port (never `MtlsUnset`).
    default_mtls: MtlsMode,
}

/// A port's mode: its own, else the workload's, else PERMISSIVE (Istio's default).
fn effective_mtls(port: MtlsMode, workload: MtlsMode) -> MtlsMode {
    match (port, workload) {
        (MtlsMode::MtlsUnset, MtlsMode::MtlsUnset) => MtlsMode::Permissive,
        (MtlsMode::MtlsUnset, w) => w,
        (p, _) => p,
    }
}

impl Inbound {
    /// Compiles the workload's ports; each application address (default `127.0.0.1:<port>`)
    /// becomes an endpoint from `reuse`.
    pub(super) fn build(config: &ProxyConfig, reuse: &mut Reuse<'_>) -> Self {
        let workload_mtls = config
            .workload
            .as_ref()
            .map_or(MtlsMode::MtlsUnset, |w| w.mtls());
        let targets = config
            .workload
            .iter()
            .flat_map(|w| &w.ports)
            .map(|p| {
                let port = p.port as u16;
                let app: SocketAddr = p
                    .app_address
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
                InboundTarget {
                    port,
                    protocol: p.protocol(),
                    mtls: effective_mtls(p.mtls(), workload_mtls),
                    app: reuse.upstream(UpstreamKey::plain(
                        app.ip().to_string(),
                        app.port(),
                        defaults::CONNECT_TIMEOUT,
                        defaults::IDLE_TIMEOUT,
                    )),
                }
            })
            .collect();
        Self {
            targets,
            default_mtls: effective_mtls(MtlsMode::MtlsUnset, workload_mtls),
        }
    }

    /// The local workload port for an original destination port (first port if none).
    pub fn target(&self, port: Option<u16>) -> Option<&InboundTarget> {
        port.and_then(|p| self.targets.iter().find(|t| t.port == p))
            .or_else(|| self.targets.first())
    }

    /// The inbound mutual TLS mode for a destination port: that of its workload port, else
    /// the workload's (PERMISSIVE when nothing says otherwise).
    pub fn mtls(&self, port: Option<u16>) -> MtlsMode {
        self.target(port).map_or(self.default_mtls, |t| t.mtls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::cfg;

    fn inbound(yaml: &str) -> Inbound {
        Inbound::build(&cfg(yaml), &mut Reuse::new(None))
    }

    #[test]
    fn port_mode_over_workload_mode_over_permissive() {
        use MtlsMode::{Disable, MtlsUnset, Permissive, Strict};
        // (port's mode, workload's mode, effective)
        let cases = [
            (MtlsUnset, MtlsUnset, Permissive),
            (MtlsUnset, Strict, Strict),
            (MtlsUnset, Disable, Disable),
            (Disable, Strict, Disable),
            (Permissive, Strict, Permissive),
            (Strict, MtlsUnset, Strict),
        ];
        for (port, workload, want) in cases {
            assert_eq!(
                effective_mtls(port, workload),
                want,
                "{port:?} {workload:?}"
            );
        }
    }

    #[test]
    fn inbound_mtls_mode_port_over_workload_over_permissive() {
        let s = inbound("workload:\n  name: w\n  ports: [{port: 1}, {port: 2, mtls: DISABLE}]\n");
        assert_eq!(s.mtls(Some(1)), MtlsMode::Permissive);
        assert_eq!(s.mtls(Some(2)), MtlsMode::Disable);
        let s = inbound(
            "workload:\n  name: w\n  mtls: STRICT\n  ports: [{port: 1}, {port: 2, mtls: PERMISSIVE}]\n",
        );
        assert_eq!(s.mtls(Some(1)), MtlsMode::Strict);
        assert_eq!(s.mtls(Some(2)), MtlsMode::Permissive);
        // Unknown port: the first port's mode; no ports at all: the workload's.
        assert_eq!(s.mtls(Some(9)), MtlsMode::Strict);
        let s = inbound("workload:\n  name: w\n  mtls: STRICT\n");
        assert_eq!(s.mtls(None), MtlsMode::Strict);
        assert_eq!(inbound("version: t\n").mtls(Some(1)), MtlsMode::Permissive);
    }

    #[test]
    fn targets_by_destination_port_with_their_app_address() {
        let s = inbound(
            "workload:\n  name: w\n  ports: [{port: 8080, protocol: HTTP, appAddress: '127.0.0.1:18080'}, {port: 9000, protocol: TCP}]\n",
        );
        // (destination port, workload port, protocol, app address)
        let cases = [
            (Some(8080), 8080, Protocol::Http, "127.0.0.1:18080"),
            (Some(9000), 9000, Protocol::Tcp, "127.0.0.1:9000"),
            (Some(1), 8080, Protocol::Http, "127.0.0.1:18080"),
            (None, 8080, Protocol::Http, "127.0.0.1:18080"),
        ];
        for (dst, port, protocol, app) in cases {
            let t = s.target(dst).expect("a workload port");
            assert_eq!((t.port, t.protocol), (port, protocol), "{dst:?}");
            assert_eq!(&*t.app.authority, app, "{dst:?}");
        }
        assert!(inbound("workload: {name: w}\n").target(Some(80)).is_none());
    }
}
