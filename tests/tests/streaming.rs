//! 1 GiB through the proxy in each direction, over HTTP/1.1 and HTTP/2, with the proxy's RSS
//! sampled throughout: bodies must stream, never be buffered whole.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use halyard_tests::*;

const GIB: u64 = 1 << 30;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Samples `pid`'s RSS every 20 ms until stopped; returns the peak in KiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

fn streaming_proxy(echo: &Echo) -> Proxy {
    // AUTO: the upstream speaks whatever the client speaks, so h2 is h2 end to end.
    Proxy::start(&echo_config(echo.port(), "").replace("protocol: HTTP\n", "protocol: AUTO\n"))
}

fn download(h2: bool) {
    let echo = Echo::start("big-down");
    let proxy = streaming_proxy(&echo);
    let sampler = RssSampler::start(proxy.proc.pid());
    let mut args = vec![
        "-H",
        "Host: echo.local",
        "-o",
        "/dev/null",
        "--max-time",
        "120",
        "-w",
        "%{size_download}",
    ];
    if h2 {
        args.push("--http2-prior-knowledge");
    }
    let u = url(proxy.outbound, &format!("/big?bytes={GIB}"));
    args.push(&u);
    let out = Command::new("curl")
        .arg("-sS")
        .args(&args)
        .output()
        .unwrap();
    let peak = sampler.finish();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(got.trim(), GIB.to_string());
    eprintln!("download (h2={h2}): peak RSS {peak} KiB");
    assert!(peak < RSS_LIMIT_KIB, "peak RSS {peak} KiB");
    let e = proxy.wait_log("download", |e| e["response_code"] == 200);
    assert_eq!(e["bytes_sent"], GIB);
}

fn upload(h2: bool) {
    let echo = Echo::start("big-up");
    let proxy = streaming_proxy(&echo);
    let sampler = RssSampler::start(proxy.proc.pid());
    // `head` feeds curl's stdin; `-T -` streams it (chunked on HTTP/1.1) without reading it all.
    let mut head = Command::new("head")
        .args(["-c", &GIB.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = head.stdout.take().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "120",
        "-H",
        "Host: echo.local",
        "-T",
        "-",
    ]);
    if h2 {
        cmd.arg("--http2-prior-knowledge");
    }
    let out = cmd
        .arg(url(proxy.outbound, "/big-upload"))
        .stdin(stdin)
        .output()
        .unwrap();
    let _ = head.wait();
    let peak = sampler.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["body_bytes"], GIB);
    assert_eq!(doc["method"], "PUT");
    eprintln!("upload (h2={h2}): peak RSS {peak} KiB");
    assert!(peak < RSS_LIMIT_KIB, "peak RSS {peak} KiB");
    let e = proxy.wait_log("upload", |e| e["path"] == "/big-upload");
    assert_eq!(e["bytes_received"], GIB);
}

#[test]
fn download_1gib_http1() {
    download(false);
}

#[test]
fn download_1gib_http2() {
    download(true);
}

#[test]
fn upload_1gib_http1() {
    upload(false);
}

#[test]
fn upload_1gib_http2() {
    upload(true);
}
