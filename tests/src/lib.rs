//! End-to-end test harness: starts the built `halyard-proxy`, the echo app and peers this
//! project did not write (curl, Python grpcio, websockets), and talks to them as a user would.
//!
//! Every process is killed when its handle drops; a failing test prints the proxy's stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::Value;

mod control;
pub use control::*;
mod issuer;
pub use issuer::Issuer;
mod up;
pub use up::{up_command, write_mesh, Up};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The cargo target profile directory the tests were built into (e.g. `target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <profile>/deps")
        .to_path_buf()
}

/// The proxy binary under test: `$HALYARD_PROXY_BIN` or `<profile>/halyard-proxy`.
pub fn proxy_bin() -> PathBuf {
    std::env::var_os("HALYARD_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("halyard-proxy"))
}

/// A cargo example binary of the workspace (built by `cargo build --examples`).
pub fn example_bin(name: &str) -> PathBuf {
    profile_dir().join("examples").join(name)
}

/// Where `tests/install-deps.sh` builds the peers' venvs: `$HALYARD_VENV` or its default.
pub fn venv_root() -> PathBuf {
    std::env::var_os("HALYARD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/halyard-venv"))
}

/// The Python of a peer script's own venv, named by the script's `# peer-env: NAME` line, so
/// peers whose packages clash never load each other's modules.
pub fn peer_python(script: &str) -> PathBuf {
    let path = peer(script);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let env = text
        .lines()
        .take(5)
        .find_map(|l| l.strip_prefix("# peer-env: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}: no `# peer-env: NAME` line", path.display()));
    let python = venv_root().join(env).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tests/install-deps.sh` (HALYARD_VENV={})",
        python.display(),
        venv_root().display()
    );
    python
}

/// The checkout the tests run from. Cargo runs each test in its package's directory; that is
/// used rather than the compile-time path because checkouts sharing a target directory share
/// test binaries.
pub fn repo_dir() -> PathBuf {
    let package = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    package.parent().map(Path::to_path_buf).unwrap_or(package)
}

/// A peer script under `tests/peers/`.
pub fn peer(name: &str) -> PathBuf {
    repo_dir().join("tests/peers").join(name)
}

/// Polls `f` until it returns `Some`, failing the test after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("halyard-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    name: String,
    stderr_file: Option<PathBuf>,
}

impl Proc {
    /// Takes charge of an already spawned child (killed on drop).
    pub fn from_child(name: &str, child: Child) -> Proc {
        Proc {
            child,
            name: name.into(),
            stderr_file: None,
        }
    }

    /// Spawns `cmd` (its stdio as the caller set it up).
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            stderr_file: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {sig} {} failed", self.name);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(text) = self
                .stderr_file
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
            {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- last stderr of {} ----", self.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Spawns `cmd` and waits for a stderr line containing `marker`; returns the process and
/// the rest of that line after the marker. Later stderr lines are drained in the background.
pub fn spawn_until(name: &str, mut cmd: Command, marker: &str) -> (Proc, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_string();
    std::thread::spawn(move || {
        let marker = wanted;
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find(&marker) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line[i + marker.len()..].trim().to_string());
                }
            }
        }
    });
    let proc = Proc {
        child,
        name: name.to_string(),
        stderr_file: None,
    };
    match rx.recv_timeout(DEADLINE) {
        Ok(rest) => (proc, rest),
        Err(_) => panic!("{name} did not print `{marker}`"),
    }
}

/// A peer that prints one JSON line per event on stdout, read as the events happen.
pub struct Events {
    _proc: Proc,
    name: String,
    lines: std::sync::mpsc::Receiver<(Instant, Value)>,
}

impl Events {
    /// Spawns `cmd` (stdin closed, stdout read line by line, stderr inherited).
    pub fn start(name: &str, mut cmd: Command) -> Events {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        Events {
            _proc: Proc::from_child(name, child),
            name: name.to_string(),
            lines,
        }
    }

    /// The next event, which must be of kind `event` (its `"event"` field), and when it was
    /// read; fails the test after 30 s.
    pub fn next(&self, event: &str) -> (Instant, Value) {
        let (at, v) = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{}: no `{event}` event within 30 s", self.name));
        assert_eq!(v["event"], event, "{}: {v}", self.name);
        (at, v)
    }

    /// The first event of kind `event`, skipping others, and when it was read; fails the test
    /// after 30 s.
    pub fn until(&self, event: &str) -> (Instant, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, v) = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{}: no `{event}` event within 30 s", self.name));
            if v["event"] == event {
                return (at, v);
            }
        }
    }

    /// Events that arrived so far, without waiting.
    pub fn ready(&self) -> Vec<(Instant, Value)> {
        self.lines.try_iter().collect()
    }
}

/// The echo app (`halyard-control echo`: JSON echo over HTTP/1.1 and h2c).
pub struct Echo {
    /// The running process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Echo {
    /// Starts an echo app named `name` on an ephemeral loopback port.
    pub fn start(name: &str) -> Echo {
        Self::start_on(name, "127.0.0.1:0")
    }

    /// Starts an echo app on `listen`.
    pub fn start_on(name: &str, listen: &str) -> Echo {
        Self::start_with(name, listen, &[])
    }

    /// Starts an echo app on `listen` with extra flags (`--fail-percent 50`, `--hang`...).
    pub fn start_with(name: &str, listen: &str, extra: &[&str]) -> Echo {
        let mut cmd = Command::new(control_bin());
        cmd.args(["echo", "--name", name, "--listen", listen]);
        cmd.args(extra);
        let (proc, rest) = spawn_until(&format!("echo {name}"), cmd, "listening on ");
        let addr = rest.parse().expect("echo address");
        Echo { proc, addr }
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A running `halyard-proxy` with its config file, logs and bound addresses.
pub struct Proxy {
    /// The running process.
    pub proc: Proc,
    /// The outbound listener's address.
    pub outbound: SocketAddr,
    /// The inbound listener's address.
    pub inbound: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    /// The Prometheus scrape listener's address.
    pub stats: SocketAddr,
    dir: TempDir,
}

impl Proxy {
    /// Starts the proxy with `config` (YAML), every listener on an ephemeral port.
    pub fn start(config: &str) -> Proxy {
        Self::start_with(config, &[])
    }

    /// Starts the proxy with `config` and extra command-line arguments (an empty `config`
    /// passes no `--config`).
    pub fn start_with(config: &str, extra: &[&str]) -> Proxy {
        let dir = TempDir::new("proxy");
        let config_path = dir.path().join("proxy.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let addr_file = dir.path().join("admin.addr");
        let stdout = std::fs::File::create(dir.path().join("access.log")).expect("log file");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        let mut cmd = Command::new(proxy_bin());
        // No config text: the proxy gets its configuration elsewhere (`--xds-addr` in `extra`).
        if !config.is_empty() {
            cmd.arg("--config").arg(&config_path);
        }
        let child = cmd
            .args([
                "--outbound-addr",
                "127.0.0.1:0",
                "--inbound-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--stats-addr",
                "127.0.0.1:0",
                "--concurrency",
                "2",
                "--log-level",
                "info",
            ])
            .arg("--admin-address-path")
            .arg(&addr_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", proxy_bin().display()));
        let mut proc = Proc {
            child,
            name: "halyard-proxy".into(),
            stderr_file: Some(stderr_path),
        };
        let admin: SocketAddr = wait_for("the proxy's admin address", || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("proxy exited early with {status}");
            }
            std::fs::read_to_string(&addr_file)
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        let listeners = wait_for("GET /listeners", || {
            let r = http(admin, "GET", "/listeners", &[], b"").ok()?;
            (r.status == 200).then_some(r)
        })
        .json();
        let get = |k: &str| -> SocketAddr {
            listeners[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("/listeners has no {k}: {listeners}"))
        };
        let proxy = Proxy {
            outbound: get("outbound"),
            inbound: get("inbound"),
            stats: get("stats"),
            admin,
            proc,
            dir,
        };
        proxy.wait_ready();
        proxy
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self) {
        wait_for("/ready", || {
            (http(self.admin, "GET", "/ready", &[], b"").ok()?.status == 200).then_some(())
        });
    }

    /// The config file the proxy reads (rewrite it to trigger a reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.yaml")
    }

    /// Everything the proxy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The access log entries written so far (stdout, one JSON object per line).
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for an access log entry that satisfies `pred`.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("access log entry: {what}"), || {
            self.access_log().into_iter().find(|e| pred(e))
        })
    }

    /// An admin request.
    pub fn admin(&self, method: &str, path: &str) -> Reply {
        http(self.admin, method, path, &[], b"").expect("admin request")
    }

    /// The value of a Prometheus sample whose line starts with `prefix` (name and labels).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.admin("GET", "/stats/prometheus").text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header (lower-case name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); a tiny client for admin
/// calls and for requests curl cannot make (odd headers). Data-path tests use curl.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(DEADLINE))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..nl]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// What curl printed: the status (`-w %{http_code}`), body and stderr.
#[derive(Debug)]
pub struct CurlOut {
    /// HTTP status code (0 when no response).
    pub status: u16,
    /// The response body.
    pub body: String,
    /// curl's stderr (with `-v`, the conversation).
    pub stderr: String,
    /// Whether curl exited 0.
    pub ok: bool,
}

impl CurlOut {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("curl body not JSON ({e}): {}", self.body))
    }
}

const STATUS_MARK: &str = "\n@@status=";

/// Runs curl with `args` (plus `-sS` and a status trailer) and a 30 s cap.
pub fn curl(args: &[&str]) -> CurlOut {
    curl_with(&mut Command::new("curl"), args)
}

fn curl_with(cmd: &mut Command, args: &[&str]) -> CurlOut {
    let out = cmd
        .args(["-sS", "--max-time", "30", "-w"])
        .arg(format!("{STATUS_MARK}%{{http_code}}"))
        .args(args)
        .output()
        .expect("run curl (install it: apt-get install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = match stdout.rsplit_once(STATUS_MARK) {
        Some((b, s)) => (b.to_string(), s.trim().parse().unwrap_or(0)),
        None => (stdout, 0),
    };
    CurlOut {
        status,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}

/// Runs curl with `args` (plus `-s` and a 120 s cap) and returns its stdout's lines, e.g. one
/// `--write-out` line per URL of a `[1-N]` range.
pub fn curl_lines(args: &[String]) -> Vec<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "120"])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asks `host` through the outbound listener once per key (header `header: key`; one curl
/// process, one connection) and returns key → the answering workload (`x-echo-workload`).
pub fn workload_per_key(
    outbound: SocketAddr,
    host: &str,
    header: &str,
    keys: &[String],
) -> std::collections::HashMap<String, String> {
    let dir = TempDir::new("per-key");
    let cfg_path = dir.path().join("curl.cfg");
    let mut cfg = String::new();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            cfg.push_str("next\n");
        }
        cfg.push_str(&format!(
            "url = \"{}\"\nheader = \"Host: {host}\"\nheader = \"{header}: {k}\"\n\
             output = \"/dev/null\"\nwrite-out = \"%header{{x-echo-workload}}\\n\"\n",
            url(outbound, "/who")
        ));
    }
    std::fs::write(&cfg_path, cfg).expect("curl config");
    let lines = curl_lines(&["-K".into(), cfg_path.display().to_string()]);
    assert_eq!(
        lines.len(),
        keys.len(),
        "curl printed {} lines for {} keys",
        lines.len(),
        keys.len()
    );
    keys.iter().cloned().zip(lines).collect()
}

/// Counts equal lines.
pub fn tally(lines: &[String]) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for l in lines {
        *m.entry(l.clone()).or_insert(0) += 1;
    }
    m
}

/// A config with one HTTP service `echo.local` → `echo_port`, plus `extra` YAML appended.
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

/// `http://ADDR/PATH` for curl.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A loopback port nobody listens on right now (for addresses a config must name in advance).
/// Taken below the kernel's ephemeral range: a port from `bind(0)` is free only until someone
/// binds it again, and the kernel hands the same range out to every test's outgoing
/// connections, one of which once took a sidecar's inbound port before the sidecar started.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_from > LOW + 1_000 {
        let span = ephemeral_from - LOW;
        // Test binaries run side by side: each starts somewhere else in the range.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOW + seed.wrapping_add(n.wrapping_mul(7_919)) % span;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Reads a stream to its end, giving up after `DEADLINE`.
pub fn read_all(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(DEADLINE))?;
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// A network namespace of the test's own (needs root), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with loopback up, or None when this is not root (the caller
    /// decides whether that is a skip or a failure).
    pub fn new(tag: &str) -> Option<Netns> {
        if !is_root() {
            return None;
        }
        let name = format!("hy-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let added = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(added, "ip netns add {name} failed");
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        Some(ns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a shell command inside the namespace; panics with its output when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self
            .command("sh")
            .args(["-c", script])
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "`{script}` in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// curl inside the namespace (same output handling as [`curl`]).
    pub fn curl(&self, args: &[&str]) -> CurlOut {
        let mut c = self.command("curl");
        curl_with(&mut c, args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether the tests run as root (network namespaces and iptables need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `python tests/peers/SCRIPT`, ready for arguments.
pub fn peer_command(script: &str) -> Command {
    let mut cmd = Command::new(peer_python(script));
    // Isolated: no PYTHONPATH or user site-packages can slip other modules in.
    cmd.arg("-I").arg(peer(script));
    cmd
}

/// Starts `SCRIPT server` (a peer that prints `listening on PORT`); returns it and the port.
pub fn start_peer_server(script: &str) -> (Proc, u16) {
    let mut cmd = peer_command(script);
    cmd.arg("server");
    let (proc, port) = spawn_until(&format!("{script} server"), cmd, "listening on ");
    let port = port
        .parse()
        .unwrap_or_else(|e| panic!("{script} printed a bad port `{port}`: {e}"));
    (proc, port)
}

/// Runs a peer client to completion within `deadline` and returns the JSON it printed; fails
/// the test with its output when it exits non-zero, prints no JSON or overruns (then it is
/// killed).
pub fn run_peer(name: &str, cmd: &mut Command, deadline: Duration) -> Value {
    let dir = TempDir::new("peer");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut client = Proc::spawn(
        name,
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file")),
    );
    let status = client.wait_exit(deadline);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{name} exited with {s}:\n{stdout}\n{stderr}"),
        None => panic!("{name} still running after {deadline:?}:\n{stderr}"),
    }
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}\n{stderr}"))
}

/// Resident set size of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the proxy on the config file at `path` until it exits (a config it refuses), every
/// listener on port 0; its exit code and stderr.
pub fn run_proxy_on(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(proxy_bin())
        .arg("--config")
        .arg(path)
        .args([
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0", "--stats-addr", "127.0.0.1:0"])
        .output()
        .expect("run the proxy");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
