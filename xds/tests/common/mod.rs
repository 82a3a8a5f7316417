//! Shared helpers of the ADS integration tests: a server on a real loopback socket, running
//! clients whose applied state can be awaited, and raw tonic streams to look at the wire.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halyard_xds::ads::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use halyard_xds::ads::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use halyard_xds::ads::{
    AdsClient, AdsServer, ClientConfig, ClientStatus, MemorySource, Mode, Node, Resource, State,
    SERVICE_TYPE,
};
use halyard_xds::{Service, ServicePort};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// How long any wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// An ADS server on 127.0.0.1, stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: AdsServer,
    pub token: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves `source` with the server `configure` returns.
    pub async fn start(
        source: Arc<MemorySource>,
        configure: impl FnOnce(AdsServer) -> AdsServer,
    ) -> TestServer {
        let token = CancellationToken::new();
        let server = configure(AdsServer::new(source).with_shutdown(token.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let svc = server.clone().into_service();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop.cancelled_owned(),
                )
                .await
                .expect("serve");
        });
        TestServer {
            addr,
            server,
            token,
            task: Some(task),
        }
    }

    /// Cancels the server and waits until it stopped serving.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("server stops in time")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: "test".to_string(),
        user_agent_name: "halyard-test".to_string(),
        ..Default::default()
    }
}

/// A Service resource named `name` with one port.
pub fn svc(name: &str, port: u32) -> Resource {
    Resource::from_message(
        name,
        &Service {
            name: name.to_string(),
            hosts: vec![name.to_string()],
            ports: vec![ServicePort {
                port,
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

pub async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A running [`AdsClient`] whose applied states can be awaited.
pub struct RunningClient {
    pub applied: watch::Receiver<State>,
    pub status: watch::Receiver<ClientStatus>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<State>,
}

/// Where a client connects; tests change it to move the client to another server.
pub type Target = Arc<Mutex<SocketAddr>>;

pub fn target(addr: SocketAddr) -> Target {
    Arc::new(Mutex::new(addr))
}

/// Starts a client of `types` for `node_id` against `target`; `check` is its applier's verdict.
pub fn spawn_client(
    target: Target,
    node_id: &str,
    mode: Mode,
    types: &[&str],
    check: impl Fn(&State) -> Result<(), String> + Send + 'static,
) -> RunningClient {
    let mut config = ClientConfig::new(node(node_id), types.iter().copied(), mode);
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(500);
    let client = AdsClient::new(config, move || {
        let addr = *target.lock().expect("target lock");
        connect(addr)
    });
    let status = client.status();
    let (tx, applied) = watch::channel(State::new());
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(client.run(
        move |state: &State| {
            check(state)?;
            tx.send_replace(state.clone());
            Ok(())
        },
        stop,
    ));
    RunningClient {
        applied,
        status,
        cancel,
        task,
    }
}

impl RunningClient {
    /// Waits until the applied state satisfies `f`.
    pub async fn wait_state(&mut self, what: &str, f: impl FnMut(&State) -> bool) -> State {
        let got = tokio::time::timeout(DEADLINE, self.applied.wait_for(f))
            .await
            .ok()
            .and_then(|r| r.ok().map(|s| s.clone()));
        match got {
            Some(s) => s,
            None => panic!(
                "timed out waiting for {what}; last state: {:?}",
                names(&self.applied.borrow())
            ),
        }
    }

    /// Waits until the status satisfies `f`.
    pub async fn wait_status(
        &mut self,
        what: &str,
        f: impl FnMut(&ClientStatus) -> bool,
    ) -> ClientStatus {
        let got = tokio::time::timeout(DEADLINE, self.status.wait_for(f))
            .await
            .ok()
            .and_then(|r| r.ok().map(|s| s.clone()));
        match got {
            Some(s) => s,
            None => panic!(
                "timed out waiting for {what}; status: {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Stops the client and returns its final state.
    pub async fn stop(self) -> State {
        self.cancel.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("client stops in time")
            .expect("client task")
    }
}

/// The resource names of every type, for messages and comparisons.
pub fn names(state: &State) -> Vec<(String, Vec<String>)> {
    state
        .iter()
        .map(|(t, m)| (t.clone(), m.keys().cloned().collect()))
        .collect()
}

/// The service names in `state`.
pub fn services(state: &State) -> Vec<String> {
    state
        .get(SERVICE_TYPE)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Polls `f` (e.g. over `connections()`) until it returns `Some`.
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw state-of-the-world stream.
pub struct RawSotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

impl RawSotw {
    pub async fn open(addr: SocketAddr, first: DiscoveryRequest) -> Result<RawSotw, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue first request");
        let mut client =
            AggregatedDiscoveryServiceClient::new(connect(addr).await.expect("connect"));
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(RawSotw { tx, rx })
    }

    pub async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("send request");
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(DEADLINE, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// The status the stream ended with.
    pub async fn end(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(DEADLINE, self.rx.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Err(status)) => return status,
                other => panic!("expected the stream to end with a status, got {other:?}"),
            }
        }
    }
}

/// A raw delta stream.
pub struct RawDelta {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl RawDelta {
    pub async fn open(
        addr: SocketAddr,
        first: DeltaDiscoveryRequest,
    ) -> Result<RawDelta, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue first request");
        let mut client =
            AggregatedDiscoveryServiceClient::new(connect(addr).await.expect("connect"));
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(RawDelta { tx, rx })
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("send request");
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(DEADLINE, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// ACKs `resp`.
    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

/// The names of the resources in a delta response, sorted.
pub fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = resp.resources.iter().map(|r| r.name.clone()).collect();
    v.sort();
    v
}

/// The names of the (wrapped) resources in a SotW response.
pub fn sotw_names(resp: &DiscoveryResponse, node_id: &str) -> Vec<String> {
    let mut v: Vec<String> = resp
        .resources
        .iter()
        .map(|a| {
            Resource::from_sotw_any(&resp.type_url, node_id, a.clone())
                .expect("resource")
                .name
        })
        .collect();
    v.sort();
    v
}
