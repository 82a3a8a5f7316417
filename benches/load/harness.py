#!/usr/bin/env python3
"""Halyard load harness: direct vs Halyard vs nginx vs haproxy on loopback.

Started by benches/load/run.sh (which installs the tools and builds the proxy). Starts an
nginx upstream and the proxies under test, each pinned to its own core, drives them with oha,
and writes REPORT.md, latency.svg and results.json. Standard library only.

Core layout (2 cores): the load generator, the upstream and this script on core 0; the proxy
under test on core 1, one worker thread. All traffic goes to 127.0.0.1.
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


def upstream_conf(tmp: Path, h1: int, h2: int) -> str:
    locs = f"""
        default_type text/plain;
        location = /0 {{ return 200; }}
        location = /1k {{ return 200 "{BODY_1K}"; }}
        location / {{ return 404; }}
"""
    return nginx_common(tmp, "upstream") + f"""
http {{
{nginx_http_common(tmp, "upstream")}
    server {{
        listen 127.0.0.1:{h1} reuseport backlog=4096;
{locs}
    }}
    server {{
        listen 127.0.0.1:{h2} http2 reuseport backlog=4096;
{locs}
    }}
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
        argv = [self.path, "--no-tui", "--output-format", "json", "--worker-threads", "1",
                "--connect-to", f"{sc['host']}:80:127.0.0.1:{port}"]
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
        argv.append(f"http://{sc['host']}{sc['path']}")
        cmd = self.procs.prefix(LOAD_CORE) + argv
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.procs.track("oha", proc, f"{sc['host']}:80:127.0.0.1:{port}")
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

def tool_versions(oha: str, halyard: str | None) -> dict:
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
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--", "proxy", "xds", "Cargo.lock"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        v["halyard_commit"] = head + (" (+ uncommitted proxy/xds changes)" if dirty else "")
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
    ap.add_argument("--out", required=True)
    ap.add_argument("--state", help="directory for the pid list run.sh cleans up from")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nice", type=int, default=-10)
    args = ap.parse_args()

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
        "tools": tool_versions(args.oha, args.halyard),
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
        },
        "targets": {},
        "memory": {},
        "scenarios": {},
        "problems": [],
    }
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
    log(f"wrote {out_dir}/REPORT.md, latency.svg, results.json in {results['elapsed_s']} s")
    return 0


def run(args, tmp: Path, procs: Procs, oha: Oha, dur: int, warm: int, results: dict) -> None:
    (up_h1, up_h2, hy_out, hy_admin, hy_in, ng_h1, ng_h2, ha_h1, ha_h2) = free_ports(9)
    marker = str(tmp)

    # ---- upstream
    (tmp / "upstream.conf").write_text(upstream_conf(tmp, up_h1, up_h2))
    up = procs.start("upstream", ["nginx", "-p", str(tmp), "-e", str(tmp / "upstream.error.log"),
                                  "-c", str(tmp / "upstream.conf")], LOAD_CORE, marker, tmp)
    wait_port(up_h1, up)
    wait_port(up_h2, up)
    log(f"upstream nginx on 127.0.0.1:{up_h1} (h1) and :{up_h2} (h2c)")

    targets: list[Target] = [Target(
        "direct", "direct (baseline)", {"h1": up_h1, "h2": up_h2},
        {"h1": "h1", "h2": "h2c"}, notes="client straight to the upstream nginx")]

    # ---- Halyard
    if args.halyard:
        (tmp / "halyard.yaml").write_text(halyard_conf(up_h1, up_h2))
        hlog = tmp / "halyard.stderr"
        hy = procs.start("halyard", [args.halyard, "--config", str(tmp / "halyard.yaml"),
                                     "--outbound-addr", f"127.0.0.1:{hy_out}",
                                     "--admin-addr", f"127.0.0.1:{hy_admin}",
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


if __name__ == "__main__":
    sys.exit(main())
