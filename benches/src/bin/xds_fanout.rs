//! xDS fan-out benchmark: N simulated proxies (delta ADS clients, in this process) against a
//! real `halyard-control serve --config DIR` whose directory holds N WorkloadEntries. Measures
//! the control server's memory per connected proxy and, after one edit of a VirtualService
//! that every proxy receives, the time until all N have applied and ACKed it.
//!
//! `cargo run --release -p halyard-benches --bin xds_fanout -- [N] [CONTROL_BIN]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use halyard_xds::ads::{AdsClient, ClientConfig, Mode, Node, ProxyResources, VIRTUAL_HOST_TYPE};
use tokio_util::sync::CancellationToken;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn mesh(n: usize, timeout_ms: u64) -> String {
    let mut y = String::new();
    for i in 0..n {
        y.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: bench}}\nspec: {{address: 10.1.{}.{}, serviceAccount: w{i}, labels: {{app: web}}}}\n---\n",
            i / 250,
            i % 250 + 1
        ));
    }
    y.push_str("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web, namespace: bench}\nspec:\n  hosts: [web.bench.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  workloadSelector: {labels: {app: web}}\n---\n");
    y.push_str(&routes(timeout_ms));
    y
}

fn routes(timeout_ms: u64) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: bench}}\nspec:\n  hosts: [web]\n  http:\n    - route: [{{destination: {{host: web}}}}]\n      timeout: {timeout_ms}ms\n")
}

fn write(dir: &Path, text: &str) {
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join("mesh.yaml")).expect("rename");
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let control_bin: PathBuf = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("halyard-control")
    });
    let dir = std::env::temp_dir().join(format!("halyard-fanout-{}", std::process::id()));
    let cfg = dir.join("cfg");
    std::fs::create_dir_all(&cfg).expect("dir");
    write(&cfg, &mesh(n, 1000));
    let addr_file = dir.join("addr.json");
    let mut control = Command::new(&control_bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.join("ca"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--grpc-tls-addr",
            "127.0.0.1:0",
        ])
        .args(["--monitoring-addr", "127.0.0.1:0", "--log-level", "warn"])
        .arg("--address-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", control_bin.display()));
    let grpc = loop {
        if let Some(g) = std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["grpc"].as_str().map(str::to_string))
        {
            break g;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(control.id());

    // N delta clients; each records when it applied a VirtualHost set with the new timeout.
    let cancel = CancellationToken::new();
    let synced = Arc::new(AtomicUsize::new(0));
    let updated: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).expect("endpoint");
    for i in 0..n {
        let node = Node {
            id: format!("bench/w{i}"),
            ..Default::default()
        };
        let config =
            ClientConfig::new(node, ProxyResources::TYPE_URLS.iter().copied(), Mode::Delta);
        let ch = channel.clone();
        let client = AdsClient::new(config, move || {
            let ch = ch.clone();
            async move { ch.connect().await }
        });
        let (synced, updated) = (synced.clone(), updated.clone());
        let mut seen_initial = false;
        let mut seen_update = false;
        tokio::spawn(client.run(
            move |state| {
                if !seen_initial && state.len() == ProxyResources::TYPE_URLS.len() {
                    seen_initial = true;
                    synced.fetch_add(1, Ordering::Relaxed);
                }
                // The edit moves the route timeout from 1 s to 1.5 s.
                let edited = state.get(VIRTUAL_HOST_TYPE).is_some_and(|vhs| {
                    vhs.values().any(|r| {
                        r.decode::<halyard_xds::VirtualHost>().is_ok_and(|v| {
                            v.routes.iter().any(|rt| {
                                rt.timeout.as_ref().is_some_and(|t| t.nanos == 500_000_000)
                            })
                        })
                    })
                });
                if edited && !seen_update {
                    seen_update = true;
                    updated.lock().expect("lock").push(Instant::now());
                }
                Ok(())
            },
            cancel.clone(),
        ));
    }
    let t0 = Instant::now();
    while synced.load(Ordering::Relaxed) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {} synced",
            synced.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let initial = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_rss = rss_kib(control.id());

    // One policy change every proxy receives.
    let edit = Instant::now();
    write(&cfg, &mesh(n, 1500));
    loop {
        let done = updated.lock().expect("lock").len();
        if done >= n {
            break;
        }
        assert!(
            edit.elapsed() < Duration::from_secs(120),
            "only {done} updated"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let times = updated.lock().expect("lock").clone();
    let last = times
        .iter()
        .max()
        .map(|t| t.duration_since(edit))
        .unwrap_or_default();
    let mut d: Vec<Duration> = times.iter().map(|t| t.duration_since(edit)).collect();
    d.sort();
    let p50 = d[d.len() / 2];
    println!("proxies: {n}");
    println!("initial sync of all: {:.0} ms", initial.as_secs_f64() * 1e3);
    println!(
        "control server RSS: {} KiB idle (config loaded), {} KiB with {n} streams → {:.1} KiB per proxy",
        idle_rss,
        connected_rss,
        (connected_rss.saturating_sub(idle_rss)) as f64 / n as f64
    );
    println!(
        "one edit → applied by all {n}: {:.0} ms (p50 {:.0} ms); includes the 150 ms directory poll and 100 ms debounce",
        last.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e3
    );
    cancel.cancel();
    let _ = control.kill();
    let _ = control.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
