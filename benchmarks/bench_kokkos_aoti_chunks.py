"""ML-IAP's KOKKOS path over an AOTInductor package: one chunk vs chunks of `chunk_edges` pairs.

The package's layer programs recompute their layer in the backward pass, so chunking costs no
extra arithmetic; this measures whether the small tensors of chunks are faster than one chunk
below `single_pass_edges` (the decision behind "always chunks on the CPU" in
`facet/lammps/mliap.py`). Two ML-IAP objects carry the same package: `one` (`chunk_edges 0`:
one chunk at every size) and `chunks` (the defaults: 4096 pairs). MD steps of `lmp -k on t 1
-sf kk` with bench_plugin.py's deck and timing (rattled fcc Cu, NVE, 1 thread per rank, loop
time / steps), the two objects alternating in each round.

    python benchmarks/bench_kokkos_aoti_chunks.py --package emt.pt2 \
        [--checkpoint examples/models/facet-emt-small.pt] [--cases 500x1,500x2,2048x2]

`--package`: a package of the checkpoint with all programs (`facet-deploy CKPT --format aoti
--threads 1 -o PKG`; minutes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_plugin import SHIPPED, run_one, write_crystal  # noqa: E402

from facet.lammps.mliap import FacetMLIAP  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", required=True)
    ap.add_argument("--checkpoint", default=str(SHIPPED))
    ap.add_argument("--cases", default="500x1,500x2,2048x2", help="atoms x ranks, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="facet-kk-aoti-"))
    package = Path(args.package).read_bytes()
    objects = {}
    for name, chunk in (("one", 0), ("chunks", None)):
        obj = FacetMLIAP.from_checkpoint(args.checkpoint, format="aoti", aoti_package=package,
                                         chunk_edges=chunk)
        objects[name] = work / f"{name}-mliap.pt"
        torch.save(obj, objects[name])
    for case in args.cases.split(","):
        target, ranks = (int(v) for v in case.split("x"))
        data, n = write_crystal(work, target)
        steps = 5 if n < 1000 else 2
        times: dict[str, list[float]] = {k: [] for k in objects}
        for rnd in range(args.rounds):
            for name in objects if rnd % 2 == 0 else list(objects)[::-1]:
                # bench_plugin's KOKKOS path: its deck (2 warm-up steps), environment and timing
                seconds, _ = run_one("kokkos", {"mliap": objects[name]}, data, ranks, 2, steps,
                                     None, work)
                times[name].append(1e3 * seconds)
        one, chunks = (sorted(times[k])[len(times[k]) // 2] for k in ("one", "chunks"))
        fmt = {k: ", ".join(f"{t:.0f}" for t in v) for k, v in times.items()}
        print(f"{n} atoms, {ranks} rank(s): one chunk {fmt['one']} ms/step, chunks "
              f"{fmt['chunks']} ms/step; one / chunks = {one / chunks:.2f}", flush=True)


if __name__ == "__main__":
    main()
