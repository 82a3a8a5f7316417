//! A real sidecar against an ADS server we drive by hand (`ads_demo_server`): it applies what
//! it is given, NACKs a resource it cannot apply while keeping the last good configuration —
//! the NACK visible on both sides — and recovers with the next good push.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use halyard_tests::*;

/// The demo ADS server, driven over its stdin.
struct Ads {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Ads {
    fn start() -> Ads {
        let mut cmd = Command::new(example_bin("ads_demo_server"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("start ads_demo_server (cargo build -p halyard-xds --examples)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let addr = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).expect("stderr") == 0 {
                panic!("ads_demo_server exited before listening");
            }
            if let Some((_, a)) = line.split_once("listening on ") {
                break a.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in stderr.lines() {});
        let proc = Proc::from_child("ads_demo_server", child);
        Ads {
            proc,
            stdin,
            stdout,
            addr,
        }
    }

    fn cmd(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").expect("write command");
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("answer");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["ok"], true, "{line}: {v}");
        v
    }
}

fn service(echo_port: u16, identity: &str) -> String {
    format!(
        r#"{{"name":"echo","hosts":["echo.local"],"ports":[{{"port":80,"protocol":"HTTP","targetPort":{echo_port}}}],"endpoints":[{{"address":"127.0.0.1"{identity}}}]}}"#
    )
}

#[test]
fn sidecar_nacks_what_it_cannot_apply_and_keeps_serving() {
    let echo = Echo::start("xds-echo");
    let mut ads = Ads::start();
    let node = "demo/web";
    ads.cmd(&format!(
        r#"put {node} workload {node} {{"name":"web","namespace":"demo"}}"#
    ));
    ads.cmd(&format!(
        "put {node} service echo {}",
        service(echo.port(), "")
    ));
    ads.cmd(&format!(
        r#"put {node} mesh mesh {{"settings":{{"accessLog":true}}}}"#
    ));
    let proxy = Proxy::start_with("", &["--xds-addr", &ads.addr, "--node-id", node]);
    let get = || curl(&["-H", "Host: echo.local", &url(proxy.outbound, "/x")]);
    assert_eq!(get().status, 200);

    // An endpoint identity that is not a SPIFFE ID: the proxy refuses the push.
    ads.cmd(&format!(
        "put {node} service echo {}",
        service(echo.port(), r#","identity":"not-spiffe""#)
    ));
    let nack = wait_for("the NACK at the server", || {
        let c = ads.cmd("connections");
        let text = c.to_string();
        text.contains("not-spiffe").then_some(text)
    });
    assert!(nack.contains("identity"), "{nack}");
    assert_eq!(get().status, 200, "the last good configuration must stay");
    let dump = proxy.admin("GET", "/config_dump").json();
    let types = &dump["xds"]["types"];
    assert!(types.to_string().contains("not-spiffe"), "{types}");
    assert!(
        proxy
            .metric("halyard_config_reloads_total{result=\"error\"}")
            .unwrap_or(0.0)
            >= 1.0
    );

    // The next good push is applied.
    ads.cmd(&format!(
        "put {node} service echo {}",
        service(echo.port(), "")
    ));
    ads.cmd(&format!(r#"put {node} virtualhost v {{"name":"v","hosts":["alias.local"],"routes":[{{"name":"all","route":{{"service":"echo"}}}}]}}"#));
    wait_for("the alias route", || {
        (curl(&["-H", "Host: alias.local", &url(proxy.outbound, "/y")]).status == 200).then_some(())
    });
    drop(ads.proc);
}
