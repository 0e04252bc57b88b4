"""Process settings of the ML-IAP object on the CPU: glibc malloc (``facet.lammps.allocator``;
its effect on a process: freed memory stays for reuse; the environment's precedence) and
TorchScript's plain executor, as the log of a real LAMMPS run reports them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from lammps_utils import require_lammps, run_deck

import facet
from facet.cli.deploy import main as deploy_main

# allocate and free 256 MB in 4 MB blocks (below glibc's largest mmap threshold, as a model's
# tensors are), then report how much of it the process still holds
PROBE = r"""
import ctypes, os, sys
from facet.lammps.allocator import tune_malloc
if sys.argv[1] == "tune":
    print("SETTING", tune_malloc())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
before = rss()
blocks = [libc.malloc(4 << 20) for _ in range(64)]
for b in blocks:
    ctypes.memset(b, 1, 4 << 20)
for b in blocks:
    libc.free(b)
print("KEPT", rss() - before)
"""


def probe(mode: str, **env: str) -> tuple[str, float]:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "FACET_MALLOC_TUNING")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=e, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    return lines.get("SETTING", ""), float(lines["KEPT"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_tuned_process_keeps_freed_memory():
    setting, kept = probe("tune")
    assert setting.startswith("glibc malloc keeps freed memory for reuse")
    assert kept > 200  # MB of the 256 freed
    _, kept_default = probe("none")
    assert kept_default < 50  # glibc's default gives the mmapped blocks back


def test_environment_and_switch_take_precedence():
    setting, kept = probe("tune", MALLOC_TRIM_THRESHOLD_="1000000")
    assert setting.startswith("glibc malloc left as set in the environment")
    setting, kept = probe("tune", FACET_MALLOC_TUNING="0")
    assert setting == "glibc malloc defaults (FACET_MALLOC_TUNING=0)" and kept < 50


DECK = """units metal
atom_style atomic
newton on
lattice fcc 3.7
region box block 0 2 0 2 0 2
create_box 1 box
create_atoms 1 box
mass * 63.5
pair_style mliap unified {model} 1
pair_coeff * * Cu
comm_modify cutoff 12
run 0
"""


@pytest.mark.lammps
def test_lammps_log_says_what_was_done(tmp_path):
    lmp = require_lammps()
    facet.save_model(facet.build_model(facet.facet_tiny(["Cu"])), tmp_path / "tiny.pt")
    assert deploy_main([str(tmp_path / "tiny.pt"), "-o", str(tmp_path / "tiny-mliap.pt")]) == 0
    deck = DECK.format(model=tmp_path / "tiny-mliap.pt")
    proc, out = run_deck(tmp_path, lmp, deck, nproc=1, results=False)
    assert proc.returncode == 0, out[-3000:]
    assert "Facet ML-IAP: memory: glibc malloc keeps freed memory for reuse" in out
    assert "TorchScript, executor plain (FACET_JIT_OPTIMIZE=1 optimises)" in out
    proc, out = run_deck(tmp_path, lmp, deck, nproc=1, results=False, tag="off",
                         extra_env={"FACET_MALLOC_TUNING": "0", "FACET_JIT_OPTIMIZE": "1"})
    assert proc.returncode == 0 and "memory: glibc malloc defaults (FACET_MALLOC_TUNING=0)" in out
    assert "TorchScript, executor optimising" in out
