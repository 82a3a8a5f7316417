#!/usr/bin/env bash
# System packages and the Python peers the tests use. Installs only what is missing; checks the
# Python peers' venvs every time, before any test runs.
#
# Each tests/requirements-ENV.txt becomes its own venv, $HALYARD_VENV/ENV (default
# /var/tmp/halyard-venv/ENV): peers whose packages write the same module paths (xds-protos ships
# an old opentelemetry/proto/...) never share one. A venv is rebuilt when its requirements file,
# the self-check or the Python version changes (a stamp of their hash), installed with
# --no-deps from exact pins (`pip check` fails on a missing transitive pin), and then checked
# by tests/peers/selfcheck.py: versions, the files each package installed, and the fields the
# tests rely on. A failed check names the package and stops here.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in curl:curl ip:iproute2 iptables:iptables python3:python3 openssl:openssl h2load:nghttp2-client prometheus:prometheus git:git nginx:nginx make:make; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

VENV_ROOT="${HALYARD_VENV:-/var/tmp/halyard-venv}"
# Earlier versions made one shared venv right at this path: remove it, so nothing loads from it.
if [ -f "$VENV_ROOT/pyvenv.cfg" ]; then
  rm -rf "$VENV_ROOT"
fi
mkdir -p "$VENV_ROOT"
pyver=$(python3 -c 'import sys; print(sys.version)')
for req in tests/requirements-*.txt; do
  env=${req#tests/requirements-}
  env=${env%.txt}
  dir="$VENV_ROOT/$env"
  want=$({ cat "$req" tests/peers/selfcheck.py; echo "$pyver"; } | sha256sum | cut -d' ' -f1)
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$want" ]; then
    echo "install-deps: building the \`$env\` peer venv ($dir) from $req"
    rm -rf "$dir"
    python3 -m venv "$dir"
    pip=("$dir/bin/python" -I -m pip -q --disable-pip-version-check)
    # The venv's own setuptools stays only where it is pinned (its .pth loads at every start).
    grep -qi '^setuptools==' "$req" || "${pip[@]}" uninstall -y setuptools >/dev/null 2>&1 || true
    "${pip[@]}" install --no-deps -r "$req"
    if ! "${pip[@]}" check; then
      echo "install-deps: $req does not pin every dependency (pip check above)" >&2
      exit 1
    fi
    echo "$want" > "$dir/.stamp"
  fi
  if ! "$dir/bin/python" -I tests/peers/selfcheck.py "$env" "$req"; then
    echo "install-deps: the \`$env\` peer venv failed its self-check; remove $dir to rebuild it" >&2
    exit 1
  fi
done
