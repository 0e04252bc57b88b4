#!/usr/bin/env bash
# Run the test suite (after ./setup.sh). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$repo"
prefix_file=.venv/facet-lammps-prefix
if [ -f "$prefix_file" ]; then
  # shellcheck disable=SC1091
  source "$(cat "$prefix_file")/facet-lammps.env"
fi
export PATH="$repo/.venv/bin:$PATH" OMP_NUM_THREADS=1 OMP_PROC_BIND=false
exec .venv/bin/python -m pytest "$@"
