"""The prepared GPU latency script (benchmarks/gpu_latency.py, issue 15 part 4) on the CPU: its
eager and slot-map ("graph": uncaptured on the CPU) variants of Facet-S at 32 atoms in float64
agree, and it writes its JSON rows, so the script does not rot between GPU sessions. (The AOTI
variant, ``--aoti``, compiles Facet-S for minutes; tests/test_aoti.py covers that code.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_latency_script_cpu_part(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_latency.py"), "--device", "cpu",
         "--sizes", "32", "--dtypes", "float64", "--repeats", "1", "--warmup", "0",
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (row,) = json.loads(out.read_text())
    assert row["device"] == "cpu" and row["dtype"] == "float64" and row["n"] == 32
    assert row["eager_ms"] > 0 and row["graph_ms"] > 0
    assert row["graph_max_dE"] < 1e-10 and row["graph_max_dg"] < 1e-10
