#!/usr/bin/env python3
# peer-env: xds  (the venv tests/install-deps.sh builds from tests/requirements-xds.txt)
"""xDS peer for the end-to-end tests: Python grpcio with Envoy's own discovery protos (the
`xds-protos` package, generated from envoyproxy/data-plane-api) against Halyard's ADS server.

xds_peer.py --server PATH
    Starts PATH (the `ads_demo_server` example), which prints `listening on ADDR` on stderr
    and takes commands on stdin (`put`, `del`, `connections`, one JSON reply line each), then
    speaks envoy.service.discovery.v3.AggregatedDiscoveryService to it as a proxy would:

    sotw:  StreamAggregatedResources — the first request must carry a node (else
           INVALID_ARGUMENT); version_info and nonce on every response; an ACK is recorded
           by the server; a change sends the whole set with a new version and nonce; a NACK
           (error_detail) is recorded with its message, the ACKed version stays and the NACKed
           version is not resent; a request with a stale nonce does not change the
           subscription; explicit resource_names narrow the set; a reconnect that names the
           version it holds gets nothing until something changes.
    delta: DeltaAggregatedResources — the initial wildcard subscription gets every resource
           with its version; a change sends only that resource, a removal only its name; a
           NACK is recorded; a reconnect with initial_resource_versions gets only what it
           lacks (and the names it must drop); an explicit subscription gets only that name.

    Prints one JSON object on stdout with what it saw; a broken expectation prints
    "FAILED: ..." on stderr and exits 1.
"""
import argparse
import json
import queue
import subprocess
import sys
import threading

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

TIMEOUT = 10.0
PREFIX = "type.googleapis.com/halyard.config.v1."
SERVICE = PREFIX + "Service"
VHOST = PREFIX + "VirtualHost"
WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"


class Failed(Exception):
    """An expectation did not hold; the message says which."""


def check(cond, what):
    if not cond:
        raise Failed(what)


class Server:
    """The demo server as a child process: its address and its command channel."""

    def __init__(self, path):
        self.proc = subprocess.Popen(
            [path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        self.replies = queue.Queue()
        self.stderr_tail = []
        addr = queue.Queue()
        threading.Thread(target=self._stderr, args=(addr,), daemon=True).start()
        threading.Thread(target=self._stdout, daemon=True).start()
        try:
            self.addr = addr.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failed(f"server printed no address: {self.stderr_tail}")

    def _stderr(self, addr):
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]
            if "listening on " in line:
                addr.put(line.split("listening on ", 1)[1].strip())

    def _stdout(self):
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))

    def cmd(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        try:
            reply = self.replies.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failed(f"no reply to {line!r}: {self.stderr_tail}")
        check(reply.get("ok"), f"{line!r} failed: {reply}")
        return reply

    def put_service(self, node, name, port):
        body = json.dumps({"name": name, "hosts": [f"{name}.local"], "ports": [{"port": port}]})
        return self.cmd(f"put {node} service {name} {body}")["version"]

    def connections(self, node):
        return [c for c in self.cmd("connections")["connections"] if c["node_id"] == node]

    def wait_conn(self, node, what, pred):
        """Polls the newest stream of `node` until pred(its type map) holds."""
        deadline = TIMEOUT * 10  # polls of 0.1 s each at most
        last = None
        for _ in range(int(deadline)):
            conns = self.connections(node)
            if conns:
                last = conns[-1]
                try:
                    ok = pred(last)
                except (KeyError, TypeError):
                    ok = False
                if ok:
                    return last
            threading.Event().wait(0.1)
        raise Failed(f"timed out waiting for {what}: {last}")

    def stop(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=TIMEOUT)
        except Exception:
            self.proc.kill()


class Stream:
    """One bidirectional ADS stream with a request queue and a response reader thread."""

    def __init__(self, method):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        self.call = method(iter(self.requests.get, None), timeout=120)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(("msg", r))
            self.responses.put(("end", None))
        except grpc.RpcError as e:
            self.responses.put(("error", e))

    def send(self, req):
        self.requests.put(req)

    def recv(self, what):
        try:
            kind, value = self.responses.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failed(f"no response: {what}")
        if kind != "msg":
            raise Failed(f"stream ended ({value.code() if value else 'EOF'}) waiting for {what}")
        return value

    def error_code(self, what):
        try:
            kind, value = self.responses.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failed(f"no status: {what}")
        check(kind == "error", f"{what}: expected an error status, got {kind} {value}")
        return value.code().name

    def close(self):
        self.requests.put(None)
        self.call.cancel()


def node(node_id):
    return base_pb2.Node(id=node_id, cluster="peer", user_agent_name="grpcio-xds-peer")


def unwrap(resp):
    """name -> (version, inner type URL, body bytes) of a SotW response's wrapped resources."""
    out = {}
    for any_ in resp.resources:
        check(any_.type_url == WRAPPER, f"resource not wrapped: {any_.type_url}")
        r = discovery_pb2.Resource()
        check(any_.Unpack(r), "cannot unpack envoy Resource")
        out[r.name] = (r.version, r.resource.type_url, r.resource.value)
    return out


def sotw(server, stub):
    out = {}
    n = "py-sotw"
    # No node on the first request.
    s = Stream(stub.StreamAggregatedResources)
    s.send(discovery_pb2.DiscoveryRequest(type_url=SERVICE))
    out["no_node"] = s.error_code("first request without node")
    s.close()

    server.put_service(n, "a", 80)
    server.put_service(n, "b", 80)
    s = Stream(stub.StreamAggregatedResources)
    s.send(discovery_pb2.DiscoveryRequest(node=node(n), type_url=SERVICE))
    r1 = s.recv("initial response")
    check(r1.type_url == SERVICE, f"type_url {r1.type_url}")
    check(r1.version_info and r1.nonce, "version_info and nonce are set")
    check(r1.control_plane.identifier == "halyard-demo", f"control plane {r1.control_plane}")
    res1 = unwrap(r1)
    check(all(t == SERVICE and v for v, t, _ in res1.values()), f"inner types/versions {res1}")
    check(b"a.local" in res1["a"][2], "the body is the service")
    out["initial"] = sorted(res1)
    s.send(discovery_pb2.DiscoveryRequest(
        version_info=r1.version_info, type_url=SERVICE, response_nonce=r1.nonce))
    server.wait_conn(n, "the ACK", lambda c: c["types"][SERVICE]["acked_version"] == r1.version_info)
    out["ack_recorded"] = True

    server.put_service(n, "b", 81)
    r2 = s.recv("response to a change")
    res2 = unwrap(r2)
    check(r2.version_info != r1.version_info and r2.nonce != r1.nonce, "new version and nonce")
    check(res2["a"][0] == res1["a"][0] and res2["b"][0] != res1["b"][0], "per-resource versions")
    out["after_change"] = sorted(res2)

    # NACK: the previous version, the new nonce, error_detail.
    s.send(discovery_pb2.DiscoveryRequest(
        version_info=r1.version_info, type_url=SERVICE, response_nonce=r2.nonce,
        error_detail=status_pb2.Status(code=3, message="py-sotw rejects b")))
    c = server.wait_conn(n, "the NACK", lambda c: c["types"][SERVICE]["last_nack"] is not None)
    t = c["types"][SERVICE]
    check(t["acked_version"] == r1.version_info, f"ACKed version after the NACK: {t}")
    check(t["last_nack"]["nonce"] == r2.nonce, f"NACKed nonce: {t}")
    out["nack_message"] = t["last_nack"]["message"]

    # A stale nonce with a narrower subscription changes nothing; the NACKed version is not
    # resent: the next response is the next change, with the whole set.
    s.send(discovery_pb2.DiscoveryRequest(
        version_info=r1.version_info, type_url=SERVICE, response_nonce=r1.nonce,
        resource_names=["a"]))
    server.put_service(n, "c", 80)
    r3 = s.recv("response after the stale request")
    check(r3.nonce not in (r1.nonce, r2.nonce), "a fresh nonce")
    out["after_stale"] = sorted(unwrap(r3))

    # ACK with explicit names: a new version with only those.
    s.send(discovery_pb2.DiscoveryRequest(
        version_info=r3.version_info, type_url=SERVICE, response_nonce=r3.nonce,
        resource_names=["a"]))
    r4 = s.recv("response to the narrower subscription")
    out["narrowed"] = sorted(unwrap(r4))
    s.send(discovery_pb2.DiscoveryRequest(
        version_info=r4.version_info, type_url=SERVICE, response_nonce=r4.nonce,
        resource_names=["a"]))
    server.wait_conn(n, "the ACK of the narrowed set",
                     lambda c: c["types"][SERVICE]["acked_version"] == r4.version_info)
    s.close()

    # Reconnect naming the version held: nothing until a change of what is subscribed.
    s = Stream(stub.StreamAggregatedResources)
    s.send(discovery_pb2.DiscoveryRequest(
        node=node(n), type_url=SERVICE, version_info=r4.version_info, resource_names=["a"]))
    server.put_service(n, "b", 82)
    server.put_service(n, "a", 90)
    r5 = s.recv("the first response after reconnecting")
    check(r5.version_info != r4.version_info, "a new version")
    out["resumed_first"] = sorted(unwrap(r5))
    c = server.wait_conn(n, "the resumed stream", lambda c: c["types"][SERVICE]["responses_sent"] > 0)
    out["resumed_responses"] = c["types"][SERVICE]["responses_sent"]
    s.close()
    return out


def delta(server, stub):
    out = {}
    n = "py-delta"
    va = server.put_service(n, "a", 80)
    server.put_service(n, "b", 80)
    s = Stream(stub.DeltaAggregatedResources)
    s.send(discovery_pb2.DeltaDiscoveryRequest(node=node(n), type_url=SERVICE))
    d1 = s.recv("initial delta response")
    check(d1.type_url == SERVICE and d1.nonce and d1.system_version_info, "type, nonce, version")
    versions = {r.name: r.version for r in d1.resources}
    check(versions.get("a") == va, f"version of a {versions} vs {va}")
    check(all(r.resource.type_url == SERVICE for r in d1.resources), "resource types")
    out["initial"] = sorted(versions)
    ack = lambda r: s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce))
    ack(d1)

    vb = server.put_service(n, "b", 81)
    d2 = s.recv("delta after a change")
    check(d2.nonce != d1.nonce, "a fresh nonce")
    out["changed"] = [(r.name, r.version == vb) for r in d2.resources]
    out["changed_removed"] = list(d2.removed_resources)
    ack(d2)

    server.cmd(f"del {n} service a")
    d3 = s.recv("delta after a removal")
    out["removal"] = {"resources": len(d3.resources), "removed": list(d3.removed_resources)}
    ack(d3)

    vc = server.put_service(n, "c", 80)
    d4 = s.recv("delta with c")
    check([r.name for r in d4.resources] == ["c"], f"only c: {d4}")
    s.send(discovery_pb2.DeltaDiscoveryRequest(
        type_url=SERVICE, response_nonce=d4.nonce,
        error_detail=status_pb2.Status(code=3, message="py-delta rejects c")))
    c = server.wait_conn(n, "the delta NACK", lambda c: c["types"][SERVICE]["last_nack"] is not None)
    out["nack_message"] = c["types"][SERVICE]["last_nack"]["message"]
    s.close()

    # Reconnect: holds b and c at their versions and a (removed meanwhile).
    s = Stream(stub.DeltaAggregatedResources)
    ack = lambda r: s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce))
    s.send(discovery_pb2.DeltaDiscoveryRequest(
        node=node(n), type_url=SERVICE,
        initial_resource_versions={"a": va, "b": vb, "c": vc}))
    d5 = s.recv("first delta response after reconnecting")
    out["resumed"] = {"resources": sorted(r.name for r in d5.resources),
                      "removed": list(d5.removed_resources)}
    ack(d5)
    vc2 = server.put_service(n, "c", 85)
    d6 = s.recv("delta after reconnecting")
    out["resumed_change"] = [(r.name, r.version == vc2) for r in d6.resources]
    ack(d6)

    # An explicit subscription on another type of the same stream.
    for name in ("vh1", "vh2"):
        server.cmd(f"put {n} virtualhost {name} " + json.dumps({"name": name, "hosts": [name]}))
    s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=VHOST, resource_names_subscribe=["vh1"]))
    d7 = s.recv("explicit subscription")
    check(d7.type_url == VHOST, f"type {d7.type_url}")
    out["explicit"] = sorted(r.name for r in d7.resources)
    ack(d7)
    s.close()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    args = p.parse_args()
    server = Server(args.server)
    try:
        with grpc.insecure_channel(server.addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            result = {"sotw": sotw(server, stub), "delta": delta(server, stub)}
        metrics = server.cmd("metrics")["metrics"]
        result["nacks_metric"] = [l for l in metrics.splitlines()
                                  if l.startswith("halyard_xds_nacks_total")]
        print(json.dumps(result))
    except Failed as e:
        print(f"FAILED: {e}\nserver stderr: {server.stderr_tail}", file=sys.stderr)
        sys.exit(1)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
