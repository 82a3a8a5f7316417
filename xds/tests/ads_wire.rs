//! The ADS server seen from the wire with a raw tonic client: what each response carries,
//! nonces and versions, ACK/NACK and stale nonces, `initial_resource_versions`, explicit
//! subscriptions, the first-request checks, the authorization hook and shutdown.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use halyard_xds::ads::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
};
use halyard_xds::ads::proto::google::rpc::Status as RpcStatus;
use halyard_xds::ads::{MemorySource, Resource, ResourceSource, SERVICE_TYPE, VIRTUAL_HOST_TYPE};
use halyard_xds::VirtualHost;
use tonic::Code;

fn delta_first(node_id: &str, type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(node_id)),
        type_url: type_url.to_string(),
        ..Default::default()
    }
}

fn sotw_first(node_id: &str, type_url: &str, names: &[&str], version: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node(node_id)),
        type_url: type_url.to_string(),
        version_info: version.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

fn vh(name: &str) -> Resource {
    Resource::from_message(
        name,
        &VirtualHost {
            name: name.to_string(),
            hosts: vec![format!("{name}.example")],
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_pushes_only_changed_resources_and_removals() {
    let source = Arc::new(MemorySource::new());
    source.set("n1", SERVICE_TYPE, [svc("a", 1), svc("b", 1), svc("c", 1)]);
    source.set("n1", VIRTUAL_HOST_TYPE, [vh("vh1"), vh("vh2")]);
    let server = TestServer::start(source.clone(), |s| s).await;
    let mut raw = RawDelta::open(server.addr, delta_first("n1", SERVICE_TYPE))
        .await
        .expect("open");

    let r1 = raw.recv().await;
    assert_eq!(r1.type_url, SERVICE_TYPE);
    assert_eq!(delta_names(&r1), ["a", "b", "c"]);
    assert!(r1.removed_resources.is_empty());
    assert!(!r1.nonce.is_empty() && !r1.system_version_info.is_empty());
    let version_of =
        |resp: &halyard_xds::ads::proto::envoy::service::discovery::v3::DeltaDiscoveryResponse,
         name: &str| {
            resp.resources
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.version.clone())
                .expect("resource in response")
        };
    let b1 = version_of(&r1, "b");
    raw.ack(&r1).await;

    // One changed resource: only it is sent, with a new version.
    source.put("n1", SERVICE_TYPE, svc("b", 2));
    let r2 = raw.recv().await;
    assert_eq!(delta_names(&r2), ["b"]);
    assert_ne!(version_of(&r2, "b"), b1);
    assert_ne!(r2.nonce, r1.nonce);
    assert_ne!(r2.system_version_info, r1.system_version_info);
    raw.ack(&r2).await;

    // A removal: only the name.
    source.delete("n1", SERVICE_TYPE, "c");
    let r3 = raw.recv().await;
    assert!(r3.resources.is_empty(), "{r3:?}");
    assert_eq!(r3.removed_resources, ["c"]);
    raw.ack(&r3).await;

    // Rewriting a resource with the same content sends nothing: the next response is the
    // one that really changed something.
    source.put("n1", SERVICE_TYPE, svc("a", 1));
    source.put("n1", SERVICE_TYPE, svc("d", 1));
    let r4 = raw.recv().await;
    assert_eq!(delta_names(&r4), ["d"]);
    raw.ack(&r4).await;

    // An explicit subscription to another type gets exactly the named resources.
    raw.send(DeltaDiscoveryRequest {
        type_url: VIRTUAL_HOST_TYPE.into(),
        resource_names_subscribe: vec!["vh1".into()],
        ..Default::default()
    })
    .await;
    let v1 = raw.recv().await;
    assert_eq!(v1.type_url, VIRTUAL_HOST_TYPE);
    assert_eq!(delta_names(&v1), ["vh1"]);
    raw.ack(&v1).await;
    // Not subscribed: a change to vh2 does not reach the client; one to vh1 does.
    source.put("n1", VIRTUAL_HOST_TYPE, vh("vh2-changed"));
    source.set(
        "n1",
        VIRTUAL_HOST_TYPE,
        [vh("vh2"), {
            let mut r = vh("vh1");
            r.version = "v-new".into();
            r
        }],
    );
    let v2 = raw.recv().await;
    assert_eq!(delta_names(&v2), ["vh1"]);
    assert_eq!(v2.resources[0].version, "v-new");
    raw.ack(&v2).await;
    // Subscribing again to a name the client holds resends it (it may have dropped it).
    raw.send(DeltaDiscoveryRequest {
        type_url: VIRTUAL_HOST_TYPE.into(),
        resource_names_subscribe: vec!["vh1".into()],
        ..Default::default()
    })
    .await;
    let v3 = raw.recv().await;
    assert_eq!(delta_names(&v3), ["vh1"]);
    // Unsubscribing: the resource is neither sent nor reported removed afterwards.
    raw.send(DeltaDiscoveryRequest {
        type_url: VIRTUAL_HOST_TYPE.into(),
        response_nonce: v3.nonce.clone(),
        resource_names_unsubscribe: vec!["vh1".into()],
        ..Default::default()
    })
    .await;
    source.put("n1", SERVICE_TYPE, svc("e", 1));
    let r5 = raw.recv().await;
    assert_eq!(
        (r5.type_url.as_str(), delta_names(&r5)),
        (SERVICE_TYPE, vec!["e".to_string()])
    );

    let conns = server.server.connections();
    let t = &conns[0].types[SERVICE_TYPE];
    // a, b, c, then b, (c removed), d, e: six resources in five responses.
    assert_eq!((t.responses_sent, t.resources_sent), (5, 6), "{t:?}");
    assert_eq!(t.resources, 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_initial_resource_versions_are_not_resent() {
    let source = Arc::new(MemorySource::new());
    let (a, b) = (svc("a", 1), svc("b", 1));
    source.set("n1", SERVICE_TYPE, [a.clone(), b.clone()]);
    let server = TestServer::start(source.clone(), |s| s).await;

    // The client holds a at the current version, b at an old one, and "gone" that no longer
    // exists.
    let mut first = delta_first("n1", SERVICE_TYPE);
    first.initial_resource_versions = HashMap::from([
        ("a".to_string(), a.version.clone()),
        ("b".to_string(), "old".to_string()),
        ("gone".to_string(), "x".to_string()),
    ]);
    let mut raw = RawDelta::open(server.addr, first).await.expect("open");
    let r = raw.recv().await;
    assert_eq!(delta_names(&r), ["b"]);
    assert_eq!(r.resources[0].version, b.version);
    assert_eq!(r.removed_resources, ["gone"]);
    raw.ack(&r).await;

    // Everything current: the first response is empty, telling the client it is in sync.
    let mut first = delta_first("n1", SERVICE_TYPE);
    first.initial_resource_versions = HashMap::from([
        ("a".to_string(), a.version.clone()),
        ("b".to_string(), b.version.clone()),
    ]);
    let mut raw2 = RawDelta::open(server.addr, first).await.expect("open");
    let r = raw2.recv().await;
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );
    assert!(!r.nonce.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_versions_nonces_ack_nack_and_stale_nonces() {
    let source = Arc::new(MemorySource::new());
    source.set("n1", SERVICE_TYPE, [svc("a", 1), svc("b", 1)]);
    let server = TestServer::start(source.clone(), |s| s).await;
    let mut raw = RawSotw::open(server.addr, sotw_first("n1", SERVICE_TYPE, &[], ""))
        .await
        .expect("open");
    let r1 = raw.recv().await;
    assert_eq!(sotw_names(&r1, "n1"), ["a", "b"]);
    assert!(!r1.version_info.is_empty() && !r1.nonce.is_empty());
    assert!(r1
        .resources
        .iter()
        .all(|a| a.type_url == "type.googleapis.com/envoy.service.discovery.v3.Resource"));
    raw.send(DiscoveryRequest {
        version_info: r1.version_info.clone(),
        type_url: SERVICE_TYPE.into(),
        response_nonce: r1.nonce.clone(),
        ..Default::default()
    })
    .await;

    // A change: the whole set with a new version and nonce.
    source.put("n1", SERVICE_TYPE, svc("b", 2));
    let r2 = raw.recv().await;
    assert_eq!(sotw_names(&r2, "n1"), ["a", "b"]);
    assert_ne!(r2.version_info, r1.version_info);
    assert_ne!(r2.nonce, r1.nonce);

    // NACK: the previous version with error_detail.
    raw.send(DiscoveryRequest {
        version_info: r1.version_info.clone(),
        type_url: SERVICE_TYPE.into(),
        response_nonce: r2.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "port 2 is cursed".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    let conn = eventually("the NACK recorded", || {
        let c = server.server.connections().into_iter().next()?;
        c.types[SERVICE_TYPE].last_nack.is_some().then_some(c)
    })
    .await;
    let t = &conn.types[SERVICE_TYPE];
    assert_eq!(t.acked_version.as_deref(), Some(r1.version_info.as_str()));
    assert_eq!(
        t.last_sent_version.as_deref(),
        Some(r2.version_info.as_str())
    );
    let nack = t.last_nack.as_ref().expect("nack");
    assert_eq!(
        (nack.message.as_str(), nack.nonce.as_str()),
        ("port 2 is cursed", r2.nonce.as_str())
    );

    // A request with a stale nonce does not change the subscription.
    raw.send(DiscoveryRequest {
        version_info: r1.version_info.clone(),
        type_url: SERVICE_TYPE.into(),
        response_nonce: r1.nonce.clone(),
        resource_names: vec!["a".into()],
        ..Default::default()
    })
    .await;
    // The NACKed version was not resent: the next response is the next change, with the full
    // (wildcard) set.
    source.put("n1", SERVICE_TYPE, svc("c", 1));
    let r3 = raw.recv().await;
    assert_eq!(sotw_names(&r3, "n1"), ["a", "b", "c"]);
    assert_ne!(r3.version_info, r2.version_info);

    // ACK with a narrower subscription: a new version with only that name.
    raw.send(DiscoveryRequest {
        version_info: r3.version_info.clone(),
        type_url: SERVICE_TYPE.into(),
        response_nonce: r3.nonce.clone(),
        resource_names: vec!["a".into()],
        ..Default::default()
    })
    .await;
    let r4 = raw.recv().await;
    assert_eq!(sotw_names(&r4, "n1"), ["a"]);
    raw.send(DiscoveryRequest {
        version_info: r4.version_info.clone(),
        type_url: SERVICE_TYPE.into(),
        response_nonce: r4.nonce.clone(),
        resource_names: vec!["a".into()],
        ..Default::default()
    })
    .await;
    eventually("ACK of the narrowed set", || {
        let c = server.server.connections().into_iter().next()?;
        (c.types[SERVICE_TYPE].acked_version.as_deref() == Some(r4.version_info.as_str()))
            .then_some(())
    })
    .await;
    drop(raw);

    // A reconnect that names the version it holds gets nothing until something changes.
    let mut again = RawSotw::open(
        server.addr,
        sotw_first("n1", SERVICE_TYPE, &["a"], &r4.version_info),
    )
    .await
    .expect("reopen");
    // Requests for types the server does not serve are ignored.
    again
        .send(DiscoveryRequest {
            type_url: "type.googleapis.com/example.Unknown".into(),
            ..Default::default()
        })
        .await;
    source.put("n1", SERVICE_TYPE, svc("b", 3));
    source.put("n1", SERVICE_TYPE, svc("a", 9));
    let r5 = again.recv().await;
    assert_eq!(r5.type_url, SERVICE_TYPE);
    assert_eq!(sotw_names(&r5, "n1"), ["a"]);
    let conn = eventually("the new stream", || {
        let newest = server.server.connections().into_iter().last()?;
        newest
            .types
            .get(SERVICE_TYPE)
            .is_some_and(|t| t.responses_sent > 0)
            .then_some(newest)
    })
    .await;
    assert_eq!(conn.types[SERVICE_TYPE].responses_sent, 1, "{conn:?}");
    assert!(!conn
        .types
        .contains_key("type.googleapis.com/example.Unknown"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_needs_a_node_id_and_a_type() {
    let source = Arc::new(MemorySource::new());
    let server = TestServer::start(source, |s| s).await;
    let mut no_node = sotw_first("", SERVICE_TYPE, &[], "");
    no_node.node = None;
    let err = RawSotw::open(server.addr, no_node)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = RawDelta::open(server.addr, delta_first("", SERVICE_TYPE))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // No type URL on an aggregated stream ends it with INVALID_ARGUMENT.
    let mut raw = RawDelta::open(server.addr, delta_first("n1", ""))
        .await
        .expect("accepted");
    let status = match tokio::time::timeout(DEADLINE, raw.rx.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected an error status, got {other:?}"),
    };
    assert_eq!(status.code(), Code::InvalidArgument);

    // A node may not change its id within a stream.
    let mut raw = RawSotw::open(server.addr, sotw_first("n1", SERVICE_TYPE, &[], ""))
        .await
        .expect("accepted");
    raw.recv().await;
    raw.send(sotw_first("n2", VIRTUAL_HOST_TYPE, &[], "")).await;
    assert_eq!(raw.end().await.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_sees_the_node_and_the_request_extensions() {
    let source = Arc::new(MemorySource::new());
    source.set("friend", SERVICE_TYPE, [svc("a", 1)]);
    let server = TestServer::start(source, |s| {
        s.with_authorizer(|node_id, ext| {
            let from_tcp = ext
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .is_some();
            match (node_id, from_tcp) {
                ("friend", true) => Ok(()),
                _ => Err(tonic::Status::permission_denied(format!(
                    "{node_id} may not read configuration"
                ))),
            }
        })
    })
    .await;
    let err = RawDelta::open(server.addr, delta_first("intruder", SERVICE_TYPE))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("intruder"));
    let mut ok = RawDelta::open(server.addr, delta_first("friend", SERVICE_TYPE))
        .await
        .expect("accepted");
    assert_eq!(delta_names(&ok.recv().await), ["a"]);
    assert_eq!(server.server.connections().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_stream_with_unavailable() {
    let source = Arc::new(MemorySource::new());
    source.set("n1", SERVICE_TYPE, [svc("a", 1)]);
    let server = TestServer::start(source, |s| s).await;
    let mut sotw = RawSotw::open(server.addr, sotw_first("n1", SERVICE_TYPE, &[], ""))
        .await
        .expect("open");
    let mut delta = RawDelta::open(server.addr, delta_first("n1", SERVICE_TYPE))
        .await
        .expect("open");
    sotw.recv().await;
    delta.recv().await;
    assert_eq!(server.server.metrics().connected.get(), 2);
    let handle = server.server.clone();
    handle.shutdown();
    assert_eq!(sotw.end().await.code(), Code::Unavailable);
    let status = match tokio::time::timeout(DEADLINE, delta.rx.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    };
    assert_eq!(status.code(), Code::Unavailable);
    eventually("streams gone", || {
        handle.connections().is_empty().then_some(())
    })
    .await;
    assert_eq!(handle.metrics().connected.get(), 0);
    server.stop().await;
}

/// A Service whose hosts make it about `kib` KiB on the wire.
fn big_svc(name: &str, generation: u32, kib: usize) -> Resource {
    Resource::from_message(
        name,
        &halyard_xds::Service {
            name: name.to_string(),
            hosts: (0..kib)
                .map(|i| format!("h{generation}-{i:04}-{}", "x".repeat(1000)))
                .collect(),
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_stalls_only_its_stream() {
    let source = Arc::new(MemorySource::new());
    source.set("slow", SERVICE_TYPE, [big_svc("big", 0, 512)]);
    let server = TestServer::start(source.clone(), |s| s).await;
    let mut slow = RawDelta::open(server.addr, delta_first("slow", SERVICE_TYPE))
        .await
        .expect("open");
    let sent = || {
        server
            .server
            .connections()
            .first()
            .and_then(|c| c.types.get(SERVICE_TYPE).map(|t| t.responses_sent))
            .unwrap_or(0)
    };
    // Change the resource again and again without reading. Each change is given time to go
    // out; once transport windows and the queue are full, nothing more leaves the server (three
    // changes in a row without a response count as stalled).
    let mut stalls = 0;
    let mut changes = 0;
    for generation in 1..=60u32 {
        let before = sent();
        source.put("slow", SERVICE_TYPE, big_svc("big", generation, 512));
        changes += 1;
        let start = tokio::time::Instant::now();
        while sent() == before && start.elapsed() < std::time::Duration::from_millis(300) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if sent() == before {
            stalls += 1;
            if stalls == 3 {
                break;
            }
        } else {
            stalls = 0;
        }
    }
    let stalled_at = sent();
    eprintln!("stalled after {stalled_at} responses for {changes} changes");
    assert_eq!(
        stalls, 3,
        "the stream never stalled: {stalled_at} responses went out"
    );
    assert!(stalled_at < changes, "{stalled_at} of {changes}");
    // The queue (16 responses) plus what the HTTP/2 windows and buffers hold (a few MiB).
    let bound = halyard_xds::ads::ServerConfig::default().queue_capacity as u64 + 12;
    assert!(
        stalled_at <= bound,
        "{stalled_at} responses left for a client that reads nothing"
    );
    // Other streams are not affected.
    source.set("fast", SERVICE_TYPE, [svc("a", 1)]);
    let mut fast = RawDelta::open(server.addr, delta_first("fast", SERVICE_TYPE))
        .await
        .expect("open");
    assert_eq!(delta_names(&fast.recv().await), ["a"]);

    // Reading again drains what was queued, then the latest state arrives, coalesced.
    let latest = source.resources("slow", SERVICE_TYPE).expect("slow")["big"]
        .version
        .clone();
    let mut read = 0;
    loop {
        let r = slow.recv().await;
        read += 1;
        slow.ack(&r).await;
        if r.resources.iter().any(|x| x.version == latest) {
            break;
        }
    }
    assert!(
        read <= stalled_at + 2,
        "read {read}, stalled at {stalled_at}"
    );
    assert!(read < changes + 1, "read {read} for {changes} changes");
    server.stop().await;
}
