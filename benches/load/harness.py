#!/usr/bin/env python3
"""Halyard load harness: direct vs Halyard vs nginx vs haproxy on loopback.

Started by benches/load/run.sh (which installs the tools and builds the proxy). Starts an
nginx upstream and the proxies under test, each pinned to its own core, drives them with oha,
and writes REPORT.md, latency.svg and results.json. Standard library only.

Core layout (2 cores): the load generator, the upstream and this script on core 0; the proxy
under test on core 1, one worker thread. All traffic goes to 127.0.0.1.

Then, with Halyard, routed and retried: a second Halyard proxy with 50 routes that do not
match before a retried 90/10 subset split, against an upstream path that answers 503 to ~5 %
of requests (see run_routed). Then the cost of telemetry: CPU per request with Istio metrics
and tracing off, metrics on, metrics + tracing at 1 % and at 100 % sampling, spans sent to an
OTLP/HTTP sink in this process (see run_telemetry).

With --control (halyard-control, the CA), mutual TLS between two Halyard sidecars follows:
an mTLS hop against a plaintext hop and direct, and new mTLS connections (handshakes) per
second per core; both sidecars on core 1, one worker thread each (see run_mesh).

With --baseline (another build's halyard-proxy), an A/B of that build against --halyard in
the same run, telemetry off: CPU per request side by side for HTTP/1.1 and h2c and through
the mTLS hop, and callgrind instructions per request (see run_ab); --only-ab runs only that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (benches/load/report.py: REPORT.md and latency.svg)

LOAD_CORE = "0"  # oha, upstream nginx, this script
PROXY_CORE = "1"  # the proxy under test
HOST_H1 = "bench.local"  # Halyard service for the HTTP/1.1 upstream port
HOST_H2 = "bench-h2.local"  # Halyard service for the h2c upstream port
BODY_1K = "x" * 1024
IDLE_CONNS = 1000
CAPACITY_CONNS = 50  # closed loop: 50 connections (h1) / 10 connections x 5 streams (h2)
H2_CAPACITY = (10, 5)
LATENCY_CONNS = 16  # fixed rate: enough workers to never queue at half capacity
H2_LATENCY = (4, 4)
ABORTED = "aborted due to deadline"  # oha's word for requests cut off at the end of -z
FLAKY_PERCENT = 5  # upstream `/flaky` answers 503 to this share of requests (nginx decides)

SCENARIOS = [
    {"key": "h1-0", "title": "HTTP/1.1 keep-alive, 0 B body", "proto": "h1",
     "path": "/0", "host": HOST_H1, "body": 0},
    {"key": "h1-1k", "title": "HTTP/1.1 keep-alive, 1 KiB body", "proto": "h1",
     "path": "/1k", "host": HOST_H1, "body": 1024},
    {"key": "h2-0", "title": "HTTP/2 (h2c prior knowledge), 0 B body", "proto": "h2",
     "path": "/0", "host": HOST_H2, "body": 0},
]


class Interrupted(Exception):
    pass


def log(msg: str) -> None:
    print(f"[harness {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

class Procs:
    """Every process started here; stopped (group-wise) in reverse order on exit."""

    def __init__(self, state_dir: Path | None, nice: int):
        self.items: list[tuple[str, subprocess.Popen]] = []
        self.pidfile = state_dir / "pids" if state_dir else None
        self.nice = nice

    def prefix(self, core: str) -> list[str]:
        p = ["nice", "-n", str(self.nice)] if self.nice else []
        return p + ["taskset", "-c", core]

    def start(self, name: str, argv: list[str], core: str, marker: str, logdir: Path,
              own_group: bool = True) -> subprocess.Popen:
        out = open(logdir / f"{name}.stdout", "ab")
        err = open(logdir / f"{name}.stderr", "ab")
        proc = subprocess.Popen(self.prefix(core) + argv, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=own_group)
        out.close()
        err.close()
        proc.stderr_path = logdir / f"{name}.stderr"
        self.items.append((name, proc))
        if self.pidfile:
            with open(self.pidfile, "a") as f:
                f.write(f"{proc.pid}\t{marker}\n")
        return proc

    def track(self, name: str, proc: subprocess.Popen, marker: str) -> None:
        self.items.append((name, proc))
        if self.pidfile:
            with open(self.pidfile, "a") as f:
                f.write(f"{proc.pid}\t{marker}\n")

    def stop(self, proc: subprocess.Popen, grace: float = 5.0) -> None:
        if proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name, proc in reversed(self.items):
            if proc.poll() is None:
                log(f"stopping {name} (pid {proc.pid})")
                self.stop(proc)
        self.items.clear()


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} "
                               f"opened: {stderr_tail(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting after {timeout}s")


def stderr_tail(proc: subprocess.Popen) -> str:
    path = getattr(proc, "stderr_path", None)
    if not path or not Path(path).exists():
        return ""
    return Path(path).read_text(errors="replace")[-1500:].strip()


def wait_http_ok(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} ({last}): "
                               f"{stderr_tail(proc)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except Exception as e:  # noqa: BLE001 - any failure means: not yet
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s ({last})")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# --------------------------------------------------------------------------- /proc

CLK_TCK = int(subprocess.run(["getconf", "CLK_TCK"], capture_output=True, text=True,
                             check=True).stdout.strip())


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of each process (all its threads), summed, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLK_TCK


def mem_kib(pids: list[int]) -> dict:
    rss = hwm = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return {"rss_kib": rss, "pss_kib": pss, "hwm_kib": hwm}


# --------------------------------------------------------------------------- servers

def nginx_common(tmp: Path, name: str) -> str:
    user = ""
    if os.geteuid() == 0:  # run the workers as the current user, not nobody
        import grp
        import pwd
        user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                f"{grp.getgrgid(os.getegid()).gr_name};")
    t = tmp / f"{name}-temp"
    t.mkdir(exist_ok=True)
    return f"""
{user}
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
"""


def nginx_http_common(tmp: Path, name: str) -> str:
    t = tmp / f"{name}-temp"
    return f"""
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server_tokens off;
"""


def flaky_split() -> str:
    """`$bench_flaky` = 1 for about FLAKY_PERCENT % of the requests, decided by nginx from the
    random `$request_id`: `/flaky` answers 503 then, 200 otherwise (the routed-and-retried
    scenario). split_clients where nginx has it; else a map on the first two hex digits of
    the request id (13/256 = 5.1 %)."""
    try:
        v = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.SubprocessError):
        v = ""
    if "--without-http_split_clients_module" not in v:
        return (f'    split_clients "${{request_id}}" $bench_flaky '
                f'{{ {FLAKY_PERCENT}% 1; * 0; }}')
    return '    map $request_id $bench_flaky { ~^0[0-9a-c] 1; default 0; }'


def upstream_conf(tmp: Path, h1: int, h2: int, tls: int | None = None,
                  cert: tuple[Path, Path] | None = None) -> str:
    locs = f"""
        default_type text/plain;
        location = /0 {{ return 200; }}
        location = /1k {{ return 200 "{BODY_1K}"; }}
        location = /flaky {{ if ($bench_flaky) {{ return 503; }} return 200; }}
        location / {{ return 404; }}
"""
    # HTTPS for the mesh's opaque-TCP scenario (oha tunnels it through CONNECT); TLS 1.3
    # with session tickets, so that the client's own handshakes stay cheap on the load core.
    https = "" if not (tls and cert) else f"""
    server {{
        listen 127.0.0.1:{tls} ssl reuseport backlog=4096;
        ssl_certificate {cert[0]};
        ssl_certificate_key {cert[1]};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:bench:10m;
        ssl_session_tickets on;
{locs}
    }}
"""
    return nginx_common(tmp, "upstream") + f"""
http {{
{nginx_http_common(tmp, "upstream")}
{flaky_split()}
    server {{
        listen 127.0.0.1:{h1} reuseport backlog=4096;
{locs}
    }}
    server {{
        listen 127.0.0.1:{h2} http2 reuseport backlog=4096;
{locs}
    }}
{https}
}}
"""


def nginx_proxy_conf(tmp: Path, h1: int, h2: int, up_h1: int) -> str:
    loc = """
        location / {
            proxy_pass http://upstream_h1;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
"""
    return nginx_common(tmp, "nginx") + f"""
http {{
{nginx_http_common(tmp, "nginx")}
    upstream upstream_h1 {{
        server 127.0.0.1:{up_h1};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen 127.0.0.1:{h1} backlog=4096;
{loc}
    }}
    server {{
        listen 127.0.0.1:{h2} http2 backlog=4096;
{loc}
    }}
}}
"""


def haproxy_conf(h1: int, h2: int, up_h1: int, up_h2: int) -> str:
    return f"""
global
    nbthread 1
    maxconn 8000

defaults
    mode http
    maxconn 8000
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    http-reuse always

frontend fe_h1
    bind 127.0.0.1:{h1}
    default_backend be_h1

frontend fe_h2
    bind 127.0.0.1:{h2} proto h2
    default_backend be_h2

backend be_h1
    server up 127.0.0.1:{up_h1}

backend be_h2
    server up 127.0.0.1:{up_h2} proto h2
"""


def halyard_conf(up_h1: int, up_h2: int) -> str:
    return f"""# Written by benches/load/harness.py
version: load-bench
services:
  - name: bench-h1
    hosts: [{HOST_H1}]
    ports:
      - port: 80
        protocol: HTTP
        targetPort: {up_h1}
    endpoints:
      - address: 127.0.0.1
  - name: bench-h2
    hosts: [{HOST_H2}]
    ports:
      - port: 80
        protocol: HTTP2
        targetPort: {up_h2}
    endpoints:
      - address: 127.0.0.1
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
settings:
  accessLog: false
"""


class Target:
    def __init__(self, key: str, label: str, ports: dict, legs: dict, proc=None,
                 pids=None, notes: str = "", log: Path | None = None):
        self.key, self.label, self.ports, self.legs = key, label, ports, legs
        self.proc = proc
        self._pids = pids
        self.notes = notes
        self.log = log
        self.failure: str | None = None
        self.host: str | None = None  # Host header, when not the scenario's

    def pids(self) -> list[int]:
        return self._pids() if self._pids else []

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def death(self) -> str:
        rc = self.proc.returncode if self.proc else None
        tail = ""
        if self.log and self.log.exists():
            tail = self.log.read_text(errors="replace")[-2000:]
        return f"exited with code {rc}; stderr tail: {tail.strip()!r}"


# --------------------------------------------------------------------------- load

class Oha:
    def __init__(self, path: str, procs: Procs):
        self.path, self.procs = path, procs

    def run(self, target: Target, sc: dict, duration: str | None = None,
            requests: int | None = None, conns=(CAPACITY_CONNS, 1), rate: int | None = None,
            timeout: float = 120.0) -> dict:
        port = target.ports.get(sc["proto"])
        host = target.host or sc["host"]  # mesh targets route by their own Host
        argv = [self.path, "--no-tui", "--output-format", "json", "--worker-threads", "1",
                "--connect-to", f"{host}:80:127.0.0.1:{port}"]
        c, p = conns
        argv += ["-c", str(c)]
        if sc["proto"] == "h2":
            argv += ["--http2", "-p", str(p)]
        if duration:
            argv += ["-z", duration]
        if requests:
            argv += ["-n", str(requests)]
        if rate:
            argv += ["-q", str(rate), "--latency-correction"]
        argv.append(f"http://{host}{sc['path']}")
        return self.exec(argv, f"{host}:80:127.0.0.1:{port}", timeout)

    def tunnel(self, proxy_port: int, authority: str, path: str, conns: int,
               duration: str | None = None, requests: int | None = None,
               timeout: float = 120.0) -> dict:
        """HTTPS through `CONNECT authority` on the proxy at proxy_port, one new connection
        per request (--disable-keepalive): every request is a new TCP tunnel."""
        argv = [self.path, "--no-tui", "--output-format", "json", "--worker-threads", "1",
                "-x", f"http://127.0.0.1:{proxy_port}", "--insecure", "--disable-keepalive",
                "--no-pre-lookup", "-c", str(conns)]
        if duration:
            argv += ["-z", duration]
        if requests:
            argv += ["-n", str(requests)]
        argv.append(f"https://{authority}{path}")
        return self.exec(argv, f"http://127.0.0.1:{proxy_port}", timeout)

    def exec(self, argv: list[str], marker: str, timeout: float) -> dict:
        cmd = self.procs.prefix(LOAD_CORE) + argv
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.procs.track("oha", proc, marker)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise RuntimeError(f"oha timed out after {timeout}s: {' '.join(argv)}")
        except BaseException:
            proc.kill()
            proc.wait(timeout=10)
            raise
        finally:
            self.procs.items = [(n, pr) for n, pr in self.procs.items if pr is not proc]
        if proc.returncode != 0:
            raise RuntimeError(f"oha exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
        data = json.loads(out)
        return summarize(data, " ".join(argv))


def summarize(data: dict, cmd: str) -> dict:
    codes = {str(k): int(v) for k, v in (data.get("statusCodeDistribution") or {}).items()}
    errors = {str(k): int(v) for k, v in (data.get("errorDistribution") or {}).items()}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    bad_status = sum(v for k, v in codes.items() if not k.startswith("2"))
    aborted = errors.get(ABORTED, 0)
    other_errors = sum(v for k, v in errors.items() if k != ABORTED)
    total_s = float(data["summary"]["total"])
    pct = data.get("latencyPercentiles") or {}
    lat = {k: (pct.get(k) * 1e6 if pct.get(k) is not None else None)
           for k in ("p50", "p99", "p99.9")}
    return {
        "cmd": cmd,
        "duration_s": total_s,
        "ok": ok,
        "rps": ok / total_s if total_s > 0 else 0.0,
        "status": codes,
        "errors": errors,
        "bad": bad_status + other_errors,
        "aborted_at_deadline": aborted,
        "latency_us": lat,
        "mean_us": (data["summary"].get("average") or 0) * 1e6,
    }


def idle_connections(port: int, host: str, n: int) -> tuple[list[socket.socket], int]:
    """Opens n connections, sends one keep-alive GET /0 on each, reads the response and
    keeps the connection open. Returns the sockets and how many got a 200."""
    socks, ok = [], 0
    req = f"GET /0 HTTP/1.1\r\nHost: {host}\r\nUser-Agent: halyard-bench\r\n\r\n".encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        head = buf.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        body_len = int(m.group(1)) if m else 0
        have = len(buf.split(b"\r\n\r\n", 1)[1]) if b"\r\n\r\n" in buf else 0
        while have < body_len:
            chunk = s.recv(4096)
            if not chunk:
                break
            have += len(chunk)
        if head.startswith("HTTP/1.1 200"):
            ok += 1
    return socks, ok


# --------------------------------------------------------------------------- main

def tool_versions(oha: str, halyard: str | None, control: str | None = None) -> dict:
    def first(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"unknown ({e})"
    v = {
        "oha": first([oha, "--version"]),
        "nginx": first(["nginx", "-v"]),
        "haproxy": first(["haproxy", "-v"]),
        "python": platform.python_version(),
    }
    if halyard:
        v["halyard"] = first([halyard, "--version"])
    if control:
        v["halyard_control"] = first([control, "--version"])
        v["openssl"] = first(["openssl", "version"])
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--", "proxy", "xds", "certs", "control", "Cargo.lock"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        v["halyard_commit"] = head + (" (+ uncommitted proxy/xds/certs/control changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        pass
    return v


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "clk_tck": CLK_TCK,
    }


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--oha", required=True)
    ap.add_argument("--halyard", help="halyard-proxy binary; omitted = not benchmarked")
    ap.add_argument("--control", help="halyard-control binary (the CA for the mutual-TLS "
                    "scenarios); omitted = those are not run")
    ap.add_argument("--mesh-skipped", help="why the mutual-TLS scenarios cannot run (a problem)")
    ap.add_argument("--only-mesh", action="store_true",
                    help="skip direct/nginx/haproxy/Halyard scenarios (develop the mesh ones)")
    ap.add_argument("--only-routed", action="store_true",
                    help="skip every scenario but routed-and-retried (develop that one)")
    ap.add_argument("--only-telemetry", action="store_true",
                    help="skip every scenario but telemetry cost (develop that one)")
    ap.add_argument("--baseline", help="a baseline halyard-proxy binary: adds the A/B of it "
                    "against --halyard (telemetry off, both in this run)")
    ap.add_argument("--baseline-control", help="the baseline's halyard-control, the CA of "
                    "its sidecars in the A/B's mTLS hop (default: --control for both)")
    ap.add_argument("--only-ab", action="store_true",
                    help="skip every scenario but the A/B of --baseline against --halyard")
    ap.add_argument("--out", required=True)
    ap.add_argument("--state", help="directory for the pid list run.sh cleans up from")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nice", type=int, default=-10)
    args = ap.parse_args()
    if args.only_ab and not (args.baseline and args.halyard):
        ap.error("--only-ab needs --baseline and --halyard")
    if args.baseline_control and not args.baseline:
        ap.error("--baseline-control needs --baseline")

    def on_signal(signum, _frame):
        raise Interrupted(f"signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)

    os.sched_setaffinity(0, {int(LOAD_CORE)})
    if args.nice and os.geteuid() == 0:
        os.nice(args.nice)

    dur = 3 if args.quick else 15
    warm = 1 if args.quick else 3
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="halyard-bench-"))
    procs = Procs(Path(args.state) if args.state else None, args.nice)
    oha = Oha(args.oha, procs)
    started = time.monotonic()
    results: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "tools": tool_versions(args.oha, args.halyard, args.control),
        "load_before": loadavg(),
        "settings": {
            "duration_s": dur, "warmup_s": warm,
            "capacity_concurrency": {"h1": f"{CAPACITY_CONNS} connections",
                                     "h2": f"{H2_CAPACITY[0]} connections x {H2_CAPACITY[1]} streams"},
            "latency_concurrency": {"h1": f"{LATENCY_CONNS} connections",
                                    "h2": f"{H2_LATENCY[0]} connections x {H2_LATENCY[1]} streams"},
            "rate": "half of Halyard's closed-loop rps in the same scenario",
            "cores": {"load_generator_and_upstream": LOAD_CORE, "proxy": PROXY_CORE},
            "nice": args.nice,
            "idle_connections": IDLE_CONNS,
            "mesh": {
                "hop_capacity_concurrency": f"{CAPACITY_CONNS} connections",
                "hop_latency_concurrency": f"{LATENCY_CONNS} connections",
                "hop_rate": "half of the mTLS hop's closed-loop rps",
                "tunnel_concurrency": f"{TUNNEL_CONNS} connections, one request each",
                "cert_ttl": "24h",
                "trust_domain": TRUST_DOMAIN,
            },
            "routed": {
                "capacity_concurrency": f"{CAPACITY_CONNS} connections",
                "latency_concurrency": f"{ROUTED_LATENCY_CONNS} connections",
                "rate": "half of the routed-and-retried path's closed-loop rate",
                "decoy_routes": ROUTED_DECOYS,
                "flaky_percent": FLAKY_PERCENT,
                "retries": "attempts: 3, retryOn: [5xx]",
                "max_retries_lifted": ROUTED_MAX_RETRIES_NB,
                "split": "v1 90 / v2 10",
            },
            "telemetry": {
                "capacity_concurrency": f"{CAPACITY_CONNS} connections",
                "latency_concurrency": f"{LATENCY_CONNS} connections",
                "rate": "half of the slowest configuration's closed-loop rate",
                "rounds": TELEMETRY_ROUNDS["quick" if args.quick else "full"],
                "target_pct": TELEMETRY_TARGET_PCT,
                "flush_wait_s": TELEMETRY_FLUSH_WAIT,
                "concurrent_rounds": TELEMETRY_CONCURRENT_ROUNDS,
            },
        },
        "targets": {},
        "memory": {},
        "scenarios": {},
        "problems": [],
    }
    if args.baseline:
        results["settings"]["ab"] = {
            "rounds": TELEMETRY_CONCURRENT_ROUNDS,
            "scenarios": list(AB_SCENARIOS) + ["mesh-hop"],
            "config": "the telemetry scenario's (a): accessLog false, istioMetrics false, "
                      "no tracing",
            "capacity_concurrency_each": {
                "h1": f"{CAPACITY_CONNS // 2} connections",
                "h2": f"{H2_CAPACITY[0] // 2} connections x {H2_CAPACITY[1]} streams",
                "mesh-hop": f"{CAPACITY_CONNS // 2} connections"},
            "fixed_rate": f"{TELEMETRY_FIXED_SHARE:.0%} of the lowest rate the baseline side "
                          "reached in the closed-loop rounds",
            "instructions_requests": list(INSTR_REQUESTS),
            "instructions_conns": INSTR_CONNS,
        }
    only = [k for k in ("mesh", "routed", "telemetry", "ab") if getattr(args, f"only_{k}")]
    if only:
        results["only"] = only[0]
    if args.mesh_skipped:
        results["problems"].append(f"mesh: the mutual-TLS scenarios did not run: "
                                   f"{args.mesh_skipped}")
    try:
        run(args, tmp, procs, oha, dur, warm, results)
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        return 130
    finally:
        procs.stop_all()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["load_after"] = loadavg()
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, out_dir)
    log(f"wrote {out_dir}/REPORT.md, "
        + ("" if results.get("only") == "ab" else "latency.svg, ")
        + f"results.json in {results['elapsed_s']} s")
    return 0


def run(args, tmp: Path, procs: Procs, oha: Oha, dur: int, warm: int, results: dict) -> None:
    (up_h1, up_h2, hy_out, hy_admin, hy_in, ng_h1, ng_h2, ha_h1, ha_h2,
     up_tls) = free_ports(10)
    marker = str(tmp)
    mesh = bool(args.halyard and args.control)
    cert = self_signed(tmp) if mesh else None
    if not cert:
        up_tls = None

    # ---- upstream
    (tmp / "upstream.conf").write_text(upstream_conf(tmp, up_h1, up_h2, up_tls, cert))
    up = procs.start("upstream", ["nginx", "-p", str(tmp), "-e", str(tmp / "upstream.error.log"),
                                  "-c", str(tmp / "upstream.conf")], LOAD_CORE, marker, tmp)
    wait_port(up_h1, up)
    wait_port(up_h2, up)
    if up_tls:
        wait_port(up_tls, up)
    log(f"upstream nginx on 127.0.0.1:{up_h1} (h1) and :{up_h2} (h2c)"
        + (f" and :{up_tls} (HTTPS, for the mesh TCP scenario)" if up_tls else ""))
    if args.only_mesh:
        if mesh:
            run_mesh(args, tmp, procs, oha, dur, warm, results, up_h1, up_tls)
        return
    if args.only_routed:
        run_routed(args, tmp, procs, oha, dur, warm, results, up_h1)
        return
    if args.only_telemetry:
        run_telemetry(args, tmp, procs, oha, dur, warm, results, up_h1)
        return
    if args.only_ab:
        run_ab(args, tmp, procs, oha, dur, warm, results, up_h1, up_h2)
        return

    targets: list[Target] = [Target(
        "direct", "direct (baseline)", {"h1": up_h1, "h2": up_h2},
        {"h1": "h1", "h2": "h2c"}, notes="client straight to the upstream nginx")]

    # ---- Halyard
    if args.halyard:
        (tmp / "halyard.yaml").write_text(halyard_conf(up_h1, up_h2))
        hlog = tmp / "halyard.stderr"
        hy = procs.start("halyard", [args.halyard, "--config", str(tmp / "halyard.yaml"),
                                     "--outbound-addr", f"127.0.0.1:{hy_out}",
                                     "--admin-addr", f"127.0.0.1:{hy_admin}", "--stats-addr", "127.0.0.1:0",
                                     "--inbound-addr", f"127.0.0.1:{hy_in}",
                                     "--concurrency", "1", "--log-level", "warn"],
                         PROXY_CORE, marker, tmp)
        t = Target("halyard", "Halyard", {"h1": hy_out, "h2": hy_out},
                   {"h1": "h1 → h1", "h2": "h2c → h2c"}, proc=hy, pids=lambda p=hy: [p.pid],
                   notes="--concurrency 1, access log off", log=hlog)
        try:
            wait_http_ok(f"http://127.0.0.1:{hy_admin}/ready", hy)
            wait_port(hy_out, hy)
            targets.append(t)
            log(f"Halyard on 127.0.0.1:{hy_out} (admin :{hy_admin})")
        except RuntimeError as e:
            results["problems"].append(f"Halyard did not start: {e}; {t.death()}")
            log(results["problems"][-1])

    # ---- nginx
    (tmp / "nginx.conf").write_text(nginx_proxy_conf(tmp, ng_h1, ng_h2, up_h1))
    ng = procs.start("nginx", ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx.error.log"),
                               "-c", str(tmp / "nginx.conf")], PROXY_CORE, marker, tmp)
    wait_port(ng_h1, ng)
    wait_port(ng_h2, ng)
    targets.append(Target("nginx", "nginx", {"h1": ng_h1, "h2": ng_h2},
                          {"h1": "h1 → h1", "h2": "h2c → h1"}, proc=ng,
                          pids=lambda p=ng: [p.pid] + children(p.pid),
                          notes="worker_processes 1; proxy_pass cannot speak HTTP/2 upstream",
                          log=tmp / "nginx.error.log"))
    log(f"nginx on 127.0.0.1:{ng_h1} (h1) and :{ng_h2} (h2c)")

    # ---- haproxy
    (tmp / "haproxy.cfg").write_text(haproxy_conf(ha_h1, ha_h2, up_h1, up_h2))
    ha = procs.start("haproxy", ["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")],
                     PROXY_CORE, marker, tmp)
    wait_port(ha_h1, ha)
    wait_port(ha_h2, ha)
    targets.append(Target("haproxy", "haproxy", {"h1": ha_h1, "h2": ha_h2},
                          {"h1": "h1 → h1", "h2": "h2c → h2c"}, proc=ha,
                          pids=lambda p=ha: [p.pid] + children(p.pid),
                          notes="nbthread 1, http-reuse always", log=tmp / "haproxy.stderr"))
    log(f"haproxy on 127.0.0.1:{ha_h1} (h1) and :{ha_h2} (h2c)")

    for t in targets:
        results["targets"][t.key] = {"label": t.label, "legs": t.legs, "notes": t.notes,
                                     "ports": t.ports}
    if not any(t.key == "halyard" for t in targets):
        results["targets"]["halyard"] = {"label": "Halyard", "legs": {}, "notes": "not run",
                                         "ports": {}}

    # ---- memory: idle after start, then with 1,000 idle keep-alive connections
    time.sleep(1.0)
    for t in targets:
        if t.key == "direct":
            continue
        m = {"idle": mem_kib(t.pids())}
        try:
            socks, ok = idle_connections(t.ports["h1"], HOST_H1, IDLE_CONNS)
            time.sleep(1.0)
            m["conns_1k"] = mem_kib(t.pids())
            m["conns_1k_ok"] = ok
            m["conns_1k_alive"] = t.alive()
            for s in socks:
                s.close()
        except OSError as e:
            m["error"] = f"{type(e).__name__}: {e}"
            results["problems"].append(f"{t.label}: 1,000 idle connections failed: {m['error']}")
        results["memory"][t.key] = m
        log(f"{t.label}: RSS idle {m['idle']['rss_kib']} KiB, 1k conns "
            f"{m.get('conns_1k', {}).get('rss_kib')} KiB ({m.get('conns_1k_ok')} ok)")
        time.sleep(0.5)

    # ---- scenarios
    for sc in SCENARIOS:
        res: dict = {"title": sc["title"], "proto": sc["proto"], "path": sc["path"],
                     "host": sc["host"], "targets": {}}
        results["scenarios"][sc["key"]] = res
        cap_conns = H2_CAPACITY if sc["proto"] == "h2" else (CAPACITY_CONNS, 1)
        lat_conns = H2_LATENCY if sc["proto"] == "h2" else (LATENCY_CONNS, 1)
        usable: list[Target] = []
        for t in targets:
            r: dict = {}
            res["targets"][t.key] = r
            if not t.ports.get(sc["proto"]):
                r["na"] = "protocol not supported"
                continue
            if not t.alive():
                r["error"] = f"not running: {t.death()}"
                continue
            # sanity: 20 requests must all answer 200 (wrong Host routing shows here)
            try:
                s = oha.run(t, sc, requests=20, conns=(1, 1), timeout=30)
            except RuntimeError as e:
                r["error"] = f"sanity check failed: {e}"
                results["problems"].append(f"{sc['key']} {t.label}: {r['error']}")
                continue
            if s["ok"] != 20:
                r["error"] = f"sanity check: status {s['status']} errors {s['errors']}"
                results["problems"].append(f"{sc['key']} {t.label}: {r['error']}")
                continue
            usable.append(t)

        # closed-loop capacity
        for t in usable:
            r = res["targets"][t.key]
            try:
                if not t.alive():
                    raise RuntimeError(f"not running: {t.death()}")
                oha.run(t, sc, duration=f"{warm}s", conns=cap_conns, timeout=warm + 60)
                cpu0 = cpu_seconds(t.pids())
                c = oha.run(t, sc, duration=f"{dur}s", conns=cap_conns, timeout=dur + 60)
                cpu = cpu_seconds(t.pids()) - cpu0
                c["proxy_cpu_s"] = cpu if t.key != "direct" else None
                if t.key != "direct" and c["ok"]:
                    c["cpu_us_per_req"] = cpu / c["ok"] * 1e6
                    c["proxy_core_busy"] = cpu / c["duration_s"]
                c["mem_after"] = mem_kib(t.pids()) if t.key != "direct" else None
                r["capacity"] = c
                log(f"{sc['key']} {t.label}: {c['rps']:.0f} rps"
                    + (f", {c.get('cpu_us_per_req', 0):.1f} CPU-us/req, core "
                       f"{100 * c.get('proxy_core_busy', 0):.0f}%" if t.key != "direct" else "")
                    + (f", {c['bad']} errors {c['status']} {c['errors']}" if c["bad"] else ""))
                if c["bad"]:
                    results["problems"].append(
                        f"{sc['key']} {t.label} capacity run: {c['bad']} failed requests: "
                        f"status {c['status']} errors {c['errors']}")
                if not t.alive():
                    raise RuntimeError(f"died during the run: {t.death()}")
            except RuntimeError as e:
                r["error"] = str(e)
                results["problems"].append(f"{sc['key']} {t.label} capacity: {e}")
                log(results["problems"][-1])

        # fixed rate: half of Halyard's capacity (else of the slowest proxy that ran)
        caps = {t.key: res["targets"][t.key].get("capacity", {}).get("rps") for t in usable}
        basis = "halyard"
        if not caps.get("halyard"):
            proxies = {k: v for k, v in caps.items() if k != "direct" and v}
            basis = min(proxies, key=proxies.get) if proxies else "direct"
        base_rps = caps.get(basis) or 0
        rate = max(100, int(round(base_rps / 2 / 100.0)) * 100)
        res["rate"] = rate
        res["rate_basis"] = basis
        log(f"{sc['key']}: fixed rate {rate} req/s (half of {basis})")
        for t in usable:
            r = res["targets"][t.key]
            try:
                if not t.alive():
                    raise RuntimeError(f"not running: {t.death()}")
                cpu0 = cpu_seconds(t.pids())
                lr = oha.run(t, sc, duration=f"{dur}s", conns=lat_conns, rate=rate,
                             timeout=dur + 60)
                cpu = cpu_seconds(t.pids()) - cpu0
                if t.key != "direct" and lr["ok"]:
                    lr["cpu_us_per_req"] = cpu / lr["ok"] * 1e6
                r["latency"] = lr
                lat = lr["latency_us"]
                log(f"{sc['key']} {t.label} @ {rate}/s: p50 {lat['p50']:.0f} us, "
                    f"p99 {lat['p99']:.0f} us, p99.9 {lat['p99.9']:.0f} us"
                    + (f", {lr['bad']} errors" if lr["bad"] else ""))
                if lr["bad"]:
                    results["problems"].append(
                        f"{sc['key']} {t.label} fixed-rate run: {lr['bad']} failed requests: "
                        f"status {lr['status']} errors {lr['errors']}")
                if lr["rps"] < 0.9 * rate:
                    results["problems"].append(
                        f"{sc['key']} {t.label} fixed-rate run reached only {lr['rps']:.0f} of "
                        f"{rate} req/s")
                if not t.alive():
                    raise RuntimeError(f"died during the run: {t.death()}")
            except RuntimeError as e:
                r["error"] = str(e)
                results["problems"].append(f"{sc['key']} {t.label} fixed rate: {e}")
                log(results["problems"][-1])
        # added latency against the direct run at the same rate
        direct = res["targets"].get("direct", {}).get("latency", {}).get("latency_us")
        for k, r in res["targets"].items():
            if k != "direct" and direct and r.get("latency"):
                r["added_us"] = {p: (r["latency"]["latency_us"][p] - direct[p])
                                 if direct[p] is not None else None for p in direct}

    for t in targets:
        if t.key == "direct":
            continue
        results["memory"].setdefault(t.key, {})["end"] = mem_kib(t.pids()) if t.alive() else None
        if not t.alive():
            results["problems"].append(f"{t.label} is not running at the end: {t.death()}")
        elif t.key == "halyard" and t.log and t.log.exists():
            text = t.log.read_text(errors="replace")
            if text.strip():
                lines = text.strip().splitlines()
                results["problems"].append(
                    f"Halyard wrote {len(lines)} line(s) to stderr at level warn; last: "
                    + " | ".join(lines[-3:])[:1500])

    # ---- routed and retried (Halyard only; its own proxy, stopped before the mesh)
    run_routed(args, tmp, procs, oha, dur, warm, results, up_h1)

    # ---- telemetry cost: metrics and tracing on vs off (Halyard only; its own proxies)
    run_telemetry(args, tmp, procs, oha, dur, warm, results, up_h1)

    # ---- A/B of a baseline build against this one (with --baseline; its own proxies)
    if args.baseline:
        run_ab(args, tmp, procs, oha, dur, warm, results, up_h1, up_h2)

    # ---- mutual TLS between two Halyard sidecars (after the others: they stay idle)
    if mesh:
        run_mesh(args, tmp, procs, oha, dur, warm, results, up_h1, up_tls)


# --------------------------------------------------------------------------- mutual TLS

# Two Halyard sidecars with identities from a CA (`halyard-control serve`): the client's
# sidecar A (outbound listener) and the server's sidecar B (inbound listener), both on the
# proxy core with one worker thread each, the CA, oha and the upstream on the load core.
TRUST_DOMAIN = "cluster.local"
SA_CLIENT = "bench-client"
SA_SERVER = "bench-server"
HOST_MESH = "mesh.local"  # A: HTTP service reached over mTLS (h1 → h2 in mTLS → h1)
HOST_PLAIN = "plain.local"  # A: the same upstream through a plaintext B, h1 between sidecars
HOST_PLAIN_H2 = "plain-h2c.local"  # A: the same, h2c between sidecars (the mTLS hop's framing)
HOST_MESH_TCP = "mesh-tcp.local"  # A: TCP service (upstream HTTPS) over mTLS
HOST_PLAIN_TCP = "plain-tcp.local"  # A: the same TCP service through a plaintext B
MESH_TCP_PORT = 443  # service port of the TCP services (the CONNECT authority's port)
TUNNEL_CONNS = 32  # closed loop, new connection per request
MESH_HOP_SCENARIO = {"key": "mesh-hop", "title": "HTTP/1.1 keep-alive through two sidecars",
                     "proto": "h1", "path": "/0", "host": HOST_MESH, "body": 0}
TLS_HANDSHAKE = 22  # TLS record type
EXT_PRE_SHARED_KEY = 41  # TLS 1.3 extension: present in ClientHello (offered) / ServerHello (taken)


def spiffe(sa: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}"


def self_signed(tmp: Path) -> tuple[Path, Path] | None:
    """A P-256 certificate for the upstream's HTTPS port (openssl CLI), or None."""
    cert, key = tmp / "upstream-cert.pem", tmp / "upstream-key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", "/CN=bench-upstream", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        log(f"openssl could not make the upstream's certificate: {e}")
        return None
    return cert, key


def start_ca(control: str, tmp: Path, procs: Procs, marker: str, name: str = "ca") -> dict:
    """halyard-control serve with a tokens file for the two service accounts, its data in
    tmp/`name` (another name: a second CA beside the first)."""
    d = tmp / name
    d.mkdir()
    tokens = "# written by benches/load/harness.py\n"
    for sa in (SA_CLIENT, SA_SERVER):
        tok = f"tok-{sa}-{os.urandom(8).hex()}"
        tokens += f"- token: {tok}\n  namespace: default\n  serviceAccount: {sa}\n"
        (d / f"{sa}.token").write_text(tok + "\n")
        (d / f"{sa}.token").chmod(0o600)
    (d / "tokens.yaml").write_text(tokens)
    addr_file = d / "addr.json"
    proc = procs.start("halyard-control" if name == "ca" else f"halyard-control-{name}", [
        control, "serve", "--data-dir", str(d / "data"), "--tokens", str(d / "tokens.yaml"),
        "--trust-domain", TRUST_DOMAIN, "--grpc-addr", "127.0.0.1:0",
        "--grpc-tls-addr", "127.0.0.1:0", "--address-file", str(addr_file),
        "--log-level", "warn"], LOAD_CORE, marker, tmp)
    root = d / "data" / "root-cert.pem"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"halyard-control exited with {proc.returncode}: "
                               f"{stderr_tail(proc)}")
        try:
            addrs = json.loads(addr_file.read_text())
            if addrs.get("grpc_tls") and root.exists():
                return {"proc": proc, "grpc_tls": addrs["grpc_tls"], "root": root,
                        "tokens": {sa: d / f"{sa}.token" for sa in (SA_CLIENT, SA_SERVER)}}
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"halyard-control wrote no address file in 30 s: {stderr_tail(proc)}")


class Sidecar:
    def __init__(self, name: str, sa: str, ports: tuple[int, int, int]):
        self.name, self.sa = name, sa
        self.outbound, self.admin, self.inbound = ports
        self.proc: subprocess.Popen | None = None

    def start(self, halyard: str, config: str, ca: dict, tmp: Path, procs: Procs,
              marker: str) -> None:
        path = tmp / f"{self.name}.yaml"
        path.write_text(config)
        self.proc = procs.start(self.name, [
            halyard, "--config", str(path),
            "--outbound-addr", f"127.0.0.1:{self.outbound}",
            "--admin-addr", f"127.0.0.1:{self.admin}", "--stats-addr", "127.0.0.1:0",
            "--inbound-addr", f"127.0.0.1:{self.inbound}",
            "--concurrency", "1", "--log-level", "warn",
            "--ca-addr", ca["grpc_tls"], "--ca-root-file", str(ca["root"]),
            "--ca-token-file", str(ca["tokens"][self.sa]), "--trust-domain", TRUST_DOMAIN,
            "--namespace", "default", "--service-account", self.sa, "--cert-ttl", "24h"],
            PROXY_CORE, marker, tmp)

    def wait_ready(self) -> None:
        # /ready answers 200 only once the CA has signed the workload certificate.
        wait_http_ok(f"http://127.0.0.1:{self.admin}/ready", self.proc, timeout=45)
        wait_port(self.inbound, self.proc)
        wait_port(self.outbound, self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid]) if self.proc else 0.0

    def metrics(self) -> dict[str, float]:
        """Prometheus text from the admin port as {'name{labels}': value}."""
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats/prometheus",
                                        timeout=5) as r:
                text = r.read().decode(errors="replace")
        except Exception as e:  # noqa: BLE001
            return {"error": str(e)}  # type: ignore[dict-item]
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
        return out

    def stderr(self) -> str:
        return stderr_tail(self.proc) if self.proc else ""


def metric_sum(m: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for k, v in m.items():
        if not isinstance(v, float) or not (k == name or k.startswith(name + "{")):
            continue
        if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
            total += v
    return total


def metric_delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def mesh_client_config(b_mtls: Sidecar, b_plain: Sidecar, b_plain_tcp: Sidecar,
                       up_h1: int, up_tls: int) -> str:
    mesh_ep = (f"{{address: 127.0.0.1, identity: '{spiffe(SA_SERVER)}', "
               f"sidecarAddress: '127.0.0.1:{b_mtls.inbound}'}}")
    return f"""# Written by benches/load/harness.py: sidecar A (the client's).
version: mesh-bench-client
workload:
  name: {SA_CLIENT}
  namespace: default
  serviceAccount: {SA_CLIENT}
services:
  # mTLS: endpoint with an identity, reached through sidecar B's inbound listener
  - name: mesh-h1
    hosts: [{HOST_MESH}]
    ports: [{{port: 80, protocol: HTTP, targetPort: {up_h1}}}]
    endpoints: [{mesh_ep}]
  - name: mesh-tcp
    hosts: [{HOST_MESH_TCP}]
    ports: [{{port: {MESH_TCP_PORT}, protocol: TCP, targetPort: {up_tls}}}]
    endpoints: [{mesh_ep}]
  # plaintext hop: the endpoint is a plaintext sidecar B's inbound listener, no identity
  - name: plain-h1
    hosts: [{HOST_PLAIN}]
    ports: [{{port: 80, protocol: HTTP, targetPort: {b_plain.inbound}}}]
    endpoints: [{{address: 127.0.0.1}}]
  - name: plain-h2c
    hosts: [{HOST_PLAIN_H2}]
    ports: [{{port: 80, protocol: HTTP2, targetPort: {b_plain.inbound}}}]
    endpoints: [{{address: 127.0.0.1}}]
  - name: plain-tcp
    hosts: [{HOST_PLAIN_TCP}]
    ports: [{{port: {MESH_TCP_PORT}, protocol: TCP, targetPort: {b_plain_tcp.inbound}}}]
    endpoints: [{{address: 127.0.0.1}}]
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
settings:
  accessLog: false
"""


def mesh_server_config(name: str, mode: str, ports: list[tuple[int, str]]) -> str:
    lines = "".join(f"    - {{port: {p}, protocol: {proto}, appAddress: '127.0.0.1:{p}'}}\n"
                    for p, proto in ports)
    return f"""# Written by benches/load/harness.py: sidecar B (the server's), {name}.
version: mesh-bench-{name}
workload:
  name: {SA_SERVER}
  namespace: default
  serviceAccount: {SA_SERVER}
  mtls: {mode}
  ports:
{lines}settings:
  accessLog: false
"""


class HelloSniffer:
    """Counts TLS ClientHellos sent to `port` on loopback (and whether they offer a session
    to resume: pre_shared_key) and ServerHellos from it (and whether the server resumed).
    AF_PACKET needs CAP_NET_RAW; without it, `error` says so. Packets the socket drops are
    simply not counted: the counts are a sample."""

    def __init__(self, port: int):
        self.port = port
        self.counts = {"client_hello": 0, "client_hello_psk": 0,
                       "server_hello": 0, "server_hello_psk": 0}
        self.error: str | None = None
        self._stop = False
        self._thread = None

    def start(self) -> None:
        import threading
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            self.sock.bind(("lo", 0))
            self.sock.settimeout(0.2)
        except (OSError, AttributeError) as e:
            self.error = f"{type(e).__name__}: {e}"
            return
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        self._stop = True
        if self._thread:
            self._thread.join(timeout=5)
            self.sock.close()
        out = dict(self.counts)
        if self.error:
            out["error"] = self.error
        return out

    def _loop(self) -> None:
        while not self._stop:
            try:
                frame, addr = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if addr[2] != socket.PACKET_HOST:  # loopback shows each packet out and in
                continue
            got = self.parse(frame, self.port)
            if got:
                kind, psk = got
                self.counts[kind] += 1
                if psk:
                    self.counts[kind + "_psk"] += 1

    @staticmethod
    def parse(frame: bytes, port: int):
        if len(frame) < 54 or frame[12:14] != b"\x08\x00":
            return None
        ip = frame[14:]
        if ip[9] != 6:  # TCP
            return None
        tcp = ip[(ip[0] & 15) * 4:]
        sport, dport = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")
        data = tcp[(tcp[12] >> 4) * 4:]
        if len(data) < 9 or data[0] != TLS_HANDSHAKE:
            return None
        hs = data[5]
        if hs == 1 and dport == port:
            kind = "client_hello"
        elif hs == 2 and sport == port:
            kind = "server_hello"
        else:
            return None
        try:
            i = 9 + 2 + 32  # record and handshake headers, version, random
            i += 1 + data[i]  # session id
            if kind == "client_hello":
                i += 2 + int.from_bytes(data[i:i + 2], "big")  # cipher suites
                i += 1 + data[i]  # compression methods
            else:
                i += 2 + 1  # cipher suite, compression method
            end = i + 2 + int.from_bytes(data[i:i + 2], "big")
            i += 2
            psk = False
            while i + 4 <= min(end, len(data)):
                t = int.from_bytes(data[i:i + 2], "big")
                n = int.from_bytes(data[i + 2:i + 4], "big")
                psk |= t == EXT_PRE_SHARED_KEY
                i += 4 + n
            return kind, psk
        except IndexError:
            return None


def mesh_target(key: str, label: str, port: int, host: str, sidecars: list[Sidecar],
                notes: str) -> Target:
    t = Target(key, label, {"h1": port}, {}, notes=notes,
               pids=lambda s=sidecars: [x.proc.pid for x in s])
    t.host = host
    t.sidecars = sidecars
    return t


def run_mesh(args, tmp: Path, procs: Procs, oha: Oha, dur: int, warm: int, results: dict,
             up_h1: int, up_tls: int | None) -> None:
    """Scenario 1, the mTLS hop against a plaintext hop and direct; scenario 2, new mTLS
    connections per second (handshakes) against new plaintext connections."""
    marker = str(tmp)
    mesh: dict = {"load_before": loadavg(), "hop": {}, "handshakes": {}, "sidecars": {}}
    results["mesh"] = mesh
    problems = results["problems"]

    def problem(msg: str) -> None:
        problems.append(f"mesh: {msg}")
        log(problems[-1])

    try:
        ca = start_ca(args.control, tmp, procs, marker)
    except RuntimeError as e:
        problem(f"the CA did not start: {e}")
        return
    log(f"CA (halyard-control) on {ca['grpc_tls']} (TLS gRPC)")

    ports = free_ports(12)
    b_mtls = Sidecar("sidecar-b-mtls", SA_SERVER, tuple(ports[0:3]))
    b_plain = Sidecar("sidecar-b-plain", SA_SERVER, tuple(ports[3:6]))
    b_plain_tcp = Sidecar("sidecar-b-plain-tcp", SA_SERVER, tuple(ports[6:9]))
    a = Sidecar("sidecar-a", SA_CLIENT, tuple(ports[9:12]))
    server_ports = [(up_h1, "HTTP")] + ([(up_tls, "TCP")] if up_tls else [])
    configs = {
        b_mtls: mesh_server_config("mtls", "STRICT", server_ports),
        b_plain: mesh_server_config("plain", "DISABLE", [(up_h1, "HTTP")]),
        b_plain_tcp: mesh_server_config("plain-tcp", "DISABLE", [(up_tls or 9, "TCP")]),
        a: mesh_client_config(b_mtls, b_plain, b_plain_tcp, up_h1, up_tls or 9),
    }
    for sc, cfg in configs.items():
        sc.start(args.halyard, cfg, ca, tmp, procs, marker)
    try:
        for sc in configs:
            sc.wait_ready()
    except RuntimeError as e:
        problem(f"a sidecar did not become ready: {e}")
        return
    log(f"sidecars ready: A out :{a.outbound}; B mTLS in :{b_mtls.inbound}, "
        f"B plaintext in :{b_plain.inbound}, B plaintext TCP in :{b_plain_tcp.inbound}")
    for sc in configs:
        mesh["sidecars"][sc.name] = {
            "service_account": sc.sa, "identity": spiffe(sc.sa),
            "inbound": sc.inbound, "outbound": sc.outbound,
            "mtls": {b_mtls: "STRICT", b_plain: "DISABLE", b_plain_tcp: "DISABLE"}.get(sc, "—"),
            "rss_idle_kib": mem_kib([sc.proc.pid])["rss_kib"]}

    try:
        mesh_hop(oha, dur, warm, mesh, problem, up_h1, a, b_mtls, b_plain)
    except RuntimeError as e:
        problem(f"mTLS hop scenario: {e}")
    if up_tls:
        try:
            mesh_handshakes(oha, dur, warm, mesh, problem, a, b_mtls, b_plain_tcp)
        except RuntimeError as e:
            problem(f"handshake scenario: {e}")
    else:
        problem("handshake scenario skipped: no HTTPS upstream (openssl missing?)")

    for sc in configs:
        info = mesh["sidecars"][sc.name]
        info["alive_at_end"] = sc.alive()
        if not sc.alive():
            problem(f"{sc.name} exited with {sc.proc.returncode}: {sc.stderr()}")
            continue
        info["rss_end_kib"] = mem_kib([sc.proc.pid])["rss_kib"]
        m = sc.metrics()
        info["tls_failures"] = {k: v for k, v in m.items()
                                if k.startswith("halyard_tls_failures_total")}
        info["inbound_connections"] = {k: v for k, v in m.items()
                                       if k.startswith("halyard_inbound_connections_total")}
        info["connect_failures"] = metric_sum(m, "halyard_upstream_connect_failures_total")
        info["cert_renewals"] = {k: v for k, v in m.items()
                                 if k.startswith("halyard_cert_renewals_total")}
        fails = metric_sum(m, "halyard_tls_failures_total")
        if sc is b_mtls:
            # Explained: the connection the harness opens to see the port is up (counted as
            # plaintext on a STRICT port) and connections oha cut at a warm-up deadline.
            cut = sum(t.get("warmup", {}).get("aborted_at_deadline", 0)
                      for t in mesh["handshakes"].get("targets", {}).values()
                      if t.get("label", "").startswith("mTLS"))
            info["tls_failures_explained_max"] = cut + 1
            if fails > cut + 1:
                problem(f"{sc.name} counted {fails:.0f} TLS failures, more than the {cut} "
                        f"connections cut at warm-up deadlines + 1 port probe: "
                        f"{info['tls_failures']}")
        elif fails:
            problem(f"{sc.name} counted TLS failures: {info['tls_failures']}")
        text = sc.stderr()
        if text.strip():
            lines = text.strip().splitlines()
            problem(f"{sc.name} wrote {len(lines)} line(s) to stderr at level warn; last: "
                    + " | ".join(lines[-3:])[:1000])
    mesh["load_after"] = loadavg()


def mesh_hop(oha: Oha, dur: int, warm: int, mesh: dict, problem, up_h1: int,
             a: Sidecar, b_mtls: Sidecar, b_plain: Sidecar) -> None:
    sc = MESH_HOP_SCENARIO
    direct = mesh_target("direct", "direct (baseline)", up_h1, HOST_MESH, [],
                         "client straight to the upstream nginx")
    direct.legs = {"h1": "h1"}
    plain = mesh_target("plain-h1", "plaintext hop, h1", a.outbound, HOST_PLAIN, [a, b_plain],
                        "endpoint without identity; B `mtls: DISABLE`; h1 keep-alive pool "
                        "between the sidecars")
    plain.legs = {"h1": "h1 → A → h1 → B → h1"}
    plain_h2 = mesh_target("plain-h2c", "plaintext hop, h2c", a.outbound, HOST_PLAIN_H2,
                           [a, b_plain], "as above, service port `HTTP2`: h2c between the "
                           "sidecars, the same framing as the mTLS hop without TLS")
    plain_h2.legs = {"h1": "h1 → A → h2c → B → h1"}
    mtls = mesh_target("mtls", "mTLS hop", a.outbound, HOST_MESH, [a, b_mtls],
                       "endpoint with identity + sidecarAddress; B `mtls: STRICT`; h1 carried "
                       "as h2 on a pooled mutual-TLS connection")
    mtls.legs = {"h1": "h1 → A → h2 in mTLS → B → h1"}
    targets = [direct, plain, plain_h2, mtls]
    res: dict = {"title": "HTTP/1.1 keep-alive, 0 B body, through sidecar A → sidecar B",
                 "path": sc["path"], "targets": {}, "order": [t.key for t in targets]}
    mesh["hop"] = res
    usable = []
    for t in targets:
        r: dict = {"label": t.label, "legs": t.legs["h1"], "notes": t.notes,
                   "host": t.host, "sidecars": [s.name for s in t.sidecars]}
        res["targets"][t.key] = r
        try:
            s = oha.run(t, sc, requests=20, conns=(1, 1), timeout=30)
        except RuntimeError as e:
            r["error"] = f"sanity check failed: {e}"
            problem(f"hop {t.label}: {r['error']}")
            continue
        if s["ok"] != 20:
            r["error"] = f"sanity check: status {s['status']} errors {s['errors']}"
            problem(f"hop {t.label}: {r['error']}")
            continue
        usable.append(t)

    def measure(t: Target, **kw) -> dict:
        # Scrape the metrics outside the CPU window: the admin port shares the worker.
        m_before = {s.name: s.metrics() for s in t.sidecars}
        cpu_before = {s.name: s.cpu() for s in t.sidecars}
        o = oha.run(t, sc, **kw)
        cpu_after = {s.name: s.cpu() for s in t.sidecars}
        per = {}
        for s in t.sidecars:
            cpu = cpu_after[s.name] - cpu_before[s.name]
            m0, m1 = m_before[s.name], s.metrics()
            per[s.name] = {
                "cpu_s": cpu,
                "cpu_us_per_req": cpu / o["ok"] * 1e6 if o["ok"] else None,
                "inbound_conns": {sec: metric_delta(m0, m1, "halyard_inbound_connections_total",
                                                    security=sec)
                                  for sec in ("mutual_tls", "plaintext", "passthrough")},
                "tls_failures": metric_delta(m0, m1, "halyard_tls_failures_total"),
                "connect_failures": metric_delta(m0, m1,
                                                 "halyard_upstream_connect_failures_total"),
            }
        o["sidecars"] = per
        if t.sidecars and o["ok"]:
            total = sum(p["cpu_s"] for p in per.values())
            o["cpu_us_per_req"] = total / o["ok"] * 1e6
            o["proxy_core_busy"] = total / o["duration_s"]
        return o

    for t in usable:
        r = res["targets"][t.key]
        try:
            oha.run(t, sc, duration=f"{warm}s", conns=(CAPACITY_CONNS, 1), timeout=warm + 60)
            c = measure(t, duration=f"{dur}s", conns=(CAPACITY_CONNS, 1), timeout=dur + 60)
            r["capacity"] = c
            log(f"mesh hop {t.label}: {c['rps']:.0f} rps"
                + (f", {c['cpu_us_per_req']:.1f} CPU-us/req (A+B), core "
                   f"{100 * c['proxy_core_busy']:.0f}%" if c.get("cpu_us_per_req") else "")
                + (f", {c['bad']} errors {c['status']} {c['errors']}" if c["bad"] else ""))
            if c["bad"]:
                problem(f"hop {t.label} capacity run: {c['bad']} failed requests: "
                        f"status {c['status']} errors {c['errors']}")
        except RuntimeError as e:
            r["error"] = str(e)
            problem(f"hop {t.label} capacity: {e}")
    cap = res["targets"]["mtls"].get("capacity", {}).get("rps")
    basis = "mtls"
    if not cap:
        basis, cap = "direct", res["targets"]["direct"].get("capacity", {}).get("rps") or 0
    rate = max(100, int(round(cap / 2 / 100.0)) * 100)
    res["rate"], res["rate_basis"] = rate, basis
    log(f"mesh hop: fixed rate {rate} req/s (half of {basis})")
    for t in usable:
        r = res["targets"][t.key]
        try:
            lr = measure(t, duration=f"{dur}s", conns=(LATENCY_CONNS, 1), rate=rate,
                         timeout=dur + 60)
            r["latency"] = lr
            lat = lr["latency_us"]
            log(f"mesh hop {t.label} @ {rate}/s: p50 {lat['p50']:.0f} us, p99 {lat['p99']:.0f} us"
                + (f", {lr['bad']} errors" if lr["bad"] else ""))
            if lr["bad"]:
                problem(f"hop {t.label} fixed-rate run: {lr['bad']} failed requests: "
                        f"status {lr['status']} errors {lr['errors']}")
            if lr["rps"] < 0.9 * rate:
                problem(f"hop {t.label} fixed-rate run reached only {lr['rps']:.0f} of "
                        f"{rate} req/s")
        except RuntimeError as e:
            r["error"] = str(e)
            problem(f"hop {t.label} fixed rate: {e}")
    d = res["targets"]["direct"].get("latency", {}).get("latency_us")
    for k, r in res["targets"].items():
        if k != "direct" and d and r.get("latency"):
            r["added_us"] = {p: (r["latency"]["latency_us"][p] - d[p])
                             if d[p] is not None and r["latency"]["latency_us"][p] is not None
                             else None for p in d}
    # The mTLS hop must really be mutual TLS: B counted its connection(s) as mutual_tls.
    mc = res["targets"]["mtls"].get("capacity", {}).get("sidecars", {}).get(b_mtls.name, {})
    if mc and not mc["inbound_conns"]["mutual_tls"] and mc["inbound_conns"]["plaintext"]:
        problem("the mTLS hop's sidecar B counted plaintext connections, not mutual_tls")


def mesh_handshakes(oha: Oha, dur: int, warm: int, mesh: dict, problem, a: Sidecar,
                    b_mtls: Sidecar, b_plain_tcp: Sidecar) -> None:
    res: dict = {"title": "New connections through sidecar A → sidecar B (TCP service)",
                 "conns": TUNNEL_CONNS, "targets": {}}
    mesh["handshakes"] = res
    cases = [("plain", "plaintext TCP hop", HOST_PLAIN_TCP, b_plain_tcp),
             ("mtls", "mTLS TCP hop", HOST_MESH_TCP, b_mtls)]
    for key, label, host, b in cases:
        authority = f"{host}:{MESH_TCP_PORT}"
        r: dict = {"label": label, "authority": authority, "sidecars": [a.name, b.name]}
        res["targets"][key] = r
        try:
            s = oha.tunnel(a.outbound, authority, "/0", conns=1, requests=10, timeout=30)
            if s["ok"] != 10:
                raise RuntimeError(f"sanity check: status {s['status']} errors {s['errors']}")
            sniff = HelloSniffer(b.inbound) if key == "mtls" else None
            if sniff:
                sniff.start()
            w = oha.tunnel(a.outbound, authority, "/0", conns=TUNNEL_CONNS,
                           duration=f"{warm}s", timeout=warm + 60)
            if sniff:
                r["hellos_warmup"] = sniff.stop()
            # oha cuts the connections in flight at a -z deadline, some of them mid-handshake
            # between the sidecars (B counts those as TLS failures). The measured run is a
            # request count instead (about `dur` seconds at the warm-up's rate): it ends with
            # every connection complete, so any TLS failure in it is a real one.
            r["warmup"] = {"rps": w["rps"], "ok": w["ok"], "bad": w["bad"],
                           "aborted_at_deadline": w["aborted_at_deadline"]}
            n_req = max(200, int(w["rps"] * dur))
            ma0, mb0 = a.metrics(), b.metrics()  # outside the CPU window
            ca0, cb0 = a.cpu(), b.cpu()
            o = oha.tunnel(a.outbound, authority, "/0", conns=TUNNEL_CONNS,
                           requests=n_req, timeout=4 * dur + 60)
            cpu_a, cpu_b = a.cpu() - ca0, b.cpu() - cb0
            ma1, mb1 = a.metrics(), b.metrics()
            # Connections B accepted during the run (one per request when all is well).
            o["b_inbound_conns"] = {sec: metric_delta(mb0, mb1,
                                                      "halyard_inbound_connections_total",
                                                      security=sec)
                                    for sec in ("mutual_tls", "plaintext", "passthrough")}
            o["tls_failures"] = {"a": metric_delta(ma0, ma1, "halyard_tls_failures_total"),
                                 "b": metric_delta(mb0, mb1, "halyard_tls_failures_total")}
            o["connect_failures_a"] = metric_delta(ma0, ma1,
                                                   "halyard_upstream_connect_failures_total")
            o["cpu_s"] = {"a": cpu_a, "b": cpu_b}
            n = o["ok"]
            o["conns_per_s"] = o["rps"]
            if n:
                o["cpu_us_per_conn"] = {"a": cpu_a / n * 1e6, "b": cpu_b / n * 1e6,
                                        "both": (cpu_a + cpu_b) / n * 1e6}
            o["proxy_core_busy"] = (cpu_a + cpu_b) / o["duration_s"]
            r["run"] = o
            cu = o.get("cpu_us_per_conn", {})
            log(f"mesh {label}: {o['rps']:.0f} conns/s, A {cu.get('a', 0):.0f} / "
                f"B {cu.get('b', 0):.0f} CPU-us/conn, core {100 * o['proxy_core_busy']:.0f}%, "
                f"B accepted {o['b_inbound_conns']}"
                + (f", {o['bad']} errors {o['status']} {o['errors']}" if o["bad"] else ""))
            if o["bad"]:
                problem(f"{label}: {o['bad']} failed connections: status {o['status']} "
                        f"errors {o['errors']}")
            sec = "mutual_tls" if key == "mtls" else "plaintext"
            got = o["b_inbound_conns"][sec]
            if n and got != n:
                problem(f"{label}: B counted {got:.0f} new {sec} connections for "
                        f"{n} requests (expected one per request)")
            if o["tls_failures"]["a"] or o["tls_failures"]["b"]:
                problem(f"{label}: TLS failures during the measured run: "
                        f"A {o['tls_failures']['a']:.0f}, B {o['tls_failures']['b']:.0f}")
        except RuntimeError as e:
            r["error"] = str(e)
            problem(f"{label}: {e}")
    p = res["targets"]["plain"].get("run", {}).get("cpu_us_per_conn")
    m = res["targets"]["mtls"].get("run", {}).get("cpu_us_per_conn")
    if p and m:
        res["handshake_us"] = {side: m[side] - p[side] for side in ("a", "b", "both")}



# --------------------------------------------------------------------------- routed and retried

# A second Halyard proxy (the same binary and flags as the plain one: core 1, one worker,
# access log off) whose host has a virtual host of ROUTED_DECOYS routes that never match the
# benchmark's requests, then one route with retries and a 90/10 split over two subsets of a
# service whose two endpoint entries are both the upstream nginx (labels version v1 / v2).
# The upstream's `/flaky` answers 503 to about FLAKY_PERCENT % of requests (nginx decides,
# from its random request id), `/0` always 200. Its own process, so that the plain Halyard
# numbers stay exactly as they were; stopped before the mesh scenarios.
HOST_ROUTED = "bench-routed.local"
ROUTED_SERVICE = "bench-routed"
# The same service and routes with the retry budget lifted (connectionPool.maxRetries).
HOST_ROUTED_NB = "bench-routed-nobudget.local"
ROUTED_SERVICE_NB = "bench-routed-nobudget"
ROUTED_MAX_RETRIES_NB = 4294967295
ROUTED_DECOYS = 50
ROUTED_LATENCY_CONNS = 32  # a retried request holds its connection through the backoff
ROUTED_RETRY = "{attempts: 3, retryOn: [5xx]}"


def routed_decoy(i: int) -> str:
    """Match conditions of decoy route i: a third each prefix, regex, header (with a prefix
    that does match, so that the header is looked at), none of them matching a benchmark
    request (no x-tenant header; paths /flaky and /0)."""
    if i % 3 == 0:
        return f"{{uri: {{prefix: '/flaky/v{i}/'}}}}"
    if i % 3 == 1:
        return f"{{uri: {{regex: '/(flaky|0|api)-{i}(/[a-z0-9]+)*'}}}}"
    return f"{{uri: {{prefix: /}}, headers: {{x-tenant: {{exact: tenant-{i}}}}}}}"


def routed_conf(up_h1: int) -> str:
    """Two copies of the service and its virtual host: ROUTED_SERVICE with the default retry
    budget (no connectionPool) and ROUTED_SERVICE_NB with maxRetries 2^32-1 (Istio's
    documented default), which lifts it."""
    def service(name: str, host: str, pool: str) -> str:
        return f"""  - name: {name}
    hosts: [{host}]
    ports: [{{port: 80, protocol: HTTP, targetPort: {up_h1}}}]
    endpoints:
      - {{address: 127.0.0.1, labels: {{version: v1}}}}
      - {{address: 127.0.0.1, labels: {{version: v2}}}}
    subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
{pool}"""

    def vhost(name: str, host: str) -> str:
        decoys = "".join(
            f"      - name: decoy-{i:02d}\n"
            f"        match: [{routed_decoy(i)}]\n"
            f"        route: {{service: {name}, subset: v{1 + i % 2}}}\n"
            for i in range(ROUTED_DECOYS))
        return f"""  - name: {name}
    hosts: [{host}]
    routes:
{decoys}      - name: split
        # /flaky: retried; /0: the same route, never fails, so never retried
        match: [{{uri: {{exact: /flaky}}}}, {{uri: {{exact: /0}}}}]
        retries: {ROUTED_RETRY}
        destinations:
          - {{service: {name}, subset: v1, weight: 90}}
          - {{service: {name}, subset: v2, weight: 10}}
"""
    services = (service(ROUTED_SERVICE, HOST_ROUTED, "")
                + service(ROUTED_SERVICE_NB, HOST_ROUTED_NB,
                          f"    connectionPool: {{maxRetries: {ROUTED_MAX_RETRIES_NB}}}\n"))
    vhosts = vhost(ROUTED_SERVICE, HOST_ROUTED) + vhost(ROUTED_SERVICE_NB, HOST_ROUTED_NB)
    return f"""# Written by benches/load/harness.py: the routed-and-retried scenario.
version: load-bench-routed
services:
{services}virtualHosts:
{vhosts}outboundTrafficPolicy:
  mode: REGISTRY_ONLY
settings:
  accessLog: false
"""


def by_cluster(m: dict, name: str) -> dict[str, float]:
    """Samples of `name` by their cluster label."""
    out = {}
    for k, v in m.items():
        if isinstance(v, float) and k.startswith(name + "{"):
            c = re.search(r'cluster="([^"]*)"', k)
            out[c.group(1) if c else k] = out.get(c.group(1) if c else k, 0.0) + v
    return out


def outcome(o: dict) -> dict:
    """Adds to an oha summary: requests answered or failed (not the ones cut at the -z
    deadline), the success rate (2xx share) and the 503s."""
    answered = sum(o["status"].values())
    errs = sum(v for k, v in o["errors"].items() if k != ABORTED)
    o["requests"] = answered + errs
    o["other_errors"] = errs
    o["success_rate"] = o["ok"] / o["requests"] if o["requests"] else None
    o["status_503"] = o["status"].get("503", 0)
    o["rps_all"] = o["requests"] / o["duration_s"] if o["duration_s"] > 0 else 0.0
    return o


def run_routed(args, tmp: Path, procs: Procs, oha: Oha, dur: int, warm: int, results: dict,
               up_h1: int) -> None:
    """Routed and retried: direct to the flaky upstream, through 50 decoy routes + a retried
    90/10 split to it, and the same route on a path that never fails."""
    res: dict = {"load_before": loadavg(), "host": HOST_ROUTED, "decoys": ROUTED_DECOYS,
                 "retries": ROUTED_RETRY, "targets": {}, "order": []}
    results["routed"] = res

    def problem(msg: str) -> None:
        results["problems"].append(f"routed: {msg}")
        log(results["problems"][-1])

    if not args.halyard:
        res["skipped"] = "no Halyard binary (--no-halyard)"
        return
    out, admin, inb = free_ports(3)
    cfg = tmp / "halyard-routed.yaml"
    cfg.write_text(routed_conf(up_h1))
    px = Sidecar("halyard-routed", "", (out, admin, inb))
    px.proc = procs.start("halyard-routed", [
        args.halyard, "--config", str(cfg), "--outbound-addr", f"127.0.0.1:{out}",
        "--admin-addr", f"127.0.0.1:{admin}", "--stats-addr", "127.0.0.1:0", "--inbound-addr", f"127.0.0.1:{inb}",
        "--concurrency", "1", "--log-level", "warn"], PROXY_CORE, str(tmp), tmp)
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/ready", px.proc)
        wait_port(out, px.proc)
    except RuntimeError as e:
        res["error"] = f"the routed Halyard did not start: {e}"
        problem(res["error"])
        procs.stop(px.proc)
        return
    log(f"routed Halyard on 127.0.0.1:{out} (admin :{admin}), {ROUTED_DECOYS} decoy routes")
    res["rss_idle_kib"] = mem_kib([px.proc.pid])["rss_kib"]
    try:
        routed_measure(oha, dur, warm, res, problem, up_h1, px)
        # CPU per 2xx request against the plain Halyard's (HTTP/1.1, 0 B) from this run.
        plain = (results["scenarios"].get("h1-0", {}).get("targets", {}).get("halyard", {})
                 .get("capacity", {}).get("cpu_us_per_req"))
        res["plain_h1_cpu_us_per_req"] = plain
        tg = res["targets"]
        b = tg.get("routed-flaky", {}).get("capacity", {}).get("cpu_us_per_ok")
        bn = tg.get("routed-flaky-nb", {}).get("capacity", {}).get("cpu_us_per_ok")
        c = tg.get("routed-0", {}).get("capacity", {}).get("cpu_us_per_ok")
        res["cpu_ratios"] = {
            "retried_vs_plain": b / plain if b and plain else None,
            "retried_nobudget_vs_plain": bn / plain if bn and plain else None,
            "routed_vs_plain": c / plain if c and plain else None,
            "retried_vs_routed": b / c if b and c else None,
            "retried_nobudget_vs_routed": bn / c if bn and c else None,
        }
    except RuntimeError as e:
        problem(str(e))
    finally:
        res["alive_at_end"] = px.alive()
        if px.alive():
            m = px.metrics()
            res["stats_end"] = {
                "halyard_upstream_rq_retry_total": by_cluster(
                    m, "halyard_upstream_rq_retry_total"),
                "halyard_upstream_rq_retry_overflow_total": by_cluster(
                    m, "halyard_upstream_rq_retry_overflow_total"),
            }
            res["rss_end_kib"] = mem_kib([px.proc.pid])["rss_kib"]
            text = px.stderr()
            if text.strip():
                lines = text.strip().splitlines()
                problem(f"the routed Halyard wrote {len(lines)} line(s) to stderr at level "
                        "warn; last: " + " | ".join(lines[-3:])[:1000])
        else:
            problem(f"the routed Halyard exited with {px.proc.returncode}: {px.stderr()}")
        procs.stop(px.proc)
        res["load_after"] = loadavg()


def routed_measure(oha: Oha, dur: int, warm: int, res: dict, problem, up_h1: int,
                   px: Sidecar) -> None:
    def sc(path: str) -> dict:
        return {"key": "routed", "proto": "h1", "path": path, "host": HOST_ROUTED, "body": 0}
    cases = [
        (mesh_target("direct-flaky", "(a) direct, /flaky", up_h1, HOST_ROUTED, [],
                     f"client straight to the upstream, which answers 503 to "
                     f"~{FLAKY_PERCENT} %"), "/flaky", "h1"),
        (mesh_target("routed-flaky", "(b) Halyard routed + retried, /flaky", px.outbound,
                     HOST_ROUTED, [px], f"{ROUTED_DECOYS} decoy routes, then the split "
                     f"route with retries {ROUTED_RETRY}; default retry budget"),
         "/flaky", "h1 → h1"),
        (mesh_target("routed-flaky-nb", "(b′) the same, maxRetries lifted", px.outbound,
                     HOST_ROUTED_NB, [px], f"as (b), the service with connectionPool "
                     f"maxRetries {ROUTED_MAX_RETRIES_NB} (no retry budget)"),
         "/flaky", "h1 → h1"),
        (mesh_target("direct-0", "direct, /0", up_h1, HOST_ROUTED, [],
                     "the baseline of (c): client straight to the upstream"), "/0", "h1"),
        (mesh_target("routed-0", "(c) Halyard routed, /0", px.outbound, HOST_ROUTED, [px],
                     "the same decoys and split route as (b); /0 never fails, so never "
                     "retried"), "/0", "h1 → h1"),
    ]
    usable = []
    for t, path, legs in cases:
        r: dict = {"label": t.label, "path": path, "legs": legs, "notes": t.notes,
                   "proxy": bool(t.sidecars)}
        res["targets"][t.key] = r
        res["order"].append(t.key)
        try:
            if path == "/0":
                s = outcome(oha.run(t, sc(path), requests=20, conns=(1, 1), timeout=30))
                if s["ok"] != 20:
                    raise RuntimeError(f"status {s['status']} errors {s['errors']}")
            elif not t.sidecars:
                # The upstream must fail now and then, with 503 and nothing else.
                s = outcome(oha.run(t, sc(path), requests=400, conns=(1, 1), timeout=30))
                if set(s["status"]) - {"200", "503"} or s["other_errors"] or not s["status_503"]:
                    raise RuntimeError(f"want 200s and some 503s: status {s['status']} "
                                       f"errors {s['errors']}")
            else:
                m0 = px.metrics()
                s = outcome(oha.run(t, sc(path), requests=200, conns=(1, 1), timeout=60))
                retried = metric_delta(m0, px.metrics(), "halyard_upstream_rq_retry_total")
                if s["ok"] < 198 or not retried:
                    raise RuntimeError(f"want ~all 200 after retries: status {s['status']} "
                                       f"errors {s['errors']}, {retried:.0f} retries")
            r["sanity"] = {"status": s["status"], "errors": s["errors"]}
        except RuntimeError as e:
            r["error"] = f"sanity check failed: {e}"
            problem(f"{t.label}: {r['error']}")
            continue
        usable.append((t, path))

    def measure(t: Target, path: str, **kw) -> dict:
        # Scrape the stats outside the CPU window: the admin port shares the worker.
        m0 = px.metrics() if t.sidecars else {}
        c0 = px.cpu() if t.sidecars else 0.0
        o = outcome(oha.run(t, sc(path), **kw))
        if t.sidecars:
            cpu = px.cpu() - c0
            m1 = px.metrics()
            o["cpu_s"] = cpu
            o["proxy_core_busy"] = cpu / o["duration_s"] if o["duration_s"] > 0 else None
            o["cpu_us_per_ok"] = cpu / o["ok"] * 1e6 if o["ok"] else None
            o["cpu_us_per_req"] = cpu / o["requests"] * 1e6 if o["requests"] else None
            for name, key in (("halyard_upstream_rq_retry_total", "retries"),
                              ("halyard_upstream_rq_retry_overflow_total", "retry_overflows")):
                b0, b1 = by_cluster(m0, name), by_cluster(m1, name)
                o[key] = metric_delta(m0, m1, name)
                o[key + "_by_cluster"] = {c: b1[c] - b0.get(c, 0.0) for c in b1}
            o["retries_per_req"] = o["retries"] / o["requests"] if o["requests"] else None
        return o

    def check(t: Target, path: str, o: dict, what: str) -> None:
        if o["other_errors"]:
            problem(f"{t.label} {what}: {o['other_errors']} requests failed without a "
                    f"response: {o['errors']}")
        if not t.sidecars and path == "/flaky":
            share = o["status_503"] / o["requests"] * 100 if o["requests"] else 0
            if set(o["status"]) - {"200", "503"} or not 0.5 * FLAKY_PERCENT <= share <= 1.5 * FLAKY_PERCENT:
                problem(f"{t.label} {what}: the upstream answered {o['status']}, "
                        f"want ~{FLAKY_PERCENT} % 503")
        elif o["requests"] and o["ok"] < o["requests"]:
            failed = o["requests"] - o["ok"]
            extra = ""
            if t.sidecars:
                extra = (f"; {o['retries']:.0f} retries sent, {o['retry_overflows']:.0f} "
                         "refused by the retry budget (halyard_upstream_rq_retry_overflow_total)")
            problem(f"{t.label} {what}: {failed} of {o['requests']} requests not 2xx "
                    f"(success {100 * o['success_rate']:.2f} %): status {o['status']}{extra}")

    for t, path in usable:
        r = res["targets"][t.key]
        try:
            oha.run(t, sc(path), duration=f"{warm}s", conns=(CAPACITY_CONNS, 1),
                    timeout=warm + 60)
            c = measure(t, path, duration=f"{dur}s", conns=(CAPACITY_CONNS, 1), timeout=dur + 60)
            r["capacity"] = c
            log(f"routed {t.label}: {c['rps']:.0f} rps 2xx of {c['rps_all']:.0f}, success "
                f"{100 * (c['success_rate'] or 0):.2f} %"
                + (f", {c['cpu_us_per_ok']:.1f} CPU-us per 2xx req, core "
                   f"{100 * c['proxy_core_busy']:.0f}%, retries/req "
                   f"{c['retries_per_req'] or 0:.4f}, overflows {c['retry_overflows']:.0f}"
                   if t.sidecars and c.get("cpu_us_per_ok") else ""))
            check(t, path, c, "capacity run")
        except RuntimeError as e:
            r["error"] = str(e)
            problem(f"{t.label} capacity: {e}")
    # The slower of the two retried paths (else direct), so that every path keeps up.
    caps = {k: res["targets"].get(k, {}).get("capacity", {}).get("rps_all")
            for k in ("routed-flaky", "routed-flaky-nb")}
    caps = {k: v for k, v in caps.items() if v}
    if caps:
        basis = min(caps, key=caps.get)
        cap = caps[basis]
    else:
        basis = "direct-flaky"
        cap = res["targets"].get(basis, {}).get("capacity", {}).get("rps_all") or 0
    rate = max(100, int(round(cap / 2 / 100.0)) * 100)
    res["rate"], res["rate_basis"] = rate, basis
    log(f"routed: fixed rate {rate} req/s (half of {basis})")
    for t, path in usable:
        r = res["targets"][t.key]
        try:
            lr = measure(t, path, duration=f"{dur}s", conns=(ROUTED_LATENCY_CONNS, 1),
                         rate=rate, timeout=dur + 60)
            r["latency"] = lr
            lat = lr["latency_us"]
            log(f"routed {t.label} @ {rate}/s: p50 {lat['p50']:.0f} us, p99 {lat['p99']:.0f} us, "
                f"success {100 * (lr['success_rate'] or 0):.2f} %"
                + (f", retries/req {lr['retries_per_req'] or 0:.4f}, overflows "
                   f"{lr['retry_overflows']:.0f}" if t.sidecars else ""))
            check(t, path, lr, "fixed-rate run")
            if lr["rps_all"] < 0.9 * rate:
                problem(f"{t.label} fixed-rate run reached only {lr['rps_all']:.0f} of "
                        f"{rate} req/s")
        except RuntimeError as e:
            r["error"] = str(e)
            problem(f"{t.label} fixed rate: {e}")
    for k, d in (("routed-flaky", "direct-flaky"), ("routed-flaky-nb", "direct-flaky"),
                 ("routed-0", "direct-0")):
        dl = res["targets"].get(d, {}).get("latency", {}).get("latency_us")
        r = res["targets"].get(k, {})
        if dl and r.get("latency"):
            rl = r["latency"]["latency_us"]
            r["added_us"] = {p: rl[p] - dl[p] if rl[p] is not None and dl[p] is not None
                             else None for p in dl}
            r["added_over"] = d


# --------------------------------------------------------------------------- telemetry cost

# What Istio's standard metrics and tracing cost per request: one Halyard proxy per
# configuration (the same binary and flags as the plain one: core 1, `--concurrency 1`,
# access log off), all four up for the whole section and measured in turn, in
# TELEMETRY_ROUNDS rounds whose order alternates (a b c d, d c b a, ...) so that a drift of the
# machine does not favour one configuration. The spans go to an OTLP/HTTP sink in this process
# (core 0), which accepts every export with 200 and an empty ExportTraceServiceResponse.
HOST_TELEMETRY = "bench-telemetry.local"
TELEMETRY_SERVICE = "bench-telemetry"
# More rounds of the short --quick runs: a few-percent difference is otherwise lost in noise.
TELEMETRY_ROUNDS = {"quick": 5, "full": 3}
TELEMETRY_TARGET_PCT = 5.0  # the issue's target: metrics + default tracing under 5 % CPU/req
# The exporter sends a partial batch every second (DEFAULT_FLUSH_INTERVAL in the proxy): wait
# that long after the warm-up (its spans leave before the CPU window opens) and after the
# measured run (the run's last spans are exported inside the window). Every configuration
# waits alike.
TELEMETRY_FLUSH_WAIT = 1.3
TELEMETRY_CONCURRENT_ROUNDS = 5  # (a) and one other configuration loaded at once
TELEMETRY_FIXED_SHARE = 0.4  # fixed-rate side by side: this share of (a)'s side-by-side rps
# key, label, istio metrics, sampling percent (None: no tracing), notes
TELEMETRY_CASES = [
    ("off", "(a) telemetry off", False, None, "`istioMetrics: false`, no `tracing`"),
    ("metrics", "(b) Istio metrics", True, None, "the default: `istio_*` metrics, no tracing"),
    ("trace-1", "(c) metrics + tracing 1 %", True, 1,
     "Istio's default sampling; OTLP/HTTP to the sink"),
    ("trace-100", "(d) metrics + tracing 100 %", True, 100,
     "every request traced (worst case); OTLP/HTTP to the sink"),
]
TRACE_METRICS = ("halyard_trace_spans_exported_total", "halyard_trace_spans_dropped_total",
                 "halyard_trace_exports_total")


def telemetry_conf(key: str, up_h1: int, istio_metrics: bool, sampling: float | None,
                   sink_port: int, up_h2: int | None = None) -> str:
    """The static config of configuration `key`: the h1 upstream as one service, access log
    off, Istio metrics on or off, tracing at `sampling` % to the sink or none. With `up_h2`
    the service's port is `HTTP2` to the upstream's h2c port instead (the A/B's h2c case)."""
    port = (f"{{port: 80, protocol: HTTP, targetPort: {up_h1}}}" if up_h2 is None
            else f"{{port: 80, protocol: HTTP2, targetPort: {up_h2}}}")
    settings = "  accessLog: false\n"
    if not istio_metrics:
        settings += "  istioMetrics: false\n"
    if sampling is not None:
        settings += (f"  tracing: {{sampling: {sampling}, otlpEndpoint: "
                     f"'http://127.0.0.1:{sink_port}', protocol: HTTP}}\n")
    return f"""# Written by benches/load/harness.py: the telemetry-cost scenario.
version: load-bench-telemetry-{key}
services:
  - name: {TELEMETRY_SERVICE}
    hosts: [{HOST_TELEMETRY}]
    ports: [{port}]
    endpoints:
      - {{address: 127.0.0.1}}
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
settings:
{settings}"""


class OtlpSink:
    """An OTLP/HTTP trace collector that keeps nothing: reads the body of `POST /v1/traces`
    and answers 200 with an empty ExportTraceServiceResponse (an empty protobuf body); counts
    requests and body bytes. Anything else gets 404 and is counted as `other`. Threads of this
    process, so on the load core."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "bytes": 0, "other": 0}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporter expects

            def do_POST(self):  # noqa: N802 - http.server's naming
                n = sink.read_body(self)
                ok = self.path.split("?", 1)[0] == "/v1/traces"
                with sink.lock:
                    if ok:
                        sink.counts["requests"] += 1
                        sink.counts["bytes"] += n
                    else:
                        sink.counts["other"] += 1
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "application/x-protobuf" if ok
                                 else "text/plain")
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self):  # noqa: N802
                with sink.lock:
                    sink.counts["other"] += 1
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def read_body(h) -> int:
        """Reads a request body (Content-Length or chunked) and returns its size."""
        if "chunked" in (h.headers.get("transfer-encoding") or "").lower():
            n = 0
            while True:
                size = int(h.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return n
                n += len(h.rfile.read(size))
                h.rfile.readline()
        return len(h.rfile.read(int(h.headers.get("content-length") or 0)))

    def start(self) -> None:
        self.thread.start()

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.counts)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def by_label(m: dict, name: str, label: str) -> dict[str, float]:
    """Samples of `name` summed by the value of one label ("" when it has none)."""
    out: dict[str, float] = {}
    for k, v in m.items():
        if isinstance(v, float) and (k == name or k.startswith(name + "{")):
            c = re.search(label + r'="([^"]*)"', k)
            key = c.group(1) if c else ""
            out[key] = out.get(key, 0.0) + v
    return out


def trace_counters(m: dict) -> dict:
    """The tracer's own counters from one scrape."""
    return {"exported": metric_sum(m, "halyard_trace_spans_exported_total"),
            "dropped": by_label(m, "halyard_trace_spans_dropped_total", "reason"),
            "exports": by_label(m, "halyard_trace_exports_total", "result")}


def trace_delta(m0: dict, m1: dict) -> dict:
    a, b = trace_counters(m0), trace_counters(m1)
    return {"exported": b["exported"] - a["exported"],
            "dropped": {r: v - a["dropped"].get(r, 0.0) for r, v in b["dropped"].items()},
            "exports": {r: v - a["exports"].get(r, 0.0) for r, v in b["exports"].items()}}


def median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def run_telemetry(args, tmp: Path, procs: Procs, oha: Oha, dur: int, warm: int,
                  results: dict, up_h1: int) -> None:
    """Telemetry cost: CPU per request of one proxy with telemetry off, Istio metrics on,
    metrics + tracing at 1 % and at 100 %, against the h1 upstream's `/0`."""
    rounds = TELEMETRY_ROUNDS["quick" if args.quick else "full"]
    res: dict = {"load_before": loadavg(), "host": HOST_TELEMETRY, "rounds": rounds,
                 "target_pct": TELEMETRY_TARGET_PCT, "flush_wait_s": TELEMETRY_FLUSH_WAIT,
                 "targets": {}, "order": []}
    results["telemetry"] = res

    def problem(msg: str) -> None:
        results["problems"].append(f"telemetry: {msg}")
        log(results["problems"][-1])

    if not args.halyard:
        res["skipped"] = "no Halyard binary (--no-halyard)"
        return
    sink = OtlpSink()
    sink.start()
    res["sink"] = {"addr": f"127.0.0.1:{sink.port}"}
    log(f"OTLP/HTTP sink on 127.0.0.1:{sink.port}")
    proxies: dict[str, Sidecar] = {}
    try:
        for key, label, metrics_on, sampling, notes in TELEMETRY_CASES:
            r: dict = {"label": label, "notes": notes, "istio_metrics": metrics_on,
                       "sampling": sampling}
            res["targets"][key] = r
            res["order"].append(key)
            name = f"halyard-telemetry-{key}"
            cfg = tmp / f"{name}.yaml"
            cfg.write_text(telemetry_conf(key, up_h1, metrics_on, sampling, sink.port))
            try:
                px = start_telemetry_proxy(args, tmp, procs, key, name)
            except RuntimeError as e:
                r["error"] = f"{label}: {e}"
                problem(r["error"])
                continue
            r["settings"] = telemetry_settings(px.admin)
            r["rss_idle_kib"] = mem_kib([px.proc.pid])["rss_kib"]
            proxies[key] = px
            log(f"telemetry {label}: Halyard on 127.0.0.1:{px.outbound} (admin :{px.admin}), "
                f"settings {json.dumps(r['settings'])}")
        if proxies:
            def launch(key: str, name: str) -> Sidecar:
                return start_telemetry_proxy(args, tmp, procs, key, name)

            telemetry_measure(oha, dur, warm, res, problem, sink, proxies, launch,
                              lambda px: procs.stop(px.proc))
        # The measured proxies stay up but idle; the sink stays for (c) and (d).
        telemetry_instructions(args, tmp, procs, oha, res, problem)
        plain = (results["scenarios"].get("h1-0", {}).get("targets", {}).get("halyard", {})
                 .get("capacity", {}).get("cpu_us_per_req"))
        res["plain_h1_cpu_us_per_req"] = plain
    except RuntimeError as e:
        problem(str(e))
    finally:
        res["sink"].update(sink.snapshot())
        for key, px in proxies.items():
            r = res["targets"][key]
            r["alive_at_end"] = px.alive()
            if px.alive():
                r["stats_end"] = trace_counters(px.metrics())
                r["rss_end_kib"] = mem_kib([px.proc.pid])["rss_kib"]
                text = px.stderr()
                if text.strip():
                    lines = text.strip().splitlines()
                    problem(f"{r['label']}: the proxy wrote {len(lines)} line(s) to stderr at "
                            "level warn; last: " + " | ".join(lines[-3:])[:1000])
                dropped = sum(r["stats_end"]["dropped"].values())
                if dropped:
                    problem(f"{r['label']}: {dropped:.0f} spans dropped over the section "
                            f"(halyard_trace_spans_dropped_total: "
                            f"{json.dumps(r['stats_end']['dropped'])})")
            else:
                problem(f"{r['label']}: the proxy exited with {px.proc.returncode}: "
                        f"{px.stderr()}")
        for px in proxies.values():
            procs.stop(px.proc)
        sink.stop()
        res["load_after"] = loadavg()


def start_telemetry_proxy(args, tmp: Path, procs: Procs, key: str, name: str) -> Sidecar:
    """Starts a proxy with the configuration of `key` (written by run_telemetry) on the proxy
    core; raises RuntimeError when it does not come up."""
    return start_proxy(args.halyard, tmp / f"halyard-telemetry-{key}.yaml", tmp, procs, name)


def start_proxy(halyard: str, config: Path, tmp: Path, procs: Procs, name: str) -> Sidecar:
    """Starts the proxy binary `halyard` on `config` on the proxy core, the flags of every
    Halyard here (`--concurrency 1`, log level warn, ports of its own); raises RuntimeError
    when it does not come up."""
    out, admin, inb = free_ports(3)
    px = Sidecar(name, "", (out, admin, inb))
    px.proc = procs.start(name, [
        halyard, "--config", str(config),
        "--outbound-addr", f"127.0.0.1:{out}", "--admin-addr", f"127.0.0.1:{admin}",
        "--stats-addr", "127.0.0.1:0", "--inbound-addr", f"127.0.0.1:{inb}",
        "--concurrency", "1", "--log-level", "warn"], PROXY_CORE, str(tmp), tmp)
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/ready", px.proc)
        wait_port(out, px.proc)
    except RuntimeError as e:
        procs.stop(px.proc)
        raise RuntimeError(f"the proxy did not start: {e}") from e
    return px


# Two runs per configuration under callgrind; their difference cancels start-up and warm-up.
INSTR_REQUESTS = (2_000, 12_000)
INSTR_CONNS = 8


def callgrind_total(path: Path) -> int | None:
    """The instruction total callgrind wrote to `path` when the process exited."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def telemetry_instructions(args, tmp: Path, procs: Procs, oha: Oha, res: dict,
                           problem) -> None:
    """User-space instructions per request of each telemetry configuration, counted by
    callgrind: deterministic where CPU time on a shared 2-core VM is not, but blind to the
    kernel's share (system calls, loopback TCP), which telemetry does not change."""
    out: dict = {"requests": list(INSTR_REQUESTS), "conns": INSTR_CONNS, "targets": {}}
    res["instructions"] = out
    valgrind = shutil.which("valgrind")
    if not valgrind:
        out["skipped"] = "valgrind not installed"
        return
    out["tool"] = subprocess.run([valgrind, "--version"], capture_output=True,
                                 text=True).stdout.strip()
    sc = {"key": "telemetry", "proto": "h1", "path": "/0", "host": HOST_TELEMETRY, "body": 0}
    for key, label, _, _, _ in TELEMETRY_CASES:
        cfg = tmp / f"halyard-telemetry-{key}.yaml"
        if not cfg.exists():
            continue
        got = callgrind_per_request(valgrind, args.halyard, cfg, f"callgrind-{key}", label, sc,
                                    tmp, procs, oha, problem)
        if got:
            out["targets"][key] = {"label": label, **got}
            log(f"instructions {label}: {got['per_request']:,.0f} per request")
    base = out["targets"].get("off", {}).get("per_request")
    for r in out["targets"].values():
        r["overhead_pct"] = 100 * (r["per_request"] / base - 1) if base else None


def callgrind_per_request(valgrind: str, halyard: str, cfg: Path, name: str, label: str,
                          sc: dict, tmp: Path, procs: Procs, oha: Oha, problem) -> dict | None:
    """User-space instructions per request of the proxy binary `halyard` on `cfg` for the
    requests of `sc`: two runs under callgrind, INSTR_REQUESTS[0] and [1] requests with
    INSTR_CONNS connections, each in a fresh process stopped with SIGTERM (callgrind writes
    its counts at exit); the difference of the totals over the difference of the requests
    cancels start-up and warm-up. None (and a problem) when a run fails."""
    totals: list[int] = []
    for n in INSTR_REQUESTS:
        dump = tmp / f"{name}-{n}.out"
        port, admin, inb = free_ports(3)
        proc = procs.start(f"{name}-{n}", [
            valgrind, "--tool=callgrind", f"--callgrind-out-file={dump}", halyard,
            "--config", str(cfg), "--outbound-addr", f"127.0.0.1:{port}",
            "--admin-addr", f"127.0.0.1:{admin}", "--stats-addr", "127.0.0.1:0",
            "--inbound-addr", f"127.0.0.1:{inb}", "--concurrency", "1",
            "--log-level", "warn"], PROXY_CORE, str(tmp), tmp)
        try:
            wait_http_ok(f"http://127.0.0.1:{admin}/ready", proc, timeout=120)
            wait_port(port, proc, timeout=60)
            t = Target(name, label, {sc["proto"]: port}, {})
            t.host = sc["host"]
            s = outcome(oha.run(t, sc, requests=n, conns=(INSTR_CONNS, 1), timeout=900))
            if s["ok"] != n:
                raise RuntimeError(f"{s['ok']} of {n} answered 2xx: {s['status']}")
        except RuntimeError as e:
            problem(f"instructions, {label}, {n} requests: {e}")
            procs.stop(proc)
            return None
        # SIGTERM: the proxy drains and exits, and callgrind writes its counts.
        procs.stop(proc, grace=120)
        total = callgrind_total(dump)
        if total is None:
            problem(f"instructions, {label}: callgrind wrote no total to {dump}")
            return None
        totals.append(total)
    per = (totals[1] - totals[0]) / (INSTR_REQUESTS[1] - INSTR_REQUESTS[0])
    return {"totals": totals, "per_request": per}


def telemetry_settings(admin: int) -> dict:
    """`settings` as the proxy applied them, from the admin port's /config_dump."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as r:
            dump = json.loads(r.read().decode(errors="replace"))
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    return (dump.get("config") or {}).get("settings") or {}


def telemetry_concurrent(oha: Oha, dur: int, warm: int, res: dict, problem, launch, stop,
                         sc: dict, usable: list[str], rate: int | None = None) -> None:
    """Each configuration against (a) at the same time: two oha runs of half the connections
    each, both proxies on the proxy core, CPU per 2xx request of each over the same window. The
    other tenants' interference then hits both sides of a ratio alike, which sequential rounds
    cannot promise on a shared machine. Closed loop (`res["concurrent"]`), or with `rate` both
    at that many requests per second (`res["concurrent_fixed"]`): the same load on both, as
    Istio measures a proxy's CPU at a given request rate.

    Every round starts both proxies afresh (`launch`, `stop`): runs that reused one
    long-lived process per configuration (which had also served the sequential rounds)
    differed from each other by several percent while each run's rounds agreed, so a
    process's state or placement weighed in; the median over fresh pairs leaves that out.
    (a) against a second (a) (key `off`) comes first: the difference two identical proxies
    show, the noise floor."""
    if "off" not in usable:
        return
    out = side_by_side(oha, dur, warm, problem, launch, stop, sc, usable, "off", rate=rate)
    res["concurrent_fixed" if rate else "concurrent"] = out
    ov = out["by_key"].get("trace-1", {}).get("overhead_pct_median")
    out["target_met"] = ov < TELEMETRY_TARGET_PCT if ov is not None else None


def side_by_side(oha: Oha, dur: int, warm: int, problem, launch, stop, sc: dict,
                 keys: list[str], base: str, rate: int | None = None,
                 conns: tuple[int, int] | None = None, what: str = "telemetry",
                 latency: bool = False) -> dict:
    """Each of `keys` against `base` at the same time, TELEMETRY_CONCURRENT_ROUNDS rounds
    each: two oha runs of `sc` (closed loop, or with `rate` both at that many requests per
    second), `conns` each (default half of CAPACITY_CONNS, one stream), CPU per 2xx request of
    each proxy over the same window. `launch(key, name)` starts a fresh proxy (anything with
    `outbound` and `cpu()`) for every side of every round, the two started in alternating
    order; `stop(proxy)` ends it. `base` among `keys` is `base` against itself (the noise
    floor). With `latency`, each round also keeps both sides' latency percentiles."""
    c, p = conns or (max(1, CAPACITY_CONNS // 2), 1)
    out: dict = {"rounds": TELEMETRY_CONCURRENT_ROUNDS, "conns_each": c, "by_key": {},
                 "rate_each": rate, "fresh_processes": True}
    if p > 1:
        out["streams_each"] = p
    for key in keys:
        ratios, rows = [], []
        for rnd in range(TELEMETRY_CONCURRENT_ROUNDS):
            # Sides: the baseline and the configuration measured, started in alternating order.
            sides = [("base", base), ("test", key)]
            if rnd % 2:
                sides.reverse()
            fresh: dict = {}
            try:
                for side, k in sides:
                    fresh[side] = launch(k, f"halyard-{what}-{k}-{side}-{rnd + 1}")
                targets = {}
                for side, px in fresh.items():
                    targets[side] = mesh_target(side, side, px.outbound, sc["host"], [px], "")
                    targets[side].ports[sc["proto"]] = px.outbound
                results: dict = {}
                errors: list[str] = []

                def drive(side: str, seconds: int) -> None:
                    try:
                        results[side] = outcome(oha.run(targets[side], sc,
                                                        duration=f"{seconds}s",
                                                        conns=(c, p), rate=rate,
                                                        timeout=seconds + 60))
                    except RuntimeError as e:
                        errors.append(f"{side}: {e}")

                def both(seconds: int) -> None:
                    threads = [threading.Thread(target=drive, args=(side, seconds))
                               for side, _ in sides]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    if errors:
                        raise RuntimeError("; ".join(errors))

                both(warm)
                time.sleep(TELEMETRY_FLUSH_WAIT)
                c0 = {side: px.cpu() for side, px in fresh.items()}
                results.clear()
                both(dur)
                time.sleep(TELEMETRY_FLUSH_WAIT)
                per = {side: (px.cpu() - c0[side]) / results[side]["ok"] * 1e6
                       if results[side]["ok"] else None for side, px in fresh.items()}
                row = {"round": rnd + 1, "cpu_us_per_ok": per,
                       "rps": {side: results[side]["rps"] for side in fresh},
                       "bad": {side: results[side]["bad"] for side in fresh}}
                if latency:
                    row["latency_us"] = {side: results[side]["latency_us"] for side in fresh}
                rows.append(row)
                if per["base"] and per["test"]:
                    ratios.append((per["test"] / per["base"] - 1) * 100)
                log(f"{what} concurrent{f' @ {rate}/s' if rate else ''} {key} vs {base} "
                    f"round {rnd + 1}: "
                    f"{per['test'] or 0:.2f} vs {per['base'] or 0:.2f} CPU-us/req "
                    f"({ratios[-1] if ratios else 0:+.1f} %)")
            except RuntimeError as e:
                problem(f"{what} concurrent {key} round {rnd + 1}: {e}")
            finally:
                for px in fresh.values():
                    stop(px)
        out["by_key"][key] = {"rows": rows, "overhead_pct_by_round": ratios,
                              "overhead_pct_median": median(ratios) if ratios else None}
    return out


def side_by_side_rate(conc: dict) -> int | None:
    """The fixed rate of the side-by-side rounds that follow the closed-loop ones in `conc`:
    TELEMETRY_FIXED_SHARE of the lowest rate the base side reached in them, so that neither
    proxy saturates (None when no round ran)."""
    shared = [row["rps"]["base"] for v in (conc.get("by_key") or {}).values()
              for row in v["rows"] if row["rps"].get("base")]
    if not shared:
        return None
    return max(100, int(min(shared) * TELEMETRY_FIXED_SHARE / 100.0) * 100)


def telemetry_measure(oha: Oha, dur: int, warm: int, res: dict, problem, sink: OtlpSink,
                      proxies: dict[str, Sidecar], launch, stop) -> None:
    sc = {"key": "telemetry", "proto": "h1", "path": "/0", "host": HOST_TELEMETRY, "body": 0}
    targets = {k: mesh_target(k, res["targets"][k]["label"], px.outbound, HOST_TELEMETRY, [px],
                              res["targets"][k]["notes"]) for k, px in proxies.items()}
    usable: list[str] = []
    for key, t in targets.items():
        r, px = res["targets"][key], proxies[key]
        try:
            m0 = px.metrics()
            s = outcome(oha.run(t, sc, requests=20, conns=(1, 1), timeout=30))
            if s["ok"] != 20:
                raise RuntimeError(f"status {s['status']} errors {s['errors']}")
            time.sleep(TELEMETRY_FLUSH_WAIT)
            m1 = px.metrics()
            # The configuration must be the one measured: istio_* counted or not, spans sent.
            istio = metric_delta(m0, m1, "istio_requests_total")
            if r["istio_metrics"] != (istio > 0):
                raise RuntimeError(f"istio_requests_total grew by {istio:.0f} for 20 requests "
                                   f"with istioMetrics {r['istio_metrics']}")
            spans = trace_delta(m0, m1)
            if r["sampling"] == 100 and spans["exported"] < 20:
                raise RuntimeError(f"20 requests at 100 % sampling, {spans['exported']:.0f} "
                                   f"spans exported; sink {sink.snapshot()}")
            if r["sampling"] is None and (spans["exported"] or sum(spans["exports"].values())):
                raise RuntimeError(f"tracing is off but spans were exported: {spans}")
            r["sanity"] = {"status": s["status"], "istio_requests": istio, "spans": spans}
        except RuntimeError as e:
            r["error"] = f"sanity check failed: {e}"
            problem(f"{t.label}: {r['error']}")
            continue
        usable.append(key)

    def measure(key: str, **kw) -> dict:
        # The warm-up's spans leave before the window; the run's last ones inside it. The
        # stats are scraped outside the CPU window: the admin port shares the worker.
        px = proxies[key]
        time.sleep(TELEMETRY_FLUSH_WAIT)
        m0, k0 = px.metrics(), sink.snapshot()
        c0 = px.cpu()
        o = outcome(oha.run(targets[key], sc, **kw))
        time.sleep(TELEMETRY_FLUSH_WAIT)
        cpu = px.cpu() - c0
        m1, k1 = px.metrics(), sink.snapshot()
        o["cpu_s"] = cpu
        o["proxy_core_busy"] = cpu / o["duration_s"] if o["duration_s"] > 0 else None
        o["cpu_us_per_ok"] = cpu / o["ok"] * 1e6 if o["ok"] else None
        o["spans"] = trace_delta(m0, m1)
        o["spans_per_req"] = o["spans"]["exported"] / o["requests"] if o["requests"] else None
        o["sink"] = {k: k1[k] - k0[k] for k in k1}
        o["istio_requests"] = metric_delta(m0, m1, "istio_requests_total")
        return o

    def check(key: str, o: dict, what: str) -> None:
        label = res["targets"][key]["label"]
        if o["bad"]:
            problem(f"{label} {what}: {o['bad']} failed requests: status {o['status']} "
                    f"errors {o['errors']}")
        dropped = sum(o["spans"]["dropped"].values())
        if dropped:
            problem(f"{label} {what}: {dropped:.0f} spans dropped "
                    f"(by reason: {json.dumps(o['spans']['dropped'])}), "
                    f"{o['spans']['exported']:.0f} exported")

    # Closed-loop capacity, res["rounds"] rounds in alternating order.
    for rnd in range(res["rounds"]):
        for key in (usable if rnd % 2 == 0 else usable[::-1]):
            r = res["targets"][key]
            try:
                oha.run(targets[key], sc, duration=f"{warm}s", conns=(CAPACITY_CONNS, 1),
                        timeout=warm + 60)
                c = measure(key, duration=f"{dur}s", conns=(CAPACITY_CONNS, 1),
                            timeout=dur + 60)
                c["round"] = rnd + 1
                r.setdefault("capacity_rounds", []).append(c)
                log(f"telemetry {r['label']} round {rnd + 1}: {c['rps']:.0f} rps, "
                    f"{c['cpu_us_per_ok'] or 0:.2f} CPU-us/req, core "
                    f"{100 * (c['proxy_core_busy'] or 0):.0f}%, spans exported "
                    f"{c['spans']['exported']:.0f}, dropped "
                    f"{sum(c['spans']['dropped'].values()):.0f}, sink "
                    f"{c['sink']['requests']} POSTs / {c['sink']['bytes']:,} B")
                check(key, c, f"capacity round {rnd + 1}")
            except RuntimeError as e:
                r["error"] = str(e)
                problem(f"{r['label']} capacity round {rnd + 1}: {e}")
    for key in usable:
        r = res["targets"][key]
        rounds = r.get("capacity_rounds") or []
        if rounds:
            r["capacity"] = telemetry_summary(rounds)
    off = res["targets"].get("off", {}).get("capacity", {}).get("cpu_us_per_ok")
    res["overhead_pct"] = {}
    res["overhead_pct_by_round"] = {}
    for key in usable:
        if key == "off":
            continue
        cpu = res["targets"][key].get("capacity", {}).get("cpu_us_per_ok")
        res["overhead_pct"][key] = (cpu / off - 1) * 100 if cpu and off else None
        # Pairwise, round by round: how much of the overhead is noise.
        a = {c["round"]: c.get("cpu_us_per_ok") for c in
             res["targets"].get("off", {}).get("capacity_rounds", [])}
        res["overhead_pct_by_round"][key] = [
            (c["cpu_us_per_ok"] / a[c["round"]] - 1) * 100
            if c.get("cpu_us_per_ok") and a.get(c["round"]) else None
            for c in res["targets"][key].get("capacity_rounds", [])]
    res["overhead_pct_paired_median"] = {k: median(v)
                                         for k, v in res["overhead_pct_by_round"].items()}
    ov = res["overhead_pct"].get("trace-1")
    res["target_met"] = ov < TELEMETRY_TARGET_PCT if ov is not None else None
    if ov is not None:
        log(f"telemetry: overhead over (a), CPU per request: "
            + ", ".join(f"{k} {v:+.1f} %" for k, v in res["overhead_pct"].items()
                        if v is not None)
            + f"; target < {TELEMETRY_TARGET_PCT:.0f} % for (c): "
            + ("met" if res["target_met"] else "NOT met"))

    telemetry_concurrent(oha, dur, warm, res, problem, launch, stop, sc, usable)
    # The same at a fixed rate both proxies sustain: a share of (a)'s closed-loop rate when it
    # shared the core, so that neither side saturates and both see the same load.
    fixed = side_by_side_rate(res.get("concurrent", {}))
    if fixed:
        telemetry_concurrent(oha, dur, warm, res, problem, launch, stop, sc, usable,
                             rate=fixed)

    # Open loop at half of the slowest configuration's closed-loop rate.
    caps = {k: res["targets"][k].get("capacity", {}).get("rps") for k in usable}
    caps = {k: v for k, v in caps.items() if v}
    if not caps:
        return
    basis = min(caps, key=caps.get)
    rate = max(100, int(round(caps[basis] / 2 / 100.0)) * 100)
    res["rate"], res["rate_basis"] = rate, basis
    log(f"telemetry: fixed rate {rate} req/s (half of {basis})")
    for key in usable:
        r = res["targets"][key]
        try:
            lr = measure(key, duration=f"{dur}s", conns=(LATENCY_CONNS, 1), rate=rate,
                         timeout=dur + 60)
            r["latency"] = lr
            lat = lr["latency_us"]
            log(f"telemetry {r['label']} @ {rate}/s: p50 {lat['p50']:.0f} us, p99 "
                f"{lat['p99']:.0f} us, {lr['cpu_us_per_ok'] or 0:.2f} CPU-us/req, spans "
                f"exported {lr['spans']['exported']:.0f}")
            check(key, lr, "fixed-rate run")
            if lr["rps_all"] < 0.9 * rate:
                problem(f"{r['label']} fixed-rate run reached only {lr['rps_all']:.0f} of "
                        f"{rate} req/s")
        except RuntimeError as e:
            r["error"] = str(e)
            problem(f"{r['label']} fixed rate: {e}")
    a = res["targets"].get("off", {}).get("latency", {})
    for key in usable:
        r = res["targets"][key]
        if key == "off" or not a or not r.get("latency"):
            continue
        al, rl = a["latency_us"], r["latency"]["latency_us"]
        r["added_us"] = {p: rl[p] - al[p] if rl[p] is not None and al[p] is not None else None
                         for p in al}
        cpu, cpu_a = r["latency"].get("cpu_us_per_ok"), a.get("cpu_us_per_ok")
        r["latency_overhead_pct"] = (cpu / cpu_a - 1) * 100 if cpu and cpu_a else None


def telemetry_summary(rounds: list[dict]) -> dict:
    """The capacity rounds of one configuration: medians of the rates and of the CPU per
    request, its spread, and the span and sink counts summed."""
    cpus = [c["cpu_us_per_ok"] for c in rounds if c.get("cpu_us_per_ok")]
    dropped: dict[str, float] = {}
    exports: dict[str, float] = {}
    for c in rounds:
        for r, v in c["spans"]["dropped"].items():
            dropped[r] = dropped.get(r, 0.0) + v
        for r, v in c["spans"]["exports"].items():
            exports[r] = exports.get(r, 0.0) + v
    requests = sum(c["requests"] for c in rounds)
    exported = sum(c["spans"]["exported"] for c in rounds)
    return {
        "rounds": len(rounds),
        "rps": median([c["rps"] for c in rounds]),
        "cpu_us_per_ok": median(cpus),
        "cpu_us_per_ok_min": min(cpus) if cpus else None,
        "cpu_us_per_ok_max": max(cpus) if cpus else None,
        "cpu_us_per_ok_rounds": [c.get("cpu_us_per_ok") for c in rounds],
        "proxy_core_busy": median([c["proxy_core_busy"] for c in rounds]),
        "requests": requests,
        "ok": sum(c["ok"] for c in rounds),
        "bad": sum(c["bad"] for c in rounds),
        "spans_exported": exported,
        "spans_dropped": dropped,
        "exports": exports,
        "spans_per_req": exported / requests if requests else None,
        "sink_requests": sum(c["sink"]["requests"] for c in rounds),
        "sink_bytes": sum(c["sink"]["bytes"] for c in rounds),
        "istio_requests": sum(c["istio_requests"] for c in rounds),
    }


# --------------------------------------------------------------------------- A/B of two builds

# A baseline build of the proxy (--baseline) against this one (--halyard) in the same run, both
# with telemetry off (the telemetry scenario's (a) configuration: access log off, istioMetrics
# false, no tracing) and the flags of every Halyard here (proxy core, `--concurrency 1`), by
# the methods above: CPU per request side by side (side_by_side: fresh processes per round,
# alternating start order, the baseline against itself first as the noise floor), closed loop
# and at a fixed rate, for HTTP/1.1 0 B and h2c; callgrind instructions per request
# (callgrind_per_request); the mTLS hop through sidecars A and B of each build.
AB_SCENARIOS = ("h1-0", "h2-0")  # keys of SCENARIOS
# Keys of the side-by-side rounds, each against the baseline: the baseline itself (A/A), this
# build (A/B).
AB_KEYS = ("base", "new")
AB_LABELS = {"base": "baseline vs baseline (A/A)", "new": "new vs baseline"}
# Issue 17 item 10: HTTP/1.1 user-space instructions per request with telemetry off before the
# restructure, the figure the new build must not exceed (the baseline is measured here too).
AB_INSTR_REFERENCE = 42_474


class SidecarPair:
    """Sidecar A (outbound) and sidecar B (inbound, `mtls: STRICT`) of one build, as one proxy
    for side_by_side: the load enters at A's outbound listener, the CPU is A's plus B's."""

    def __init__(self, name: str, a: Sidecar, b: Sidecar):
        self.name, self.a, self.b = name, a, b
        self.sidecars = [a, b]
        self.outbound = a.outbound

    def cpu(self) -> float:
        return self.a.cpu() + self.b.cpu()


def binary_info(path: str) -> dict:
    """What identifies a binary in the report: its path, `--version`, SHA-256 and mtime."""
    import hashlib
    info: dict = {"path": str(Path(path).resolve())}
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        info["version"] = ((r.stdout + r.stderr).strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.SubprocessError) as e:
        info["version"] = f"unknown ({e})"
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        info["sha256"] = h.hexdigest()
        st = os.stat(path)
        info["mtime"] = dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
        info["size"] = st.st_size
    except OSError as e:
        info["error"] = str(e)
    src = source_tree(path)
    if src:
        info["source"] = src
    return info


def source_tree(binary: str) -> str | None:
    """The git tree a cargo-built binary came from, by the sources its dep-info file (`BIN.d`
    beside it) lists, with the commit that tree is at now: "DIR at COMMIT (+ uncommitted
    changes)". The tree may have moved since the build; None when it cannot be told."""
    try:
        deps = Path(binary + ".d").read_text(errors="replace").split(":", 1)[1].split()
    except (OSError, IndexError):
        return None
    target = str(Path(binary).resolve().parent.parent)
    for dep in deps:
        if dep.startswith(target) or not dep.endswith(".rs"):
            continue  # generated code in the target directory
        try:
            d = str(Path(dep).parent)
            top = subprocess.run(["git", "-C", d, "rev-parse", "--show-toplevel"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            if not top:
                continue
            head = subprocess.run(["git", "-C", top, "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", top, "status", "--porcelain",
                                    "--untracked-files=no", "--", ".", ":!benches"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return f"{top} at {head}" + (" (+ uncommitted changes)" if dirty else "")
    return None


def ab_closed_then_fixed(out: dict, label: str, check, run) -> None:
    """One A/B side by side in a closed loop, then at the rate that loop reached (with
    latency), into out["closed"] and out["fixed"]; `run(**kw)` is side_by_side with all but
    `rate` and `latency` bound."""
    out["closed"] = ab_summary(run())
    check(f"{label} closed loop", out["closed"])
    rate = side_by_side_rate(out["closed"])
    if rate:
        out["fixed"] = ab_summary(run(rate=rate, latency=True))
        check(f"{label} at {rate}/s", out["fixed"])
    for mode in ("closed", "fixed"):
        v = (out.get(mode) or {}).get("by_key", {})
        if v:
            log(f"ab {label} {mode}: new vs baseline "
                f"{v.get('new', {}).get('overhead_pct_median') or 0:+.2f} %, A/A "
                f"{v.get('base', {}).get('overhead_pct_median') or 0:+.2f} %")


def ab_summary(out: dict | None) -> dict | None:
    """Adds to side_by_side's result, per key, the medians over the rounds of each side's CPU
    per request, rate and (when kept) latency, the new-minus-baseline latency per round and
    its median; and the verdict: the new build's median overhead against the largest A/A round
    (`noise_pct`)."""
    if not out:
        return out
    for v in out["by_key"].values():
        rows = v["rows"]
        v["cpu_us_per_ok_median"] = {side: median([r["cpu_us_per_ok"].get(side) for r in rows])
                                     for side in ("base", "test")}
        v["rps_median"] = {side: median([r["rps"].get(side) for r in rows])
                           for side in ("base", "test")}
        v["bad"] = sum(sum(r["bad"].values()) for r in rows)
        lat = [r["latency_us"] for r in rows if r.get("latency_us")]
        if lat:
            pcts = ("p50", "p99", "p99.9")
            v["latency_us_median"] = {side: {q: median([x[side].get(q) for x in lat]) for q in pcts}
                                      for side in ("base", "test")}
            v["latency_diff_us_by_round"] = {
                q: [x["test"][q] - x["base"][q] if x["test"].get(q) is not None
                    and x["base"].get(q) is not None else None for x in lat] for q in pcts}
            v["latency_diff_us_median"] = {q: median(d) for q, d
                                           in v["latency_diff_us_by_round"].items()}
    aa = out["by_key"].get("base", {}).get("overhead_pct_by_round") or []
    new = out["by_key"].get("new", {}).get("overhead_pct_median")
    out["noise_pct"] = max(abs(x) for x in aa) if aa else None
    out["within_noise_or_better"] = (new <= out["noise_pct"]
                                     if new is not None and out["noise_pct"] is not None else None)
    return out


def run_ab(args, tmp: Path, procs: Procs, oha: Oha, dur: int, warm: int, results: dict,
           up_h1: int, up_h2: int) -> None:
    """A/B of two builds: the baseline proxy binary (--baseline) against this one
    (--halyard), telemetry off, in the same run (see AB_SCENARIOS and the README)."""
    res: dict = {"load_before": loadavg(), "rounds": TELEMETRY_CONCURRENT_ROUNDS,
                 "labels": AB_LABELS, "binaries": {}, "cpu": {}, "mesh": {},
                 "instructions": {}}
    results["ab"] = res

    def problem(msg: str) -> None:
        results["problems"].append(f"ab: {msg}")
        log(results["problems"][-1])

    if not (args.halyard and args.baseline):
        res["skipped"] = "no Halyard binary (--no-halyard)" if not args.halyard else \
            "no baseline binary (--baseline)"
        return
    binaries = {"base": args.baseline, "new": args.halyard}
    for k, path in binaries.items():
        res["binaries"][k] = binary_info(path)
        log(f"ab: {k}: {path} ({res['binaries'][k].get('version')}, sha256 "
            f"{res['binaries'][k].get('sha256', '?')[:12]})")
    if res["binaries"]["base"].get("sha256") == res["binaries"]["new"].get("sha256"):
        problem("the baseline and the new proxy binary are the same file: the A/B is an A/A")

    def stop(px) -> None:
        # Every side of every round: it must still run and have written nothing at warn.
        for s in getattr(px, "sidecars", [px]):
            if not s.alive():
                problem(f"{s.name} exited with {s.proc.returncode}: {s.stderr()}")
            elif s.stderr().strip():
                lines = s.stderr().strip().splitlines()
                problem(f"{s.name} wrote {len(lines)} line(s) to stderr at level warn; last: "
                        + " | ".join(lines[-3:])[:1000])
            procs.stop(s.proc)

    def check(name: str, out: dict | None) -> None:
        for key, v in (out or {}).get("by_key", {}).items():
            for row in v["rows"]:
                if sum(row["bad"].values()):
                    problem(f"{name} {key} round {row['round']}: failed requests {row['bad']}")
                rate = out.get("rate_each")
                slow = {side: round(x) for side, x in row["rps"].items()
                        if rate and x < 0.9 * rate}
                if slow:
                    problem(f"{name} {key} round {row['round']}: reached only {slow} of "
                            f"{rate} req/s")

    # The (a) configuration of the telemetry scenario; for h2c its service port is HTTP2 to
    # the upstream's h2c port. The HTTP/1.1 one is byte for byte telemetry's (a).
    scenarios = [dict(sc, host=HOST_TELEMETRY) for sc in SCENARIOS if sc["key"] in AB_SCENARIOS]
    cfgs: dict[str, Path] = {}
    usable: list[dict] = []
    for sc in scenarios:
        cfg = tmp / f"halyard-ab-{sc['key']}.yaml"
        cfg.write_text(telemetry_conf("off", up_h1, False, None, 0,
                                      up_h2 if sc["proto"] == "h2" else None))
        cfgs[sc["key"]] = cfg
        r: dict = {"title": sc["title"], "proto": sc["proto"], "path": sc["path"],
                   "host": sc["host"], "config": cfg.name, "sanity": {}}
        res["cpu"][sc["key"]] = r
        # 20 requests through each build: all 2xx, and no istio_* metrics (telemetry off).
        ok = True
        for k in AB_KEYS:
            try:
                px = start_proxy(binaries[k], cfg, tmp, procs, f"halyard-ab-{sc['key']}-{k}-sanity")
            except RuntimeError as e:
                problem(f"{sc['key']} {k}: {e}")
                ok = False
                continue
            try:
                m0 = px.metrics()
                t = mesh_target(k, k, px.outbound, sc["host"], [px], "")
                t.ports[sc["proto"]] = px.outbound
                s = outcome(oha.run(t, sc, requests=20, conns=(1, 1), timeout=30))
                if s["ok"] != 20:
                    raise RuntimeError(f"status {s['status']} errors {s['errors']}")
                istio = metric_delta(m0, px.metrics(), "istio_requests_total")
                if istio:
                    raise RuntimeError(f"istio_requests_total grew by {istio:.0f} with "
                                       "istioMetrics false")
                r["sanity"][k] = {"status": s["status"], "settings": telemetry_settings(px.admin)}
            except RuntimeError as e:
                problem(f"{sc['key']} {k} sanity check failed: {e}")
                ok = False
            finally:
                stop(px)
        if ok:
            usable.append(sc)

    # 1. CPU per request side by side, closed loop then at a fixed rate.
    for sc in usable:
        r = res["cpu"][sc["key"]]
        cfg = cfgs[sc["key"]]
        conns = ((H2_CAPACITY[0] // 2, H2_CAPACITY[1]) if sc["proto"] == "h2"
                 else (CAPACITY_CONNS // 2, 1))

        def launch(k: str, name: str, cfg=cfg) -> Sidecar:
            return start_proxy(binaries[k], cfg, tmp, procs, name)

        ab_closed_then_fixed(r, sc["key"], check, lambda **kw: side_by_side(
            oha, dur, warm, problem, launch, stop, sc, list(AB_KEYS), "base", conns=conns,
            what=f"ab-{sc['key']}", **kw))

    # 2. The mTLS hop through sidecars A and B of each build.
    try:
        ab_mesh(args, tmp, procs, oha, dur, warm, res, problem, stop, check, binaries, up_h1)
    except RuntimeError as e:
        problem(f"mesh: {e}")

    # 3. Instructions per request (deterministic; last, since it does not mind the load).
    ins: dict = {"requests": list(INSTR_REQUESTS), "conns": INSTR_CONNS,
                 "reference_h1": AB_INSTR_REFERENCE, "scenarios": {}}
    res["instructions"] = ins
    valgrind = shutil.which("valgrind")
    if not valgrind:
        ins["skipped"] = "valgrind not installed"
    else:
        ins["tool"] = subprocess.run([valgrind, "--version"], capture_output=True,
                                     text=True).stdout.strip()
        for sc in usable:
            row: dict = {"title": sc["title"]}
            ins["scenarios"][sc["key"]] = row
            for k in AB_KEYS:
                got = callgrind_per_request(valgrind, binaries[k], cfgs[sc["key"]],
                                            f"callgrind-ab-{sc['key']}-{k}",
                                            f"{k} build, {sc['key']}", sc, tmp, procs, oha,
                                            problem)
                if got:
                    row[k] = got
            b, n = (row.get(k, {}).get("per_request") for k in AB_KEYS)
            row["diff_pct"] = (n / b - 1) * 100 if b and n else None
            if b and n:
                log(f"ab instructions {sc['key']}: baseline {b:,.0f}, new {n:,.0f} per request "
                    f"({row['diff_pct']:+.2f} %)")
    res["load_after"] = loadavg()


def ab_mesh(args, tmp: Path, procs: Procs, oha: Oha, dur: int, warm: int, res: dict, problem,
            stop, check, binaries: dict, up_h1: int) -> None:
    """The mTLS hop of the mesh scenario (HTTP/1.1 client → A → h2 in mutual TLS → B →
    upstream), a pair of sidecars of the baseline build against a pair of the new one, side
    by side: CPU per request of A+B, closed loop and at a fixed rate, and the latency at that
    rate. Certificates from halyard-control: the baseline's own (--baseline-control) for its
    pair when given, else the same one (this build's) for both."""
    m: dict = {"controls": {}}
    res["mesh"] = m
    if not args.control:
        m["skipped"] = args.mesh_skipped or "no halyard-control binary (--no-mesh)"
        return
    marker = str(tmp)
    controls = {"base": args.baseline_control or args.control, "new": args.control}
    cas: dict[str, dict] = {}
    started: dict[str, dict] = {}
    try:
        for k in AB_KEYS:
            path = controls[k]
            if path not in started:
                started[path] = start_ca(path, tmp, procs, marker, name=f"ca-ab-{k}")
                log(f"ab mesh: CA for {k} ({path}) on {started[path]['grpc_tls']}")
            cas[k] = started[path]
            m["controls"][k] = {**binary_info(path), "ca": cas[k]["grpc_tls"]}
        m["shared_ca"] = len(started) == 1
        server_cfg = mesh_server_config("mtls", "STRICT", [(up_h1, "HTTP")])
        sc = MESH_HOP_SCENARIO

        def launch(k: str, name: str) -> SidecarPair:
            ports = free_ports(6)
            b = Sidecar(f"{name}-b", SA_SERVER, tuple(ports[0:3]))
            a = Sidecar(f"{name}-a", SA_CLIENT, tuple(ports[3:6]))
            pair = SidecarPair(name, a, b)
            # A's config is the mesh scenario's, its plaintext services (unused here)
            # pointing at B as well.
            b.start(binaries[k], server_cfg, cas[k], tmp, procs, marker)
            a.start(binaries[k], mesh_client_config(b, b, b, up_h1, 9), cas[k], tmp, procs,
                    marker)
            try:
                b.wait_ready()
                a.wait_ready()
            except RuntimeError:
                stop(pair)
                raise
            return pair

        # Each build's hop must really be mutual TLS: B counts its connections as mutual_tls.
        usable = True
        m["sanity"] = {}
        for k in AB_KEYS:
            try:
                pair = launch(k, f"ab-mesh-{k}-sanity")
            except RuntimeError as e:
                problem(f"mesh {k}: the sidecars did not become ready: {e}")
                usable = False
                continue
            try:
                m0 = pair.b.metrics()
                t = mesh_target(k, k, pair.outbound, sc["host"], [pair], "")
                s = outcome(oha.run(t, sc, requests=20, conns=(1, 1), timeout=30))
                if s["ok"] != 20:
                    raise RuntimeError(f"status {s['status']} errors {s['errors']}")
                m1 = pair.b.metrics()
                conns = {sec: metric_delta(m0, m1, "halyard_inbound_connections_total",
                                           security=sec)
                         for sec in ("mutual_tls", "plaintext", "passthrough")}
                if not conns["mutual_tls"]:
                    raise RuntimeError(f"B counted no mutual_tls connection: {conns}")
                m["sanity"][k] = {"status": s["status"], "b_inbound_conns": conns}
            except RuntimeError as e:
                problem(f"mesh {k} sanity check failed: {e}")
                usable = False
            finally:
                stop(pair)
        if not usable:
            return
        m.update({"title": "HTTP/1.1 keep-alive, 0 B body, client → sidecar A → h2 in mTLS → "
                           "sidecar B → upstream", "path": sc["path"], "host": sc["host"]})
        ab_closed_then_fixed(m, "mesh", check, lambda **kw: side_by_side(
            oha, dur, warm, problem, launch, stop, sc, list(AB_KEYS), "base", what="ab-mesh",
            **kw))
    finally:
        for ca in started.values():
            procs.stop(ca["proc"])


if __name__ == "__main__":
    sys.exit(main())
