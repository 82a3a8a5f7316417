//! The CA of `halyard-control serve`, driven by peers this project did not write: Python
//! grpcio (`peers/ca_client.py`, which compiles Istio's ca.proto itself) and the openssl CLI
//! for keys, CSRs, a test PKI and every check of what was issued.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use halyard_tests::*;

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/ratings";
const CONTROL_ID: &str = "spiffe://cluster.local/ns/halyard-system/sa/halyard-control";
const DAY: i64 = 24 * 3600;

/// Runs `ca_client.py request` with `args` (work files under `work`) and returns its JSON.
fn ca_client(addr: &str, work: &Path, args: &[&str]) -> Value {
    run_peer(
        &format!("ca_client.py {args:?}"),
        peer_command("ca_client.py")
            .args(["request", "--addr", addr, "--work"])
            .arg(work)
            .args(args),
        Duration::from_secs(60),
    )
}

fn issued(v: &Value) -> &Value {
    assert_eq!(v["ok"], true, "expected a certificate, got {v}");
    v
}

fn refused(v: &Value, code: &str) {
    assert_eq!(v["ok"], false, "expected {code}, got a certificate: {v}");
    assert_eq!(v["code"], code, "{v}");
}

/// Checks what `openssl` says about an issued chain: it verifies, names exactly `id`, is no
/// CA and lives `ttl` seconds from the request (the CA backdates the start by a minute).
fn check_leaf(v: &Value, id: &str, ttl: i64) {
    issued(v);
    assert_eq!(v["verify"], "OK", "openssl verify: {v}");
    assert_eq!(v["sans"], serde_json::json!([format!("URI:{id}")]), "{v}");
    assert_eq!(v["is_ca"], false, "{v}");
    let requested = v["requested_at"].as_i64().expect("requested_at");
    let not_after = v["not_after"].as_i64().expect("not_after");
    let not_before = v["not_before"].as_i64().expect("not_before");
    let life = not_after - requested;
    assert!(
        (ttl - 5..=ttl + 5).contains(&life),
        "lifetime {life}s, wanted {ttl}s: {v}"
    );
    assert!(not_before <= requested, "{v}");
}

fn fingerprint(dir: &Path, cert: &Path) -> String {
    openssl(
        dir,
        &["x509", "-in", s(cert), "-noout", "-fingerprint", "-sha256"],
    )
    .trim()
    .to_string()
}

#[test]
fn plaintext_port_issues_for_the_token_identity_and_refuses_everything_else() {
    let tmp = TempDir::new("ca-plain");
    let ca = Control::start(tmp.path(), &["--max-cert-ttl", "48h"]);
    let work = tmp.path().join("work");
    let root = ca.root();
    let verify = ["--verify-root", s(&root)];
    let with = |extra: &[&str]| {
        let mut args = vec!["--id", REVIEWS, "--token", TOKEN];
        args.extend_from_slice(&verify);
        args.extend_from_slice(extra);
        ca_client(&ca.grpc, &work, &args)
    };

    let v = with(&["--ttl", "3600"]);
    check_leaf(&v, REVIEWS, 3600);
    assert_eq!(v["chain_len"], 2, "leaf and root: {v}");
    check_leaf(&with(&["--ttl", "0"]), REVIEWS, DAY);
    // The longest lifetime allowed is allowed.
    check_leaf(&with(&["--ttl", &(2 * DAY).to_string()]), REVIEWS, 2 * DAY);

    // A token claims exactly one identity, with no other names.
    let v = ca_client(&ca.grpc, &work, &["--id", RATINGS, "--token", TOKEN]);
    refused(&v, "PERMISSION_DENIED");
    refused(
        &with(&["--extra-dns", "reviews.default.svc"]),
        "PERMISSION_DENIED",
    );

    // No token, an unknown token.
    refused(
        &ca_client(&ca.grpc, &work, &["--id", REVIEWS]),
        "UNAUTHENTICATED",
    );
    let v = ca_client(
        &ca.grpc,
        &work,
        &["--id", REVIEWS, "--token", "not-a-token"],
    );
    refused(&v, "UNAUTHENTICATED");

    // Malformed requests.
    refused(&with(&["--ca-csr"]), "INVALID_ARGUMENT");
    refused(
        &with(&["--ttl", &(2 * DAY + 1).to_string()]),
        "INVALID_ARGUMENT",
    );
    refused(&with(&["--ttl", "-60"]), "INVALID_ARGUMENT");
    refused(&with(&["--garbage"]), "INVALID_ARGUMENT");

    // Every issuance and refusal is logged, and the token never is.
    let log = ca.stderr();
    assert_eq!(log.matches("issued a certificate").count(), 3, "{log}");
    assert_eq!(
        log.matches("refused a certificate request").count(),
        8,
        "{log}"
    );
    assert!(log.contains(REVIEWS), "{log}");
    assert!(!log.contains(TOKEN), "the token was logged:\n{log}");

    // Requests are bounded in size (64 KiB).
    refused(&with(&["--oversize", "100000"]), "OUT_OF_RANGE");
    refused(&with(&["--oversize", "60000"]), "INVALID_ARGUMENT");
    assert_eq!(ca.stop(), Some(0));
}

#[test]
fn tls_port_presents_its_spiffe_id_and_renews_by_client_certificate() {
    let tmp = TempDir::new("ca-tls");
    let ca = Control::start(tmp.path(), &[]);
    let work = tmp.path().join("work");
    let root = ca.root();
    let tls = ["--tls-root", s(&root), "--verify-root", s(&root)];
    let call = |extra: &[&str]| {
        let mut args = tls.to_vec();
        args.extend_from_slice(extra);
        ca_client(&ca.grpc_tls, &work, &args)
    };

    let first = call(&["--id", REVIEWS, "--token", TOKEN, "--ttl", "3600"]);
    check_leaf(&first, REVIEWS, 3600);
    let server = first["server_sans"].as_array().expect("server SANs");
    assert!(
        server.iter().any(|s| s == &format!("URI:{CONTROL_ID}")),
        "the server's certificate lacks {CONTROL_ID}: {first}"
    );

    // With the certificate just issued, the workload renews for itself without a token...
    let cert = first["leaf"].as_str().expect("leaf path");
    let key = first["key"].as_str().expect("key path");
    let mtls = ["--client-cert", cert, "--client-key", key];
    let mut args = mtls.to_vec();
    args.extend_from_slice(&["--id", REVIEWS]);
    check_leaf(&call(&args), REVIEWS, DAY);
    // ...but for nobody else.
    let mut args = mtls.to_vec();
    args.extend_from_slice(&["--id", RATINGS]);
    refused(&call(&args), "PERMISSION_DENIED");

    // Without a certificate or a token the TLS port refuses too.
    refused(&call(&["--id", REVIEWS]), "UNAUTHENTICATED");
    assert!(ca.stderr().contains("credential=client-certificate"));
}

#[test]
fn root_key_is_private_and_a_restart_keeps_the_root_then_sigterm_exits_zero() {
    let tmp = TempDir::new("ca-root");
    let ca = Control::start(tmp.path(), &[]);
    let data = tmp.path().join("data");
    let key_mode = std::fs::metadata(data.join("root-key.pem"))
        .expect("root-key.pem")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600, "root-key.pem has mode {key_mode:o}");
    let before = fingerprint(tmp.path(), &data.join("root-cert.pem"));
    let work = tmp.path().join("work");
    let old_root = tmp.path().join("root-before.pem");
    std::fs::copy(data.join("root-cert.pem"), &old_root).expect("copy root");
    let v = ca_client(
        &ca.grpc,
        &work,
        &[
            "--id",
            REVIEWS,
            "--token",
            TOKEN,
            "--verify-root",
            s(&old_root),
        ],
    );
    check_leaf(&v, REVIEWS, DAY);
    assert_eq!(ca.stop(), Some(0), "SIGTERM must exit 0");

    let ca = Control::start(tmp.path(), &[]);
    let after = fingerprint(tmp.path(), &data.join("root-cert.pem"));
    assert_eq!(before, after, "the restart made a new root");
    // Certificates issued after the restart verify against the root saved before it.
    let v = ca_client(
        &ca.grpc,
        &work,
        &[
            "--id",
            REVIEWS,
            "--token",
            TOKEN,
            "--verify-root",
            s(&old_root),
        ],
    );
    check_leaf(&v, REVIEWS, DAY);
    assert!(ca.stderr().contains("listening"));
    assert_eq!(ca.stop(), Some(0));
}

/// Makes an openssl root and an intermediate in Istio's cacerts layout under `dir/cacerts`;
/// returns the root's path (kept outside the cacerts directory as well).
fn make_cacerts(dir: &Path) -> PathBuf {
    let ca = dir.join("cacerts");
    std::fs::create_dir_all(&ca).expect("mkdir cacerts");
    let p = |n: &str| s(&ca.join(n)).to_string();
    let genkey = |out: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                out,
            ],
        )
    };
    let root_key = s(&dir.join("test-root-key.pem")).to_string();
    genkey(&root_key);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &root_key,
            "-subj",
            "/O=halyard tests/CN=Test Root CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &p("root-cert.pem"),
        ],
    );
    genkey(&p("ca-key.pem"));
    std::fs::set_permissions(
        ca.join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod ca-key.pem");
    let csr = s(&dir.join("intermediate.csr")).to_string();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &p("ca-key.pem"),
            "-subj",
            "/O=halyard tests/CN=Test Intermediate CA",
            "-out",
            &csr,
        ],
    );
    let ext = dir.join("intermediate.ext");
    let mut f = std::fs::File::create(&ext).expect("ext file");
    writeln!(
        f,
        "basicConstraints=critical,CA:TRUE,pathlen:0\n\
         keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid"
    )
    .expect("write ext file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &p("root-cert.pem"),
            "-CAkey",
            &root_key,
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            s(&ext),
            "-out",
            &p("ca-cert.pem"),
        ],
    );
    let chain = std::fs::read_to_string(ca.join("ca-cert.pem")).expect("ca-cert")
        + &std::fs::read_to_string(ca.join("root-cert.pem")).expect("root-cert");
    std::fs::write(ca.join("cert-chain.pem"), chain).expect("cert-chain");
    let root = dir.join("test-root.pem");
    std::fs::copy(ca.join("root-cert.pem"), &root).expect("copy root");
    root
}

#[test]
fn cacerts_intermediate_issues_chains_to_the_operators_root() {
    let tmp = TempDir::new("ca-inter");
    let root = make_cacerts(tmp.path());
    let cacerts = tmp.path().join("cacerts");
    let ca = Control::start(tmp.path(), &["--cacerts", s(&cacerts)]);
    let work = tmp.path().join("work");

    let v = ca_client(
        &ca.grpc,
        &work,
        &[
            "--id",
            REVIEWS,
            "--token",
            TOKEN,
            "--ttl",
            "3600",
            "--verify-root",
            s(&root),
        ],
    );
    check_leaf(&v, REVIEWS, 3600);
    assert_eq!(v["chain_len"], 3, "leaf, intermediate, root: {v}");
    let returned_root = Path::new(v["chain"].as_str().expect("chain")).with_file_name("root.pem");
    assert_eq!(
        fingerprint(tmp.path(), &returned_root),
        fingerprint(tmp.path(), &root),
        "the chain must end with the operator's root"
    );

    // The TLS port chains to the same root.
    let v = ca_client(
        &ca.grpc_tls,
        &work,
        &[
            "--id",
            REVIEWS,
            "--token",
            TOKEN,
            "--tls-root",
            s(&root),
            "--verify-root",
            s(&root),
        ],
    );
    check_leaf(&v, REVIEWS, DAY);
    // No self-signed root was made in intermediate mode.
    assert!(!tmp.path().join("data").join("root-key.pem").exists());
    assert_eq!(ca.stop(), Some(0));
}

#[test]
fn tokens_file_changes_take_effect_without_a_restart() {
    let tmp = TempDir::new("ca-reload");
    let ca = Control::start(tmp.path(), &[]);
    let work = tmp.path().join("work");
    let tokens = tmp.path().join("tokens.yaml");
    let new_token = "tok-ratings-77e2b1";
    // Write-then-rename, as config management tools do.
    let staged = tmp.path().join("tokens.yaml.new");
    std::fs::write(&staged, tokens_yaml(new_token, "ratings")).expect("write tokens");
    std::fs::rename(&staged, &tokens).expect("rename tokens");
    let v = wait_for("the new token to be accepted", || {
        let v = ca_client(&ca.grpc, &work, &["--id", RATINGS, "--token", new_token]);
        (v["ok"] == true).then_some(v)
    });
    assert!(v["sans"][0].as_str().is_some_and(|s| s.ends_with(RATINGS)));
    let v = ca_client(&ca.grpc, &work, &["--id", REVIEWS, "--token", TOKEN]);
    refused(&v, "UNAUTHENTICATED");

    // A broken file is reported and the tokens in force stay.
    std::fs::write(&tokens, "- token: [oops\n").expect("write tokens");
    wait_for("the reload error in the log", || {
        ca.stderr()
            .contains("the tokens file is invalid")
            .then_some(())
    });
    let v = ca_client(&ca.grpc, &work, &["--id", RATINGS, "--token", new_token]);
    issued(&v);
}

/// Runs the server expecting it to refuse to start; returns (exit code, stderr).
fn start_fails(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).expect("log file");
    let mut cmd = Command::new(control_bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--grpc-tls-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut proc = Proc::spawn("halyard-control", &mut cmd);
    let status = proc
        .wait_exit(DEADLINE)
        .expect("halyard-control should exit when its input is bad");
    (
        status.code(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    )
}

#[test]
fn bad_tokens_file_or_cacerts_exit_2_naming_the_file() {
    let tmp = TempDir::new("ca-bad");
    let tokens = tmp.path().join("bad-tokens.yaml");
    std::fs::write(
        &tokens,
        "- token: tok-one\n  namespace: default\n  serviceAccount: a\n  colour: red\n",
    )
    .expect("write tokens");
    let (code, stderr) = start_fails(tmp.path(), &["--tokens", s(&tokens)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:4:", tokens.display())),
        "stderr should name the file and line 4: {stderr}"
    );
    assert!(stderr.contains("colour"), "{stderr}");
    assert!(
        !stderr.contains("tok-one"),
        "the token was printed: {stderr}"
    );

    // A token that cannot be told apart from another.
    std::fs::write(
        &tokens,
        "- token: same\n  namespace: default\n  serviceAccount: a\n\
         - token: same\n  namespace: default\n  serviceAccount: b\n",
    )
    .expect("write tokens");
    let (code, stderr) = start_fails(tmp.path(), &["--tokens", s(&tokens)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:4:", tokens.display())),
        "{stderr}"
    );

    // cacerts without its key.
    let cacerts = tmp.path().join("empty-cacerts");
    std::fs::create_dir_all(&cacerts).expect("mkdir");
    let (code, stderr) = start_fails(tmp.path(), &["--cacerts", s(&cacerts)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ca-cert.pem"), "{stderr}");

    // A default lifetime above the maximum.
    let (code, stderr) = start_fails(
        tmp.path(),
        &["--default-cert-ttl", "48h", "--max-cert-ttl", "24h"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--max-cert-ttl"), "{stderr}");
}

#[test]
fn halyard_proxy_gets_its_certificate_over_tls() {
    let tmp = TempDir::new("ca-proxy");
    let ca = Control::start(tmp.path(), &[]);
    let token_file = tmp.path().join("proxy-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let echo = Echo::start("ca-proxy");
    // `/ready` waits for the workload certificate, so a started proxy holds one.
    let proxy = Proxy::start_with(
        &echo_config(echo.port(), ""),
        &[
            "--ca-addr",
            &ca.grpc_tls,
            "--ca-root-file",
            s(&ca.root()),
            "--ca-token-file",
            s(&token_file),
            "--service-account",
            "reviews",
        ],
    );
    let certs = proxy.admin("GET", "/certs").text();
    assert!(certs.contains(REVIEWS), "/certs: {certs}");
    let log = ca.stderr();
    assert!(
        log.lines().any(|l| l.contains("issued a certificate")
            && l.contains("tls")
            && l.contains(REVIEWS)),
        "{log}"
    );
}
