#!/usr/bin/env bash
# The test command: installs what the end-to-end tests need when it is missing (and checks the
# Python peers' venvs), builds the binaries and runs every test of the workspace. Safe to run
# repeatedly. HALYARD_VENV and CARGO_TARGET_DIR choose where venvs and builds go.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/halyard-target}"
export HALYARD_VENV="${HALYARD_VENV:-/var/tmp/halyard-venv}"
bash tests/install-deps.sh
cargo build --workspace --bins --examples
cargo test --workspace --no-fail-fast -- --test-threads="${HALYARD_TEST_THREADS:-4}"
