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
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing system packages: ${need[*]} (run as root to install)" >&2; exit 1
  fi
fi
