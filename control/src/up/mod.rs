//! `halyard-control up DIR`: a whole mesh on loopback as one process tree — the control server
//! (CA + xDS), one sidecar per `WorkloadEntry`, and the echo app behind entries labelled
//! `halyard.dev/demo-app: echo`. Sidecars get certificates and configuration exactly as in
//! production (tokens → CA over TLS, then xDS over mutual TLS). Every child's log lines pass
//! through to stdout prefixed with its name; SIGINT/SIGTERM stops them all gracefully.

mod addrs;
mod children;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use self::addrs::{on_this_machine, Ports, SpareLoopback};
use self::children::{http_status, Children};
use crate::model::{DirectorySource, Doc, Model, ModelSource, Severity, WorkloadEntry};
use crate::translate::{identity, node_id, translate, Placement};

/// The label asking `up` for the built-in echo app behind a workload.
const DEMO_APP_LABEL: &str = "halyard.dev/demo-app";
/// How long the mesh may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts on fresh ports after a sidecar found one of its ports taken.
const START_ATTEMPTS: u32 = 3;

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

/// What every start attempt shares: the checked model and where things are.
struct Setup {
    dir: PathBuf,
    model: Model,
    me: PathBuf,
    proxy_bin: PathBuf,
    work: PathBuf,
    trust_domain: String,
}

/// A mesh whose sidecars are all ready.
struct Mesh {
    children: Children,
    control: serde_json::Value,
    workloads: Vec<Workload>,
}

/// Why a start attempt failed.
enum StartError {
    /// A sidecar's port was taken between the pick and its bind: worth another attempt.
    PortTaken(String),
    /// Anything else.
    Failed(String),
}

impl From<String> for StartError {
    fn from(e: String) -> Self {
        StartError::Failed(e)
    }
}

async fn up(args: UpArgs) -> Result<u8, String> {
    let setup = prepare(&args)?;
    let started = Instant::now();
    let mut attempt = 1;
    let mut mesh = loop {
        match start(&setup).await {
            Ok(mesh) => break mesh,
            Err(StartError::PortTaken(e)) if attempt < START_ATTEMPTS => {
                println!("[up] {e}: a port was taken; starting again on other ports");
                attempt += 1;
            }
            Err(StartError::PortTaken(e) | StartError::Failed(e)) => return Err(e),
        }
    };
    if let Some(path) = &args.state_file {
        write_state(path, &setup, &mesh)?;
    }
    println!(
        "[up] mesh ready in {:.1}s: {} workload(s); try: curl -H 'Host: <service>' http://{}/",
        started.elapsed().as_secs_f64(),
        mesh.workloads.len(),
        mesh.workloads[0].outbound
    );

    // Until a signal, or a child's death.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM: {e}"))?;
    let code = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break 0,
            _ = term.recv() => break 0,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some((name, status)) = mesh.children.exited() {
                    eprintln!("halyard-control up: {name} exited: {status}; stopping the mesh");
                    break 1;
                }
            }
        }
    };
    println!("[up] stopping");
    mesh.children.stop().await;
    Ok(code)
}

/// Checks the directory, the binaries and the work directory.
fn prepare(args: &UpArgs) -> Result<Setup, String> {
    let (model, diags) = DirectorySource::new(&args.dir).load();
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
    let trust_domain = model.mesh.trust_domain().to_string();
    Ok(Setup {
        dir: args.dir.clone(),
        model,
        me,
        proxy_bin,
        work,
        trust_domain,
    })
}

/// Addresses, identities and one CA token per workload; the placement the control server
/// translates with; each app where its sidecar will send inbound requests (the same
/// translation the control server makes, so the two cannot disagree).
fn assign(setup: &Setup) -> Result<(Vec<Workload>, Placement), String> {
    let (model, work) = (&setup.model, &setup.work);
    let mut workloads = Vec::new();
    let mut placement = Placement::default();
    let mut spare = SpareLoopback::new(&model.workload_entries);
    let mut ports = Ports::new();
    let mut tokens = String::from("# generated by halyard-control up\n");
    for we in &model.workload_entries {
        let sa = we.spec.service_account().to_string();
        let token = random_token()?;
        tokens.push_str(&format!(
            "- token: {token}\n  namespace: {}\n  serviceAccount: {sa}\n",
            we.meta.namespace
        ));
        let node = node_id(we);
        private_file(&token_file(work, &we.meta.namespace, &we.meta.name), &token)?;
        let inbound = ports.next()?;
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
            identity: identity(&setup.trust_domain, we),
            name: we.meta.name.clone(),
            namespace: we.meta.namespace.clone(),
            node,
            service_account: sa,
            app: Vec::new(),
            outbound: ports.next()?,
            inbound,
            admin: ports.next()?,
            stats: ports.next()?,
            echo: is_demo_app(we),
        });
    }
    private_file(&work.join("tokens.yaml"), &tokens)?;
    let translation = translate(model, &placement);
    for w in &mut workloads {
        w.app = translation
            .nodes
            .get(&w.node)
            .and_then(|n| n.workload.as_ref())
            .map(|wl| {
                wl.ports
                    .iter()
                    .filter_map(|p| p.app_address.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
    }
    Ok((workloads, placement))
}

fn token_file(work: &Path, namespace: &str, name: &str) -> PathBuf {
    work.join(format!("{namespace}.{name}.token"))
}

/// One attempt: the control server, the apps and the sidecars, until every sidecar is ready.
/// On failure everything started is stopped again.
async fn start(setup: &Setup) -> Result<Mesh, StartError> {
    let (workloads, placement) = assign(setup)?;
    let mut children = Children::default();
    let result = start_children(setup, &workloads, &placement, &mut children).await;
    match result {
        Ok(control) => Ok(Mesh {
            children,
            control,
            workloads,
        }),
        Err(e) => {
            let taken = children.port_taken();
            children.stop().await;
            Err(if taken {
                StartError::PortTaken(e)
            } else {
                StartError::Failed(e)
            })
        }
    }
}

async fn start_children(
    setup: &Setup,
    workloads: &[Workload],
    placement: &Placement,
    children: &mut Children,
) -> Result<serde_json::Value, String> {
    let control = start_control(setup, placement, children).await?;
    let grpc_tls = control["grpc_tls"].as_str().unwrap_or_default().to_string();
    let root = setup.work.join("ca").join("root-cert.pem");
    for w in workloads.iter().filter(|w| w.echo) {
        for app in &w.app {
            let name = format!("{}/{} app", w.namespace, w.name);
            let mut cmd = Command::new(&setup.me);
            cmd.args(["echo", "--name", &w.name, "--listen", &app.to_string()]);
            children.spawn(&name, &mut cmd, false)?;
        }
    }
    for w in workloads {
        let name = format!("{}/{} sidecar", w.namespace, w.name);
        let mut cmd = Command::new(&setup.proxy_bin);
        cmd.args(["--xds-addr", &grpc_tls, "--node-id", &w.node])
            .args(["--ca-addr", &grpc_tls])
            .arg("--ca-root-file")
            .arg(&root)
            .arg("--ca-token-file")
            .arg(token_file(&setup.work, &w.namespace, &w.name))
            .args(["--trust-domain", &setup.trust_domain])
            .args(["--namespace", &w.namespace])
            .args(["--service-account", &w.service_account])
            .args(["--outbound-addr", &w.outbound.to_string()])
            .args(["--inbound-addr", &w.inbound.to_string()])
            .args(["--admin-addr", &w.admin.to_string()])
            .args(["--stats-addr", &w.stats.to_string()]);
        children.spawn(&name, &mut cmd, true)?;
    }
    let started = Instant::now();
    for w in workloads {
        while http_status(w.admin, "/ready").await != Some(200) {
            if let Some((name, status)) = children.exited() {
                return Err(format!("{name} exited during start-up: {status}"));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!("{}/{} did not become ready", w.namespace, w.name));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(control)
}

/// Starts the control server (CA + xDS) and waits for the addresses it bound.
async fn start_control(
    setup: &Setup,
    placement: &Placement,
    children: &mut Children,
) -> Result<serde_json::Value, String> {
    let addr_file = setup.work.join("control.json");
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(&setup.me);
    cmd.arg("serve")
        .arg("--config")
        .arg(&setup.dir)
        .arg("--data-dir")
        .arg(setup.work.join("ca"))
        .arg("--tokens")
        .arg(setup.work.join("tokens.yaml"))
        .args(["--trust-domain", &setup.trust_domain])
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
        cmd.arg("--sidecar").arg(format!("{node}={inbound}"));
    }
    for (node, ip) in &placement.apps {
        cmd.arg("--app").arg(format!("{node}={ip}"));
    }
    children.spawn("control", &mut cmd, false)?;
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            if let Ok(v) = serde_json::from_str(&text) {
                return Ok(v);
            }
        }
        if let Some((_, status)) = children.exited() {
            return Err(format!("the control server exited: {status}"));
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err("the control server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state file: control addresses and, per workload, identity and addresses.
fn write_state(path: &Path, setup: &Setup, mesh: &Mesh) -> Result<(), String> {
    let state = serde_json::json!({
        "control": mesh.control,
        "work_dir": setup.work,
        "workloads": mesh.workloads.iter().map(|w| serde_json::json!({
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
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{state:#}\n")).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
