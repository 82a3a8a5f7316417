//! The planners as tables: a request head and a connection in, the plan summarised as one
//! line out, so each case reads as what a user configured and what the proxy decided.

use std::net::SocketAddr;

use ::http::{Method, Request, Version};

use super::*;
use crate::ctx::ConnInfo;
use crate::ctx::ListenerKind;
use crate::snapshot::Snapshot;
use crate::upstream::HttpVersion;

const SERVICES: &str = "
workload:
  name: w
  ports:
    - {port: 8080, protocol: HTTP, appAddress: '127.0.0.1:18080'}
    - {port: 9090, protocol: GRPC}
    - {port: 7070}
services:
  - name: web
    hosts: [web.local]
    addresses: [240.0.0.1]
    ports: [{port: 80, protocol: HTTP, targetPort: 8080}, {port: 9090, protocol: GRPC}]
    endpoints: [{address: 127.0.0.1}]
  - name: api
    hosts: [api.local]
    ports: [{port: 80}]
    endpoints:
      - {address: 10.0.0.1, labels: {version: v1}, identity: 'spiffe://cluster.local/ns/default/sa/api', sidecarAddress: '127.0.0.1:15006'}
      - {address: 10.0.0.2, labels: {version: v2}, identity: 'spiffe://cluster.local/ns/default/sa/api', sidecarAddress: '127.0.0.1:15007'}
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  - name: h2
    hosts: [h2.local]
    ports: [{port: 80, protocol: HTTP2}]
    endpoints: [{address: 127.0.0.3}]
  - name: empty
    hosts: [empty.local]
    ports: [{port: 80}]
  - name: db
    hosts: [db.local]
    addresses: [240.0.0.2]
    ports: [{port: 9000, protocol: TCP, targetPort: 7000}, {port: 9001, protocol: TCP}]
    endpoints: [{address: 127.0.0.4}]
    tcpIdleTimeout: 1s
  - name: db-canary
    ports: [{port: 9000, protocol: TCP}]
    endpoints: [{address: 127.0.0.5}]
  - name: alpha
    hosts: [alpha.internal]
    ports: [{port: 443, protocol: TCP}]
    endpoints: [{address: 127.0.0.6}]
  - name: beta
    hosts: [beta.internal]
    ports: [{port: 443, protocol: TCP}]
    endpoints: [{address: 127.0.0.7}]
virtualHosts:
  - name: db
    hosts: [db.local]
    tcpRoutes:
      - name: canary
        match: [{port: 9001}]
        destinations: [{service: db, port: 9001, weight: 50}, {service: db-canary, port: 9000, weight: 50}]
  - name: external
    hosts: ['*.example.com']
    tlsRoutes:
      - name: to-alpha
        match: [{sniHosts: [a.example.com]}]
        destinations: [{service: alpha}]
      - name: rest
        match: [{sniHosts: ['*.example.com']}]
        destinations: [{service: beta}]
  - name: api
    hosts: [api.local]
    routes:
      - name: split
        match: [{uri: {prefix: /split}}]
        destinations: [{service: api, subset: v1, weight: 90}, {service: api, subset: v2, weight: 10}]
      - name: moved
        match: [{uri: {exact: /old}}]
        redirect: {uri: /new}
      - name: faulty
        match: [{uri: {prefix: /fault}}]
        fault: {abort: {httpStatus: 418, percent: 100}}
        route: {service: api}
      - name: slow
        match: [{uri: {prefix: /slow}}]
        route: {service: api}
        timeout: 300ms
        retries: {attempts: 5, retryOn: [5xx]}
      - name: canary
        match: [{headers: {x-canary: {exact: '1'}}}]
        route: {service: api, subset: v2}
      - name: posts
        match: [{method: {exact: POST}, uri: {prefix: /write}}]
        route: {service: api, subset: v1}
        retries: {attempts: 0}
      - name: rest
        route: {service: api}
";

fn snapshot(extra: &str) -> Snapshot {
    crate::test_util::snapshot(&format!("{SERVICES}{extra}"))
}

/// One line for a target.
fn describe_target(t: &Target<'_>) -> String {
    let cluster = match (t.cluster, t.is_passthrough()) {
        (Some(c), _) => c.name.to_string(),
        (None, true) => "passthrough".into(),
        (None, false) => "app".into(),
    };
    let eps: Vec<&str> = t
        .endpoints
        .as_slice()
        .iter()
        .map(|e| &*e.authority)
        .collect();
    format!(
        "{cluster} port={} eps={}",
        t.service_port.map_or("-".into(), |p| p.to_string()),
        if eps.is_empty() {
            "-".into()
        } else {
            eps.join(",")
        },
    )
}

/// One line for a plan: what was decided, in the order a reader checks it.
fn describe(plan: &HttpPlan<'_>) -> String {
    let mut out = String::new();
    if let Some(m) = plan.route {
        out.push_str(&format!("route={} ", m.route.name));
    }
    if plan.fault.is_some() {
        out.push_str("fault ");
    }
    match &plan.step {
        Step::Reply(l) => {
            out.push_str(&format!("reply {} {}", l.status.as_u16(), l.flags));
            if let Some(location) = l.headers.as_ref().and_then(|h| h.get("location")) {
                out.push_str(&format!(" location={}", location.to_str().unwrap_or("?")));
            }
        }
        Step::Forward(f) => {
            out.push_str(&format!(
                "{} {}",
                describe_target(&f.target),
                match f.version {
                    HttpVersion::Http1 => "h1",
                    HttpVersion::Http2 => "h2",
                },
            ));
            if f.upgrade {
                out.push_str(" upgrade");
            }
            out.push_str(&format!(" retries={}", f.retry.attempts));
            if let Some(t) = f.timeout {
                out.push_str(&format!(" timeout={}ms", t.as_millis()));
            }
            if f.peer_metadata {
                out.push_str(" meta");
            }
        }
    }
    out
}

/// A request head and where it came from.
struct Case {
    name: &'static str,
    method: Method,
    uri: &'static str,
    version: Version,
    headers: Vec<(&'static str, &'static str)>,
    orig_dst: Option<&'static str>,
    orig_h1: bool,
    roll: u64,
}

fn case(name: &'static str, uri: &'static str) -> Case {
    Case {
        name,
        method: Method::GET,
        uri,
        version: Version::HTTP_11,
        headers: Vec::new(),
        orig_dst: None,
        orig_h1: false,
        roll: 0,
    }
}

impl Case {
    fn host(mut self, h: &'static str) -> Self {
        self.headers.push(("host", h));
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn dst(mut self, d: &'static str) -> Self {
        self.orig_dst = Some(d);
        self
    }
    fn h2(mut self) -> Self {
        self.version = Version::HTTP_2;
        self
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn orig_h1(mut self) -> Self {
        self.orig_h1 = true;
        self
    }
    fn roll(mut self, r: u64) -> Self {
        self.roll = r;
        self
    }

    fn request(&self) -> Request<()> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.uri)
            .version(self.version);
        for (k, v) in &self.headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn conn(&self, listener: ListenerKind) -> ConnInfo {
        let orig = self
            .orig_dst
            .map(|d| d.parse::<SocketAddr>().expect("orig dst"));
        let mut c = ConnInfo::new(listener, "127.0.0.1:40000".parse().expect("peer"), orig);
        if listener == ListenerKind::Inbound {
            c.dst_port = orig.map(|d| d.port());
        }
        c
    }
}

fn run_outbound(snap: &Snapshot, c: &Case) -> String {
    let req = c.request();
    match outbound(
        snap,
        &req,
        &c.conn(ListenerKind::Outbound),
        c.orig_h1,
        c.roll,
    ) {
        Ok(p) => describe(&p),
        Err(l) => format!("error {} {}", l.status.as_u16(), l.flags),
    }
}

fn run_inbound(snap: &Snapshot, c: &Case) -> String {
    let req = c.request();
    match inbound(snap, &req, &c.conn(ListenerKind::Inbound), c.orig_h1) {
        Ok(p) => describe(&p),
        Err(l) => format!("error {} {}", l.status.as_u16(), l.flags),
    }
}

/// Runs each case; `$API` in an expectation stands for both `api` endpoints.
fn check(table: Vec<(Case, &str)>, run: impl Fn(&Case) -> String) {
    let mut failures = Vec::new();
    for (c, want) in &table {
        let want = want.replace("$API", API_ALL);
        let got = run(c);
        if got != want {
            failures.push(format!("{}:\n   want {want}\n    got {got}", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const API_ALL: &str = "10.0.0.1:80,10.0.0.2:80";

#[test]
fn outbound_hosts_ports_and_versions() {
    let snap = snapshot("");
    let table = vec![
        (
            case("Host names the service", "/").host("web.local"),
            "route=web web port=80 eps=127.0.0.1:8080 h1 retries=2",
        ),
        (
            case("Host with the service port", "/").host("web.local:80"),
            "route=web web port=80 eps=127.0.0.1:8080 h1 retries=2",
        ),
        (
            case("Host in upper case", "/").host("WEB.Local"),
            "route=web web port=80 eps=127.0.0.1:8080 h1 retries=2",
        ),
        (
            case("Host port picks the gRPC port: HTTP/2", "/").host("web.local:9090"),
            "route=web web port=9090 eps=127.0.0.1:9090 h2 retries=2",
        ),
        (
            case("no port in Host: the original destination's port", "/")
                .host("web.local")
                .dst("10.9.9.9:9090"),
            "route=web web port=9090 eps=127.0.0.1:9090 h2 retries=2",
        ),
        (
            case(
                "absolute URI authority wins over Host",
                "http://web.local:9090/",
            )
            .host("api.local"),
            "route=web web port=9090 eps=127.0.0.1:9090 h2 retries=2",
        ),
        (
            case("HTTP/2 client to a declared HTTP port: HTTP/1.1", "/")
                .host("web.local")
                .h2(),
            "route=web web port=80 eps=127.0.0.1:8080 h1 retries=2",
        ),
        (
            case("HTTP/2 client to an undeclared port: HTTP/2", "/")
                .host("api.local")
                .h2(),
            "route=rest api port=80 eps=$API h2 retries=2 meta",
        ),
        (
            case("HTTP/1.1 client to an undeclared port: HTTP/1.1", "/").host("api.local"),
            "route=rest api port=80 eps=$API h1 retries=2 meta",
        ),
        (
            case("a sidecar's HTTP/1.1 marker keeps HTTP/1.1", "/")
                .host("api.local")
                .h2()
                .orig_h1(),
            "route=rest api port=80 eps=$API h1 retries=2 meta",
        ),
        (
            case("HTTP/1.1 client to a declared HTTP2 port: HTTP/2", "/").host("h2.local"),
            "route=h2 h2 port=80 eps=127.0.0.3:80 h2 retries=2",
        ),
        (
            case("WebSocket upgrade stays HTTP/1.1 even to HTTP2", "/ws")
                .host("h2.local")
                .header("connection", "upgrade")
                .header("upgrade", "websocket"),
            "route=h2 h2 port=80 eps=127.0.0.3:80 h1 upgrade retries=2",
        ),
        (
            case("mesh endpoints get peer metadata", "/x").host("api.local"),
            "route=rest api port=80 eps=$API h1 retries=2 meta",
        ),
        (
            case(
                "a service without endpoints is still planned (UH when sent)",
                "/",
            )
            .host("empty.local"),
            "route=empty empty port=80 eps=- h1 retries=2",
        ),
        (case("no Host and no authority: 400", "/"), "error 400 DPE"),
    ];
    check(table, |c| run_outbound(&snap, c));
}

#[test]
fn outbound_original_destination_and_passthrough() {
    let allow = snapshot("");
    let only = snapshot("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n");
    let table = vec![
        (
            case("service address:port without a known Host", "/")
                .host("unknown.example")
                .dst("240.0.0.1:80"),
            "web port=80 eps=127.0.0.1:8080 h1 retries=2",
        ),
        (
            case("service address, other port", "/")
                .host("unknown.example")
                .dst("240.0.0.1:9090"),
            "web port=9090 eps=127.0.0.1:9090 h2 retries=2",
        ),
        (
            case("Host routes before the original destination", "/")
                .host("web.local")
                .dst("240.0.0.1:9090"),
            "route=web web port=9090 eps=127.0.0.1:9090 h2 retries=2",
        ),
        (
            case("ALLOW_ANY: unknown host to its original destination", "/")
                .host("unknown.example")
                .dst("10.1.2.3:8000"),
            "passthrough port=- eps=10.1.2.3:8000 h1 retries=2",
        ),
        (
            case("ALLOW_ANY passthrough keeps HTTP/2", "/")
                .host("unknown.example")
                .dst("10.1.2.3:8000")
                .h2(),
            "passthrough port=- eps=10.1.2.3:8000 h2 retries=2",
        ),
        (
            case("ALLOW_ANY without an original destination: NR", "/").host("unknown.example"),
            "reply 502 NR",
        ),
    ];
    check(table, |c| run_outbound(&allow, c));
    let table = vec![
        (
            case("REGISTRY_ONLY: unknown host is NR", "/")
                .host("unknown.example")
                .dst("10.1.2.3:8000"),
            "reply 502 NR",
        ),
        (
            case("REGISTRY_ONLY: a known service still routes", "/")
                .host("web.local")
                .dst("10.1.2.3:8000"),
            "route=web web port=80 eps=127.0.0.1:8080 h1 retries=2",
        ),
        (
            case("REGISTRY_ONLY: service address routes", "/")
                .host("unknown.example")
                .dst("240.0.0.1:80"),
            "web port=80 eps=127.0.0.1:8080 h1 retries=2",
        ),
    ];
    check(table, |c| run_outbound(&only, c));
}

#[test]
fn outbound_routes_subsets_weights_and_policies() {
    let snap = snapshot("");
    let table = vec![
        (
            case("weight 90: roll 0 lands on v1", "/split").host("api.local"),
            "route=split api|v1 port=80 eps=10.0.0.1:80 h1 retries=2 meta",
        ),
        (
            case("weight 90: roll 89 lands on v1", "/split")
                .host("api.local")
                .roll(89),
            "route=split api|v1 port=80 eps=10.0.0.1:80 h1 retries=2 meta",
        ),
        (
            case("weight 10: roll 90 lands on v2", "/split")
                .host("api.local")
                .roll(90),
            "route=split api|v2 port=80 eps=10.0.0.2:80 h1 retries=2 meta",
        ),
        (
            case("weight 10: roll 199 is 99 of 100: v2", "/split/x?q=1")
                .host("api.local")
                .roll(199),
            "route=split api|v2 port=80 eps=10.0.0.2:80 h1 retries=2 meta",
        ),
        (
            case("exact path redirect", "/old").host("api.local"),
            "route=moved reply 301 - location=http://api.local/new",
        ),
        (
            case("redirect keeps the request's port", "/old").host("API.local:8080"),
            "route=moved reply 301 - location=http://api.local:8080/new",
        ),
        (
            case("exact match does not take a longer path", "/old/x").host("api.local"),
            "route=rest api port=80 eps=$API h1 retries=2 meta",
        ),
        (
            case("fault comes with the forward", "/fault").host("api.local"),
            "route=faulty fault api port=80 eps=$API h1 retries=2 meta",
        ),
        (
            case("route timeout and retries", "/slow").host("api.local"),
            "route=slow api port=80 eps=$API h1 retries=5 timeout=300ms meta",
        ),
        (
            case("header match picks the canary", "/any")
                .host("api.local")
                .header("x-canary", "1"),
            "route=canary api|v2 port=80 eps=10.0.0.2:80 h1 retries=2 meta",
        ),
        (
            case("header value differs: falls through", "/any")
                .host("api.local")
                .header("x-canary", "2"),
            "route=rest api port=80 eps=$API h1 retries=2 meta",
        ),
        (
            case("method and prefix: POST", "/write/1")
                .host("api.local")
                .method(Method::POST),
            "route=posts api|v1 port=80 eps=10.0.0.1:80 h1 retries=0 meta",
        ),
        (
            case("method and prefix: GET falls through", "/write/1").host("api.local"),
            "route=rest api port=80 eps=$API h1 retries=2 meta",
        ),
    ];
    check(table, |c| run_outbound(&snap, c));
}

#[test]
fn inbound_port_to_app() {
    let snap = snapshot("");
    let table = vec![
        (
            case("declared HTTP port to its app address", "/").dst("10.0.0.5:8080"),
            "app port=8080 eps=127.0.0.1:18080 h1 retries=0",
        ),
        (
            case("declared gRPC port: HTTP/2 to localhost", "/").dst("10.0.0.5:9090"),
            "app port=9090 eps=127.0.0.1:9090 h2 retries=0",
        ),
        (
            case("undeclared port: the client's HTTP/2", "/")
                .dst("10.0.0.5:7070")
                .h2(),
            "app port=7070 eps=127.0.0.1:7070 h2 retries=0",
        ),
        (
            case(
                "undeclared port: HTTP/1.1 marker from the peer sidecar",
                "/",
            )
            .dst("10.0.0.5:7070")
            .h2()
            .orig_h1(),
            "app port=7070 eps=127.0.0.1:7070 h1 retries=0",
        ),
        (
            case("not redirected: the first port", "/"),
            "app port=8080 eps=127.0.0.1:18080 h1 retries=0",
        ),
        (
            case("unknown port: the first port", "/").dst("10.0.0.5:1234"),
            "app port=8080 eps=127.0.0.1:18080 h1 retries=0",
        ),
        (
            case("inbound ignores outbound routes", "/old")
                .host("api.local")
                .dst("10.0.0.5:8080"),
            "app port=8080 eps=127.0.0.1:18080 h1 retries=0",
        ),
    ];
    check(table, |c| run_inbound(&snap, c));
    let bare = crate::test_util::snapshot("workload: {name: w}\n");
    check(
        vec![(
            case("a workload without ports: NR", "/").dst("10.0.0.5:8080"),
            "error 502 NR",
        )],
        |c| run_inbound(&bare, c),
    );
}

fn run_tcp(
    snap: &Snapshot,
    listener: ListenerKind,
    dst: Option<&str>,
    sni: Option<&str>,
    roll: u64,
) -> String {
    let orig = dst.map(|d| d.parse::<SocketAddr>().expect("orig dst"));
    let mut c = ConnInfo::new(listener, "127.0.0.1:40000".parse().expect("peer"), orig);
    c.sni = sni.map(Into::into);
    if listener == ListenerKind::Inbound {
        c.dst_port = orig.map(|d| d.port());
    }
    match tcp(snap, &c, roll) {
        Ok(t) => format!("{} idle={}s", describe_target(&t), t.idle.as_secs()),
        Err(l) => format!("error {}", l.flags),
    }
}

/// Name, snapshot, listener, original destination, server name, roll, expected line.
type TcpCase<'a> = (
    &'a str,
    &'a Snapshot,
    ListenerKind,
    Option<&'a str>,
    Option<&'a str>,
    u64,
    &'a str,
);

#[test]
fn tcp_by_address_route_and_server_name() {
    let allow = snapshot("");
    let only = snapshot("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n");
    use ListenerKind::{Inbound, Outbound};
    #[rustfmt::skip]
    let table: Vec<TcpCase<'_>> = vec![
        ("service address and port", &allow, Outbound, Some("240.0.0.2:9000"), None, 0, "db port=9000 eps=127.0.0.4:7000 idle=1s"),
        ("TCP route by port, weight 50: roll 0", &allow, Outbound, Some("240.0.0.2:9001"), None, 0, "db port=9001 eps=127.0.0.4:9001 idle=1s"),
        ("TCP route by port, weight 50: roll 51", &allow, Outbound, Some("240.0.0.2:9001"), None, 51, "db-canary port=9000 eps=127.0.0.5:9000 idle=3600s"),
        ("TLS route by exact server name", &allow, Outbound, Some("10.1.2.3:443"), Some("a.example.com"), 0, "alpha port=443 eps=127.0.0.6:443 idle=3600s"),
        ("TLS route by wildcard server name", &allow, Outbound, Some("10.1.2.3:443"), Some("b.example.com"), 0, "beta port=443 eps=127.0.0.7:443 idle=3600s"),
        ("server name of a service host, not redirected", &allow, Outbound, None, Some("alpha.internal"), 0, "alpha port=443 eps=127.0.0.6:443 idle=3600s"),
        ("unknown server name: original destination (ALLOW_ANY)", &allow, Outbound, Some("10.1.2.3:443"), Some("x.other.org"), 0, "passthrough port=- eps=10.1.2.3:443 idle=3600s"),
        ("unknown address: passthrough (ALLOW_ANY)", &allow, Outbound, Some("10.1.2.3:5432"), None, 0, "passthrough port=- eps=10.1.2.3:5432 idle=3600s"),
        ("no destination at all: NR", &allow, Outbound, None, None, 0, "error NR"),
        ("unknown address: NR (REGISTRY_ONLY)", &only, Outbound, Some("10.1.2.3:5432"), None, 0, "error NR"),
        ("service address under REGISTRY_ONLY", &only, Outbound, Some("240.0.0.2:9000"), None, 0, "db port=9000 eps=127.0.0.4:7000 idle=1s"),
        ("inbound port to its app", &allow, Inbound, Some("10.0.0.5:8080"), None, 0, "app port=8080 eps=127.0.0.1:18080 idle=3600s"),
        ("inbound without a destination: first port", &allow, Inbound, None, None, 0, "app port=8080 eps=127.0.0.1:18080 idle=3600s"),
    ];
    let mut failures = Vec::new();
    for (name, snap, listener, dst, sni, roll, want) in table {
        let got = run_tcp(snap, listener, dst, sni, roll);
        if got != want {
            failures.push(format!("{name}:\n   want {want}\n    got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn connect_tunnels_to_services_or_named_addresses() {
    let allow = snapshot("");
    let only = snapshot("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n");
    let run = |snap: &Snapshot, authority: &str, version: Version| {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .version(version)
            .body(())
            .expect("request");
        match connect(snap, &req) {
            Ok(t) => describe_target(&t),
            Err(l) => format!("error {} {}", l.status.as_u16(), l.flags),
        }
    };
    #[rustfmt::skip]
    let table: Vec<(&str, &Snapshot, &str, Version, &str)> = vec![
        ("a service host and port", &allow, "db.local:9000", Version::HTTP_11, "db port=9000 eps=127.0.0.4:7000"),
        ("host in upper case", &allow, "DB.local:9001", Version::HTTP_11, "db port=9001 eps=127.0.0.4:9001"),
        ("unknown host: the named address (ALLOW_ANY)", &allow, "example.org:443", Version::HTTP_11, "passthrough port=- eps=example.org:443"),
        ("IPv6 literal", &allow, "[::1]:8443", Version::HTTP_11, "passthrough port=- eps=[::1]:8443"),
        ("unknown host: NR (REGISTRY_ONLY)", &only, "example.org:443", Version::HTTP_11, "error 502 NR"),
        ("CONNECT over HTTP/2 is refused", &allow, "db.local:9000", Version::HTTP_2, "error 405 DPE"),
    ];
    let mut failures = Vec::new();
    for (name, snap, authority, version, want) in table {
        let got = run(snap, authority, version);
        if got != want {
            failures.push(format!("{name}:\n   want {want}\n    got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn inbound_connect_tunnels_to_the_workload_port_named() {
    let snap = snapshot("");
    let run = |authority: &str, version: Version| {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .version(version)
            .body(())
            .expect("request");
        match crate::plan::connect_inbound(&snap, &req) {
            Ok(t) => describe_target(&t),
            Err(l) => format!("error {} {}", l.status.as_u16(), l.flags),
        }
    };
    #[rustfmt::skip]
    let table: Vec<(&str, &str, Version, &str)> = vec![
        ("a mesh peer's tunnel over HTTP/2 to a workload port", "10.0.0.5:8080", Version::HTTP_2, "app port=8080 eps=127.0.0.1:18080"),
        ("the same over HTTP/1.1", "10.0.0.5:8080", Version::HTTP_11, "app port=8080 eps=127.0.0.1:18080"),
        ("a port the workload does not have: NR (never the first port)", "10.0.0.5:1234", Version::HTTP_2, "error 502 NR"),
        ("no port", "10.0.0.5", Version::HTTP_2, "error 400 DPE"),
    ];
    let mut failures = Vec::new();
    for (name, authority, version, want) in table {
        let got = run(authority, version);
        if got != want {
            failures.push(format!("{name}:\n   want {want}\n    got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
