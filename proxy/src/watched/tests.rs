//! Re-checks of open connections: policy changes, expired certificates, many connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use halyard_certs::SpiffeId;
use http::HeaderValue;

use super::*;
use crate::ctx::{ListenerKind, PeerCert};
use crate::test_util::snapshot;

const DENY_PLAIN: &str = "authorizationPolicies:
  - name: default/deny-frontend
    action: DENY
    rules:
      - from: [{principals: [cluster.local/ns/default/sa/frontend]}]
";

const ONE_DENIED: Counts = Counts {
    policy: 1,
    expired: 0,
};

fn conn(i: u32, principal: &str, not_after: Option<SystemTime>) -> Arc<ConnInfo> {
    let peer = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 40000));
    let mut c = ConnInfo::new(ListenerKind::Inbound, peer, None);
    let identity = SpiffeId::parse(&format!("spiffe://{principal}")).expect("id");
    c.peer_cert = Some(PeerCert {
        principal: identity.as_str().into(),
        identity,
        xfcc: HeaderValue::from_static("By=x"),
        not_after,
    });
    Arc::new(c)
}

#[test]
fn closes_what_the_policy_now_denies_and_nothing_else() {
    let conns = Arc::new(OpenConns::default());
    let metrics = FilterMetrics::unregistered();
    let front = conns.register(
        conn(1, "cluster.local/ns/default/sa/frontend", None),
        9000,
        None,
        0,
    );
    let other = conns.register(
        conn(2, "cluster.local/ns/default/sa/other", None),
        9000,
        None,
        0,
    );
    let now = SystemTime::now();

    let open = snapshot("version: a\n");
    assert_eq!(conns.recheck(&open, &metrics, now), Closed::default());
    let tight = snapshot(&format!("version: b\n{DENY_PLAIN}"));
    let closed = conns.recheck(&tight, &metrics, now);
    assert_eq!(
        closed,
        Closed {
            connections: ONE_DENIED,
            streams: Counts::default()
        }
    );
    assert!(front.watched().closed().is_cancelled());
    assert_eq!(front.watched().why(), Some(Revoked::Policy));
    assert!(!other.watched().closed().is_cancelled());
    // Once closed, a connection is not counted again.
    assert_eq!(conns.recheck(&tight, &metrics, now), Closed::default());
    drop(front);
    assert_eq!(conns.len(), 1);
}

#[test]
fn closes_connections_whose_peer_certificate_expired() {
    let conns = Arc::new(OpenConns::default());
    let metrics = FilterMetrics::unregistered();
    let now = SystemTime::now();
    let soon = conns.register(
        conn(
            1,
            "cluster.local/ns/default/sa/a",
            Some(now + Duration::from_secs(5)),
        ),
        9000,
        None,
        0,
    );
    let open = snapshot("version: a\n");
    assert_eq!(conns.recheck(&open, &metrics, now), Closed::default());
    let later = now + Duration::from_secs(6);
    let one_expired = Counts {
        policy: 0,
        expired: 1,
    };
    assert_eq!(
        conns.recheck(&open, &metrics, later),
        Closed {
            connections: one_expired,
            streams: Counts::default()
        }
    );
    assert_eq!(soon.watched().why(), Some(Revoked::CertificateExpired));
}

#[test]
fn ten_thousand_connections_are_rechecked_quickly() {
    let conns = Arc::new(OpenConns::default());
    let metrics = FilterMetrics::unregistered();
    let regs: Vec<_> = (0..10_000)
        .map(|i| {
            conns.register(
                conn(i, "cluster.local/ns/default/sa/other", None),
                9000,
                None,
                0,
            )
        })
        .collect();
    let tight = snapshot(&format!("version: b\n{DENY_PLAIN}"));
    let start = Instant::now();
    let closed = conns.recheck(&tight, &metrics, SystemTime::now());
    let took = start.elapsed();
    assert_eq!(closed, Closed::default(), "none of them is denied");
    eprintln!("re-checked {} open connections in {took:?}", regs.len());
    assert!(took < Duration::from_millis(500), "{took:?}");
}

/// A gRPC call as the inbound listener saw it.
fn call(path: &str) -> OwnedRequest {
    let (parts, ()) = http::Request::post(path)
        .header("host", "grpc.local")
        .header("content-type", "application/grpc")
        .body(())
        .expect("request")
        .into_parts();
    OwnedRequest::of(&parts, None)
}

#[test]
fn streams_are_decided_with_their_request_and_counted_apart() {
    let conns = Arc::new(OpenConns::default());
    let metrics = FilterMetrics::unregistered();
    let now = SystemTime::now();
    let front = conn(1, "cluster.local/ns/default/sa/frontend", None);
    let ticks = conns.register_stream(front.clone(), 8080, call("/echo.Echo/Ticks"), 0);
    let unary = conns.register_stream(front, 8080, call("/echo.Echo/Unary"), 0);
    let other = conn(2, "cluster.local/ns/default/sa/other", None);
    let tunnel = conns.register(other, 8080, None, 0);
    let tight = snapshot(
        "version: b
authorizationPolicies:
  - name: default/no-ticks-no-other
    action: DENY
    rules:
      - from: [{principals: [cluster.local/ns/default/sa/frontend]}]
        to: [{paths: [/echo.Echo/Ticks]}]
      - from: [{principals: [cluster.local/ns/default/sa/other]}]
",
    );
    assert_eq!(
        conns.recheck(&tight, &metrics, now),
        Closed {
            connections: ONE_DENIED,
            streams: ONE_DENIED
        }
    );
    assert_eq!(ticks.watched().why(), Some(Revoked::Policy));
    assert_eq!(unary.watched().why(), None, "its path is not denied");
    assert_eq!(tunnel.watched().why(), Some(Revoked::Policy));
    assert_eq!(Revoked::Policy.reply().flags, Flags::RBAC);
    assert_eq!(Revoked::CertificateExpired.reply().flags, Flags::PCE);
}
