#!/bin/sh
# Prints the interpreter `make install` builds .venv from (the Makefile's default PY).
#
# The first candidate that is CPython 3.11 or newer with venv and ensurepip wins. The
# distribution's own interpreter comes first because of how it is built: Debian's
# /usr/bin/python3.11 is compiled with profile-guided and link-time optimisation and has
# libpython linked into the executable, while a default pyenv build (the `python3` first
# on PATH on these machines) has neither and calls libpython through a shared library.
# On the sidecar's and the control plane's hot paths, which are Python, that is worth
# about a tenth of the CPU per request (docs/sidecar-design.md, "The interpreter").
# `make install PY=...` overrides the choice.
for candidate in /usr/bin/python3.11 /usr/bin/python3 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
    "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    echo "$candidate"
    exit 0
  fi
done
echo python3
