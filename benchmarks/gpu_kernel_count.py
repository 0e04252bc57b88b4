"""How many operators and GPU kernels one Facet-S energy+forces call launches, and how much of
the call is spent launching them: the frozen TorchScript contract (as ``bench_gpu.py`` times it)
under ``torch.profiler``.

    python benchmarks/gpu_kernel_count.py --device cuda --sizes 108,2048
    .venv/bin/python benchmarks/gpu_kernel_count.py --device cpu --sizes 108   # aten ops only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def aten_parent(event) -> bool:
    """Whether an enclosing profiler event is an aten operator (then this one is not top-level)."""
    p = event.cpu_parent
    while p is not None:
        if p.name.startswith("aten::"):
            return True
        p = p.cpu_parent
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="108,2048")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    import torch
    from bench_gpu import facet_call, sync
    from bench_worker import make_cu
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    cache: dict = {}
    for n in (int(s) for s in args.sizes.split(",")):
        call, _, _ = facet_call(make_cu(n, seed=0), args.dtype, args.device, cache)
        for _ in range(5):
            call()
        sync(args.device)
        t0 = time.perf_counter()
        call()
        sync(args.device)
        wall = time.perf_counter() - t0
        activities = [ProfilerActivity.CPU]
        if args.device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            call()
            sync(args.device)
        events = prof.events()
        top_ops = [e for e in events if e.name.startswith("aten::") and not aten_parent(e)]
        kernels = [e for e in events if e.device_type.name == "CUDA"]
        gpu_busy_ms = sum(e.device_time for e in kernels) / 1e3 if kernels else 0.0
        row = {"device": args.device, "dtype": args.dtype, "atoms": n, "ms_per_call": 1e3 * wall,
               "top_level_aten_ops": len(top_ops), "gpu_kernels": len(kernels),
               "gpu_kernel_busy_ms": gpu_busy_ms}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
