#!/usr/bin/env python3
"""Checks one test-peer venv after tests/install-deps.sh made it, before any test runs.

Usage: selfcheck.py ENV REQUIREMENTS

Four checks, each failing with the package it concerns:
1. every pinned distribution is installed at its pinned version;
2. nothing else is installed but pip;
3. every file a pinned distribution installed still has the hash its RECORD states (a package
   whose files another package overwrote, or that was edited by hand, fails here);
4. the modules the peers of ENV import load from this venv and have the fields the tests rely on.

Exit 0 when all pass; otherwise 1 with one line per problem on stderr.
"""

import base64
import hashlib
import importlib
import importlib.metadata as md
import os
import sys

problems = []


def fail(package, what):
    problems.append(f"{package}: {what}")


def pins(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"{path}: `{line}` is not pinned as name==version")
            out.append((name.strip(), version.strip()))
    return out


def check_version(name, version):
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        fail(name, f"not installed (pinned {version})")
        return None
    if have != version:
        fail(name, f"installed {have}, pinned {version}")
    return md.distribution(name)


def check_files(name, dist):
    """Every file with a recorded hash still matches it."""
    bad = []
    for f in dist.files or []:
        if not f.hash or f.hash.mode != "sha256":
            continue
        path = f.locate()
        try:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).digest()
        except OSError as e:
            bad.append(f"{f} ({e.strerror})")
            continue
        want = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
        if digest != want:
            bad.append(str(f))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        fail(name, f"files differ from what it installed: {', '.join(bad[:3])}{more}")


def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")


def check_unpinned(req, pinned):
    """Nothing but the pins (and pip, which installs them) is in the venv."""
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if canonical(name) not in pinned | {"pip"}:
            fail(name, f"installed {dist.version} but not pinned in {req}")


def module(package, name):
    """Imports `name`, which must come from this venv."""
    try:
        m = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure to import is the finding
        fail(package, f"import {name}: {type(e).__name__}: {e}")
        return None
    where = os.path.realpath(getattr(m, "__file__", "") or "")
    if not where.startswith(os.path.realpath(sys.prefix) + os.sep):
        fail(package, f"{name} loads from {where}, outside the venv {sys.prefix}")
    return m


def fields(package, message, names):
    have = {f.name for f in message.DESCRIPTOR.fields}
    missing = [n for n in names if n not in have]
    if missing:
        fail(package, f"{message.DESCRIPTOR.full_name} lacks {', '.join(missing)}")


def attrs(package, m, names):
    for n in names:
        if m is not None and not hasattr(m, n):
            fail(package, f"{m.__name__} has no {n}")


def grpc_env():
    g = module("grpcio", "grpc")
    attrs("grpcio", g, ["method_handlers_generic_handler", "ssl_channel_credentials"])
    tools = module("grpcio-tools", "grpc_tools.protoc")
    attrs("grpcio-tools", tools, ["main"])
    if tools is not None:
        bundled = os.path.join(os.path.dirname(tools.__file__), "_proto", "google", "protobuf")
        if not os.path.isfile(os.path.join(bundled, "empty.proto")):
            fail("grpcio-tools", f"no bundled google/protobuf protos in {bundled}")


def xds_env():
    module("grpcio", "grpc")
    d = module("xds-protos", "envoy.service.discovery.v3.discovery_pb2")
    if d is not None:
        fields("xds-protos", d.DiscoveryRequest,
               ["version_info", "node", "resource_names", "type_url", "response_nonce",
                "error_detail"])
        fields("xds-protos", d.DeltaDiscoveryRequest,
               ["resource_names_subscribe", "resource_names_unsubscribe",
                "initial_resource_versions", "response_nonce", "error_detail"])
        fields("xds-protos", d.DeltaDiscoveryResponse,
               ["system_version_info", "resources", "removed_resources", "nonce"])
    ads = module("xds-protos", "envoy.service.discovery.v3.ads_pb2_grpc")
    attrs("xds-protos", ads, ["AggregatedDiscoveryServiceStub"])
    base = module("xds-protos", "envoy.config.core.v3.base_pb2")
    if base is not None:
        fields("xds-protos", base.Node, ["id", "cluster"])
    status = module("xds-protos", "google.rpc.status_pb2")
    if status is not None:
        fields("xds-protos", status.Status, ["code", "message"])


def otlp_env():
    module("grpcio", "grpc")
    t = module("opentelemetry-proto", "opentelemetry.proto.trace.v1.trace_pb2")
    if t is not None:
        fields("opentelemetry-proto", t.ResourceSpans, ["resource", "scope_spans"])
        fields("opentelemetry-proto", t.ScopeSpans, ["scope", "spans"])
        fields("opentelemetry-proto", t.Span,
               ["trace_id", "span_id", "parent_span_id", "name", "kind", "attributes",
                "status", "start_time_unix_nano", "end_time_unix_nano"])
    svc = module("opentelemetry-proto",
                 "opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    if svc is not None:
        fields("opentelemetry-proto", svc.ExportTraceServiceRequest, ["resource_spans"])
    stubs = module("opentelemetry-proto",
                   "opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")
    attrs("opentelemetry-proto", stubs, ["TraceServiceServicer",
                                         "add_TraceServiceServicer_to_server"])
    module("protobuf", "google.protobuf.message")


def jwt_env():
    jwt = module("PyJWT", "jwt")
    ec = module("cryptography", "cryptography.hazmat.primitives.asymmetric.ec")
    ed = module("cryptography", "cryptography.hazmat.primitives.asymmetric.ed25519")
    if None in (jwt, ec, ed):
        return
    # A signature round trip: PyJWT really drives cryptography's EC and EdDSA keys.
    for alg, key in [("ES256", ec.generate_private_key(ec.SECP256R1())),
                     ("EdDSA", ed.Ed25519PrivateKey.generate())]:
        try:
            token = jwt.encode({"sub": "selfcheck"}, key, algorithm=alg)
            claims = jwt.decode(token, key.public_key(), algorithms=[alg])
            if claims.get("sub") != "selfcheck":
                fail("PyJWT", f"{alg} round trip returned {claims}")
        except Exception as e:  # noqa: BLE001
            fail("PyJWT", f"{alg} round trip: {type(e).__name__}: {e}")


def ws_env():
    client = module("websockets", "websockets.asyncio.client")
    server = module("websockets", "websockets.asyncio.server")
    exc = module("websockets", "websockets.exceptions")
    attrs("websockets", client, ["connect"])
    attrs("websockets", server, ["serve"])
    attrs("websockets", exc, ["ConnectionClosed", "WebSocketException"])


ENVS = {"grpc": grpc_env, "xds": xds_env, "otlp": otlp_env, "jwt": jwt_env, "ws": ws_env}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ENVS:
        raise SystemExit(f"usage: selfcheck.py {{{','.join(ENVS)}}} REQUIREMENTS")
    env, req = sys.argv[1], sys.argv[2]
    pinned = pins(req)
    for name, version in pinned:
        dist = check_version(name, version)
        if dist is not None:
            check_files(name, dist)
    check_unpinned(req, {canonical(n) for n, _ in pinned})
    ENVS[env]()
    if problems:
        for p in problems:
            print(f"peer venv `{env}` ({sys.prefix}): {p}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
