#!/usr/bin/env python3
# peer-env: grpc  (the venv tests/install-deps.sh builds from tests/requirements-grpc.txt)
"""CA peer for the end-to-end tests: Python grpcio and the openssl CLI against Halyard's CA.

The Istio CA proto (certs/proto/istio/v1/auth/ca.proto) is compiled at run time with
grpc_tools.protoc into --work (once per directory). Keys and CSRs are made with
`openssl genpkey` / `openssl req`, results are checked with `openssl verify` and
`openssl x509`, so nothing here shares code with Halyard.

request --addr HOST:PORT --work DIR [options]
    Makes a P-256 key and a CSR for --id (plus --extra-dns / --ca-csr if asked, or sends
    --garbage or --oversize BYTES instead of a CSR), calls
    IstioCertificateService/CreateCertificate with `authorization: Bearer --token` when given, over TLS when --tls-root is given (the
    server's certificate must name --server-name for grpcio, and its SPIFFE ID is read
    with Python's ssl module into "server_sans"; --client-cert/--client-key present a
    client certificate), and prints one JSON object on stdout:
      refused:  {"ok": false, "code": "PERMISSION_DENIED", "details": "..."}
      issued:   {"ok": true, "chain_len": N, "sans": [...], "is_ca": false,
                 "not_before": T, "not_after": T, "requested_at": T,
                 "verify": "OK" | openssl's complaint, "leaf": PATH, "key": PATH,
                 "chain": PATH, "intermediates": PATH | null}
    With --verify-root ROOT the chain is checked with
    `openssl verify -CAfile ROOT -untrusted <intermediates from the response> leaf`.
    A failure of the peer itself prints "FAILED: ..." on stderr and exits 1.
"""
import argparse
import importlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc

TIMEOUT = 10.0
PROTO_DIR = Path(__file__).resolve().parents[2] / "certs" / "proto"
PROTO = "istio/v1/auth/ca.proto"
SERVICE = "istio.v1.auth.IstioCertificateService"


class Failed(Exception):
    """The peer could not do its part; the message says why."""


def run(args, what):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise Failed(f"{what}: {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def load_stubs(work: Path):
    """Compiles ca.proto into work/gen (once) and imports the generated modules."""
    gen = work / "gen"
    marker = gen / "istio" / "v1" / "auth" / "ca_pb2_grpc.py"
    if not marker.exists():
        gen.mkdir(parents=True, exist_ok=True)
        import grpc_tools
        from grpc_tools import protoc

        bundled = Path(grpc_tools.__file__).parent / "_proto"
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{bundled}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            PROTO,
        ])
        if rc != 0 or not marker.exists():
            raise Failed(f"protoc failed on {PROTO_DIR / PROTO} (exit {rc})")
    sys.path.insert(0, str(gen))
    pb2 = importlib.import_module("istio.v1.auth.ca_pb2")
    pb2_grpc = importlib.import_module("istio.v1.auth.ca_pb2_grpc")
    return pb2, pb2_grpc


def make_csr(out: Path, spiffe_id: str, extra_dns, ca: bool):
    key = out / "key.pem"
    csr = out / "csr.pem"
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(key)], "generate key")
    san = f"subjectAltName=URI:{spiffe_id}"
    for name in extra_dns:
        san += f",DNS:{name}"
    cmd = ["openssl", "req", "-new", "-key", str(key), "-subj", "/", "-addext", san,
           "-out", str(csr)]
    if ca:
        cmd += ["-addext", "basicConstraints=critical,CA:TRUE"]
    run(cmd, "make CSR")
    return key, csr.read_text()


def cert_time(text: str) -> int:
    # openssl prints e.g. "Jan  5 09:34:43 2026 GMT"
    return int(ssl.cert_time_to_seconds(text.strip()))


def inspect(leaf: Path) -> dict:
    dates = run(["openssl", "x509", "-in", str(leaf), "-noout", "-startdate", "-enddate"],
                "read dates")
    fields = dict(line.split("=", 1) for line in dates.strip().splitlines())
    text = run(["openssl", "x509", "-in", str(leaf), "-noout", "-text"], "read certificate")
    sans = []
    m = re.search(r"X509v3 Subject Alternative Name:.*?\n\s*(.+)", text)
    if m:
        sans = [s.strip() for s in m.group(1).split(",")]
    is_ca = bool(re.search(r"CA:TRUE", text))
    return {
        "sans": sans,
        "is_ca": is_ca,
        "not_before": cert_time(fields["notBefore"]),
        "not_after": cert_time(fields["notAfter"]),
    }


def server_sans(addr: str, root: str) -> list:
    """The SANs of the TLS server's certificate, verified against `root` (no host name)."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=root)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw) as tls:
            cert = tls.getpeercert()
    return [f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ())]


def request(a) -> dict:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    pb2, pb2_grpc = load_stubs(work)
    out = Path(a.out) if a.out else work / f"req-{os.getpid()}-{time.monotonic_ns()}"
    out.mkdir(parents=True, exist_ok=True)

    if a.oversize:
        key, csr = None, "A" * a.oversize
    elif a.garbage:
        key, csr = None, "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n"
    else:
        key, csr = make_csr(out, a.id, a.extra_dns, a.ca_csr)

    if a.tls_root:
        root = Path(a.tls_root).read_bytes()
        private_key = Path(a.client_key).read_bytes() if a.client_key else None
        chain = Path(a.client_cert).read_bytes() if a.client_cert else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=private_key, certificate_chain=chain)
        # grpcio checks a host name: the server's certificate carries DNS names besides
        # its SPIFFE ID, which is checked separately below with Python's ssl module.
        options = [("grpc.ssl_target_name_override", a.server_name)]
        channel = grpc.secure_channel(a.addr, creds, options)
    else:
        channel = grpc.insecure_channel(a.addr)

    metadata = []
    if a.token is not None:
        metadata.append(("authorization", f"Bearer {a.token}"))
    stub = pb2_grpc.IstioCertificateServiceStub(channel)
    requested_at = int(time.time())
    try:
        resp = stub.CreateCertificate(
            pb2.IstioCertificateRequest(csr=csr, validity_duration=a.ttl),
            metadata=metadata, timeout=TIMEOUT)
    except grpc.RpcError as e:
        return {"ok": False, "code": e.code().name, "details": e.details()}
    finally:
        channel.close()

    result = {"ok": True}
    if a.tls_root:
        result["server_sans"] = server_sans(a.addr, a.tls_root)
    pems = list(resp.cert_chain)
    if not pems:
        raise Failed("the CA answered with an empty chain")
    leaf = out / "leaf.pem"
    leaf.write_text(pems[0])
    chain_file = out / "chain.pem"
    chain_file.write_text("".join(p if p.endswith("\n") else p + "\n" for p in pems))
    intermediates = None
    if len(pems) > 2:
        intermediates = out / "intermediates.pem"
        intermediates.write_text("".join(p if p.endswith("\n") else p + "\n" for p in pems[1:-1]))
    (out / "root.pem").write_text(pems[-1])

    result.update({"chain_len": len(pems), "requested_at": requested_at,
                   "leaf": str(leaf), "key": str(key) if key else None, "chain": str(chain_file),
                   "intermediates": str(intermediates) if intermediates else None})
    result.update(inspect(leaf))
    if a.verify_root:
        cmd = ["openssl", "verify", "-CAfile", a.verify_root]
        if intermediates:
            cmd += ["-untrusted", str(intermediates)]
        cmd.append(str(leaf))
        p = subprocess.run(cmd, capture_output=True, text=True)
        result["verify"] = "OK" if p.returncode == 0 else (p.stdout + p.stderr).strip()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("request")
    r.add_argument("--addr", required=True)
    r.add_argument("--work", required=True, help="directory for generated code and files")
    r.add_argument("--out", help="directory for this request's key, CSR and chain")
    r.add_argument("--id", default="spiffe://cluster.local/ns/default/sa/default")
    r.add_argument("--token")
    r.add_argument("--ttl", type=int, default=0, help="validity_duration in seconds")
    r.add_argument("--extra-dns", action="append", default=[])
    r.add_argument("--ca-csr", action="store_true", help="ask for CA:TRUE")
    r.add_argument("--garbage", action="store_true", help="send something that is no CSR")
    r.add_argument("--oversize", type=int, default=0, help="send a CSR field of this many bytes")
    r.add_argument("--tls-root", help="root PEM: call over TLS, trusting this root")
    r.add_argument("--server-name", default="halyard-control",
                   help="DNS name grpcio expects in the server's certificate")
    r.add_argument("--client-cert")
    r.add_argument("--client-key")
    r.add_argument("--verify-root", help="root PEM to verify the issued chain against")
    a = ap.parse_args()
    try:
        print(json.dumps(request(a)), flush=True)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
