#!/usr/bin/env bash
# System packages the test suite needs (Debian). Idempotent; skipped when already present.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
# A real PostgreSQL server for the store tests (tests/pgcluster.py starts its own throwaway cluster
# from these binaries; the package's default cluster is not used).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# Debian's chromium for the GUI's real-browser tests (tests/gui/), driven by the playwright Python
# package with executable_path=/usr/bin/chromium: playwright's own browser download cannot work here.
[ -x /usr/bin/chromium ] || need+=(chromium)
# venv for Debian's own python3.11, which scripts/pick-python.sh prefers (an optimised build).
# Optional: without it the picker falls back to another python3, so only root asks for it.
if [ "$(id -u)" = 0 ] && [ -x /usr/bin/python3.11 ] &&
  ! /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null; then
  need+=(python3.11-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing system packages: ${need[*]} (run as root to install)" >&2; exit 1
  fi
fi
