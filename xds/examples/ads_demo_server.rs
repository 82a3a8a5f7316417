//! A small ADS server over a `MemorySource`, driven line by line on stdin — for trying the
//! transport by hand (e.g. with grpcurl or Envoy) and for the Python peer test.
//!
//! ```text
//! ads_demo_server [--listen 127.0.0.1:0] [--demo-node ID]
//! ```
//!
//! Prints `listening on ADDR` on stderr once it serves. Commands (one per line), each answered
//! with one JSON line on stdout:
//!
//! * `put NODE KIND NAME JSON` — adds or replaces a resource of KIND (`workload`, `service`,
//!   `virtualhost`, `mesh`) given in its proto3 JSON form, e.g.
//!   `put node-1 service reviews {"name":"reviews","ports":[{"port":9080}]}`
//! * `del NODE KIND NAME` — removes it
//! * `connections` — the `/debug/connections` snapshot
//! * `metrics` — the Prometheus text of the server's metrics
//! * `quit` (or end of input) — ends every stream and exits
#![forbid(unsafe_code)]

use std::sync::Arc;

use halyard_xds::ads::{
    AdsServer, MemorySource, Resource, ServerConfig, XdsResource, MESH_SETTINGS_NAME,
    MESH_SETTINGS_TYPE, SERVICE_TYPE, VIRTUAL_HOST_TYPE, WORKLOAD_TYPE,
};
use halyard_xds::{MeshSettings, Service, ServicePort, VirtualHost, Workload};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn type_of(kind: &str) -> Result<&'static str, String> {
    Ok(match kind {
        "workload" => WORKLOAD_TYPE,
        "service" => SERVICE_TYPE,
        "virtualhost" => VIRTUAL_HOST_TYPE,
        "mesh" => MESH_SETTINGS_TYPE,
        other => return Err(format!("unknown kind {other:?}")),
    })
}

fn parse<M: XdsResource + serde::de::DeserializeOwned>(
    name: &str,
    json: &str,
) -> Result<Resource, String> {
    let msg: M = serde_json::from_str(json).map_err(|e| format!("bad JSON: {e}"))?;
    Ok(Resource::from_message(name, &msg))
}

fn resource(kind: &str, name: &str, json: &str) -> Result<Resource, String> {
    match kind {
        "workload" => parse::<Workload>(name, json),
        "service" => parse::<Service>(name, json),
        "virtualhost" => parse::<VirtualHost>(name, json),
        "mesh" => parse::<MeshSettings>(name, json),
        other => Err(format!("unknown kind {other:?}")),
    }
}

fn demo(source: &MemorySource, node_id: &str) {
    let service = |name: &str, port| Service {
        name: name.to_string(),
        hosts: vec![name.to_string()],
        ports: vec![ServicePort {
            port,
            ..Default::default()
        }],
        ..Default::default()
    };
    source.set_node(
        node_id,
        [
            (
                WORKLOAD_TYPE.to_string(),
                vec![Resource::from_message(
                    node_id,
                    &Workload {
                        name: node_id.to_string(),
                        ..Default::default()
                    },
                )],
            ),
            (
                SERVICE_TYPE.to_string(),
                vec![
                    Resource::from_message("reviews", &service("reviews", 9080)),
                    Resource::from_message("ratings", &service("ratings", 9080)),
                ],
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

fn command(
    line: &str,
    source: &MemorySource,
    server: &AdsServer,
    registry: &prometheus::Registry,
) -> Value {
    let mut words = line.splitn(5, ' ');
    let verb = words.next().unwrap_or_default();
    let result: Result<Value, String> = match verb {
        "put" => match (words.next(), words.next(), words.next(), words.next()) {
            (Some(node), Some(kind), Some(name), Some(body)) => type_of(kind)
                .and_then(|t| Ok((t, resource(kind, name, body)?)))
                .map(|(t, r)| {
                    let version = r.version.clone();
                    source.put(node, t, r);
                    json!({"ok": true, "version": version})
                }),
            _ => Err("usage: put NODE KIND NAME JSON".into()),
        },
        "del" => match (words.next(), words.next(), words.next()) {
            (Some(node), Some(kind), Some(name)) => {
                type_of(kind).map(|t| json!({"ok": true, "found": source.delete(node, t, name)}))
            }
            _ => Err("usage: del NODE KIND NAME".into()),
        },
        "connections" => Ok(json!({"ok": true, "connections": server.connections()})),
        "metrics" => prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .map(|text| json!({"ok": true, "metrics": text}))
            .map_err(|e| e.to_string()),
        other => Err(format!("unknown command {other:?}")),
    };
    result.unwrap_or_else(|e| json!({"ok": false, "error": e}))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut listen = "127.0.0.1:0".to_string();
    let source = Arc::new(MemorySource::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--demo-node", Some(id)) => demo(&source, &id),
            _ => {
                return Err(format!(
                    "usage: ads_demo_server [--listen ADDR] [--demo-node ID] (at {arg:?})"
                )
                .into())
            }
        }
    }

    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let config = ServerConfig {
        control_plane_id: Some("halyard-demo".into()),
        ..Default::default()
    };
    let server = AdsServer::with_config(source.clone(), config).with_shutdown(shutdown.clone());
    server.register_metrics(&registry)?;

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    let serve = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.clone().into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "quit" {
            break;
        }
        let reply = command(line, &source, &server, &registry);
        stdout.write_all(format!("{reply}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    shutdown.cancel();
    serve.await??;
    Ok(())
}
