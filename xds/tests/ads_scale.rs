//! 200 proxies at once (half state of the world, half delta), each on its own TCP
//! connection to one server: all sync, all follow a change, the gauge counts them.

mod common;

use std::sync::Arc;

use common::*;
use halyard_xds::ads::{MemorySource, Mode, Resource, SERVICE_TYPE, WORKLOAD_TYPE};
use halyard_xds::{Service, Workload};

const CLIENTS: usize = 200;

fn fill(source: &MemorySource, node_id: &str, port: u32) {
    let workload = Workload {
        name: node_id.to_string(),
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
                vec![svc("shared", port), svc(&format!("own-{node_id}"), 80)],
            ),
        ],
    );
}

fn shared_port(s: &halyard_xds::ads::State) -> Option<u32> {
    let r = s.get(SERVICE_TYPE)?.get("shared")?;
    Some(r.decode::<Service>().ok()?.ports.first()?.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_sync_and_follow_changes() {
    let source = Arc::new(MemorySource::new());
    for i in 0..CLIENTS {
        fill(&source, &format!("node-{i}"), 1000);
    }
    let registry = prometheus::Registry::new();
    let server = TestServer::start(source.clone(), |s| {
        s.register_metrics(&registry).expect("register");
        s
    })
    .await;
    let mut clients: Vec<RunningClient> = (0..CLIENTS)
        .map(|i| {
            let mode = if i % 2 == 0 { Mode::Delta } else { Mode::Sotw };
            spawn_client(
                target(server.addr),
                &format!("node-{i}"),
                mode,
                &[WORKLOAD_TYPE, SERVICE_TYPE],
                |_| Ok(()),
            )
        })
        .collect();

    for (i, c) in clients.iter_mut().enumerate() {
        let own = format!("own-node-{i}");
        let state = c
            .wait_state("initial sync", |s| {
                shared_port(s) == Some(1000) && s.get(WORKLOAD_TYPE).is_some_and(|m| m.len() == 1)
            })
            .await;
        assert_eq!(services(&state), [own, "shared".to_string()]);
        assert!(state[WORKLOAD_TYPE].contains_key(&format!("node-{i}")));
    }
    eventually("every stream counted", || {
        (server.server.metrics().connected.get() == CLIENTS as i64).then_some(())
    })
    .await;
    assert_eq!(server.server.connections().len(), CLIENTS);

    // One change for every node.
    for i in 0..CLIENTS {
        source.put(&format!("node-{i}"), SERVICE_TYPE, svc("shared", 2000));
    }
    for c in clients.iter_mut() {
        c.wait_state("the change", |s| shared_port(s) == Some(2000))
            .await;
    }
    // Every proxy ACKs what it got; the push histogram saw them.
    eventually("every ACK on the server", || {
        let conns = server.server.connections();
        conns
            .iter()
            .all(|c| {
                let t = &c.types[SERVICE_TYPE];
                t.acked_version.is_some() && t.acked_version == t.last_sent_version
            })
            .then_some(())
    })
    .await;
    let pushes = server
        .server
        .metrics()
        .pushes
        .with_label_values(&["Service"])
        .get();
    assert!(pushes >= 2 * CLIENTS as u64, "{pushes}");
    assert!(server.server.metrics().push_duration.get_sample_count() >= 2 * CLIENTS as u64);

    for c in clients {
        c.stop().await;
    }
    eventually("every stream gone", || {
        (server.server.metrics().connected.get() == 0).then_some(())
    })
    .await;
    server.stop().await;
}
