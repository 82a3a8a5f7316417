//! TLS origination (DestinationRule `tls` SIMPLE and MUTUAL) against servers we did not write:
//! `openssl s_server -www` (CA file, wrong SAN, untrusted CA, client certificates demanded
//! over TLS 1.3 and 1.2, SNI picking the server's certificate) and Debian's nginx (SIMPLE and
//! MUTUAL); certificates made with the openssl CLI; failures are 503 `UF` with the TLS reason in
//! the access log. Also: a static config naming a missing PEM file is refused, /config_dump
//! shows paths only, and `halyard-control check` reports a DestinationRule's missing file.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use halyard_tests::*;

/// Test certificates made with the openssl CLI.
struct Pki {
    dir: TempDir,
}

/// A certificate and its key.
struct Cred {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: TempDir::new("tls-origin"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed CA named `name`.
    fn ca(&self, name: &str) -> Cred {
        self.req(
            name,
            &[],
            &[
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )
    }

    /// A leaf named `name` for `san` (e.g. `DNS:a.test`), signed by `ca`.
    fn leaf(&self, ca: &Cred, name: &str, san: &str) -> Cred {
        self.req(
            name,
            &["-CA", s(&ca.cert), "-CAkey", s(&ca.key)],
            &[
                "-days",
                "1",
                "-addext",
                &format!("subjectAltName={san}"),
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature",
                "-addext",
                "extendedKeyUsage=serverAuth,clientAuth",
            ],
        )
    }

    /// `openssl req -x509` for a P-256 key named `name`: `signer` names the issuing CA (none:
    /// self-signed), `ext` the validity and extensions.
    fn req(&self, name: &str, signer: &[&str], ext: &[&str]) -> Cred {
        let cred = Cred {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}-key.pem")),
        };
        let subject = format!("/CN={name}");
        let mut args = vec!["req", "-x509"];
        args.extend_from_slice(signer);
        args.extend_from_slice(&[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &subject,
        ]);
        args.extend_from_slice(ext);
        args.extend_from_slice(&["-keyout", s(&cred.key), "-out", s(&cred.cert)]);
        openssl(self.dir.path(), &args);
        cred
    }
}

/// Waits until something accepts TCP on `port`.
fn wait_listening(what: &str, port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(what, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    });
}

/// `openssl s_server -www` on a free port with `cred` and extra flags.
fn s_server(cred: &Cred, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", s(&cred.cert), "-key", s(&cred.key)])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let proc = Proc::spawn("openssl s_server", &mut cmd);
    wait_listening("openssl s_server", port);
    (proc, port)
}

/// A proxy with one HTTP service `up.test` → 127.0.0.1:`port`, originating TLS with `tls`
/// (YAML flow mapping).
fn proxy_to(port: u16, tls: &str) -> Proxy {
    Proxy::start(&format!(
        "version: tls-1
services:
  - name: up.default.svc.cluster.local
    hosts: [up.test]
    ports: [{{port: 80, protocol: HTTP, targetPort: {port}}}]
    endpoints: [{{address: 127.0.0.1}}]
    connectTimeout: 2s
    tls: {tls}
"
    ))
}

fn get(proxy: &Proxy, path: &str) -> CurlOut {
    curl(&["-H", "Host: up.test", &url(proxy.outbound, path)])
}

/// The request to `path` fails with 503 `UF` and the access log names `reason`.
fn assert_tls_failure(proxy: &Proxy, path: &str, reason: &str) {
    let out = get(proxy, path);
    assert_eq!(out.status, 503, "{out:?}\n{}", proxy.stderr());
    let e = proxy.wait_log(path, |e| e["path"] == path);
    let flags = e["response_flags"].as_str().unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UF"), "{e}");
    assert_eq!(e["upstream_transport_failure_reason"], reason, "{e}");
}

#[test]
fn simple_with_ca_file_sni_and_subject_alt_names() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.leaf(&ca, "server", "DNS:server.test");
    let (_srv, port) = s_server(&server, &[]);
    let ca_file = s(&ca.cert);

    let proxy = proxy_to(
        port,
        &format!("{{sni: server.test, caCertificates: {ca_file}}}"),
    );
    let out = get(&proxy, "/ok");
    assert_eq!(out.status, 200, "{out:?}\n{}", proxy.stderr());
    assert!(out.body.contains("Ciphers supported"), "{}", out.body);
    let e = proxy.wait_log("/ok", |e| e["path"] == "/ok");
    assert_eq!(e["response_flags"], "-", "{e}");

    // subjectAltNames replace the SNI check: one of them must be in the certificate.
    let proxy = proxy_to(
        port,
        &format!("{{sni: server.test, caCertificates: {ca_file}, subjectAltNames: [other.test, server.test]}}"),
    );
    assert_eq!(get(&proxy, "/san").status, 200, "{}", proxy.stderr());

    let proxy = proxy_to(
        port,
        &format!("{{sni: server.test, caCertificates: {ca_file}, subjectAltNames: [other.test]}}"),
    );
    assert_tls_failure(&proxy, "/wrong-san", "san_mismatch");

    // Without subjectAltNames the server name is verified: here the service host up.test.
    let proxy = proxy_to(port, &format!("{{caCertificates: {ca_file}}}"));
    assert_tls_failure(&proxy, "/host-name", "san_mismatch");

    // insecureSkipVerify takes any certificate, and the proxy warns about it.
    let proxy = proxy_to(port, "{insecureSkipVerify: true}");
    assert_eq!(get(&proxy, "/insecure").status, 200, "{}", proxy.stderr());
    assert!(
        proxy.stderr().contains("insecureSkipVerify"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn untrusted_server_is_a_connect_failure() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let other = pki.ca("other-ca");
    let server = pki.leaf(&ca, "server", "DNS:server.test");
    let (_srv, port) = s_server(&server, &[]);

    let proxy = proxy_to(
        port,
        &format!("{{sni: server.test, caCertificates: {}}}", s(&other.cert)),
    );
    assert_tls_failure(&proxy, "/untrusted", "untrusted_certificate");
    // Without a CA file the public roots apply, which do not know the test CA either.
    let proxy = proxy_to(port, "{sni: server.test}");
    assert_tls_failure(&proxy, "/public-roots", "untrusted_certificate");
}

#[test]
fn mutual_against_a_verifying_server_tls13_and_tls12() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.leaf(&ca, "server", "DNS:server.test");
    let client = pki.leaf(&ca, "client", "DNS:client.test");
    let stranger_ca = pki.ca("stranger-ca");
    let stranger = pki.leaf(&stranger_ca, "stranger", "DNS:client.test");
    let ca_file = s(&ca.cert);
    for version in ["-tls1_3", "-tls1_2"] {
        let (_srv, port) = s_server(
            &server,
            &[
                "-Verify",
                "1",
                "-verify_return_error",
                "-CAfile",
                ca_file,
                version,
            ],
        );
        let mutual = |c: &Cred| {
            format!(
                "{{sni: server.test, caCertificates: {ca_file}, clientCertificate: {}, privateKey: {}}}",
                s(&c.cert),
                s(&c.key)
            )
        };
        let proxy = proxy_to(port, &mutual(&client));
        let out = get(&proxy, "/mutual");
        assert_eq!(out.status, 200, "{version}: {out:?}\n{}", proxy.stderr());
        assert!(out.body.contains("Ciphers supported"), "{}", out.body);

        // SIMPLE (no client certificate) against a server that demands one.
        let proxy = proxy_to(
            port,
            &format!("{{sni: server.test, caCertificates: {ca_file}}}"),
        );
        assert_tls_failure(&proxy, "/no-client-cert", "certificate_required");

        // A client certificate the server does not trust.
        let proxy = proxy_to(port, &mutual(&stranger));
        assert_tls_failure(&proxy, "/stranger", "certificate_rejected");
    }
}

#[test]
fn sni_reaches_the_server() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let default = pki.leaf(&ca, "default", "DNS:default.test");
    let named = pki.leaf(&ca, "named", "DNS:named.test");
    // s_server answers SNI named.test with its second certificate and refuses any other name.
    let (_srv, port) = s_server(
        &default,
        &[
            "-servername",
            "named.test",
            "-cert2",
            s(&named.cert),
            "-key2",
            s(&named.key),
            "-servername_fatal",
        ],
    );
    let ca_file = s(&ca.cert);
    let proxy = proxy_to(
        port,
        &format!("{{sni: named.test, caCertificates: {ca_file}}}"),
    );
    let out = get(&proxy, "/named");
    assert_eq!(out.status, 200, "{out:?}\n{}", proxy.stderr());
    let proxy = proxy_to(
        port,
        &format!("{{sni: elsewhere.test, caCertificates: {ca_file}}}"),
    );
    assert_tls_failure(&proxy, "/elsewhere", "handshake_failed");
}

/// Debian's nginx on a free port with TLS 1.2 and 1.3, answering `body`; `verify` adds
/// `ssl_verify_client on` with `ca`.
struct Nginx {
    _proc: Proc,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    fn start(server: &Cred, ca: &Cred, verify: bool, body: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let d = dir.path().display();
        let client = if verify {
            format!(
                "ssl_client_certificate {};\n    ssl_verify_client on;",
                s(&ca.cert)
            )
        } else {
            String::new()
        };
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name nginx.test;\n\
             ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    {client}\n\
             location / {{ default_type text/plain; return 200 \"{body}\\n\"; }}\n  }}\n}}\n",
            s(&server.cert),
            s(&server.key),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let mut cmd = Command::new(nginx_bin());
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Proc::spawn("nginx", &mut cmd);
        wait_listening("nginx", port);
        Nginx {
            _proc: proc,
            port,
            _dir: dir,
        }
    }
}

fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is missing: run `bash tests/install-deps.sh`")
}

#[test]
fn nginx_simple_and_mutual() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let server = pki.leaf(&ca, "nginx", "DNS:nginx.test");
    let client = pki.leaf(&ca, "client", "DNS:client.test");
    let ca_file = s(&ca.cert);

    let plain = Nginx::start(&server, &ca, false, "simple hello");
    let proxy = proxy_to(
        plain.port,
        &format!("{{sni: nginx.test, caCertificates: {ca_file}}}"),
    );
    let out = get(&proxy, "/");
    assert_eq!(
        (out.status, out.body.as_str()),
        (200, "simple hello\n"),
        "{}",
        proxy.stderr()
    );

    let verifying = Nginx::start(&server, &ca, true, "mutual hello");
    let proxy = proxy_to(
        verifying.port,
        &format!(
            "{{sni: nginx.test, caCertificates: {ca_file}, clientCertificate: {}, privateKey: {}}}",
            s(&client.cert),
            s(&client.key)
        ),
    );
    let out = get(&proxy, "/");
    assert_eq!(
        (out.status, out.body.as_str()),
        (200, "mutual hello\n"),
        "{}",
        proxy.stderr()
    );
    // nginx lets a handshake without a certificate through and answers 400 itself.
    let proxy = proxy_to(
        verifying.port,
        &format!("{{sni: nginx.test, caCertificates: {ca_file}}}"),
    );
    let out = get(&proxy, "/");
    assert_eq!(out.status, 400, "{out:?}");
    assert!(
        out.body.contains("No required SSL certificate"),
        "{}",
        out.body
    );
}

/// Runs the proxy on `config` (written in `dir`) until it exits; its exit code and stderr.
fn refused(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, config).expect("config");
    run_proxy_on(&path)
}

#[test]
fn bad_pem_files_refuse_the_config_and_config_dump_shows_only_paths() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client = pki.leaf(&ca, "client", "DNS:client.test");
    let svc = |tls: &str| {
        format!("services:\n  - name: up\n    hosts: [up.test]\n    ports: [{{port: 80}}]\n    endpoints: [{{address: 127.0.0.1}}]\n    tls: {tls}\n")
    };
    let missing = pki.path("missing-ca.pem");
    let (code, err) = refused(
        pki.dir.path(),
        &svc(&format!("{{caCertificates: {}}}", s(&missing))),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("proxy.yaml"), "{err}");
    assert!(err.contains("services[0].tls.caCertificates"), "{err}");
    assert!(err.contains(s(&missing)), "{err}");

    // A key file that holds a certificate is no key.
    let (code, err) = refused(
        pki.dir.path(),
        &svc(&format!(
            "{{clientCertificate: {}, privateKey: {}}}",
            s(&client.cert),
            s(&client.cert)
        )),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("services[0].tls.privateKey"), "{err}");
    assert!(err.contains(s(&client.cert)), "{err}");

    let proxy = Proxy::start(&svc(&format!(
        "{{caCertificates: {}, clientCertificate: {}, privateKey: {}}}",
        s(&ca.cert),
        s(&client.cert),
        s(&client.key)
    )));
    let dump = proxy.admin("GET", "/config_dump").text();
    assert!(dump.contains(s(&client.key)), "{dump}");
    assert!(
        !dump.contains("PRIVATE KEY") && !dump.contains("BEGIN"),
        "{dump}"
    );
    assert!(!proxy.stderr().contains("PRIVATE KEY"));
}

#[test]
fn control_check_accepts_simple_and_mutual_and_names_a_missing_file() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let client = pki.leaf(&ca, "client", "DNS:client.test");
    let dir = TempDir::new("tls-check");
    let rule = |name: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: shop\n\
             spec:\n  host: api.example.com\n  trafficPolicy:\n    tls:\n{tls}"
        )
    };
    let good = rule(
        "good",
        &format!(
            "      mode: SIMPLE\n      sni: api.example.com\n      caCertificates: {}\n---\n",
            s(&ca.cert)
        ),
    ) + &rule(
        "mutual",
        &format!(
            "      mode: MUTUAL\n      caCertificates: {}\n      clientCertificate: {}\n      privateKey: {}\n      subjectAltNames: [api.example.com]\n",
            s(&ca.cert),
            s(&client.cert),
            s(&client.key)
        ),
    );
    std::fs::write(dir.path().join("dr.yaml"), &good).expect("dr.yaml");
    let check = || {
        Command::new(control_bin())
            .arg("check")
            .arg(dir.path())
            .output()
            .expect("run halyard-control check")
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = pki.path("gone-key.pem");
    let bad = rule(
        "bad",
        &format!(
            "      mode: MUTUAL\n      clientCertificate: {}\n      privateKey: {}\n",
            s(&client.cert),
            s(&missing)
        ),
    );
    std::fs::write(dir.path().join("dr.yaml"), bad).expect("dr.yaml");
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("privateKey"))
        .unwrap_or_else(|| panic!("no privateKey diagnostic: {stdout}"));
    assert!(line.contains("dr.yaml:12:"), "{line}");
    assert!(line.contains("spec.trafficPolicy.tls.privateKey"), "{line}");
    assert!(line.contains(s(&missing)), "{line}");
}
