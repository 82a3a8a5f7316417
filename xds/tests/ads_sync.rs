//! The ADS client against the ADS server over a loopback TCP socket, in both modes: initial
//! sync, changes and removals, NACK keeping the last good state, a server restart.

mod common;

use std::sync::Arc;

use common::*;
use halyard_xds::ads::{
    MemorySource, Mode, Resource, StreamKind, MESH_SETTINGS_NAME, MESH_SETTINGS_TYPE, SERVICE_TYPE,
    VIRTUAL_HOST_TYPE, WORKLOAD_TYPE,
};
use halyard_xds::{MeshSettings, Service, VirtualHost, Workload};

const ALL: [&str; 4] = [
    WORKLOAD_TYPE,
    SERVICE_TYPE,
    VIRTUAL_HOST_TYPE,
    MESH_SETTINGS_TYPE,
];

/// Everything one node gets: its workload, two services, a virtual host, mesh settings.
fn fill(source: &MemorySource, node_id: &str) {
    let workload = Workload {
        name: "reviews-v1".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    let vh = VirtualHost {
        name: "reviews-routes".into(),
        hosts: vec!["reviews".into()],
        ..Default::default()
    };
    source.set_node(
        node_id,
        [
            (
                WORKLOAD_TYPE.to_string(),
                vec![Resource::from_message(node_id, &workload)],
            ),
            (
                SERVICE_TYPE.to_string(),
                vec![svc("reviews", 9080), svc("ratings", 9080)],
            ),
            (
                VIRTUAL_HOST_TYPE.to_string(),
                vec![Resource::from_message("reviews-routes", &vh)],
            ),
            (
                MESH_SETTINGS_TYPE.to_string(),
                vec![Resource::from_message(
                    MESH_SETTINGS_NAME,
                    &MeshSettings::default(),
                )],
            ),
        ],
    );
}

fn complete(s: &halyard_xds::ads::State) -> bool {
    ALL.iter().all(|t| s.get(*t).is_some_and(|m| !m.is_empty())) && services(s).len() == 2
}

async fn initial_sync(mode: Mode) {
    let source = Arc::new(MemorySource::new());
    fill(&source, "node-a");
    fill(&source, "node-b");
    let server = TestServer::start(source.clone(), |s| s).await;
    let mut client = spawn_client(target(server.addr), "node-a", mode, &ALL, |_| Ok(()));
    let state = client.wait_state("initial sync", complete).await;
    assert_eq!(services(&state), ["ratings", "reviews"]);
    let w: Workload = state[WORKLOAD_TYPE]["node-a"].decode().expect("workload");
    assert_eq!(w.name, "reviews-v1");
    let reviews: Service = state[SERVICE_TYPE]["reviews"].decode().expect("service");
    assert_eq!(reviews.ports[0].port, 9080);
    assert!(state[MESH_SETTINGS_TYPE].contains_key("mesh"));

    let status = client
        .wait_status("ACKs of every type", |s| {
            s.connected
                && ALL
                    .iter()
                    .all(|t| s.types.get(*t).is_some_and(|t| t.acked_version.is_some()))
        })
        .await;
    assert_eq!(status.connects, 1);

    // The server shows the stream with every type ACKed at the version it sent.
    let conn = eventually("ACKs recorded by the server", || {
        let conns = server.server.connections();
        let c = conns.into_iter().find(|c| c.node_id == "node-a")?;
        ALL.iter()
            .all(|t| {
                c.types.get(*t).is_some_and(|t| {
                    t.acked_version.is_some() && t.acked_version == t.last_sent_version
                })
            })
            .then_some(c)
    })
    .await;
    let kind = match mode {
        Mode::Sotw => StreamKind::Sotw,
        Mode::Delta => StreamKind::Delta,
    };
    assert_eq!(conn.kind, kind);
    assert!(conn.peer.is_some_and(|p| p.ip().is_loopback()));
    assert_eq!(conn.types[SERVICE_TYPE].resources, 2);
    assert!(conn.types[SERVICE_TYPE].wildcard);

    // A change to one service reaches the client; a removal too.
    source.put("node-a", SERVICE_TYPE, svc("reviews", 9090));
    let state = client
        .wait_state("changed port", |s| {
            s.get(SERVICE_TYPE)
                .and_then(|m| m.get("reviews"))
                .and_then(|r| r.decode::<Service>().ok())
                .is_some_and(|s| s.ports[0].port == 9090)
        })
        .await;
    assert_eq!(services(&state), ["ratings", "reviews"]);
    assert!(source.delete("node-a", SERVICE_TYPE, "ratings"));
    let state = client
        .wait_state("ratings removed", |s| services(s) == ["reviews"])
        .await;
    assert!(complete_but_services(&state));

    // Another node's change does not reach this one.
    source.put("node-b", SERVICE_TYPE, svc("other", 1));
    source.put("node-a", SERVICE_TYPE, svc("mine", 1));
    let state = client
        .wait_state("own service added", |s| {
            services(s).contains(&"mine".to_string())
        })
        .await;
    assert_eq!(services(&state), ["mine", "reviews"]);

    let final_state = client.stop().await;
    assert_eq!(services(&final_state), ["mine", "reviews"]);
    eventually("stream gone from connections", || {
        server.server.connections().is_empty().then_some(())
    })
    .await;
    assert_eq!(server.server.metrics().connected.get(), 0);
    server.stop().await;
}

fn complete_but_services(s: &halyard_xds::ads::State) -> bool {
    [WORKLOAD_TYPE, VIRTUAL_HOST_TYPE, MESH_SETTINGS_TYPE]
        .iter()
        .all(|t| s.get(*t).is_some_and(|m| m.len() == 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_changes_and_removals_sotw() {
    initial_sync(Mode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_changes_and_removals_delta() {
    initial_sync(Mode::Delta).await;
}

async fn nack_keeps_old_state(mode: Mode) {
    let source = Arc::new(MemorySource::new());
    fill(&source, "n1");
    let registry = prometheus::Registry::new();
    let server = TestServer::start(source.clone(), |s| {
        s.register_metrics(&registry).expect("register");
        s
    })
    .await;
    // The proxy refuses any service named "bad".
    let mut client = spawn_client(target(server.addr), "n1", mode, &ALL, |s| {
        if services(s).iter().any(|n| n == "bad") {
            Err("service \"bad\" is not acceptable".into())
        } else {
            Ok(())
        }
    });
    let good = client.wait_state("initial sync", complete).await;
    let acked = eventually("service ACK on the server", || {
        let c = server.server.connections().into_iter().next()?;
        c.types.get(SERVICE_TYPE)?.acked_version.clone()
    })
    .await;

    source.put("n1", SERVICE_TYPE, svc("bad", 1));
    let status = client
        .wait_status("client NACK", |s| {
            s.types
                .get(SERVICE_TYPE)
                .is_some_and(|t| t.last_nack.is_some())
        })
        .await;
    let nack = status.types[SERVICE_TYPE].last_nack.clone().expect("nack");
    assert!(nack.message.contains("not acceptable"), "{nack:?}");
    assert_eq!(
        status.types[SERVICE_TYPE].acked_version.as_deref(),
        Some(acked.as_str())
    );
    assert_eq!(
        *client.applied.borrow(),
        good,
        "state changed despite the NACK"
    );

    let conn = eventually("NACK on the server", || {
        let c = server.server.connections().into_iter().next()?;
        c.types.get(SERVICE_TYPE)?.last_nack.is_some().then_some(c)
    })
    .await;
    let t = &conn.types[SERVICE_TYPE];
    let recorded = t.last_nack.as_ref().expect("nack");
    assert!(recorded.message.contains("not acceptable"), "{recorded:?}");
    assert_eq!(t.acked_version.as_deref(), Some(acked.as_str()), "{t:?}");
    assert_ne!(t.last_sent_version, t.acked_version);
    let sent_after_nack = t.responses_sent;
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    assert!(
        text.contains("halyard_xds_nacks_total{type=\"Service\"} 1"),
        "{text}"
    );
    assert!(text.contains("halyard_xds_connected_proxies 1"), "{text}");
    assert!(
        text.contains("halyard_xds_push_duration_seconds_count"),
        "{text}"
    );

    // Fixing the config (and only that) makes it through; the NACKed version was not resent.
    assert!(source.delete("n1", SERVICE_TYPE, "bad"));
    source.put("n1", SERVICE_TYPE, svc("good", 2));
    let state = client
        .wait_state("fixed config", |s| {
            services(s).contains(&"good".to_string())
        })
        .await;
    assert_eq!(services(&state), ["good", "ratings", "reviews"]);
    let conn = eventually("ACK after the fix", || {
        let c = server.server.connections().into_iter().next()?;
        let t = c.types.get(SERVICE_TYPE)?;
        (t.acked_version == t.last_sent_version).then_some(c)
    })
    .await;
    let t = &conn.types[SERVICE_TYPE];
    // Two source changes (delete, put) may be coalesced into one response, never more than two.
    assert!(
        (sent_after_nack + 1..=sent_after_nack + 2).contains(&t.responses_sent),
        "{t:?} after {sent_after_nack}"
    );
    assert!(t.last_nack.is_some(), "the last NACK stays visible");
    client.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_keeps_old_state_and_shows_in_connections_sotw() {
    nack_keeps_old_state(Mode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_keeps_old_state_and_shows_in_connections_delta() {
    nack_keeps_old_state(Mode::Delta).await;
}

async fn server_restart(mode: Mode) {
    let source = Arc::new(MemorySource::new());
    fill(&source, "n1");
    for i in 0..20 {
        source.put("n1", SERVICE_TYPE, svc(&format!("svc-{i:02}"), 80));
    }
    let first = TestServer::start(source.clone(), |s| s).await;
    let to = target(first.addr);
    let mut client = spawn_client(to.clone(), "n1", mode, &ALL, |_| Ok(()));
    client
        .wait_state("initial sync", |s| services(s).len() == 22)
        .await;
    client
        .wait_status("all ACKed", |s| {
            ALL.iter()
                .all(|t| s.types.get(*t).is_some_and(|t| t.acked_version.is_some()))
        })
        .await;

    first.stop().await;
    let status = client.wait_status("disconnected", |s| !s.connected).await;
    assert!(status.last_error.is_some(), "{status:?}");
    // The client keeps serving with what it has.
    assert_eq!(
        client.applied.borrow().get(SERVICE_TYPE).map(|m| m.len()),
        Some(22)
    );

    // A new server (a new process would build its source the same way) with one change.
    let source2 = Arc::new(MemorySource::new());
    fill(&source2, "n1");
    for i in 0..20 {
        source2.put("n1", SERVICE_TYPE, svc(&format!("svc-{i:02}"), 80));
    }
    source2.put("n1", SERVICE_TYPE, svc("svc-07", 8080));
    let second = TestServer::start(source2.clone(), |s| s).await;
    *to.lock().expect("target") = second.addr;
    let state = client
        .wait_state("converged on the new server", |s| {
            s.get(SERVICE_TYPE)
                .and_then(|m| m.get("svc-07"))
                .and_then(|r| r.decode::<Service>().ok())
                .is_some_and(|s| s.ports[0].port == 8080)
        })
        .await;
    assert_eq!(state[SERVICE_TYPE].len(), 22);
    let status = client
        .wait_status("reconnected", |s| s.connected && s.connects == 2)
        .await;
    assert!(status.connects >= 2);

    let conn = eventually("every type on the new stream, services ACKed", || {
        let c = second.server.connections().into_iter().next()?;
        let t = c.types.get(SERVICE_TYPE)?;
        let acked = t.acked_version.is_some() && t.acked_version == t.last_sent_version;
        (acked && ALL.iter().all(|t| c.types.contains_key(*t))).then_some(c)
    })
    .await;
    match mode {
        Mode::Delta => {
            // Only the changed resource crossed the wire; unchanged types sent no resource.
            assert_eq!(conn.types[SERVICE_TYPE].resources_sent, 1, "{conn:?}");
            for t in [WORKLOAD_TYPE, VIRTUAL_HOST_TYPE, MESH_SETTINGS_TYPE] {
                assert_eq!(conn.types[t].resources_sent, 0, "{t}: {conn:?}");
            }
        }
        Mode::Sotw => {
            // The client resumed with its ACKed versions: types without changes were not resent.
            for t in [WORKLOAD_TYPE, VIRTUAL_HOST_TYPE, MESH_SETTINGS_TYPE] {
                assert_eq!(conn.types[t].responses_sent, 0, "{t}: {conn:?}");
            }
        }
    }
    client.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_client_reconnects_and_converges_sotw() {
    server_restart(Mode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_client_reconnects_and_converges_delta() {
    server_restart(Mode::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_retrying_while_no_server_listens() {
    // A port with nothing behind it: bind, note it, close.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let to = target(addr);
    let mut client = spawn_client(to.clone(), "late", Mode::Delta, &ALL, |_| Ok(()));
    let status = client
        .wait_status("a failed attempt", |s| s.last_error.is_some())
        .await;
    assert!(!status.connected);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("connect")),
        "{status:?}"
    );

    let source = Arc::new(MemorySource::new());
    fill(&source, "late");
    let server = TestServer::start(source, |s| s).await;
    *to.lock().expect("target") = server.addr;
    client
        .wait_state("sync after the server came", complete)
        .await;
    client.stop().await;
    server.stop().await;
}
