//! Test helpers for the sections' tests, and tests of the snapshot as a whole.

use std::sync::Arc;

use halyard_filters::jwt::JwksStore;
use halyard_xds::ProxyConfig;

use super::Snapshot;

/// A config from YAML (parsed and validated).
pub(super) fn cfg(yaml: &str) -> ProxyConfig {
    halyard_xds::parse_str(yaml, std::path::Path::new("t.yaml")).unwrap()
}

/// A service `a` with two ports (HTTP with a target port, TCP) and three weighted endpoints.
pub(super) const BASE: &str = "services:\n  - name: a\n    hosts: [a.local]\n    addresses: [127.0.0.9]\n    ports: [{port: 80, targetPort: 8080}, {port: 81, protocol: TCP}]\n    endpoints: [{address: 127.0.0.1}, {address: 127.0.0.2, weight: 2}]\n";

fn jwks() -> Arc<JwksStore> {
    JwksStore::new(tokio_util::sync::CancellationToken::new())
}

fn build(yaml: &str, previous: Option<&Snapshot>) -> Snapshot {
    Snapshot::build(cfg(yaml), previous, &jwks()).unwrap()
}

#[test]
fn reload_reuses_endpoint_state() {
    let s1 = build(BASE, None);
    let s2 = build(BASE, Some(&s1));
    assert!(Arc::ptr_eq(
        &s1.outbound.clusters[0].ports[0].endpoints[0],
        &s2.outbound.clusters[0].ports[0].endpoints[0]
    ));
    assert!(Arc::ptr_eq(
        &s1.outbound.clusters[0].breaker,
        &s2.outbound.clusters[0].breaker
    ));
}

#[test]
fn inbound_and_outbound_share_an_endpoint_with_the_same_key() {
    // The app at 127.0.0.1:8080 is also endpoint 127.0.0.1 of `a` at its target port 8080.
    let s = build(
        &format!(
            "{BASE}workload:\n  name: w\n  ports: [{{port: 80, appAddress: '127.0.0.1:8080'}}]\n"
        ),
        None,
    );
    let app = &s.inbound.target(Some(80)).unwrap().app;
    assert!(Arc::ptr_eq(
        app,
        &s.outbound.clusters[0].ports[0].endpoints[0]
    ));
}

#[test]
fn sections_come_from_their_resources() {
    let s = build(
        &format!("version: v7\n{BASE}workload:\n  name: w\n  ports: [{{port: 80}}]\nsettings: {{maxConnections: 3}}\n"),
        None,
    );
    assert_eq!(s.version, "v7");
    assert_eq!(s.outbound.clusters.len(), 1);
    assert_eq!(s.inbound.targets.len(), 1);
    assert_eq!(s.settings.max_connections, 3);
    assert_eq!(s.local.meta.canonical_service(), "w");
    assert!(s.inbound_chain.is_none());
    s.sweep_pools();
}
