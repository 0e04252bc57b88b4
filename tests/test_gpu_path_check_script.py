"""`scripts/gpu_path_check.py` (run on the GPU machine when one is lent) keeps working: on a
CPU-only machine it runs the host-array combinations (plain and exchange paths, single pass and
recomputing, float64 and float32) against the ASE calculator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_path_check.py"


def test_gpu_path_check_runs_on_cpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "GPU PATH CHECK OK" in proc.stdout
    checked = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert len(checked) == 8  # 2 dtypes x 2 evaluations x 2 paths
