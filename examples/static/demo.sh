#!/usr/bin/env bash
# Brings up the static example on loopback: an echo app on 127.0.0.1:18080 and a Halyard proxy
# configured by examples/static/proxy.yaml, sends traffic through it, shows what the proxy
# added and reported, then stops it with SIGTERM (graceful drain).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/halyard-target}"
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

echo "==> building halyard-proxy and the echo app"
cargo build -q -p halyard-proxy -p halyard-control --bins
BIN="$CARGO_TARGET_DIR/debug"
LOGS=$(mktemp -d)
cleanup() { kill "${ECHO_PID:-}" "${PROXY_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT

"$BIN/halyard-control" echo --name echo --listen 127.0.0.1:18080 2>"$LOGS/echo.log" &
ECHO_PID=$!
"$BIN/halyard-proxy" --config examples/static/proxy.yaml >"$LOGS/access.log" 2>"$LOGS/proxy.log" &
PROXY_PID=$!
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:15000/ready >/dev/null 2>&1 && break
  kill -0 "$PROXY_PID" 2>/dev/null || { cat "$LOGS/proxy.log"; exit 1; }
  sleep 0.1
done
curl -sf http://127.0.0.1:15000/ready >/dev/null || { echo "proxy did not become ready"; cat "$LOGS/proxy.log"; exit 1; }

run() { echo; echo "\$ $*"; "$@"; echo; }
echo "==> the proxy is ready (admin on 127.0.0.1:15000); sending traffic through the outbound listener 127.0.0.1:15001"
run curl -s -H 'Host: echo.local' http://127.0.0.1:15001/hello
run curl -s --http2-prior-knowledge -H 'Host: echo.local' -o /dev/null -w 'HTTP/2 through the proxy: %{http_code}\n' http://127.0.0.1:15001/h2
run curl -s -i -H 'Host: unknown.example' http://127.0.0.1:15001/
echo "==> access log (JSON lines on the proxy's stdout)"
sleep 0.2
cat "$LOGS/access.log"
echo
echo "==> metrics (http://127.0.0.1:15000/stats/prometheus)"
curl -s http://127.0.0.1:15000/stats/prometheus | grep -E '^halyard_(requests_total|build_info|connections_total)'
echo
echo "==> SIGTERM: drain and exit"
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" && echo "proxy exited with code 0"
PROXY_PID=
