"""REPORT.md and latency.svg from the harness's results (standard library only).

Also usable alone: `python3 benches/load/report.py benches/report/results.json` rewrites
REPORT.md and latency.svg next to the JSON file.
"""

from __future__ import annotations

import json
import math
import sys
from html import escape
from pathlib import Path

PROXIES = ["halyard", "nginx", "haproxy"]
ORDER = ["direct"] + PROXIES
COLORS = {"halyard": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#d62728"}
LIGHT = {"halyard": "#9ecae9", "nginx": "#a1d99b", "haproxy": "#f4a5a5"}


def _num(v, fmt="{:,.0f}", na="n/a"):
    return na if v is None else fmt.format(v)


def _signed(v):
    return "n/a" if v is None else f"{v:+,.0f}"


def _mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def _cell(r: dict) -> str | None:
    """Why a row has no numbers, or None when it has."""
    if r.get("na"):
        return f"n/a ({r['na']})"
    if r.get("error") and not r.get("capacity"):
        return "error (see Problems)"
    return None


def scenario_table(key: str, sc: dict, results: dict) -> list[str]:
    tg = sc["targets"]
    direct = tg.get("direct", {})
    d_rps = direct.get("capacity", {}).get("rps")
    n_cpu = tg.get("nginx", {}).get("capacity", {}).get("cpu_us_per_req")
    lines = []
    d_lat = direct.get("latency", {}).get("latency_us")
    basis = sc.get("rate_basis", "halyard")
    basis_label = results["targets"].get(basis, {}).get("label", basis)
    lines.append(f"Request `GET {sc['path']}` with `Host: {sc['host']}`. Fixed rate "
                 f"**{sc.get('rate', 0):,} req/s** (half of {basis_label}'s closed-loop rps)."
                 + (f" Direct latency at that rate: p50 {d_lat['p50']:.0f} µs, "
                    f"p99 {d_lat['p99']:.0f} µs, p99.9 {d_lat['p99.9']:.0f} µs." if d_lat else ""))
    lines.append("")
    lines.append("| target | legs | rps | × direct | proxy CPU-µs/req | × nginx | proxy core busy "
                 "| CPU-µs/req at fixed rate | added p50 µs | added p99 µs | added p99.9 µs "
                 "| failed req | RSS after (MiB) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in ORDER:
        meta = results["targets"].get(k)
        if meta is None:
            continue
        r = tg.get(k)
        legs = meta.get("legs", {}).get(sc["proto"], "")
        if r is None:
            lines.append(f"| {meta['label']} | {legs} | not run | | | | | | | | | | |")
            continue
        why = _cell(r)
        if why:
            lines.append(f"| {meta['label']} | {legs or '—'} | {why} | | | | | | | | | | |")
            continue
        c = r.get("capacity", {})
        lr = r.get("latency", {})
        rps = c.get("rps")
        ratio = f"{rps / d_rps:.2f}" if rps and d_rps else "n/a"
        cpu = c.get("cpu_us_per_req")
        cpu_ratio = f"{cpu / n_cpu:.2f}" if cpu and n_cpu else ("n/a" if k != "direct" else "—")
        busy = c.get("proxy_core_busy")
        added = r.get("added_us", {})
        failed = (c.get("bad") or 0) + (lr.get("bad") or 0)
        if k == "direct":
            lines.append(f"| {meta['label']} | {legs} | {_num(rps)} | 1.00 | — | — | — | — "
                         f"| 0 | 0 | 0 | {failed} | — |")
            continue
        mem = c.get("mem_after") or {}
        lines.append(
            f"| {meta['label']} | {legs} | {_num(rps)} | {ratio} | {_num(cpu, '{:.1f}')} "
            f"| {cpu_ratio} | {_num(busy * 100 if busy is not None else None, '{:.0f}%')} "
            f"| {_num(lr.get('cpu_us_per_req'), '{:.1f}')} "
            f"| {_signed(added.get('p50'))} | {_signed(added.get('p99'))} "
            f"| {_signed(added.get('p99.9'))} | {failed} | {_mib(mem.get('rss_kib'))} |")
    return lines


def memory_table(results: dict) -> list[str]:
    lines = ["| target | RSS idle (MiB) | RSS, 1,000 conns (MiB) | per conn (KiB) "
             "| PSS idle (MiB) | PSS, 1,000 conns (MiB) | peak RSS, whole run (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in PROXIES:
        meta = results["targets"].get(k)
        m = results.get("memory", {}).get(k)
        if meta is None:
            continue
        if not m or "idle" not in m:
            lines.append(f"| {meta['label']} | not run | | | | | |")
            continue
        idle, k1 = m["idle"], m.get("conns_1k") or {}
        per = ((k1["rss_kib"] - idle["rss_kib"]) / 1000) if k1 else None
        end = m.get("end") or {}
        note = ""
        if m.get("conns_1k_ok") is not None and m["conns_1k_ok"] != 1000:
            note = f" ({m['conns_1k_ok']}/1000 answered 200)"
        lines.append(f"| {meta['label']}{note} | {_mib(idle['rss_kib'])} | {_mib(k1.get('rss_kib'))} "
                     f"| {_num(per, '{:.1f}')} | {_mib(idle['pss_kib'])} | {_mib(k1.get('pss_kib'))} "
                     f"| {_mib(end.get('hwm_kib'))} |")
    return lines


# --------------------------------------------------------------------------- mutual TLS

def _ratio(a, b, fmt="{:.2f}"):
    return fmt.format(a / b) if a is not None and b else "n/a"


def mesh_layout(results: dict) -> list[str]:
    mesh, s = results["mesh"], results["settings"]
    ms = s.get("mesh", {})
    cores = s["cores"]
    side = mesh.get("sidecars", {})
    a = side.get("sidecar-a", {})
    b = side.get("sidecar-b-mtls", {})
    L = [
        "Halyard only (nginx and haproxy have no comparable mesh). Two sidecars in one run, "
        "with identities from a CA started by the harness (`halyard-control serve`, TLS gRPC, "
        "a tokens file for both service accounts; ECDSA P-256 certificates, `--cert-ttl "
        f"{ms.get('cert_ttl', '24h')}`, so no rotation during a measurement):",
        "",
        f"- **Layout**: sidecar A (the client's: `{a.get('identity', '?')}`, outbound "
        f"listener) and sidecar B (the server's: `{b.get('identity', '?')}`, inbound "
        f"listener, `mtls: STRICT`) **both on core {cores['proxy']}**, each `--concurrency 1`; "
        f"oha, the upstream nginx and the CA on core {cores['load_generator_and_upstream']}. "
        "The plaintext hops use the same A and a second B of the same identity with "
        "`mtls: DISABLE` (one for HTTP, one for TCP), whose inbound listener is the endpoint's "
        "address (no `identity`, no `sidecarAddress`). Only the sidecars in the path under "
        "test carry traffic; the others idle on the same core.",
        "- **CPU** is utime+stime of each sidecar from `/proc/PID/stat` over the measured run "
        "(metrics are scraped outside that window), per sidecar and summed over A+B; "
        f"*core {cores['proxy']} busy* = (A+B) CPU-seconds / wall seconds.",
        f"- Load average before / after this section: {mesh.get('load_before', '?')} / "
        f"{mesh.get('load_after', '?')}.",
    ]
    return L


def mesh_hop_table(results: dict) -> list[str]:
    hop = results["mesh"].get("hop") or {}
    tg = hop.get("targets", {})
    if not tg:
        return ["Not run (see Problems)."]
    ms = results["settings"].get("mesh", {})
    d = tg.get("direct", {})
    d_rps = d.get("capacity", {}).get("rps")
    d_lat = d.get("latency", {}).get("latency_us")
    p_cpu = tg.get("plain-h1", {}).get("capacity", {}).get("cpu_us_per_req")
    L = [f"Client → A's outbound listener (HTTP/1.1 keep-alive, `GET {hop.get('path', '/0')}`, "
         "0 B body) → B → upstream nginx (HTTP/1.1 keep-alive). Capacity: closed loop, "
         f"{ms.get('hop_capacity_concurrency', '?')}. Latency: open loop at "
         f"**{hop.get('rate', 0):,} req/s** (half of the "
         f"{'mTLS hop' if hop.get('rate_basis') == 'mtls' else hop.get('rate_basis')}'s "
         f"closed-loop rps), {ms.get('hop_latency_concurrency', '?')}, the same rate for every "
         "path; *added* = path minus direct at the same percentile, same rate, same run. "
         "One run per path: with two single-threaded sidecars sharing one core, the tails "
         "(p99, p99.9) vary much more from run to run than the medians and the CPU figures."
         + (f" Direct latency at that rate: p50 {d_lat['p50']:.0f} µs, p99 {d_lat['p99']:.0f} µs, "
            f"p99.9 {d_lat['p99.9']:.0f} µs." if d_lat else ""), ""]
    core = results["settings"]["cores"]["proxy"]
    L.append("| path | legs | rps | × direct | CPU-µs/req A | CPU-µs/req B | CPU-µs/req A+B "
             f"| × plaintext hop (h1) | core {core} busy | CPU-µs/req A+B at fixed rate "
             "| added p50 µs | added p99 µs | added p99.9 µs | failed req |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in hop.get("order", list(tg)):
        r = tg[k]
        if r.get("error") and not r.get("capacity"):
            L.append(f"| {r['label']} | {r.get('legs', '')} | error (see Problems) "
                     "| | | | | | | | | | | |")
            continue
        c, lr = r.get("capacity", {}), r.get("latency", {})
        rps = c.get("rps")
        failed = (c.get("bad") or 0) + (lr.get("bad") or 0)
        if k == "direct":
            L.append(f"| {r['label']} | {r.get('legs', '')} | {_num(rps)} | 1.00 | — | — | — "
                     f"| — | — | — | 0 | 0 | 0 | {failed} |")
            continue
        sc = c.get("sidecars", {})
        names = r.get("sidecars", [])
        per = [sc.get(n, {}).get("cpu_us_per_req") for n in names] + [None, None]
        cpu = c.get("cpu_us_per_req")
        busy = c.get("proxy_core_busy")
        added = r.get("added_us", {})
        L.append(
            f"| {r['label']} | {r.get('legs', '')} | {_num(rps)} | {_ratio(rps, d_rps)} "
            f"| {_num(per[0], '{:.1f}')} | {_num(per[1], '{:.1f}')} | {_num(cpu, '{:.1f}')} "
            f"| {_ratio(cpu, p_cpu) if k != 'plain-h1' else '1.00'} "
            f"| {_num(busy * 100 if busy is not None else None, '{:.0f}%')} "
            f"| {_num(lr.get('cpu_us_per_req'), '{:.1f}')} "
            f"| {_signed(added.get('p50'))} | {_signed(added.get('p99'))} "
            f"| {_signed(added.get('p99.9'))} | {failed} |")
    L.append("")
    m = tg.get("mtls", {}).get("capacity", {})
    p1 = tg.get("plain-h1", {}).get("capacity", {})
    p2 = tg.get("plain-h2c", {}).get("capacity", {})
    if m and p1:
        line = (f"**mTLS hop / plaintext hop**: CPU per request (A+B) "
                f"×{_ratio(m.get('cpu_us_per_req'), p1.get('cpu_us_per_req'))} against the h1 "
                "hop")
        if p2:
            line += (f", ×{_ratio(m.get('cpu_us_per_req'), p2.get('cpu_us_per_req'))} against "
                     "the h2c hop (same framing, no TLS)")
        line += (f"; capacity ×{_ratio(m.get('rps'), p1.get('rps'))} (h1 hop)"
                 + (f", ×{_ratio(m.get('rps'), p2.get('rps'))} (h2c hop)" if p2 else "") + ".")
        ml = tg.get("mtls", {}).get("latency", {})
        pl = tg.get("plain-h1", {}).get("latency", {})
        ma, pa = tg.get("mtls", {}).get("added_us", {}), tg.get("plain-h1", {}).get("added_us", {})
        if ml and pl and ma and pa:
            line += (f" At {hop.get('rate', 0):,} req/s the mTLS hop adds "
                     f"{_signed(ma.get('p50'))} µs at p50 and {_signed(ma.get('p99'))} µs at p99 "
                     f"over direct; the plaintext h1 hop {_signed(pa.get('p50'))} / "
                     f"{_signed(pa.get('p99'))} µs.")
        L.append(line)
        L.append("")
    conns = []
    for k in ("plain-h1", "plain-h2c", "mtls"):
        r = tg.get(k, {})
        for n, s in r.get("capacity", {}).get("sidecars", {}).items():
            if "-b" in n:
                ic = s.get("inbound_conns", {})
                conns.append(f"{r['label']}: B accepted {ic.get('mutual_tls', 0):.0f} mutual_tls "
                             f"/ {ic.get('plaintext', 0):.0f} plaintext new connections")
    L.append("New sidecar-to-sidecar connections during the capacity runs "
             "(`halyard_inbound_connections_total{security}` on B; the pools were opened by "
             "the sanity requests): " + "; ".join(conns) + ". The mTLS hop carries every "
             "request as HTTP/2 on pooled mutual-TLS connection(s), so its cost over plaintext "
             "is record encryption and framing, not handshakes.")
    return L


def mesh_handshake_tables(results: dict) -> list[str]:
    hs = results["mesh"].get("handshakes") or {}
    tg = hs.get("targets", {})
    if not tg:
        return ["Not run (see Problems)."]
    cores = results["settings"]["cores"]
    L = [f"oha `--disable-keepalive` through A as an HTTP proxy (`-x`, HTTPS URL, so every "
         f"request opens a new client connection and sends `CONNECT <host>:443`; without "
         "iptables A reaches a TCP service only by name through CONNECT), closed "
         f"loop, {hs.get('conns', '?')} connections: A opens a **new TCP connection to B per "
         "request** for a service port declared `TCP` — mutual TLS to B's STRICT port "
         "(no ALPN: opaque bytes) or plaintext to a DISABLE port — and B connects to the "
         "upstream's HTTPS port. oha's own TLS session with nginx travels inside the tunnel, "
         f"its cost is on core {cores['load_generator_and_upstream']}. The measured run is a request count (about the "
         "warm-up's rate × the duration) so that it ends with every connection complete. "
         "*conns/s* is often bounded by core "
         f"{cores['load_generator_and_upstream']} (oha + nginx TLS), not the sidecars: "
         "read it with *core busy* and compare by CPU per connection.", ""]
    L.append("| hop | conns/s | CPU-µs/conn A (client side) | CPU-µs/conn B (server side) "
             f"| CPU-µs/conn A+B | × plaintext | core {cores['proxy']} busy "
             "| new connections at B | "
             "TLS failures A / B | failed |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    p = tg.get("plain", {}).get("run", {}).get("cpu_us_per_conn", {})
    for k in ("plain", "mtls"):
        r = tg.get(k)
        if not r:
            continue
        o = r.get("run")
        if not o:
            L.append(f"| {r['label']} | error (see Problems) | | | | | | | | |")
            continue
        cu = o.get("cpu_us_per_conn", {})
        ic = o.get("b_inbound_conns", {})
        tf = o.get("tls_failures", {})
        new = ", ".join(f"{v:,.0f} {sec}" for sec, v in ic.items() if v) or "0"
        L.append(f"| {r['label']} | {_num(o.get('conns_per_s'))} | {_num(cu.get('a'))} "
                 f"| {_num(cu.get('b'))} | {_num(cu.get('both'))} "
                 f"| {_ratio(cu.get('both'), p.get('both')) if k != 'plain' else '1.00'} "
                 f"| {_num(o.get('proxy_core_busy', 0) * 100, '{:.0f}%')} | {new} "
                 f"| {tf.get('a', 0):.0f} / {tf.get('b', 0):.0f} | {o.get('bad', 0)} |")
    L.append("")
    m = tg.get("mtls", {}).get("run", {}).get("cpu_us_per_conn", {})
    h = hs.get("handshake_us")
    if m and p and h:
        L.append("Per side: *handshake* = mTLS minus plaintext CPU per connection (the TLS "
                 "handshake and record layer of one short connection); *per core* = 1,000,000 "
                 "/ CPU-µs, what one fully busy core would sustain.")
        L.append("")
        L.append("| side | plaintext CPU-µs/conn | mTLS CPU-µs/conn | CPU-ms per handshake "
                 "| new mTLS connections/s per core | handshakes/s per core |")
        L.append("|---|---:|---:|---:|---:|---:|")
        rows = [("A, client side (CONNECT, TLS client, relay)", "a"),
                ("B, server side (TLS server, relay, upstream connect)", "b"),
                ("A+B, both ends on one core", "both")]
        for label, k in rows:
            hk = h.get(k)
            L.append(f"| {label} | {_num(p.get(k))} | {_num(m.get(k))} "
                     f"| {_num(hk / 1000 if hk is not None else None, '{:.3f}')} "
                     f"| {_num(1e6 / m[k] if m.get(k) else None)} "
                     f"| {_num(1e6 / hk if hk and hk > 0 else None)} |")
        L.append("")
    hello = tg.get("mtls", {}).get("hellos_warmup")
    if hello:
        if hello.get("error"):
            L.append(f"Session resumption: not sampled ({hello['error']}).")
        elif hello.get("client_hello"):
            ch, chp = hello["client_hello"], hello["client_hello_psk"]
            sh, shp = hello.get("server_hello", 0), hello.get("server_hello_psk", 0)
            L.append(f"**Session resumption** (TLS 1.3 handshakes sampled on loopback during the "
                     f"warm-up, AF_PACKET): {chp:,} of {ch:,} ClientHellos from A offered a "
                     f"session ticket (`pre_shared_key`) and B resumed {shp:,} of {sh:,} "
                     f"({_ratio(shp, sh, '{:.0%}')}) — the handshake cost above is a mix of "
                     "resumed (ECDHE, no certificate signature or chain check) and full mutual "
                     "ECDSA P-256 handshakes, as Halyard does them with rustls's default session "
                     "caches. The share depends on concurrency: rustls's client keeps at most 8 "
                     "TLS 1.3 tickets per server name, and A names each of B's ports with one "
                     "server name (`outbound_.PORT_._.halyard.mesh`), so with more than 8 "
                     "handshakes to it in flight some find no ticket and make a full handshake.")
        L.append("")
    b = results["mesh"].get("sidecars", {}).get("sidecar-b-mtls", {})
    if b.get("tls_failures"):
        tot = sum(b["tls_failures"].values())
        measured = sum(sum((t.get("run") or {}).get("tls_failures", {}).values())
                       for t in tg.values())
        L.append(f"B (STRICT) counted {tot:.0f} TLS failures over the whole section "
                 f"(`halyard_tls_failures_total`: "
                 + ", ".join(f"{k.split('reason=')[-1].rstrip('}')} {v:.0f}"
                             for k, v in b["tls_failures"].items())
                 + f"), {measured:.0f} of them in a measured run. Expected outside: the "
                 "harness's port probe (a plaintext connect on a STRICT port) and connections "
                 "oha cuts at a warm-up's `-z` deadline, some of them before or during the "
                 f"sidecars' handshake (at most {b.get('tls_failures_explained_max', '?')}).")
        L.append("")
    return L


def mesh_sections(results: dict) -> list[str]:
    L = ["## Mutual TLS between two sidecars", ""]
    L += mesh_layout(results)
    L += ["", "### mTLS hop vs plaintext hop vs direct", ""]
    L += mesh_hop_table(results)
    L += ["", "### New connections: mutual-TLS handshakes per second per core", ""]
    L += mesh_handshake_tables(results)
    return L


# --------------------------------------------------------------------------- routed and retried

def _pct(v, fmt="{:.2f} %"):
    return "n/a" if v is None else fmt.format(100 * v)


def _tag(label: str) -> str:
    """"(b) Halyard routed ..." → "(b)"."""
    return label.split(" ", 1)[0] if label.startswith("(") else label


def routed_section(results: dict) -> list[str]:
    rt = results["routed"]
    rs = results["settings"].get("routed", {})
    cores = results["settings"]["cores"]
    L = ["## Routed and retried (Halyard only)", ""]
    if rt.get("skipped"):
        return L + [f"Not run: {rt['skipped']}."]
    tg = rt.get("targets", {})
    if not tg:
        return L + ["Not run (see Problems)."]
    plain = rt.get("plain_h1_cpu_us_per_req")
    L.append(
        f"A second Halyard proxy (same binary and flags as above: core {cores['proxy']}, "
        f"`--concurrency 1`, access log off) for `Host: {rt.get('host')}`: a virtual host with "
        f"**{rt.get('decoys', '?')} routes that do not match** (a third each `uri: {{prefix}}`, "
        "`uri: {regex}`, and `uri: {prefix: /}` + `headers: {x-tenant: {exact}}`), then one "
        f"route for `/flaky` and `/0` with `retries: {rt.get('retries', '?')}` (default backoff "
        "25 ms, jittered) and weighted `destinations` over two subsets, `v1` 90 / `v2` 10, of a "
        "service whose two endpoint entries (labels `version: v1` / `v2`) are both the upstream "
        "nginx; no `connectionPool`, so retries run under the default retry budget (20 % of "
        "the subset's requests in flight, at least 3). The row *maxRetries lifted* is the same "
        f"service, routes and proxy under a second host, with `connectionPool: {{maxRetries: "
        f"{rs.get('max_retries_lifted', '4294967295')}}}` (Istio's documented default). "
        f"The upstream's `/flaky` answers 503 to ~{rs.get('flaky_percent', 5)} % of "
        "requests (nginx decides per request: `split_clients` on `$request_id`) and 200 "
        "otherwise; `/0` always 200, so on that path the same route never retries. "
        f"Capacity: closed loop, {rs.get('capacity_concurrency', '?')}; latency: open loop at "
        f"**{rt.get('rate', 0):,} req/s** (half of "
        f"{_tag(tg.get(rt.get('rate_basis'), {}).get('label', rt.get('rate_basis')))}"
        f"'s closed-loop rate, the slower retried path), {rs.get('latency_concurrency', '?')} (a retried request holds "
        "its connection through the backoff), the same rate for every row; *added* = row minus "
        "direct on the same path, same rate. *rps* counts 2xx answers; *success* = 2xx / all "
        "answered or failed requests; CPU is the proxy's utime+stime over the measured run "
        "divided by the 2xx answers; *retries/req* = the increase of "
        "`halyard_upstream_rq_retry_total` (admin `/stats/prometheus`, scraped outside the CPU "
        "window) / requests; *refused* = `halyard_upstream_rq_retry_overflow_total` (retries "
        "the retry budget did not allow).")
    L.append("")
    L.append("| path | legs | rps (2xx) | all req/s | success | 503 | retries/req | refused "
             "| CPU-µs per 2xx req | × plain Halyard h1 0 B | core busy "
             "| success at fixed rate | retries/req at fixed rate | CPU-µs per 2xx req at fixed rate "
             "| added p50 µs | added p99 µs | added p99.9 µs |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in rt.get("order", list(tg)):
        r = tg[k]
        c, lr = r.get("capacity", {}), r.get("latency", {})
        if r.get("error") and not c:
            L.append(f"| {r['label']} | {r.get('legs', '')} | error (see Problems) "
                     "| | | | | | | | | | | | | | |")
            continue
        if not r.get("proxy"):
            L.append(f"| {r['label']} | {r.get('legs', '')} | {_num(c.get('rps'))} "
                     f"| {_num(c.get('rps_all'))} | {_pct(c.get('success_rate'))} "
                     f"| {_num(c.get('status_503'))} | — | — | — | — | — "
                     f"| {_pct(lr.get('success_rate'))} | — | — | 0 | 0 | 0 |")
            continue
        added = r.get("added_us", {})
        busy = c.get("proxy_core_busy")
        L.append(
            f"| {r['label']} | {r.get('legs', '')} | {_num(c.get('rps'))} "
            f"| {_num(c.get('rps_all'))} | {_pct(c.get('success_rate'))} "
            f"| {_num(c.get('status_503'))} | {_num(c.get('retries_per_req'), '{:.4f}')} "
            f"| {_num(c.get('retry_overflows'))} | {_num(c.get('cpu_us_per_ok'), '{:.1f}')} "
            f"| {_ratio(c.get('cpu_us_per_ok'), plain)} "
            f"| {_num(busy * 100 if busy is not None else None, '{:.0f}%')} "
            f"| {_pct(lr.get('success_rate'))} | {_num(lr.get('retries_per_req'), '{:.4f}')} "
            f"| {_num(lr.get('cpu_us_per_ok'), '{:.1f}')} "
            f"| {_signed(added.get('p50'))} | {_signed(added.get('p99'))} "
            f"| {_signed(added.get('p99.9'))} |")
    L.append("")
    ratios = rt.get("cpu_ratios") or {}
    b = tg.get("routed-flaky", {})
    c0 = tg.get("routed-0", {})
    parts = []
    bn = tg.get("routed-flaky-nb", {})
    x = lambda k: _num(ratios.get(k), "{:.2f}")  # noqa: E731
    if plain:
        parts.append(f"CPU per 2xx request against the plain Halyard (HTTP/1.1 keep-alive, 0 B, "
                     f"{plain:.1f} µs, same run): (c) routed `/0` **×{x('routed_vs_plain')}** "
                     f"({ROUTED_COST_NOTE.format(n=rt.get('decoys', '?'))}); routed + retried "
                     f"`/flaky` **×{x('retried_vs_plain')}** (b) with the default retry budget "
                     f"and **×{x('retried_nobudget_vs_plain')}** (b′) with maxRetries lifted; "
                     f"against (c): ×{x('retried_vs_routed')} and "
                     f"×{x('retried_nobudget_vs_routed')}.")
    else:
        parts.append("No plain Halyard HTTP/1.1 0 B figure in this run to compare with; "
                     f"routed + retried `/flaky` against routed `/0`, CPU per 2xx request: "
                     f"×{x('retried_vs_routed')} (default budget), "
                     f"×{x('retried_nobudget_vs_routed')} (maxRetries lifted).")
    a = tg.get("direct-flaky", {})
    succ = [f"direct {_pct(a.get('capacity', {}).get('success_rate'))} / "
            f"{_pct(a.get('latency', {}).get('success_rate'))}"]
    for r, name in ((b, "through Halyard, default retry budget"),
                    (bn, "maxRetries lifted")):
        rc, rl = r.get("capacity", {}), r.get("latency", {})
        if rc:
            succ.append(f"{name} {_pct(rc.get('success_rate'))} / "
                        f"{_pct(rl.get('success_rate'))} with "
                        f"{_num(rc.get('retries_per_req'), '{:.4f}')} / "
                        f"{_num(rl.get('retries_per_req'), '{:.4f}')} retries per request and "
                        f"{_num(rc.get('retry_overflows'))} / {_num(rl.get('retry_overflows'))} "
                        "refused")
    parts.append(f"Success on `/flaky` (closed loop / at {rt.get('rate', 0):,} req/s): "
                 + "; ".join(succ) + ".")
    ba, bna, ca = b.get("added_us", {}), bn.get("added_us", {}), c0.get("added_us", {})
    if ba or bna or ca:
        parts.append(f"Added latency at {rt.get('rate', 0):,} req/s (p50 / p99): routed `/0` "
                     f"{_signed(ca.get('p50'))} / {_signed(ca.get('p99'))} µs; routed + retried "
                     f"`/flaky` {_signed(ba.get('p50'))} / {_signed(ba.get('p99'))} µs (default "
                     f"budget), {_signed(bna.get('p50'))} / {_signed(bna.get('p99'))} µs "
                     "(maxRetries lifted). A retried request waits the backoff, 12–25 ms before "
                     "the first retry, and ~5 % of requests need one, so the p99 of a retried "
                     "path is a retried request.")
    end = rt.get("stats_end") or {}
    rt_tot = end.get("halyard_upstream_rq_retry_total") or {}
    of_tot = end.get("halyard_upstream_rq_retry_overflow_total") or {}
    if rt_tot or of_tot:
        shares = []
        for svc in sorted({k.split("|")[0] for k in rt_tot}):
            tot = sum(v for k, v in rt_tot.items() if k.split("|")[0] == svc)
            if tot:
                shares.append(f"`{svc}` {rt_tot.get(svc + '|v2', 0) / tot:.1%}")
        parts.append("`halyard_upstream_rq_retry_total` after the section (all runs, warm-ups "
                     "and sanity checks included): "
                     + (", ".join(f"`{k}` {v:,.0f}" for k, v in sorted(rt_tot.items())) or "0")
                     + (" (share of the `v2` subset, which gets 10 % of the requests: "
                        + ", ".join(shares) + "; the default budget, at least 3 retries in "
                        "flight per subset, lets a larger share of the small subset's retries "
                        "through)" if shares else "")
                     + "; `halyard_upstream_rq_retry_overflow_total`: "
                     + (", ".join(f"`{k}` {v:,.0f}" for k, v in sorted(of_tot.items())) or "0")
                     + ".")
    if rt.get("rss_idle_kib"):
        parts.append(f"RSS of the routed proxy: {_mib(rt['rss_idle_kib'])} MiB idle, "
                     f"{_mib(rt.get('rss_end_kib'))} MiB at the end. Load average before / "
                     f"after this section: {rt.get('load_before', '?')} / "
                     f"{rt.get('load_after', '?')}.")
    for line in parts:
        L += [line, ""]
    return L


ROUTED_COST_NOTE = "{n} decoy routes evaluated and a weighted split, no retries"


# --------------------------------------------------------------------------- telemetry cost

def _ov(v):
    return "n/a" if v is None else f"{v:+.1f} %"


def _drops(d: dict | None) -> str:
    d = {k: v for k, v in (d or {}).items() if v}
    return ", ".join(f"{v:,.0f} {k}" for k, v in sorted(d.items())) or "0"


def telemetry_section(results: dict) -> list[str]:
    te = results["telemetry"]
    ts = results["settings"].get("telemetry", {})
    cores = results["settings"]["cores"]
    L = ["## Telemetry cost: metrics and tracing on vs off (Halyard only)", ""]
    if te.get("skipped"):
        return L + [f"Not run: {te['skipped']}."]
    tg = te.get("targets", {})
    if not tg:
        return L + ["Not run (see Problems)."]
    rounds = te.get("rounds", ts.get("rounds", "?"))
    L.append(
        f"One Halyard proxy per configuration (same binary and flags as above: core "
        f"{cores['proxy']}, `--concurrency 1`, access log off), all four running for the whole "
        f"section and measured in turn, for `Host: {te.get('host')}` → the upstream's `GET /0` "
        "(HTTP/1.1 keep-alive, 0 B body): (a) `settings: {accessLog: false, istioMetrics: "
        "false}`, no tracing; (b) `settings: {accessLog: false}` (Istio's standard metrics on, "
        "the default); (c) and (d) as (b) plus `tracing: {sampling: 1 | 100, otlpEndpoint: "
        "http://127.0.0.1:PORT, protocol: HTTP}` — 1 % is Istio's default sampling, 100 % the "
        "worst case; oha sends no trace context, so the proxy samples. One client span per "
        "sampled request, exported in batches of up to 512 (or every second) to an OTLP/HTTP "
        f"sink in the harness process (core {cores['load_generator_and_upstream']}, "
        f"`{te.get('sink', {}).get('addr', '?')}`) that reads each `POST /v1/traces` and "
        "answers 200 with an empty `ExportTraceServiceResponse`. Capacity: closed loop, "
        f"{ts.get('capacity_concurrency', '?')}, **{rounds} rounds** in alternating order "
        "(a b c d, d c b a, …); the table gives the median and the spread of the rounds, and "
        "the overhead = median CPU per request over (a)'s median − 1. CPU is the proxy's "
        "utime+stime divided by the 2xx answers, over a window that opens "
        f"{te.get('flush_wait_s', '?')} s after the warm-up (its spans exported before) and "
        f"closes {te.get('flush_wait_s', '?')} s after the run (its last batch exported "
        "inside), the same for every configuration; counters from the admin port's "
        "`/stats/prometheus`, scraped outside the window. Latency: open loop at "
        f"**{te.get('rate', 0):,} req/s** (half of "
        f"{_tag(tg.get(te.get('rate_basis'), {}).get('label', te.get('rate_basis') or '?'))}'s "
        f"closed-loop rate), {ts.get('latency_concurrency', '?')}, one run per configuration; "
        "*added* = over (a) at the same percentile and rate.")
    L.append("")
    L.append("| configuration | rps (median) | CPU-µs/req (median) | min – max | overhead over (a) "
             "| per round (paired with (a)) | median of per round | core busy | spans exported | per req | spans dropped "
             "| OTLP POSTs / bytes at the sink | CPU-µs/req at fixed rate | overhead at fixed rate "
             "| added p50 µs | added p99 µs | added p99.9 µs | failed req |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    paired = te.get("overhead_pct_paired_median", {})
    by_round = te.get("overhead_pct_by_round", {})
    for k in te.get("order", list(tg)):
        r = tg[k]
        c, lr = r.get("capacity", {}), r.get("latency", {})
        if not c:
            L.append(f"| {r['label']} | error (see Problems) | | | | | | | | | | | | | | | | |")
            continue
        off = k == "off"
        busy = c.get("proxy_core_busy")
        traced = r.get("sampling") is not None
        added = r.get("added_us", {})
        per_round = ("—" if off else
                     " / ".join(_ov(v).replace(" %", "") for v in by_round.get(k, [])) + " %")
        failed = (c.get("bad") or 0) + (lr.get("bad") or 0)
        L.append(
            f"| {r['label']} | {_num(c.get('rps'))} | **{_num(c.get('cpu_us_per_ok'), '{:.2f}')}** "
            f"| {_num(c.get('cpu_us_per_ok_min'), '{:.2f}')} – "
            f"{_num(c.get('cpu_us_per_ok_max'), '{:.2f}')} "
            f"| {'—' if off else '**' + _ov(te.get('overhead_pct', {}).get(k)) + '**'} "
            f"| {per_round} | {'—' if off else _ov(paired.get(k))} | {_num(busy * 100 if busy is not None else None, '{:.0f}%')} "
            f"| {_num(c.get('spans_exported')) if traced else '—'} "
            f"| {_num(c.get('spans_per_req'), '{:.4f}') if traced else '—'} "
            f"| {_drops(c.get('spans_dropped')) if traced else '—'} "
            f"| {(_num(c.get('sink_requests')) + ' / ' + _num(c.get('sink_bytes'))) if traced else '—'} "
            f"| {_num(lr.get('cpu_us_per_ok'), '{:.2f}')} "
            f"| {'—' if off else _ov(r.get('latency_overhead_pct'))} "
            f"| {'—' if off else _signed(added.get('p50'))} "
            f"| {'—' if off else _signed(added.get('p99'))} "
            f"| {'—' if off else _signed(added.get('p99.9'))} | {failed} |")
    L.append("")
    ov = te.get("overhead_pct", {})
    paired = te.get("overhead_pct_paired_median", {})
    parts = []
    target = te.get("target_pct", 5)
    conc = te.get("concurrent") or {}
    by = conc.get("by_key") or {}
    goal = (f"the issue: metrics + tracing under {target:.0f} % CPU per request, taken as (c), "
            "metrics + Istio's default 1 % sampling, against (a)")
    fixed = te.get("concurrent_fixed") or {}
    fby = fixed.get("by_key") or {}

    def rounds(d: dict, k: str) -> str:
        v = d.get(k, {}).get("overhead_pct_by_round") or []
        return " / ".join(f"{x:+.1f}" for x in v) + " %" if v else "—"

    def three(d: dict) -> str:
        floor = (f"; (a) against a second (a), the noise floor: "
                 f"{_ov(d['off'].get('overhead_pct_median'))} ({rounds(d, 'off')})"
                 if "off" in d else "")
        return ", ".join(
            f"({t}) **{_ov(d.get(k, {}).get('overhead_pct_median'))}** ({rounds(d, k)})"
            for t, k in (("b", "metrics"), ("c", "trace-1"), ("d", "trace-100"))) + floor

    fresh = (" Every round starts both proxies afresh: with one long-lived process per "
             "configuration for every round, runs of the same commit disagreed by several "
             "percent while each run's rounds agreed."
             if fixed.get("fresh_processes") or conc.get("fresh_processes") else "")

    if fby:
        met = fixed.get("target_met")
        parts.append(
            f"**Target** ({goal}), **measured side by side at a fixed rate**: each "
            f"configuration and (a) loaded at the same time, both at "
            f"{_num(fixed.get('rate_each'))} requests/s ({conc.get('conns_each')} connections "
            "each, both proxies on the proxy core), so both do the same work under the same "
            "interference, the way Istio states a proxy's CPU at a given request rate; "
            f"{fixed.get('rounds')} rounds, median of the per-round overheads: {three(fby)}. "
            f"Target for (c): **{'met' if met else 'not met'}**.{fresh}")
    if by:
        met = conc.get("target_met")
        parts.append(
            ("Side by side in a closed loop" if fby else
             f"**Target** ({goal}), **measured side by side**")
            + f" (each configuration and (a) at once, {conc.get('conns_each')} connections "
            "each, as fast as each goes; here a proxy that does more per request also answers "
            "fewer requests in its share of the core, and the extra system time `perf` finds "
            "in the traced proxy is spent waking the peers it writes to): "
            f"{conc.get('rounds')} rounds, median of the per-round overheads: {three(by)}. "
            + (f"(c) under the target here: **{'yes' if met else 'no'}**." if fby else
               f"Target for (c): **{'met' if met else 'not met'}**."))
    if ov.get("trace-1") is not None:
        lead = ("From the sequential rounds of the table (noisy here; not used for the target): "
                if by else f"**Target** ({goal}): ")
        tail = "" if by else f" — {'met' if te.get('target_met') else 'not met'}"
        parts.append(
            f"{lead}(c) **{_ov(ov.get('trace-1'))}**{tail}; Istio metrics "
            f"alone (b): {_ov(ov.get('metrics'))}; every request traced (d): "
            f"{_ov(ov.get('trace-100'))}. The median of the round-paired overheads (each round's "
            "configuration against (a) of the same round): (b) "
            f"{_ov(paired.get('metrics'))}, (c) {_ov(paired.get('trace-1'))}, (d) "
            f"{_ov(paired.get('trace-100'))}; the spread of the rounds shows how much of a "
            "few-percent difference is noise on this machine.")
    ins = te.get("instructions") or {}
    if ins.get("targets"):
        it = ins["targets"]
        row = ", ".join(
            f"{_tag(r['label'])} {r['per_request']:,.0f}"
            + (f" ({_ov(r['overhead_pct'])})" if k != "off" and r.get("overhead_pct") is not None
               else "")
            for k, r in it.items())
        parts.append(
            "**User-space instructions per request** (callgrind; deterministic, so it tells "
            "apart differences the CPU figures above cannot, but it does not see the kernel's "
            "share of the work, which telemetry does not change): " + row + ". Each "
            f"configuration served {ins['requests'][0]:,} and {ins['requests'][1]:,} requests "
            f"(HTTP/1.1 keep-alive, {ins['conns']} connections) in two runs under "
            f"`{ins.get('tool', 'valgrind')} --tool=callgrind`; the difference of the totals "
            "over the difference of the requests cancels start-up and warm-up.")
    elif ins.get("skipped"):
        parts.append(f"User-space instructions per request: skipped ({ins['skipped']}).")
    spans = []
    for k in ("trace-1", "trace-100"):
        r = tg.get(k)
        if not r:
            continue
        c, lr, end = r.get("capacity", {}), r.get("latency", {}), r.get("stats_end") or {}
        samp = r.get("sampling")
        spans.append(
            f"{_tag(r['label'])} {_num(c.get('spans_exported'))} spans exported in the "
            f"capacity runs for {_num(c.get('requests'))} requests "
            f"({_num(c.get('spans_per_req'), '{:.4f}')} per request; at {samp} % sampling "
            f"expect {samp / 100:.2f}), dropped: {_drops(c.get('spans_dropped'))}; "
            f"{_num(lr.get('spans', {}).get('exported'))} exported at the fixed rate, dropped: "
            f"{_drops(lr.get('spans', {}).get('dropped'))}; over the whole section (warm-ups "
            f"and sanity checks included) `halyard_trace_spans_exported_total` "
            f"{_num(end.get('exported'))}, `halyard_trace_spans_dropped_total` "
            f"{_drops(end.get('dropped'))}, `halyard_trace_exports_total` "
            + (", ".join(f"{kk} {v:,.0f}" for kk, v in sorted((end.get('exports') or {}).items()))
               or "0"))
    if spans:
        sink = te.get("sink", {})
        parts.append("**Spans**: " + "; ".join(spans) + f". The sink received "
                     f"{_num(sink.get('requests'))} `POST /v1/traces` "
                     f"({_num(sink.get('bytes'))} bytes of protobuf) over the section"
                     + (f" and {sink['other']} other requests" if sink.get("other") else "")
                     + ".")
    plain = te.get("plain_h1_cpu_us_per_req")
    b = tg.get("metrics", {}).get("capacity", {}).get("cpu_us_per_ok")
    if plain and b:
        parts.append(f"For reference, the plain Halyard above (HTTP/1.1 keep-alive, 0 B; its "
                     f"config is (b)'s) used {plain:.2f} CPU-µs per request in its own run, "
                     f"(b) here {b:.2f}.")
    rss = [f"{_tag(r['label'])} {_mib(r.get('rss_idle_kib'))} / {_mib(r.get('rss_end_kib'))}"
           for r in tg.values() if r.get("rss_idle_kib")]
    if rss:
        parts.append("RSS idle / at the end (MiB): " + ", ".join(rss) + ". Load average "
                     f"before / after this section: {te.get('load_before', '?')} / "
                     f"{te.get('load_after', '?')}.")
    for line in parts:
        L += [line, ""]
    return L



# --------------------------------------------------------------------------- A/B of two builds

def _pp(v, fmt="{:+.1f} %"):
    return "n/a" if v is None else fmt.format(v)


def _rounds(v: list | None) -> str:
    return " / ".join(f"{x:+.1f}" for x in v) + " %" if v else "—"


def ab_rows(name: str, d: dict | None) -> list[str]:
    """One row of the A/B table per side-by-side measurement (closed loop or fixed rate)."""
    if not d:
        return [f"| {name} | not run (see Problems) | | | | | | |"]
    by = d.get("by_key") or {}
    new, aa = by.get("new") or {}, by.get("base") or {}
    cpu = new.get("cpu_us_per_ok_median") or {}
    rps = new.get("rps_median") or {}
    verdict = d.get("within_noise_or_better")
    word = ("n/a" if verdict is None else "within noise or better" if verdict
            else "**slower than the A/A spread**")
    load = (f"{d['rate_each']:,} req/s each" if d.get("rate_each") else
            f"closed loop, ~{_num(rps.get('base'))} / {_num(rps.get('test'))} rps")
    return [f"| {name} ({load}) | {_num(cpu.get('base'), '{:.2f}')} "
            f"| {_num(cpu.get('test'), '{:.2f}')} "
            f"| **{_pp(new.get('overhead_pct_median'), '{:+.2f} %')}** "
            f"| {_rounds(new.get('overhead_pct_by_round'))} "
            f"| {_pp(aa.get('overhead_pct_median'), '{:+.2f} %')} "
            f"| {_rounds(aa.get('overhead_pct_by_round'))} | {word} |"]


def ab_latency_rows(name: str, d: dict | None) -> list[str]:
    if not d or not d.get("by_key"):
        return []
    by = d["by_key"]
    new, aa = by.get("new") or {}, by.get("base") or {}
    lm, dm = new.get("latency_us_median") or {}, new.get("latency_diff_us_median") or {}
    am = aa.get("latency_diff_us_median") or {}
    b, n = lm.get("base") or {}, lm.get("test") or {}
    return [f"| {name} | {_num(d.get('rate_each'))} | {_num(b.get('p50'))} / {_num(b.get('p99'))} "
            f"| {_num(n.get('p50'))} / {_num(n.get('p99'))} "
            f"| **{_signed(dm.get('p50'))}** / **{_signed(dm.get('p99'))}** "
            f"| {_signed(am.get('p50'))} / {_signed(am.get('p99'))} |"]


def ab_section(results: dict) -> list[str]:
    ab = results["ab"]
    cores = results["settings"]["cores"]
    st = results["settings"].get("ab", {})
    L = ["## A/B: a baseline build against this build (telemetry off)", ""]
    if ab.get("skipped"):
        return L + [f"Not run: {ab['skipped']}.", ""]
    bins = ab.get("binaries", {})
    L += ["| build | binary | source tree (its commit at the time of the run) | `--version` "
          "| SHA-256 | mtime |", "|---|---|---|---|---|---|"]
    for k, label in (("base", "baseline"), ("new", "new")):
        b = bins.get(k, {})
        L.append(f"| {label} | `{b.get('path', '?')}` | {b.get('source', 'unknown')} "
                 f"| {b.get('version', '?')} | `{(b.get('sha256') or '?')[:16]}` "
                 f"| {b.get('mtime', '?')} |")
    L.append("")
    conc = st.get("capacity_concurrency_each", {})
    L.append(
        f"Both builds with the telemetry scenario's (a) configuration (`settings: {{accessLog: "
        f"false, istioMetrics: false}}`, no tracing; for h2c the same service with port "
        f"protocol `HTTP2` to the upstream's h2c port), on core {cores['proxy']} with "
        f"`--concurrency 1`. **CPU per request side by side**: a proxy of each build loaded "
        f"at the same time by two oha runs (HTTP/1.1 {conc.get('h1', '?')} each, h2c "
        f"{conc.get('h2', '?')} each), CPU-µs per 2xx answer of each over the same window; "
        f"{ab.get('rounds', '?')} rounds, every round with two fresh processes started in "
        "alternating order. First the baseline against a second baseline (A/A: what two "
        "identical builds differ by here, the noise floor), then the new build against the "
        "baseline (A/B). Closed loop, then both at a fixed rate "
        f"({st.get('fixed_rate', '?')}). The figure is the median over the rounds of "
        "(new / baseline − 1); *within noise or better* means that median is at most the "
        "largest A/A round in absolute value. The CPU columns are the medians of each "
        "side's CPU-µs per request in the A/B rounds.")
    L.append("")
    L.append("| measure | baseline CPU-µs/req | new CPU-µs/req | new vs baseline (median) "
             "| per round | A/A (median) | A/A per round | verdict |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|")
    names = {"h1-0": "HTTP/1.1 keep-alive, 0 B", "h2-0": "h2c (prior knowledge), 0 B"}
    for key, r in (ab.get("cpu") or {}).items():
        name = names.get(key, r.get("title", key))
        L += ab_rows(name, r.get("closed"))
        L += ab_rows(name, r.get("fixed"))
    mesh = ab.get("mesh") or {}
    if mesh.get("closed") or mesh.get("fixed"):
        L += ab_rows("mTLS hop, A+B", mesh.get("closed"))
        L += ab_rows("mTLS hop, A+B", mesh.get("fixed"))
    L.append("")
    lat = []
    for key, r in (ab.get("cpu") or {}).items():
        lat += ab_latency_rows(names.get(key, key), r.get("fixed"))
    lat += ab_latency_rows("mTLS hop", mesh.get("fixed"))
    if lat:
        L.append("Latency in the fixed-rate side-by-side rounds (µs; medians over the rounds; "
                 "both sides at the same rate on the same core, so the absolute figures include "
                 "the other side's load; the difference is the median of the per-round "
                 "differences):")
        L.append("")
        L.append("| path | req/s each | baseline p50 / p99 | new p50 / p99 "
                 "| new − baseline p50 / p99 | A/A difference p50 / p99 |")
        L.append("|---|---:|---:|---:|---:|---:|")
        L += lat
        L.append("")
    if mesh.get("skipped"):
        L += [f"mTLS hop: not run ({mesh['skipped']}).", ""]
    elif mesh.get("controls"):
        c = mesh["controls"]
        ca = ("one halyard-control for both builds (`" + c.get("new", {}).get("path", "?") + "`)"
              if mesh.get("shared_ca") else
              "each build's own halyard-control (baseline `" + c.get("base", {}).get("path", "?")
              + "`, new `" + c.get("new", {}).get("path", "?") + "`)")
        L += [f"mTLS hop: the mesh scenario's hop (HTTP/1.1 client → sidecar A → h2 in mutual "
              f"TLS → sidecar B `mtls: STRICT` → upstream `{mesh.get('path', '/0')}`), a pair "
              f"of sidecars of each build side by side ({conc.get('mesh-hop', '?')} each), all "
              f"four on core {cores['proxy']}; CPU is A's plus B's per request. Certificates "
              f"from {ca}. Each pair's B counted its connections as `mutual_tls` in a "
              "sanity check before the rounds.", ""]
    ins = ab.get("instructions") or {}
    if ins.get("scenarios"):
        L.append("**User-space instructions per request** (callgrind; nearly deterministic: "
                 "two runs of one binary agree to a few tenths of a percent even on a busy "
                 f"machine): each build served {ins['requests'][0]:,} and then "
                 f"{ins['requests'][1]:,} requests ({ins['conns']} connections) in two fresh "
                 f"processes under `{ins.get('tool', 'valgrind')} --tool=callgrind`; the "
                 "difference of the totals over the difference of the requests.")
        L.append("")
        L.append("| path | baseline | new | new vs baseline |")
        L.append("|---|---:|---:|---:|")
        for key, r in ins["scenarios"].items():
            L.append(f"| {names.get(key, key)} | {_num((r.get('base') or {}).get('per_request'))} "
                     f"| {_num((r.get('new') or {}).get('per_request'))} "
                     f"| **{_pp(r.get('diff_pct'), '{:+.2f} %')}** |")
        L.append("")
    elif ins.get("skipped"):
        L += [f"Instructions per request: skipped ({ins['skipped']}).", ""]
    # Issue 17 item 10, the restructure's "no slower".
    goals = []

    def cpu_goals(label: str, r: dict, ok: str) -> None:
        for mode, what in (("closed", "closed loop"), ("fixed", "fixed rate")):
            d = r.get(mode) or {}
            v = d.get("within_noise_or_better")
            if v is not None:
                goals.append(f"{label} {what} "
                             f"{_pp(d['by_key']['new'].get('overhead_pct_median'))} "
                             f"(A/A spread ±{d.get('noise_pct') or 0:.1f} %): "
                             + (ok if v else "**not within noise**"))

    for key, r in (ab.get("cpu") or {}).items():
        cpu_goals(names.get(key, key), r, "ok")
    h1 = (ins.get("scenarios") or {}).get("h1-0") or {}
    h1n, h1b = (h1.get(k, {}).get("per_request") for k in ("new", "base"))
    ref = ins.get("reference_h1")
    if h1n is not None and ref:
        goals.append(f"HTTP/1.1 instructions per request {h1n:,.0f} against issue 17's "
                     f"{ref:,}: " + ("ok" if h1n <= ref else "**above**")
                     + (f" (the baseline here: {h1b:,.0f}, new {_pp(h1.get('diff_pct'), '{:+.2f} %')})"
                        if h1b is not None else ""))
    cpu_goals("mTLS hop", mesh, "unchanged or better")
    if goals:
        L.append("**No slower** (issue 17, item 10): " + "; ".join(goals) + ". Load average "
                 f"before / after the A/B: {ab.get('load_before', '?')} / "
                 f"{ab.get('load_after', '?')}.")
        L.append("")
    return L


def write_ab_markdown(results: dict, out: Path) -> None:
    """REPORT.md of `run.sh --ab` (harness.py --only-ab): the A/B section alone."""
    s = results["settings"]
    quick = " --quick" if results["mode"] == "quick" else ""
    L = ["# Halyard load benchmark: A/B of two builds", ""]
    L.append(f"Run: {results['date']}, `{results['mode']}` mode ({s['duration_s']} s per "
             f"measurement after {s['warmup_s']} s of warm-up), harness time "
             f"{results.get('elapsed_s', '?')} s. Produced by `bash benches/load/run.sh "
             f"--ab BASELINE_PROXY_BIN{quick}`; raw numbers in `results.json`. Every figure is "
             "from this run: the two builds were measured side by side, under the same load "
             "of the machine.")
    L += machine_tools_lines(results)
    L.append("")
    L += ab_section(results)
    L += ["## Problems", ""]
    probs = results.get("problems") or []
    L += [f"- {p}" for p in probs] if probs else ["None: every request answered 2xx, every "
                                                   "process stayed up."]
    L.append("")
    (out / "REPORT.md").write_text("\n".join(L))


def machine_tools_lines(results: dict) -> list[str]:
    m, t = results["machine"], results["tools"]
    L = ["", "## Machine", ""]
    L.append(f"- {m['nproc']} CPUs: {m['cpu_model']}; {m['mem_gib']} GiB; Linux {m['kernel']}; "
             f"CLK_TCK {m['clk_tck']}")
    L.append(f"- load average before / after: {results['load_before']} / "
             f"{results.get('load_after', '?')} (other work on the machine shows up as noise)")
    L += ["", "## Tools", ""]
    for k in ("halyard", "halyard_control", "halyard_commit", "nginx", "haproxy", "oha",
              "openssl", "python"):
        if k in t:
            L.append(f"- {k}: {t[k]}")
    return L


def write_markdown(results: dict, out: Path) -> None:
    if results.get("only") == "ab":
        write_ab_markdown(results, out)
        return
    s = results["settings"]
    L = ["# Halyard load benchmark", ""]
    L.append(f"Run: {results['date']}, `{results['mode']}` mode "
             f"({s['duration_s']} s per measurement after {s['warmup_s']} s of warm-up), "
             f"harness time {results.get('elapsed_s', '?')} s. Produced by "
             f"`bash benches/load/run.sh{' --quick' if results['mode'] == 'quick' else ''}`; "
             "raw numbers in `results.json`.")
    if results.get("only"):
        L.append("")
        L.append(f"**Partial run** (`harness.py --only-{results['only']}`): only that scenario "
                 "ran; the other sections are empty.")
    L.append("")
    L.append("Ratios are against the baseline (direct to the upstream) or nginx **from this same "
             "run**; absolute numbers from another day or machine are not comparable.")
    L += machine_tools_lines(results)
    L += ["", "## Setup", ""]
    L += [
        f"- Core {s['cores']['proxy']}: the proxy under test (`taskset -c {s['cores']['proxy']}`), "
        "one worker: Halyard `--concurrency 1`, nginx `worker_processes 1`, haproxy `nbthread 1`.",
        f"- Core {s['cores']['load_generator_and_upstream']}: the load generator (oha, one "
        "worker thread) and the upstream (nginx, one worker; `/0` empty 200, `/1k` 1 KiB). "
        "Because client and upstream share one core, closed-loop rps is often bounded by core "
        f"{s['cores']['load_generator_and_upstream']}, not by the proxy: read rps together "
        "with *proxy core busy* (proxy CPU-seconds / wall seconds; 100% = the proxy's core is "
        "saturated) and compare proxies by *CPU-µs/req*.",
        f"- Processes run at niceness {s['nice']} to keep other work on the machine out of "
        "the way." if s.get("nice") else "- Processes run at the default niceness.",
        f"- Capacity (closed loop): HTTP/1.1 {s['capacity_concurrency']['h1']}, HTTP/2 "
        f"{s['capacity_concurrency']['h2']}; rps counts 2xx answers; proxy CPU is utime+stime "
        "from `/proc/PID/stat` (nginx: master + worker) over the measured run.",
        f"- Latency (open loop, `oha -q RATE --latency-correction`): HTTP/1.1 "
        f"{s['latency_concurrency']['h1']}, HTTP/2 {s['latency_concurrency']['h2']}; the rate "
        "is half of Halyard's closed-loop rps in that scenario, the same for every target. "
        "*Added* latency = target minus direct at the same percentile, same rate, same run.",
        f"- Memory: RSS (`VmRSS`, nginx master + worker) at idle right after start, then with "
        f"{s['idle_connections']:,} client connections open, each having completed one "
        "keep-alive `GET /0` and then held idle.",
        "- Legs: `h1 → h1` = HTTP/1.1 client side and upstream side; `h2c → h2c` = HTTP/2 "
        "prior knowledge both sides; nginx's `proxy_pass` has no HTTP/2 upstream, so its "
        "HTTP/2 row is `h2c → h1` (keep-alive pool of 64).",
    ]
    L += ["", "## Results", ""]
    for key, sc in results["scenarios"].items():
        L += [f"### {sc['title']}", ""]
        L += scenario_table(key, sc, results)
        L.append("")
    if results.get("routed"):
        L += routed_section(results)
    if results.get("telemetry"):
        L += telemetry_section(results)
    if results.get("ab"):
        L += ab_section(results)
    if results.get("mesh"):
        L += mesh_sections(results)
        L.append("")
    L += ["## Memory", ""]
    L += memory_table(results)
    L += ["", "## Added latency", "", "![added latency p50/p99 per target and scenario]"
          "(latency.svg)", ""]
    L += ["## Problems", ""]
    probs = results.get("problems") or []
    if probs:
        L += [f"- {p}" for p in probs]
    else:
        L.append("None: every request answered 2xx, every process stayed up.")
    L.append("")
    (out / "REPORT.md").write_text("\n".join(L))


def nice_step(span: float, target_ticks: int = 6) -> float:
    raw = span / target_ticks if span > 0 else 1
    mag = 10 ** math.floor(math.log10(raw))
    for f in (1, 2, 2.5, 5, 10):
        if raw <= f * mag:
            return f * mag
    return 10 * mag


def write_svg(results: dict, out: Path) -> None:
    scen = list(results["scenarios"].items())
    proxies = [p for p in PROXIES if p in results["targets"]]
    vals = []
    for _, sc in scen:
        for p in proxies:
            a = sc["targets"].get(p, {}).get("added_us") or {}
            vals += [v for v in (a.get("p50"), a.get("p99")) if v is not None]
    vmax = max(vals + [1.0])
    vmin = min(vals + [0.0])
    step = nice_step(vmax - vmin)
    top = math.ceil(vmax * 1.08 / step) * step
    bot = math.floor(vmin / step) * step if vmin < 0 else 0.0

    W, H = 980, 500
    ml, mr, mt, mb = 80, 20, 80, 90
    pw, ph = W - ml - mr, H - mt - mb

    def y(v: float) -> float:
        return mt + ph * (top - v) / (top - bot)

    e = []
    e.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">')
    e.append(f'<rect width="{W}" height="{H}" fill="white"/>')
    e.append(f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
             f'Latency added over direct at a fixed rate (µs, lower is better)</text>')
    e.append(f'<text x="{W / 2}" y="42" text-anchor="middle" fill="#555">'
             f'{escape(results["date"])}, {results["mode"]} run; rate = half of Halyard capacity '
             f'per scenario; solid = p50, light = p99</text>')
    # legend
    lx = ml
    for p in proxies:
        label = results["targets"][p]["label"]
        e.append(f'<rect x="{lx}" y="54" width="14" height="14" fill="{COLORS[p]}"/>')
        e.append(f'<rect x="{lx + 16}" y="54" width="14" height="14" fill="{LIGHT[p]}" '
                 f'stroke="{COLORS[p]}"/>')
        e.append(f'<text x="{lx + 36}" y="66">{escape(label)} (p50, p99)</text>')
        lx += 190
    # grid and y axis
    v = bot
    while v <= top + 1e-9:
        yy = y(v)
        e.append(f'<line x1="{ml}" y1="{yy:.1f}" x2="{ml + pw}" y2="{yy:.1f}" '
                 f'stroke="{"#444" if abs(v) < 1e-9 else "#ddd"}"/>')
        e.append(f'<text x="{ml - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
        v += step
    e.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#444"/>')
    e.append(f'<text transform="translate(20,{mt + ph / 2}) rotate(-90)" text-anchor="middle">'
             f'added latency (µs)</text>')
    # bars
    gw = pw / max(1, len(scen))
    slot = (gw - 40) / max(1, len(proxies))
    bw = min(34.0, slot / 2 - 4)
    for i, (_, sc) in enumerate(scen):
        gx = ml + i * gw + 20
        for j, p in enumerate(proxies):
            r = sc["targets"].get(p, {})
            a = r.get("added_us")
            cx = gx + j * slot + slot / 2
            label = results["targets"][p]["label"]
            e.append(f'<text x="{cx:.1f}" y="{mt + ph + 16}" text-anchor="middle">'
                     f'{escape(label)}</text>')
            if not a:
                e.append(f'<text x="{cx:.1f}" y="{y(0) - 6:.1f}" text-anchor="middle" '
                         f'fill="#888">n/a</text>')
                continue
            for k, (pct, fill) in enumerate((("p50", COLORS[p]), ("p99", LIGHT[p]))):
                val = a.get(pct)
                if val is None:
                    continue
                x0 = cx - bw - 1 if k == 0 else cx + 1
                y0, y1 = sorted((y(0), y(val)))
                e.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{bw:.1f}" '
                         f'height="{max(0.5, y1 - y0):.1f}" fill="{fill}" stroke="{COLORS[p]}">'
                         f'<title>{escape(label)} {pct}: {val:+.0f} µs</title></rect>')
                ty = y(val) - 4 if val >= 0 else y(val) + 12
                e.append(f'<text x="{x0 + bw / 2:.1f}" y="{ty:.1f}" text-anchor="middle" '
                         f'font-size="10">{val:+.0f}</text>')
        e.append(f'<text x="{ml + i * gw + gw / 2:.1f}" y="{mt + ph + 40}" text-anchor="middle" '
                 f'font-weight="bold">{escape(sc["title"])}</text>')
        e.append(f'<text x="{ml + i * gw + gw / 2:.1f}" y="{mt + ph + 56}" text-anchor="middle" '
                 f'fill="#555">at {sc.get("rate", 0):,} req/s</text>')
        if i:
            e.append(f'<line x1="{ml + i * gw:.1f}" y1="{mt}" x2="{ml + i * gw:.1f}" '
                     f'y2="{mt + ph + 60}" stroke="#bbb" stroke-dasharray="4 3"/>')
    e.append("</svg>")
    (out / "latency.svg").write_text("\n".join(e) + "\n")


def write(results: dict, out: Path) -> None:
    write_markdown(results, out)
    if results.get("only") != "ab":  # the A/B alone has none of the svg's scenarios
        write_svg(results, out)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benches/report/results.json")
    write(json.loads(path.read_text()), path.parent)
