#!/usr/bin/env bash
# The test command: installs what the end-to-end tests need when it is missing, builds the
# binaries and runs every test of the workspace. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/halyard-target}"
bash tests/install-deps.sh
export HALYARD_PYTHON="${HALYARD_PYTHON:-/var/tmp/halyard-venv/bin/python}"
cargo build --workspace --bins --examples
cargo test --workspace --no-fail-fast -- --test-threads="${HALYARD_TEST_THREADS:-4}"
