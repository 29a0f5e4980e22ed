#!/usr/bin/env bash
# Makes sure `python3 -m venv` works: Debian splits venv/ensurepip into python3-venv.
set -euo pipefail
py=${1:-python3}
if ! "$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null; then
  echo "Gantry needs Python 3.11 (Debian bookworm's python3); $py is $("$py" --version 2>&1)" >&2
  exit 1
fi
if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
  scripts/apt-install.sh python3-venv
fi
