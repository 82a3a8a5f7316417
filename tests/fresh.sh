#!/usr/bin/env bash
# Runs the README's test command as a fresh machine would: in a clone of the current commit in a
# new temporary directory, with a venv path and a cargo target directory that do not exist yet.
# Only the cargo registry cache (~/.cargo) and system packages carry over. Uncommitted changes
# are not part of the run (it says so). The directory is removed after a pass; kept after a
# failure, or with --keep.
#
#   bash tests/fresh.sh [--keep]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
keep=false
[ "${1:-}" = "--keep" ] && keep=true
commit=$(git -C "$repo" rev-parse HEAD)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "fresh: the work tree has uncommitted changes; testing the commit $commit without them" >&2
fi
root=$(mktemp -d /var/tmp/halyard-fresh.XXXXXX)
git clone -q --no-local "$repo" "$root/halyard"
git -C "$root/halyard" checkout -q "$commit"
# The tests read ../shared beside the checkout, as in CI.
if [ -d "$repo/../shared" ]; then
  ln -s "$(cd "$repo/../shared" && pwd)" "$root/shared"
fi
echo "fresh: $commit in $root (venv $root/venv, target $root/target)"
start=$(date +%s)
rc=0
(
  cd "$root/halyard"
  unset HALYARD_PROXY_BIN
  HALYARD_VENV="$root/venv" CARGO_TARGET_DIR="$root/target" bash tests/run.sh
) || rc=$?
echo "fresh: tests/run.sh exited $rc after $(( $(date +%s) - start )) s ($commit)"
if [ "$rc" -eq 0 ] && ! $keep; then
  rm -rf "$root"
else
  echo "fresh: kept $root"
fi
exit "$rc"
