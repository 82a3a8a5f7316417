#!/usr/bin/env bash
# Halyard load benchmark: direct vs Halyard vs nginx vs haproxy on loopback, and mutual TLS
# between two Halyard sidecars (mTLS hop vs plaintext hop, handshakes per second per core).
#
#   bash benches/load/run.sh [--quick] [--no-halyard] [--no-mesh] [--no-install]
#                            [--no-build] [--only-telemetry]
#   bash benches/load/run.sh --ab BASELINE_PROXY_BIN [--ab-control BASELINE_CONTROL_BIN]
#                            [--quick] [--no-mesh] [--no-install] [--no-build]
#
# Installs what is missing (nginx, haproxy, taskset, openssl, oha), builds the proxy and the
# CA (halyard-control) in release, then runs benches/load/harness.py, which starts every
# server, drives the load and writes benches/report/{REPORT.md,latency.svg,results.json}.
# Every process it starts is stopped on exit, Ctrl-C or failure. See benches/load/README.md.
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --quick        3 s per measurement instead of 15 s (about 6 minutes in all)
  --no-halyard   do not build or run Halyard (develop the harness against the others)
  --no-mesh      skip the mutual-TLS scenarios (do not build halyard-control)
  --no-install   never run apt-get or cargo install; fail if a tool is missing
  --no-build     do not run cargo build; use the binaries already in $CARGO_TARGET_DIR/release
  --only-telemetry  run only the telemetry-cost scenario (implies --no-mesh); writes to
                 $BENCH_OUT, default /var/tmp/halyard-bench-only-telemetry, not benches/report
  --ab BIN       run only the A/B of the baseline halyard-proxy BIN against this tree's
                 build, telemetry off (CPU/req side by side for HTTP/1.1, h2c and the mTLS hop;
                 callgrind instructions/req); writes to $BENCH_OUT, default
                 /var/tmp/halyard-bench-ab, not benches/report
  --ab-control BIN  the baseline's halyard-control: the CA of the baseline's sidecars in the
                 mTLS hop (default: this tree's halyard-control for both builds)
Environment:
  CARGO_TARGET_DIR  default /var/tmp/halyard-target (binaries in $CARGO_TARGET_DIR/release)
  HALYARD_TOOLS     default /var/tmp/halyard-tools (oha is installed into $HALYARD_TOOLS/bin)
  BENCH_NICE        niceness of every benchmark process, default -10 (0 to leave it)
  BENCH_OUT         output directory (default benches/report; see --only-telemetry, --ab)
EOF
}

QUICK=0
NO_HALYARD=0
NO_MESH=0
NO_INSTALL=0
NO_BUILD=0
ONLY=""
AB_BIN=""
AB_CONTROL=""
while (( $# )); do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-halyard) NO_HALYARD=1 ;;
        --no-mesh) NO_MESH=1 ;;
        --no-install) NO_INSTALL=1 ;;
        --no-build) NO_BUILD=1 ;;
        --only-telemetry) ONLY=telemetry; NO_MESH=1 ;;
        --ab|--ab-control)
            [[ $# -ge 2 && -n "$2" ]] || { echo "run.sh: $1 needs a binary" >&2; exit 2; }
            [[ -x "$2" && -f "$2" ]] || { echo "run.sh: $1: not an executable file: $2" >&2; exit 2; }
            if [[ $1 == --ab ]]; then AB_BIN="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
            else AB_CONTROL="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; fi
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [[ -n "$AB_CONTROL" && -z "$AB_BIN" ]]; then
    echo "run.sh: --ab-control needs --ab" >&2; exit 2
fi
if [[ -n "$AB_BIN" ]]; then
    [[ -z "$ONLY" ]] || { echo "run.sh: --ab and --only-$ONLY exclude each other" >&2; exit 2; }
    [[ $NO_HALYARD == 0 ]] || { echo "run.sh: --ab needs Halyard (not --no-halyard)" >&2; exit 2; }
    ONLY=ab
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/halyard-target}"
TOOLS="${HALYARD_TOOLS:-/var/tmp/halyard-tools}"
OHA_VERSION="1.16.0"
OHA="$TOOLS/bin/oha"
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- cleanup: stop the harness and anything it left behind -----------------------------
STATE_DIR="$(mktemp -d /tmp/halyard-bench-state.XXXXXX)"
HARNESS_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$HARNESS_PID" ]] && kill -0 "$HARNESS_PID" 2>/dev/null; then
        kill -TERM "$HARNESS_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do   # at most 10 s for the harness to stop its servers
            kill -0 "$HARNESS_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$HARNESS_PID" 2>/dev/null || true
    fi
    # The harness records every process it starts as "PID<TAB>MARKER"; kill those still
    # alive whose command line still carries the marker (guards against reused PIDs).
    if [[ -f "$STATE_DIR/pids" ]]; then
        while IFS=$'\t' read -r pid marker; do
            [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || continue
            if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"; then
                log "killing leftover process $pid"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$STATE_DIR/pids"
    fi
    rm -rf "$STATE_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- 1. tools --------------------------------------------------------------------------
have_nginx_h2() { command -v nginx >/dev/null && nginx -V 2>&1 | grep -q -- --with-http_v2_module; }
APT_UPDATED=0
apt_install() {
    [[ $NO_INSTALL == 1 ]] && die "missing packages: $* (and --no-install given)"
    [[ $(id -u) == 0 ]] || die "missing packages: $* (apt-get needs root)"
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        timeout 600 apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@" >/dev/null
}
pkgs=()
have_nginx_h2 || pkgs+=(nginx-light)
command -v haproxy >/dev/null || pkgs+=(haproxy)
command -v taskset >/dev/null || pkgs+=(util-linux)
command -v getconf >/dev/null || pkgs+=(libc-bin)
command -v openssl >/dev/null || pkgs+=(openssl)   # the upstream's certificate (mesh TCP)
command -v valgrind >/dev/null || pkgs+=(valgrind) # telemetry: instructions per request
if (( ${#pkgs[@]} )); then apt_install "${pkgs[@]}"; fi
if ! have_nginx_h2; then apt_install nginx; fi
have_nginx_h2 || die "nginx without the http_v2 module"
# Debian starts packaged services where an init system runs; this harness runs its own.
# (No systemd here; nothing to stop. We never touch a system nginx/haproxy.)

if [[ ! -x "$OHA" ]] || ! "$OHA" --version 2>/dev/null | grep -qF "$OHA_VERSION"; then
    [[ $NO_INSTALL == 1 ]] && die "oha $OHA_VERSION missing at $OHA (and --no-install given)"
    log "cargo install oha $OHA_VERSION (a few minutes; once)"
    # Its own target dir so that it never holds the workspace's build lock.
    timeout 3600 cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS" \
        --target-dir "$TOOLS/build"
fi

PYTHON="$(command -v python3.11 || command -v python3)" || die "python3 not found"

# --- 2. build the proxy ---------------------------------------------------------------
PROXY_BIN=""
if [[ $NO_HALYARD == 0 ]]; then
    if [[ $NO_BUILD == 0 ]]; then
        log "cargo build --release -p halyard-proxy (CARGO_TARGET_DIR=$CARGO_TARGET_DIR; may wait on the build lock)"
        (cd "$ROOT" && timeout 3600 cargo build --release -p halyard-proxy) \
            || die "building halyard-proxy failed (use --no-halyard to bench the others)"
    fi
    PROXY_BIN="$CARGO_TARGET_DIR/release/halyard-proxy"
    [[ -x "$PROXY_BIN" ]] || die "no binary at $PROXY_BIN"
fi
# The CA for the mutual-TLS scenarios. A failed build skips those scenarios (the report says
# so) rather than the whole benchmark.
CONTROL_BIN=""
MESH_SKIP=""
if [[ $NO_HALYARD == 0 && $NO_MESH == 0 ]]; then
    [[ $NO_BUILD == 1 ]] || log "cargo build --release -p halyard-control"
    if [[ $NO_BUILD == 1 ]] || (cd "$ROOT" && timeout 3600 cargo build --release -p halyard-control); then
        CONTROL_BIN="$CARGO_TARGET_DIR/release/halyard-control"
        [[ -x "$CONTROL_BIN" ]] || { CONTROL_BIN=""; MESH_SKIP="no binary at $CARGO_TARGET_DIR/release/halyard-control"; }
    else
        MESH_SKIP="building halyard-control failed"
    fi
    if [[ -n "$MESH_SKIP" ]]; then
        log "warning: $MESH_SKIP; the mutual-TLS scenarios will not run"
    fi
fi

# --- 3..6. run ------------------------------------------------------------------------
# 1,000 idle client connections plus their upstream side need descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

# A partial run must not overwrite the full report in benches/report.
if [[ $ONLY == ab ]]; then
    OUT="${BENCH_OUT:-/var/tmp/halyard-bench-ab}"
elif [[ -n "$ONLY" ]]; then
    OUT="${BENCH_OUT:-/var/tmp/halyard-bench-only-$ONLY}"
else
    OUT="${BENCH_OUT:-$ROOT/benches/report}"
fi
args=(--oha "$OHA" --out "$OUT" --state "$STATE_DIR"
      --nice "${BENCH_NICE:--10}")
[[ -n "$ONLY" ]] && args+=("--only-$ONLY")
[[ $QUICK == 1 ]] && args+=(--quick)
[[ -n "$PROXY_BIN" ]] && args+=(--halyard "$PROXY_BIN")
[[ -n "$CONTROL_BIN" ]] && args+=(--control "$CONTROL_BIN")
[[ -n "$MESH_SKIP" ]] && args+=(--mesh-skipped "$MESH_SKIP")
[[ -n "$AB_BIN" ]] && args+=(--baseline "$AB_BIN")
[[ -n "$AB_CONTROL" && -n "$CONTROL_BIN" ]] && args+=(--baseline-control "$AB_CONTROL")

log "harness: $PYTHON $HERE/harness.py ${args[*]}"
# Run in the background and wait, so that the traps run at once on a signal.
"$PYTHON" "$HERE/harness.py" "${args[@]}" &
HARNESS_PID=$!
set +e
wait "$HARNESS_PID"
rc=$?
set -e
HARNESS_PID=""
exit "$rc"
