//! The processes `up` runs: started with their output relayed line by line, watched, and
//! stopped gracefully.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long children get to drain on shutdown before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The running children, in start order.
#[derive(Default)]
pub(super) struct Children {
    list: Vec<(String, Child)>,
    /// Set when a child reported a listen address already in use.
    port_taken: Arc<AtomicBool>,
}

impl Children {
    /// Starts `cmd` as `name`; its output lines go to stdout prefixed `[name]`. With
    /// `watch_ports`, a line saying an address is in use is remembered (`port_taken`).
    pub fn spawn(
        &mut self,
        name: &str,
        cmd: &mut Command,
        watch_ports: bool,
    ) -> Result<(), String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {name}: {e}"))?;
        let flag = watch_ports.then(|| self.port_taken.clone());
        if let Some(o) = child.stdout.take() {
            relay(name.to_string(), o, flag.clone());
        }
        if let Some(e) = child.stderr.take() {
            relay(name.to_string(), e, flag);
        }
        self.list.push((name.to_string(), child));
        Ok(())
    }

    /// The first child that has exited, with its status.
    pub fn exited(&mut self) -> Option<(String, ExitStatus)> {
        self.list
            .iter_mut()
            .find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (n.clone(), s)))
    }

    /// Whether a watched child could not listen because its address was taken.
    pub fn port_taken(&self) -> bool {
        self.port_taken.load(Ordering::Relaxed)
    }

    /// SIGTERM to every child (last started first), then wait; kill what is left after the
    /// timeout.
    pub async fn stop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for (_, c) in self.list.iter().rev() {
            if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for (name, c) in self.list.iter_mut().rev() {
            if tokio::time::timeout(STOP_TIMEOUT, c.wait()).await.is_err() {
                eprintln!("halyard-control up: {name} did not stop in time; killing it");
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
        self.list.clear();
    }
}

/// Copies a child's output lines to stdout as `[name] line`.
fn relay<R: AsyncRead + Unpin + Send + 'static>(
    name: String,
    out: R,
    port_taken: Option<Arc<AtomicBool>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(flag) = &port_taken {
                if line.contains("Address already in use") {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            println!("[{name}] {line}");
        }
    });
}

/// `GET http://addr/path` → status code (a tiny client for readiness checks).
pub(super) async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
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
