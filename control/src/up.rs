//! `halyard-control up DIR`: a whole mesh on loopback as one process tree — the control server
//! (CA + xDS), one sidecar per `WorkloadEntry`, and the echo app behind entries labelled
//! `halyard.dev/demo-app: echo`. Sidecars get certificates and configuration exactly as in
//! production (tokens → CA over TLS, then xDS over mutual TLS). Every child's log lines pass
//! through to stdout prefixed with its name; SIGINT/SIGTERM stops them all gracefully.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::model::{load_dir, Doc, Severity, WorkloadEntry};
use crate::translate::{identity, node_id, translate, Placement};

/// The label asking `up` for the built-in echo app behind a workload.
const DEMO_APP_LABEL: &str = "halyard.dev/demo-app";
/// How long the mesh may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long children get to drain on shutdown before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `up` arguments.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The mesh configuration directory (e.g. `examples/quickstart`).
    pub dir: PathBuf,
    /// Write JSON here once every sidecar is ready: control addresses and, per workload, its
    /// identity and app, outbound, inbound, admin and metrics addresses.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Working directory for the CA's root, tokens and logs (default: a new temporary one).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The sidecar binary (default: `halyard-proxy` next to this binary).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
}

/// One workload's sidecar and app.
struct Workload {
    name: String,
    namespace: String,
    node: String,
    identity: String,
    service_account: String,
    app: Vec<SocketAddr>,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    stats: SocketAddr,
    echo: bool,
}

fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Whether `address` is an IP this machine can listen on.
fn on_this_machine(address: &str) -> bool {
    address
        .parse::<IpAddr>()
        .is_ok_and(|ip| TcpListener::bind((ip, 0)).is_ok())
}

/// Loopback addresses for apps whose WorkloadEntry address is not on this machine: one each,
/// so their ports never collide, and none that a WorkloadEntry uses itself.
struct SpareLoopback {
    taken: HashSet<IpAddr>,
    next: u32,
}

impl SpareLoopback {
    /// The first address handed out: 127.100.0.1.
    const FIRST: u32 = u32::from_be_bytes([127, 100, 0, 1]);
    /// The last: 127.100.255.254.
    const LAST: u32 = u32::from_be_bytes([127, 100, 255, 254]);

    fn new(entries: &[Doc<WorkloadEntry>]) -> Self {
        let taken = entries
            .iter()
            .filter_map(|we| we.spec.address.parse().ok())
            .collect();
        SpareLoopback {
            taken,
            next: Self::FIRST,
        }
    }

    fn next(&mut self) -> Result<IpAddr, String> {
        while self.next <= Self::LAST {
            let ip = IpAddr::from(Ipv4Addr::from(self.next));
            self.next += 1;
            if !self.taken.contains(&ip) {
                return Ok(ip);
            }
        }
        Err("no spare loopback address left in 127.100.0.0/16".into())
    }
}

fn random_token() -> Result<String, String> {
    let mut b = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| "no randomness for tokens".to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn private_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn is_demo_app(we: &Doc<WorkloadEntry>) -> bool {
    let wants = |l: &std::collections::BTreeMap<String, String>| {
        l.get(DEMO_APP_LABEL).is_some_and(|v| v == "echo")
    };
    wants(&we.meta.labels) || wants(&we.spec.labels)
}

/// Copies a child's output lines to stdout as `[name] line`.
fn relay<R: AsyncRead + Unpin + Send + 'static>(name: String, out: R) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[{name}] {line}");
        }
    });
}

fn spawn(name: &str, cmd: &mut Command) -> Result<Child, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {name}: {e}"))?;
    if let Some(o) = child.stdout.take() {
        relay(name.to_string(), o);
    }
    if let Some(e) = child.stderr.take() {
        relay(name.to_string(), e);
    }
    Ok(child)
}

/// `GET http://addr/path` → status code (a tiny client for readiness checks).
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .ok()?
}

/// Runs the mesh until SIGINT/SIGTERM or a child's unexpected exit. Exit code: 0 after a
/// signal, 1 when a child failed, 2 when the configuration or start-up failed.
pub async fn run(args: UpArgs) -> u8 {
    match up(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("halyard-control up: {e}");
            2
        }
    }
}

async fn up(args: UpArgs) -> Result<u8, String> {
    let (model, diags) = load_dir(&args.dir);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "{} has errors:\n{}",
            args.dir.display(),
            errors.join("\n")
        ));
    }
    if model.workload_entries.is_empty() {
        return Err(format!(
            "{}: no WorkloadEntry, nothing to run",
            args.dir.display()
        ));
    }
    let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let proxy_bin = args
        .proxy_bin
        .clone()
        .unwrap_or_else(|| me.with_file_name("halyard-proxy"));
    if !proxy_bin.exists() {
        return Err(format!(
            "{} not found (build it: cargo build -p halyard-proxy, or pass --proxy-bin)",
            proxy_bin.display()
        ));
    }
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("halyard-up-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // The control server reads every YAML file under DIR; tokens.yaml must not be one of them.
    let inside = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a.starts_with(b),
        _ => false,
    };
    if inside(&work, &args.dir) {
        return Err(format!(
            "--work-dir {} is inside {}, whose YAML files are all read as mesh configuration; \
             choose a directory outside it",
            work.display(),
            args.dir.display()
        ));
    }
    let td = model.mesh.trust_domain().to_string();

    // Addresses, identities and one CA token per workload.
    let mut workloads = Vec::new();
    let mut placement = Placement::default();
    let mut spare = SpareLoopback::new(&model.workload_entries);
    let mut tokens = String::from("# generated by halyard-control up\n");
    for we in &model.workload_entries {
        let sa = we.spec.service_account().to_string();
        let token = random_token()?;
        tokens.push_str(&format!(
            "- token: {token}\n  namespace: {}\n  serviceAccount: {sa}\n",
            we.meta.namespace
        ));
        let node = node_id(we);
        private_file(
            &work.join(format!("{}.{}.token", we.meta.namespace, we.meta.name)),
            &token,
        )?;
        let addr = || free_addr().map_err(|e| format!("free port: {e}"));
        let inbound = addr()?;
        placement.sidecars.insert(node.clone(), inbound);
        if !on_this_machine(&we.spec.address) {
            let ip = spare.next()?;
            println!(
                "[up] {node}: address {} is not on this machine; its app listens on {ip}",
                we.spec.address
            );
            placement.apps.insert(node.clone(), ip);
        }
        workloads.push(Workload {
            identity: identity(&td, we),
            name: we.meta.name.clone(),
            namespace: we.meta.namespace.clone(),
            node,
            service_account: sa,
            app: Vec::new(),
            outbound: addr()?,
            inbound,
            admin: addr()?,
            stats: addr()?,
            echo: is_demo_app(we),
        });
    }
    // Each app listens where its sidecar will send inbound requests: the same translation the
    // control server makes, so the two cannot disagree.
    let translation = translate(&model, &placement);
    for w in &mut workloads {
        w.app = translation
            .nodes
            .get(&w.node)
            .map(|n| {
                n.workload
                    .ports
                    .iter()
                    .filter_map(|p| p.app_address.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
    }
    let tokens_file = work.join("tokens.yaml");
    private_file(&tokens_file, &tokens)?;

    // The control server.
    let addr_file = work.join("control.json");
    let _ = std::fs::remove_file(&addr_file);
    let mut control_cmd = Command::new(&me);
    control_cmd
        .arg("serve")
        .arg("--config")
        .arg(&args.dir)
        .arg("--data-dir")
        .arg(work.join("ca"))
        .arg("--tokens")
        .arg(&tokens_file)
        .arg("--trust-domain")
        .arg(&td)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--grpc-tls-addr",
            "127.0.0.1:0",
        ])
        .args(["--monitoring-addr", "127.0.0.1:0"])
        .arg("--address-file")
        .arg(&addr_file);
    for (node, inbound) in &placement.sidecars {
        control_cmd
            .arg("--sidecar")
            .arg(format!("{node}={inbound}"));
    }
    for (node, ip) in &placement.apps {
        control_cmd.arg("--app").arg(format!("{node}={ip}"));
    }
    let mut children: Vec<(String, Child)> =
        vec![("control".to_string(), spawn("control", &mut control_cmd)?)];
    let started = Instant::now();
    let control: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            if let Ok(v) = serde_json::from_str(&text) {
                break v;
            }
        }
        if let Ok(Some(status)) = children[0].1.try_wait() {
            return Err(format!("the control server exited: {status}"));
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err("the control server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let grpc_tls = control["grpc_tls"].as_str().unwrap_or_default().to_string();
    let root = work.join("ca").join("root-cert.pem");

    // Apps, then sidecars.
    for w in workloads.iter().filter(|w| w.echo) {
        for app in &w.app {
            let name = format!("{}/{} app", w.namespace, w.name);
            let mut cmd = Command::new(&me);
            cmd.args(["echo", "--name", &w.name, "--listen", &app.to_string()]);
            children.push((name.clone(), spawn(&name, &mut cmd)?));
        }
    }
    for w in &workloads {
        let name = format!("{}/{} sidecar", w.namespace, w.name);
        let mut cmd = Command::new(&proxy_bin);
        cmd.args(["--xds-addr", &grpc_tls, "--node-id", &w.node])
            .args(["--ca-addr", &grpc_tls])
            .arg("--ca-root-file")
            .arg(&root)
            .arg("--ca-token-file")
            .arg(work.join(format!("{}.{}.token", w.namespace, w.name)))
            .args(["--trust-domain", &td, "--namespace", &w.namespace])
            .args(["--service-account", &w.service_account])
            .args(["--outbound-addr", &w.outbound.to_string()])
            .args(["--inbound-addr", &w.inbound.to_string()])
            .args(["--admin-addr", &w.admin.to_string()])
            .args(["--stats-addr", &w.stats.to_string()]);
        children.push((name.clone(), spawn(&name, &mut cmd)?));
    }

    // Ready when every sidecar says so.
    for w in &workloads {
        loop {
            if http_status(w.admin, "/ready").await == Some(200) {
                break;
            }
            if let Some((name, status)) = exited(&mut children) {
                stop(&mut children).await;
                return Err(format!("{name} exited during start-up: {status}"));
            }
            if started.elapsed() > READY_TIMEOUT {
                stop(&mut children).await;
                return Err(format!("{}/{} did not become ready", w.namespace, w.name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let state = serde_json::json!({
        "control": control,
        "work_dir": work,
        "workloads": workloads.iter().map(|w| serde_json::json!({
            "name": w.name,
            "namespace": w.namespace,
            "identity": w.identity,
            "app": w.app.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "outbound": w.outbound.to_string(),
            "inbound": w.inbound.to_string(),
            "admin": w.admin.to_string(),
            "metrics": format!("http://{}/stats/prometheus", w.stats),
        })).collect::<Vec<_>>(),
    });
    if let Some(path) = &args.state_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{state:#}\n"))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!(
        "[up] mesh ready in {:.1}s: {} workload(s); try: curl -H 'Host: <service>' http://{}/",
        started.elapsed().as_secs_f64(),
        workloads.len(),
        workloads[0].outbound
    );

    // Until a signal, or a child's death.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM: {e}"))?;
    let code = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break 0,
            _ = term.recv() => break 0,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some((name, status)) = exited(&mut children) {
                    eprintln!("halyard-control up: {name} exited: {status}; stopping the mesh");
                    break 1;
                }
            }
        }
    };
    println!("[up] stopping");
    stop(&mut children).await;
    Ok(code)
}

fn exited(children: &mut [(String, Child)]) -> Option<(String, std::process::ExitStatus)> {
    children
        .iter_mut()
        .find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (n.clone(), s)))
}

/// SIGTERM to every child (sidecars first, the control server last), then wait; kill what
/// is left after the timeout.
async fn stop(children: &mut [(String, Child)]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for (_, c) in children.iter().rev() {
        if let Some(pid) = c.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for (name, c) in children.iter_mut().rev() {
        match tokio::time::timeout(STOP_TIMEOUT, c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("halyard-control up: {name} did not stop in time; killing it");
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }
}
