#!/usr/bin/env bash
# Brings up the quickstart mesh with `halyard-control up examples/quickstart` (control server
# with its CA, a sidecar for `frontend` and one for `backend`, echo apps behind both), shows it
# at work with curl, then stops it with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/halyard-target}"
# make: jemalloc (the proxy's allocator) is built with it.
for pair in curl:curl python3:python3 make:make; do
  command -v "${pair%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${pair#*:}" >/dev/null; }
done

echo "==> building halyard-control and halyard-proxy"
cargo build -q -p halyard-control -p halyard-proxy --bins
BIN="$CARGO_TARGET_DIR/debug"
WORK=$(mktemp -d)
cleanup() { [ -n "${UP_PID:-}" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "==> halyard-control up examples/quickstart   (its log: $WORK/up.log)"
"$BIN/halyard-control" up examples/quickstart --state-file "$WORK/state.json" \
  --work-dir "$WORK/mesh" >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 300); do
  [ -s "$WORK/state.json" ] && break
  kill -0 "$UP_PID" 2>/dev/null || { cat "$WORK/up.log"; exit 1; }
  sleep 0.1
done
[ -s "$WORK/state.json" ] || { echo "the mesh did not come up"; cat "$WORK/up.log"; exit 1; }
field() { python3 -c "import json,sys; s=json.load(open('$WORK/state.json')); w=[w for w in s['workloads'] if w['name']==sys.argv[1]][0]; print(w[sys.argv[2]])" "$1" "$2"; }
FRONT=$(field frontend outbound)
BACK_IN=$(field backend inbound)
echo "frontend's sidecar (outbound) listens on $FRONT; backend's sidecar (inbound, STRICT mTLS) on $BACK_IN"

run() { echo; echo "\$ $*"; "$@" || true; echo; }
echo; echo "==> 1. frontend calls backend through both sidecars over mutual TLS; the backend app sees the caller's SPIFFE ID in x-forwarded-client-cert"
run curl -s -H 'Host: backend:8080' "http://$FRONT/hello"
echo "==> 2. the VirtualService gives /slow a 500 ms timeout: an 800 ms answer becomes 504 (flag UT)"
run curl -s -w '%{http_code}\n' -H 'Host: backend:8080' "http://$FRONT/slow?delay_ms=800"
echo "==> 3. AuthorizationPolicy: frontend may only GET and POST on backend (DELETE is 403), and no other caller may — not even backend's own sidecar"
run curl -s -w '%{http_code}\n' -X DELETE -H 'Host: backend:8080' "http://$FRONT/items/1"
BACK_OUT=$(field backend outbound)
run curl -s -w '%{http_code}\n' -H 'Host: backend:8080' "http://$BACK_OUT/hello"
echo "==> 4. MeshConfig REGISTRY_ONLY: hosts no ServiceEntry defines are refused (502, flag NR)"
run curl -s -w '%{http_code}\n' -H 'Host: example.com' "http://$FRONT/"
echo "==> 5. PeerAuthentication STRICT: plaintext straight to backend's sidecar is refused"
run curl -sS "http://$BACK_IN/"
echo "==> 6. Istio's standard metrics on backend's Prometheus port: caller and callee by workload, identity and service"
BACK_METRICS=$(field backend metrics)
echo "\$ curl -s $BACK_METRICS | grep '^istio_requests_total'"
curl -s "$BACK_METRICS" | grep '^istio_requests_total' || true
echo
echo "==> 7. what the sidecars and the control server log (access logs are JSON lines)"
grep -E '^\[(demo/frontend sidecar|control)\]' "$WORK/up.log" | grep -E 'response_code|ADS stream|issued a certificate' | tail -6
echo
echo "==> the mesh's state file:"; cat "$WORK/state.json"
echo "==> stopping (SIGTERM drains every sidecar)"
