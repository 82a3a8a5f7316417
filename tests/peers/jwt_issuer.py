#!/usr/bin/env python3
# peer-env: jwt  (the venv tests/install-deps.sh builds from tests/requirements-jwt.txt)
"""An OpenID Connect token issuer for the end-to-end tests, built on PyJWT and cryptography.

server
    Listens on 127.0.0.1:0 and prints "listening on PORT" to stderr. Its issuer is
    http://127.0.0.1:PORT. It serves:

    GET  /.well-known/openid-configuration   discovery document naming /jwks
    GET  /jwks                               the current keys (one per algorithm), counted
    GET  /token?alg=RS256&sub=..&aud=..&exp=SECONDS&nbf=SECONDS&iss=..&azp=..&claims=JSON
                                              a token signed by PyJWT with the current key
                                              (`kid` in the header); exp/nbf relative to now;
                                              `claims` is merged into the payload
    POST /rotate?keep_old=0|1                new keys (new kids); old ones kept or dropped
    GET  /stats                              {"jwks_fetches": N, "discovery_fetches": N}
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


def new_key(alg: str):
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(alg: str, key, kid: str) -> dict:
    algo = jwt.get_algorithm_by_name(alg)
    jwk = json.loads(algo.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


class Issuer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.keys = {}  # alg -> (kid, private key)
        self.published = []  # JWKs served
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.rotate(keep_old=False)

    def rotate(self, keep_old: bool) -> None:
        with self.lock:
            self.generation += 1
            fresh = {alg: (f"{alg.lower()}-{self.generation}", new_key(alg)) for alg in ALGORITHMS}
            jwks = [public_jwk(alg, key, kid) for alg, (kid, key) in fresh.items()]
            self.published = jwks + (self.published if keep_old else [])
            self.keys = fresh

    def token(self, issuer: str, q: dict) -> str:
        alg = q.get("alg", "RS256")
        now = int(time.time())
        payload = {"iss": q.get("iss", issuer), "sub": q.get("sub", "alice"), "iat": now}
        payload["exp"] = now + int(q.get("exp", "300"))
        if "nbf" in q:
            payload["nbf"] = now + int(q["nbf"])
        if "aud" in q:
            payload["aud"] = q["aud"].split(",") if "," in q["aud"] else q["aud"]
        if "azp" in q:
            payload["azp"] = q["azp"]
        if "claims" in q:
            payload.update(json.loads(q["claims"]))
        with self.lock:
            kid, key = self.keys[alg]
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def serve() -> None:
    issuer_state = Issuer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def reply(self, code: int, body, content_type="application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def issuer(self) -> str:
            return f"http://127.0.0.1:{self.server.server_address[1]}"

        def do_GET(self) -> None:
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/.well-known/openid-configuration":
                with issuer_state.lock:
                    issuer_state.discovery_fetches += 1
                self.reply(200, {"issuer": self.issuer(), "jwks_uri": self.issuer() + "/jwks"})
            elif url.path == "/jwks":
                with issuer_state.lock:
                    issuer_state.jwks_fetches += 1
                    keys = list(issuer_state.published)
                self.reply(200, {"keys": keys})
            elif url.path == "/token":
                try:
                    self.reply(200, issuer_state.token(self.issuer(), q).encode(), "text/plain")
                except Exception as e:  # a bad test request: say why
                    self.reply(400, {"error": str(e)})
            elif url.path == "/stats":
                with issuer_state.lock:
                    self.reply(200, {"jwks_fetches": issuer_state.jwks_fetches,
                                     "discovery_fetches": issuer_state.discovery_fetches,
                                     "generation": issuer_state.generation})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/rotate":
                issuer_state.rotate(keep_old=q.get("keep_old", "0") == "1")
                self.reply(200, {"generation": issuer_state.generation})
            else:
                self.reply(404, {"error": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server"])
    parser.parse_args()
    serve()


if __name__ == "__main__":
    main()
