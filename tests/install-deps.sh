#!/usr/bin/env bash
# System packages and Python peers the tests use. Installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in curl:curl ip:iproute2 iptables:iptables python3:python3 openssl:openssl h2load:nghttp2-client prometheus:prometheus; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
VENV=/var/tmp/halyard-venv
REQ=tests/requirements.txt
if [ -f "$REQ" ]; then
  stamp="$VENV/.requirements.sha"
  want=$(sha256sum "$REQ" | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
    echo "$want" > "$stamp"
  fi
fi
