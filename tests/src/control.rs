//! The control server (`halyard-control serve`) as tests start it, and openssl helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::*;

/// The bearer token the default tokens file grants to `default/reviews`.
pub const TOKEN: &str = "tok-reviews-5c1e0a9d";

/// The control server binary: `$HALYARD_CONTROL_BIN` or `<profile>/halyard-control`.
pub fn control_bin() -> PathBuf {
    std::env::var_os("HALYARD_CONTROL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("halyard-control"))
}

/// A tokens file granting `token` the service account `sa` in namespace `default`.
pub fn tokens_yaml(token: &str, sa: &str) -> String {
    format!("# test tokens\n- token: {token}\n  namespace: default\n  serviceAccount: {sa}\n")
}

/// Sets up a control server's directory for the `demo` namespace's two service accounts,
/// `frontend` (token `tok-f`) and `backend` (token `tok-b`): its `tokens.yaml`, and
/// `{workload}.token` for each given (workload, service account) pair, as sidecars read it.
pub fn demo_tokens(dir: &Path, workloads: &[(&str, &str)]) {
    let tokens = "- {token: tok-f, namespace: demo, serviceAccount: frontend}\n\
                  - {token: tok-b, namespace: demo, serviceAccount: backend}\n";
    std::fs::write(dir.join("tokens.yaml"), tokens).expect("tokens");
    for (workload, sa) in workloads {
        let token = if *sa == "frontend" { "tok-f" } else { "tok-b" };
        std::fs::write(dir.join(format!("{workload}.token")), format!("{token}\n")).expect("token");
    }
}

/// Replaces `dir/name` atomically (write, then rename), as editors and `kubectl` do, so a
/// watcher never reads half a file.
pub fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// A running `halyard-control serve` with its own directory, tokens file and stderr log.
pub struct Control {
    /// The process.
    pub proc: Proc,
    /// Plaintext gRPC address.
    pub grpc: String,
    /// TLS gRPC address.
    pub grpc_tls: String,
    /// Monitoring address (`/metrics`, `/debug/connections`), with `--config`.
    pub monitoring: Option<String>,
    dir: PathBuf,
}

impl Control {
    /// Starts the server in `dir` (data dir `dir/data`, tokens `dir/tokens.yaml`, written
    /// with [`TOKEN`] for `reviews` unless present) on ephemeral ports, plus `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Control {
        let tokens = dir.join("tokens.yaml");
        if !tokens.exists() {
            std::fs::write(&tokens, tokens_yaml(TOKEN, "reviews")).expect("write tokens");
        }
        let addr_file = dir.join("addr.json");
        let _ = std::fs::remove_file(&addr_file);
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("log file");
        let mut cmd = Command::new(control_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--tokens")
            .arg(&tokens)
            .args(if extra.contains(&"--grpc-tls-addr") {
                // The caller fixes the ports (e.g. to restart on the same addresses).
                &[][..]
            } else {
                &[
                    "--grpc-addr",
                    "127.0.0.1:0",
                    "--grpc-tls-addr",
                    "127.0.0.1:0",
                    "--monitoring-addr",
                    "127.0.0.1:0",
                ][..]
            })
            .arg("--address-file")
            .arg(&addr_file)
            .args(["--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut proc = Proc::spawn("halyard-control", &mut cmd);
        let addrs: Value = wait_for("the control server's address file", || {
            if let Some(status) = proc.wait_exit(Duration::ZERO) {
                panic!(
                    "halyard-control exited early with {status}:\n{}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
            }
            serde_json::from_str(&std::fs::read_to_string(&addr_file).ok()?).ok()
        });
        let get = |k: &str| {
            addrs[k]
                .as_str()
                .unwrap_or_else(|| panic!("address file has no {k}: {addrs}"))
                .to_string()
        };
        Control {
            monitoring: addrs["monitoring"].as_str().map(str::to_string),
            grpc: get("grpc"),
            grpc_tls: get("grpc_tls"),
            proc,
            dir: dir.to_path_buf(),
        }
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The root certificate file.
    pub fn root(&self) -> PathBuf {
        self.dir.join("data").join("root-cert.pem")
    }

    /// A sidecar configured and certified by this control server: workload `demo/{name}`
    /// running as service account `sa`, its token in `dir/{name}.token`.
    pub fn sidecar(&self, dir: &Path, name: &str, sa: &str, inbound: &str) -> crate::Proxy {
        let token = dir.join(format!("{name}.token"));
        crate::Proxy::start_with(
            "",
            &[
                "--xds-addr",
                &self.grpc_tls,
                "--node-id",
                &format!("demo/{name}"),
                "--ca-addr",
                &self.grpc_tls,
                "--ca-root-file",
                s(&self.root()),
                "--ca-token-file",
                s(&token),
                "--namespace",
                "demo",
                "--service-account",
                sa,
                "--inbound-addr",
                inbound,
            ],
        )
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.proc.signal("TERM");
        let status = self.proc.wait_exit(DEADLINE).expect("exit after SIGTERM");
        status.code()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- stderr of halyard-control ----\n{}", self.stderr());
        }
    }
}

/// A path as `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs the openssl CLI in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
