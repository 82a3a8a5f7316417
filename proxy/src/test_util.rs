//! A whole proxy in-process for tests: configuration from YAML text, listeners on port 0,
//! access-log lines read from a channel, a fake CA giving it a workload identity, an echo app
//! and a small HTTP/1.1 client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use halyard_certs::{CaPolicy, CertificateAuthority, SpiffeId};
use halyard_filters::jwt::JwksStore;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AccessLogTo, Addrs, Options};
use crate::identity::{CertFiles, IdentitySource};
use crate::live::Live;
use crate::snapshot::Snapshot;

/// How long a test waits for anything before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// A snapshot built from a static configuration's YAML.
pub fn snapshot(yaml: &str) -> Snapshot {
    let cfg = halyard_xds::parse_str(yaml, std::path::Path::new("test.yaml")).expect("config");
    let jwks = JwksStore::new(Default::default());
    Snapshot::build(cfg, None, &jwks).expect("snapshot")
}

/// A proxy serving in this process until dropped or stopped.
pub struct TestProxy {
    /// Where it listens.
    pub addrs: Addrs,
    shutdown: CancellationToken,
    logs: Receiver<String>,
    task: Option<JoinHandle<()>>,
    file: PathBuf,
}

impl TestProxy {
    /// Starts a proxy with the static configuration `yaml`, every listener on port 0.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, None).await
    }

    /// As [`start`](Self::start), with a workload identity (see [`FakeCa::identity`]).
    pub async fn start_with(yaml: &str, identity: Option<IdentitySource>) -> Self {
        let file = std::env::temp_dir().join(format!(
            "halyard-test-{}-{}.yaml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&file, yaml).expect("write config");
        let jwks = JwksStore::new(Default::default());
        let live = Live::from_file(&file, jwks).expect("config");
        let any = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let opts = Options {
            outbound: any,
            inbound: any,
            admin: any,
            stats: any,
            admin_address_path: None,
            drain_timeout: Duration::from_secs(2),
            identity,
            xds: None,
        };
        let (tx, logs) = sync_channel(1024);
        let bound = app::bind(opts, live, None, AccessLogTo::Channel(tx))
            .await
            .expect("bind");
        let addrs = bound.addrs;
        let shutdown = bound.shutdown();
        let task = tokio::spawn(async move {
            let _ = bound.serve().await;
        });
        Self {
            addrs,
            shutdown,
            logs,
            task: Some(task),
            file,
        }
    }

    /// The first access-log entry (as JSON) for which `pred` holds, waiting for it.
    pub async fn wait_log(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while Instant::now() < end {
            while let Ok(line) = self.logs.try_recv() {
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
                if pred(&v) {
                    return v;
                }
                seen.push(line);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no access-log entry for {what}; saw:\n{}", seen.join("\n"));
    }

    /// The first Prometheus sample starting with `sample` (name and labels as printed), or 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = get(self.addrs.admin, "admin", "/stats/prometheus")
            .await
            .text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(sample))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Replaces the configuration file (atomically, by rename), as a user editing it would;
    /// the proxy picks it up within its poll interval.
    pub fn reconfigure(&self, yaml: &str) {
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.file).expect("replace config");
    }

    /// Waits until the configuration of version `version` is in force.
    pub async fn wait_version(&self, version: &str) {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            let dump = get(self.addrs.admin, "admin", "/config_dump").await.text();
            let v: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
            if v["version"] == version {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("version {version} not in force within {DEADLINE:?}");
    }

    /// Drains and stops the proxy.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(DEADLINE, t).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// An HTTP/1.1 app that answers every request with JSON describing it: its name, method,
/// path and query, protocol and headers. `?status=N` sets the status, `?delay_ms=N` waits
/// first.
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    /// Starts an echo app named `name` on a free port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| echo(name.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query_num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(ms) = query_num(&req, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = query_num(&req, "status").unwrap_or(200) as u16;
    let headers: BTreeMap<&str, &str> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("")))
        .collect();
    let doc = serde_json::json!({
        "workload": &*name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "protocol": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    Ok(resp)
}

/// A response as a test looks at it.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (the echo app's answer).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request on a new connection to `addr` and reads the whole response.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_send(addr, method, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// As [`send`], with what went wrong instead of a panic (a refused or closed connection).
pub async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let late = |what: &str| format!("no {what} within {DEADLINE:?}");
    let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .map_err(|_| late("connection"))?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request: {e}"))?;
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .map_err(|_| late("response"))?
        .map_err(|e| format!("response: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .map_err(|_| late("body"))?
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A GET to `addr` with the given `Host`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(addr, "GET", path, &[("host", host)]).await
}

/// The static configuration of a sidecar whose app is `echo_port` and which knows one
/// HTTP service, `echo.local`, at that port; `extra` is appended (more services, routes).
pub fn echo_config(echo_port: u16, extra: &str) -> String {
    format!(
        "version: test-1
workload:
  name: app
  namespace: default
  ports:
    - port: 8080
      appAddress: 127.0.0.1:{echo_port}
services:
  - name: echo.default.svc.cluster.local
    hosts: [echo.local]
    ports:
      - port: 80
        protocol: HTTP
        targetPort: {echo_port}
    endpoints:
      - address: 127.0.0.1
    connectTimeout: 1s
{extra}"
    )
}

/// A port nothing listens on, and nothing else in this process can take: a socket bound to
/// it without listening is kept open (connects to it are refused) for the life of the tests.
pub fn dead_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    sock.bind(&addr.into()).expect("bind");
    let port = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address")
        .port();
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(sock);
    port
}

/// The SPIFFE ID of service account `sa` in namespace `default` of `cluster.local`.
pub fn spiffe_id(sa: &str) -> SpiffeId {
    SpiffeId::workload("cluster.local", "default", sa).expect("valid SPIFFE ID")
}

/// A test CA: an in-memory `cluster.local` root issuing workload certificates as PEM files.
pub struct FakeCa {
    ca: CertificateAuthority,
    dir: PathBuf,
}

impl FakeCa {
    /// A new root, its files in a fresh temporary directory (removed on drop).
    pub fn new() -> Self {
        let ca = CertificateAuthority::self_signed("cluster.local", CaPolicy::default())
            .expect("self-signed root");
        let dir = std::env::temp_dir().join(format!(
            "halyard-test-ca-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("CA directory");
        std::fs::write(dir.join("root-cert.pem"), ca.roots_pem().concat()).expect("write root");
        Self { ca, dir }
    }

    /// Issues a certificate for `sa` (see [`spiffe_id`]): the identity of a proxy presenting it.
    pub fn identity(&self, sa: &str) -> IdentitySource {
        self.identity_for(&spiffe_id(sa))
    }

    /// Issues a key (mode 0600) and certificate for `id`: a proxy identity from those files.
    pub fn identity_for(&self, id: &SpiffeId) -> IdentitySource {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = rcgen::KeyPair::generate().expect("workload key");
        let mut params = rcgen::CertificateParams::default();
        let uri = id.as_str().try_into().expect("URI SAN");
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let csr = params.serialize_request(&key).expect("CSR");
        let chain = self
            .ca
            .sign_csr(
                &csr.pem().expect("CSR PEM"),
                id,
                Some(Duration::from_secs(3600)),
            )
            .expect("signed");
        let name = format!(
            "{}-{}",
            id.service_account().unwrap_or("id"),
            fastrand::u32(..)
        );
        let (cert_chain, key_file) = (
            self.dir.join(format!("{name}-chain.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_chain, chain.concat()).expect("write chain");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
            .expect("write key");
        IdentitySource::Files(CertFiles {
            identity: id.clone(),
            cert_chain,
            key: key_file,
            roots: self.dir.join("root-cert.pem"),
            control_identity: None,
        })
    }
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Default for FakeCa {
    fn default() -> Self {
        Self::new()
    }
}
