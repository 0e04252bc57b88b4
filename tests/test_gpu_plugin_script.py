"""The prepared GPU script of the plugin (scripts/gpu_plugin.sh) on the CPU: `prepare` (trimmed
LAMMPS tarball, plugin files, ASE references), `configure-trimmed` (the trimmed tree still holds
what LAMMPS' CMake needs for core + PLUGIN) and `run --device cpu --sizes small` with the
project's LAMMPS and plugin (float64 parity on the CPU, one timing), so the script does not rot
between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from lammps_utils import REPO, env, lammps_prefix, require_lammps

from facet.lammps.plugin import plugin_library

pytestmark = [pytest.mark.lammps, pytest.mark.plugin]


def test_gpu_plugin_script_cpu_part(tmp_path):
    require_lammps()
    lib = plugin_library()
    if lib is None:
        pytest.fail("the plugin is not built") if os.environ.get("CI") else pytest.skip(
            "the plugin is not built: deploy/build_plugin.sh")
    script = REPO / "scripts" / "gpu_plugin.sh"
    e = env()
    e.update(PYTHON=sys.executable, WORK=str(tmp_path / "work"), OUT=str(tmp_path / "out"))
    d = tmp_path / "carry"

    def run(*args):
        proc = subprocess.run(["bash", str(script), *args], env=e, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return proc.stdout

    run("prepare", "--dir", str(d))
    assert (d / "lammps-core-plugin.tar.gz").stat().st_size < 8e6
    run("configure-trimmed", "--dir", str(d))
    out = run("run", "--dir", str(d), "--device", "cpu", "--sizes", "small",
              "--lammps-prefix", str(lammps_prefix()), "--plugin", str(lib),
              "--models", "shipped float64", "--steps", "1")
    assert "ALL OK" in out
    res = json.loads((tmp_path / "out" / "plugin_gpu.json").read_text())
    assert len(res["parity"]) == 4 and all(r["ok"] for r in res["parity"])
    assert [t["atoms"] for t in res["timing"]] == [108]
    assert res["timing"][0]["evaluations"] == ["single pass"]
