//! Mutual TLS between workloads, tested as an attacker would: certificates made with the
//! openssl CLI (another CA, expired, not yet valid, another trust domain, valid) against a
//! STRICT inbound port with curl, plaintext and mTLS on one PERMISSIVE port, two sidecars
//! carrying HTTP and TCP over mTLS, a peer with the wrong SPIFFE ID, and certificates rotated
//! every few seconds under h2load's load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_tests::*;

fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// A CA (`halyard-control serve`) with tokens for several service accounts, and proxies that
/// take their identity from it over TLS.
struct Mesh {
    tmp: TempDir,
    ca: Control,
}

impl Mesh {
    fn start(tag: &str, accounts: &[&str]) -> Mesh {
        let tmp = TempDir::new(tag);
        let mut tokens = String::from("# mTLS test tokens\n");
        for sa in accounts {
            tokens.push_str(&format!(
                "- token: tok-{sa}\n  namespace: default\n  serviceAccount: {sa}\n"
            ));
            std::fs::write(
                tmp.path().join(format!("{sa}.token")),
                format!("tok-{sa}\n"),
            )
            .expect("write token");
        }
        std::fs::write(tmp.path().join("tokens.yaml"), tokens).expect("write tokens");
        let ca = Control::start(tmp.path(), &[]);
        Mesh { tmp, ca }
    }

    fn root(&self) -> PathBuf {
        self.ca.root()
    }

    /// The mesh's own root and its key, to sign test certificates with `openssl ca`.
    fn ca_cred(&self) -> Cred {
        Cred {
            cert: self.root(),
            key: self.tmp.path().join("data").join("root-key.pem"),
        }
    }

    /// A proxy running as `sa` (certificate from the CA) with `config`.
    fn proxy(&self, sa: &str, config: &str, extra: &[&str]) -> Proxy {
        let token = self.tmp.path().join(format!("{sa}.token"));
        let root = self.root();
        let mut args = vec![
            "--ca-addr",
            &self.ca.grpc_tls,
            "--ca-root-file",
            s(&root),
            "--ca-token-file",
            s(&token),
            "--service-account",
            sa,
        ];
        args.extend_from_slice(extra);
        Proxy::start_with(config, &args)
    }
}

/// Test certificates made with openssl: keys, a foreign CA, and leaves signed by the mesh's
/// own root key with chosen identities and validity windows (`openssl ca`).
struct Pki {
    dir: PathBuf,
}

/// A key and certificate for curl.
struct Cred {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(dir.join("newcerts")).expect("pki dir");
        std::fs::write(dir.join("index.txt"), "").expect("index");
        std::fs::write(dir.join("serial"), "1000\n").expect("serial");
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n\
             [test]\ndatabase = index.txt\nnew_certs_dir = newcerts\nserial = serial\n\
             default_md = sha256\npolicy = any\nunique_subject = no\ncopy_extensions = none\n\
             [any]\norganizationName = optional\n\
             [leaf]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = serverAuth,clientAuth\nsubjectAltName = ${ENV::SAN}\n",
        )
        .expect("ca.cnf");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A self-signed CA that is not the mesh's.
    fn foreign_ca(&self) -> Cred {
        let (cert, key) = (self.path("foreign-ca.pem"), self.path("foreign-ca-key.pem"));
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                s(&key),
                "-out",
                s(&cert),
                "-subj",
                "/O=foreign",
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Cred { cert, key }
    }

    /// A leaf for `uri` signed by `ca`, valid from `start` to `end` (openssl `YYMMDDHHMMSSZ`
    /// dates; `None` = from now for a day).
    fn leaf(&self, name: &str, uri: &str, ca: &Cred, window: Option<(&str, &str)>) -> Cred {
        let (cert, key, csr) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}-key.pem")),
            self.path(&format!("{name}.csr")),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                s(&key),
                "-out",
                s(&csr),
                "-subj",
                &format!("/O={name}"),
            ],
        );
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-extensions",
            "leaf",
            "-cert",
            s(&ca.cert),
            "-keyfile",
            s(&ca.key),
            "-in",
            s(&csr),
            "-out",
            s(&cert),
        ];
        match window {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "1"]),
        }
        let out = std::process::Command::new("openssl")
            .args(&args)
            .env("SAN", format!("URI:{uri}"))
            .current_dir(&self.dir)
            .output()
            .expect("run openssl ca");
        assert!(
            out.status.success(),
            "openssl ca: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cred { cert, key }
    }
}

/// `https://ADDR/PATH` with the client credential `cred` (none: no client certificate). The
/// server's certificate carries only a SPIFFE ID, which curl cannot check, hence `-k`.
fn mtls_curl(
    addr: std::net::SocketAddr,
    path: &str,
    cred: Option<&Cred>,
    extra: &[&str],
) -> CurlOut {
    let url = format!("https://{addr}{path}");
    let mut args: Vec<&str> = vec!["-k"];
    if let Some(c) = cred {
        args.extend(["--cert", s(&c.cert), "--key", s(&c.key)]);
    }
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// A workload config: `sa`'s echo app behind the inbound port with `mode` for every port.
fn server_config(sa: &str, mode: &str, http_port: u16, tcp_port: Option<u16>) -> String {
    let tcp = tcp_port.map_or(String::new(), |p| {
        format!("    - {{port: {p}, protocol: TCP, appAddress: '127.0.0.1:{p}'}}\n")
    });
    format!(
        "version: {sa}-1
workload:
  name: {sa}
  namespace: default
  serviceAccount: {sa}
  mtls: {mode}
  ports:
    - {{port: {http_port}, protocol: HTTP, appAddress: '127.0.0.1:{http_port}'}}
{tcp}"
    )
}

fn tls_failures(p: &Proxy, listener: &str, reason: &str) -> f64 {
    p.metric(&format!(
        "halyard_tls_failures_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn strict_port_refuses_every_bad_client_and_tells_the_app_who_called() {
    let mesh = Mesh::start("mtls-strict", &["reviews"]);
    let echo = Echo::start("reviews");
    let reviews = mesh.proxy(
        "reviews",
        &server_config("reviews", "STRICT", echo.port(), None),
        &[],
    );
    let pki = Pki::new(mesh.tmp.path());
    let mesh_ca = mesh.ca_cred();
    let foreign = pki.foreign_ca();
    let inbound = reviews.inbound;

    // Plaintext on a STRICT port: the connection is closed without an answer.
    let plain = curl(&[&url(inbound, "/plain")]);
    assert_eq!(plain.status, 0, "plaintext must be refused: {plain:?}");
    // TLS without a client certificate.
    let none = mtls_curl(inbound, "/none", None, &[]);
    assert_eq!(
        none.status, 0,
        "no client certificate must be refused: {none:?}"
    );

    let cases = [
        (
            "foreign",
            pki.leaf("foreign", &id("frontend"), &foreign, None),
            "untrusted",
        ),
        (
            "expired",
            pki.leaf(
                "expired",
                &id("frontend"),
                &mesh_ca,
                Some(("20200101000000Z", "20200102000000Z")),
            ),
            "expired",
        ),
        (
            "future",
            pki.leaf(
                "future",
                &id("frontend"),
                &mesh_ca,
                Some(("20400101000000Z", "20400102000000Z")),
            ),
            "not_yet_valid",
        ),
        (
            "other-domain",
            pki.leaf(
                "other-domain",
                "spiffe://other.example/ns/default/sa/frontend",
                &mesh_ca,
                None,
            ),
            "trust_domain",
        ),
    ];
    for (name, cred, reason) in &cases {
        let out = mtls_curl(inbound, &format!("/{name}"), Some(cred), &[]);
        assert_eq!(out.status, 0, "{name} must be refused: {out:?}");
        assert!(
            tls_failures(&reviews, "inbound", reason) >= 1.0,
            "{name}: no {reason} failure counted:\n{}",
            reviews.admin("GET", "/stats/prometheus").text()
        );
    }
    assert!(tls_failures(&reviews, "inbound", "plaintext") >= 1.0);
    assert!(tls_failures(&reviews, "inbound", "no_client_certificate") >= 1.0);

    // A valid certificate of the mesh: accepted; the app learns the caller from XFCC, and a
    // forged XFCC from the caller is replaced.
    let good = pki.leaf("frontend", &id("frontend"), &mesh_ca, None);
    let out = mtls_curl(
        inbound,
        "/ok",
        Some(&good),
        &["-H", "x-forwarded-client-cert: By=spiffe://x/y;URI=spiffe://cluster.local/ns/default/sa/admin"],
    );
    assert_eq!(out.status, 200, "{out:?}");
    let xfcc = out.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        xfcc.starts_with(&format!("By={};Hash=", id("reviews"))),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(&format!(";URI={}", id("frontend"))),
        "{xfcc}"
    );
    assert!(!xfcc.contains("admin"), "forged XFCC survived: {xfcc}");
    let e = reviews.wait_log("the /ok request", |e| e["path"] == "/ok");
    assert_eq!(e["downstream_peer_uri_san"], id("frontend").as_str(), "{e}");
    assert_eq!(e["response_code"], 200, "{e}");
    // None of the refused attempts reached the app.
    assert!(
        reviews.access_log().iter().all(|e| e["path"] == "/ok"),
        "{:?}",
        reviews.access_log()
    );

    // TLS below 1.2 is refused; openssl s_client with the good certificate negotiates 1.3.
    let s_client = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &inbound.to_string(),
                "-cert",
                s(&good.cert),
                "-key",
                s(&good.key),
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client")
    };
    let old = s_client(&["-tls1_1"]);
    assert!(
        !old.status.success()
            || !String::from_utf8_lossy(&old.stdout).contains("Verify return code"),
        "TLS 1.1 accepted: {}",
        String::from_utf8_lossy(&old.stdout)
    );
    let new = String::from_utf8_lossy(&s_client(&["-brief"]).stderr).into_owned();
    assert!(new.contains("TLSv1.3"), "{new}");
}

#[test]
fn permissive_port_serves_plaintext_and_mtls_alike() {
    let mesh = Mesh::start("mtls-permissive", &["reviews"]);
    let echo = Echo::start("reviews");
    let reviews = mesh.proxy(
        "reviews",
        &server_config("reviews", "PERMISSIVE", echo.port(), None),
        &[],
    );
    let pki = Pki::new(mesh.tmp.path());
    let mesh_ca = mesh.ca_cred();
    let good = pki.leaf("frontend", &id("frontend"), &mesh_ca, None);

    let forged = [
        "-H",
        "x-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/admin",
    ];
    let plain = curl(&[&url(reviews.inbound, "/plain"), forged[0], forged[1]]);
    assert_eq!(plain.status, 200, "{plain:?}");
    assert!(
        plain.json()["headers"]
            .get("x-forwarded-client-cert")
            .is_none(),
        "{}",
        plain.body
    );

    let tls = mtls_curl(reviews.inbound, "/tls", Some(&good), &forged);
    assert_eq!(tls.status, 200, "{tls:?}");
    let xfcc = tls.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(xfcc.ends_with(&format!("URI={}", id("frontend"))), "{xfcc}");

    // HTTP/2 over TLS (ALPN h2) works too.
    let h2 = mtls_curl(reviews.inbound, "/h2", Some(&good), &["--http2"]);
    assert_eq!(h2.status, 200, "{h2:?}");
    let e = reviews.wait_log("the /h2 request", |e| e["path"] == "/h2");
    assert_eq!(e["protocol"], "HTTP/2", "{e}");
    let by = |sec: &str| {
        reviews
            .metric(&format!(
                "halyard_inbound_connections_total{{security=\"{sec}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert!(by("plaintext") >= 1.0 && by("mutual_tls") >= 2.0);
}

/// A plain TCP echo server (one thread per connection) for the opaque-TCP path.
fn tcp_echo() -> (u16, Arc<AtomicBool>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = match s.try_clone() {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    (port, stop)
}

/// The client sidecar's config: `reviews` over mTLS to the reviews sidecar (HTTP and TCP),
/// and `impostor`, whose endpoint claims identity `ratings` but is the same reviews sidecar.
fn client_config(reviews: &Proxy, http_port: u16, tcp_port: u16) -> String {
    let sidecar = reviews.inbound;
    format!(
        "version: frontend-1
workload:
  name: frontend
  namespace: default
  serviceAccount: frontend
services:
  - name: reviews.default.svc.cluster.local
    hosts: [reviews.local]
    addresses: [240.0.0.10]
    ports:
      - {{port: 80, protocol: HTTP, targetPort: {http_port}}}
      - {{port: 9000, protocol: TCP, targetPort: {tcp_port}}}
    endpoints:
      - {{address: 127.0.0.1, identity: '{}', sidecarAddress: '{sidecar}'}}
    connectTimeout: 2s
  - name: impostor.default.svc.cluster.local
    hosts: [impostor.local]
    ports: [{{port: 80, protocol: HTTP, targetPort: {http_port}}}]
    endpoints:
      - {{address: 127.0.0.1, identity: '{}', sidecarAddress: '{sidecar}'}}
    connectTimeout: 2s
",
        id("reviews"),
        id("ratings"),
    )
}

#[test]
fn two_sidecars_carry_http_and_tcp_over_mtls_and_refuse_the_wrong_peer() {
    let mesh = Mesh::start("mtls-pair", &["reviews", "frontend"]);
    let echo = Echo::start("reviews");
    let (tcp_port, stop) = tcp_echo();
    let reviews = mesh.proxy(
        "reviews",
        &server_config("reviews", "STRICT", echo.port(), Some(tcp_port)),
        &[],
    );
    let frontend = mesh.proxy(
        "frontend",
        &client_config(&reviews, echo.port(), tcp_port),
        &[],
    );

    // HTTP/1.1 from the app crosses as HTTP/2 on one pooled mTLS connection, and reaches the
    // app as HTTP/1.1 again, with the caller's identity in XFCC.
    for i in 0..20 {
        let out = curl(&[
            "-H",
            "Host: reviews.local",
            &url(frontend.outbound, &format!("/r{i}")),
        ]);
        assert_eq!(out.status, 200, "{out:?}");
        let doc = out.json();
        assert_eq!(doc["protocol"], "HTTP/1.1", "{doc}");
        let xfcc = doc["headers"]["x-forwarded-client-cert"]
            .as_str()
            .unwrap_or_default();
        assert!(xfcc.ends_with(&format!("URI={}", id("frontend"))), "{xfcc}");
        assert!(doc["headers"].get("halyard-orig-proto").is_none(), "{doc}");
    }
    let e = reviews.wait_log("/r19 at reviews", |e| e["path"] == "/r19");
    assert_eq!(e["protocol"], "HTTP/2", "{e}");
    assert_eq!(e["downstream_peer_uri_san"], id("frontend").as_str(), "{e}");
    let mtls_conns = reviews
        .metric("halyard_inbound_connections_total{security=\"mutual_tls\"}")
        .unwrap_or(0.0);
    assert_eq!(
        mtls_conns, 1.0,
        "20 requests should share one sidecar connection"
    );

    // Opaque bytes inside mTLS: by name through CONNECT, 1 MiB each way.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let back = connect_round_trip(frontend.outbound, "reviews.local:9000", &payload);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "TCP bytes changed on the way");
    // Between the sidecars the tunnel is an HTTP/2 CONNECT, which reviews' policy answers.
    let e = reviews.wait_log("the tunnel at reviews", |e| e["method"] == "CONNECT");
    assert_eq!(e["protocol"], "HTTP/2", "{e}");
    assert_eq!(e["bytes_received"], payload.len() as u64, "{e}");

    // A peer that cannot prove the expected identity: 503 UF, reason logged and counted.
    let out = curl(&[
        "-H",
        "Host: impostor.local",
        &url(frontend.outbound, "/who"),
    ]);
    assert_eq!(out.status, 503, "{out:?}");
    let e = frontend.wait_log("the impostor request", |e| e["path"] == "/who");
    assert!(
        e["response_flags"].as_str().unwrap_or("").contains("UF"),
        "{e}"
    );
    assert_eq!(
        e["upstream_transport_failure_reason"], "identity_mismatch",
        "{e}"
    );
    assert!(tls_failures(&frontend, "outbound", "identity_mismatch") >= 1.0);
    assert!(!reviews.access_log().iter().any(|e| e["path"] == "/who"));

    // A client sidecar without any identity cannot reach a workload that requires mTLS.
    let anonymous = Proxy::start(&client_config(&reviews, echo.port(), tcp_port));
    let out = curl(&[
        "-H",
        "Host: reviews.local",
        &url(anonymous.outbound, "/anon"),
    ]);
    assert_eq!(out.status, 503, "{out:?}");
    let e = anonymous.wait_log("the anonymous request", |e| e["path"] == "/anon");
    assert_eq!(
        e["upstream_transport_failure_reason"], "no_certificate",
        "{e}"
    );
    stop.store(true, Ordering::Relaxed);
}

/// Sends `payload` through `CONNECT target` on the proxy at `proxy`, half-closes, and returns
/// what came back.
fn connect_round_trip(proxy: std::net::SocketAddr, target: &str, payload: &[u8]) -> Vec<u8> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    assert!(status.contains(" 200"), "CONNECT answered {status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let writer = {
        let mut s = s.try_clone().expect("clone");
        let payload = payload.to_vec();
        std::thread::spawn(move || {
            s.write_all(&payload).expect("send");
            s.shutdown(std::net::Shutdown::Write).expect("half-close");
        })
    };
    let mut back = Vec::new();
    r.read_to_end(&mut back).expect("read back");
    writer.join().expect("writer");
    back
}

#[test]
fn certificates_rotate_every_few_seconds_under_load_without_a_failed_request() {
    let mesh = Mesh::start("mtls-rotate", &["reviews", "frontend"]);
    let echo = Echo::start("reviews");
    let (tcp_port, stop) = tcp_echo();
    let ttl = ["--cert-ttl", "4s"];
    let reviews = mesh.proxy(
        "reviews",
        &server_config("reviews", "STRICT", echo.port(), Some(tcp_port)),
        &ttl,
    );
    let frontend = mesh.proxy(
        "frontend",
        &client_config(&reviews, echo.port(), tcp_port),
        &ttl,
    );
    let renewals = |p: &Proxy| {
        p.metric("halyard_cert_renewals_total{result=\"ok\"}")
            .unwrap_or(0.0)
    };
    let start_renewals = (renewals(&reviews), renewals(&frontend));

    // New mTLS handshakes all the time: every TCP round trip is a new sidecar connection.
    let running = Arc::new(AtomicBool::new(true));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let churn = {
        let (running, ok, failed) = (running.clone(), ok.clone(), failed.clone());
        let target = frontend.outbound;
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                match std::panic::catch_unwind(|| {
                    connect_round_trip(target, "reviews.local:9000", b"ping")
                }) {
                    Ok(b) if b == b"ping" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    // And steady HTTP load through the pooled HTTP/2 connection, from h2load.
    let began = Instant::now();
    let h2load = std::process::Command::new("h2load")
        .args([
            "--h1",
            "-c",
            "4",
            "-D",
            "10",
            "-H",
            ":authority: reviews.local",
        ])
        .arg(url(frontend.outbound, "/load"))
        .output()
        .expect("run h2load (apt-get install nghttp2-client)");
    running.store(false, Ordering::Relaxed);
    churn.join().expect("churn thread");
    let report = String::from_utf8_lossy(&h2load.stdout).into_owned();
    assert!(h2load.status.success(), "h2load: {report}");
    let line = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no summary: {report}"));
    // "requests: 4000 total, 4000 started, 4000 done, 4000 succeeded, 0 failed, 0 errored, ..."
    let field = |name: &str| -> u64 {
        line.trim_start_matches("requests:")
            .split(',')
            .find_map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next()?.parse().ok()?;
                (words.next()? == name).then_some(n)
            })
            .unwrap_or_else(|| panic!("no `{name}` in {line}"))
    };
    let status = report
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        began.elapsed() >= Duration::from_secs(9),
        "h2load ended early: {report}"
    );
    assert_eq!(field("failed"), 0, "{report}");
    assert_eq!(field("errored"), 0, "{report}");
    assert!(field("succeeded") >= 2000, "too little load: {report}");
    assert!(status.contains("0 3xx, 0 4xx, 0 5xx"), "{status}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "TCP round trips failed");
    assert!(ok.load(Ordering::Relaxed) >= 100, "too few new connections");
    // Each side renewed at least twice during the run (4 s lifetime, renewal at about half).
    assert!(
        renewals(&reviews) - start_renewals.0 >= 2.0,
        "reviews did not rotate"
    );
    assert!(
        renewals(&frontend) - start_renewals.1 >= 2.0,
        "frontend did not rotate"
    );
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "rotation: {line}; {} TCP round trips over new mTLS connections",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn disable_port_hands_tls_to_the_app_untouched() {
    let mesh = Mesh::start("mtls-disable", &["reviews"]);
    let tmp = TempDir::new("mtls-disable-app");
    // The app terminates TLS itself: openssl s_server with its own self-signed certificate.
    let (cert, key) = (tmp.path().join("app.pem"), tmp.path().join("app-key.pem"));
    openssl(
        tmp.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&cert),
            "-subj",
            "/CN=app.example",
            "-days",
            "1",
        ],
    );
    let port = free_port();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .args(["-cert", s(&cert), "-key", s(&key)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _app = Proc::spawn("openssl s_server", &mut cmd);
    wait_for("openssl s_server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let reviews = mesh.proxy(
        "reviews",
        &server_config("reviews", "DISABLE", port, None),
        &[],
    );

    // curl verifies the app's own certificate: the proxy did not touch the TLS session.
    let out = curl(&[
        "--cacert",
        s(&cert),
        "--resolve",
        &format!("app.example:{}:127.0.0.1", reviews.inbound.port()),
        &format!("https://app.example:{}/", reviews.inbound.port()),
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    assert!(out.body.contains("s_server"), "{}", out.body);
    let passthrough = reviews
        .metric("halyard_inbound_connections_total{security=\"passthrough\"}")
        .unwrap_or(0.0);
    assert!(passthrough >= 1.0);
}
