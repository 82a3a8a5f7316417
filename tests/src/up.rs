//! `halyard-control up` as a test drives it: started on a directory, its state file read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{control_bin, proxy_bin, wait_for, Proc, TempDir, Value, DEADLINE};

/// A running `up` and the state file it wrote.
pub struct Up {
    /// The running `up`.
    pub proc: Proc,
    /// The state file's JSON.
    pub state: Value,
    log: PathBuf,
    stopped: bool,
}

impl Up {
    /// Runs `up` on `dir` (work dir and logs under `tmp`) until its state file is written.
    pub fn start(tmp: &TempDir, dir: &Path) -> Up {
        let state = tmp.path().join("state.json");
        let log = tmp.path().join("up.log");
        let mut cmd = up_command(tmp, dir);
        cmd.arg("--state-file")
            .arg(&state)
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("halyard-control up", &mut cmd);
        let state = wait_for("up's state file", || {
            if let Some(s) = proc.wait_exit(Duration::ZERO) {
                panic!(
                    "up exited early: {s}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            serde_json::from_str(&std::fs::read_to_string(&state).ok()?).ok()
        });
        Up {
            proc,
            state,
            log,
            stopped: false,
        }
    }

    /// The state of workload `name`.
    pub fn workload(&self, name: &str) -> &Value {
        self.state["workloads"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["name"] == name))
            .unwrap_or_else(|| panic!("no {name} in {}", self.state))
    }

    /// An address of workload `name` (`outbound`, `inbound`, `admin`, ...).
    pub fn addr(&self, name: &str, key: &str) -> SocketAddr {
        self.workload(name)[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}.{key} in {}", self.state))
    }

    /// Where workload `name`'s app listens.
    pub fn apps(&self, name: &str) -> Vec<String> {
        self.workload(name)["app"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What `up` printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then a clean exit.
    pub fn stop(mut self) {
        self.stopped = true;
        self.proc.signal("TERM");
        let status = self
            .proc
            .wait_exit(DEADLINE)
            .expect("up stops after SIGTERM");
        assert_eq!(status.code(), Some(0));
    }
}

/// `halyard-control up DIR` with its work dir under `tmp` and the built proxy.
pub fn up_command(tmp: &TempDir, dir: &Path) -> Command {
    let mut cmd = Command::new(control_bin());
    cmd.arg("up")
        .arg(dir)
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--proxy-bin")
        .arg(proxy_bin())
        .stdin(Stdio::null());
    cmd
}

/// Writes `yaml` as `mesh/mesh.yaml` under `tmp`; returns the directory.
pub fn write_mesh(tmp: &TempDir, yaml: &str) -> PathBuf {
    let dir = tmp.path().join("mesh");
    std::fs::create_dir_all(&dir).expect("mesh dir");
    std::fs::write(dir.join("mesh.yaml"), yaml).expect("mesh.yaml");
    dir
}

/// A test that fails stops `up` with SIGTERM, so that it stops its children too (SIGKILL,
/// as `Proc` would send, leaves them running).
impl Drop for Up {
    fn drop(&mut self) {
        if !self.stopped && self.proc.wait_exit(Duration::ZERO).is_none() {
            // Not `signal`: a failed assertion here would abort the failing test's report.
            let pid = self.proc.pid().to_string();
            let _ = Command::new("kill").args(["-s", "TERM", &pid]).status();
            let _ = self.proc.wait_exit(DEADLINE);
        }
    }
}
