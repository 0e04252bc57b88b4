"""A model, on paper, of how the native plugin's per-layer halo exchange scales to many GPUs
(or CPU ranks): weak and strong scaling, and the atoms per GPU at which the exchange costs 10 %
of an MD step. Prints markdown tables for benchmarks/README.md.

    python benchmarks/plugin_scaling.py                 # Facet-S on H100-class GPUs (float32)
    python benchmarks/plugin_scaling.py --dtype float64
    python benchmarks/plugin_scaling.py --cpu-atoms 2048 --cpu-ms-per-atom C

Per rank (a cube of n atoms, fcc Cu density rho = 4 / 3.61^3 Å^-3, side a = (n / rho)^(1/3)):
- ghosts within the comm cutoff r_g = r_max + skin: n_g = rho ((a + 2 r_g)^3 - a^3);
  border atoms (packed by LAMMPS): n_b = rho (a^3 - max(a - 2 r_g, 0)^3);
- per MD step 2 (L - 1) exchanges (forward after layers 0..L-2, reverse in the backward pass),
  each moving w values per ghost atom (Facet-S: L = 3, w = 480 for all four), in the model's
  precision (4 bytes for float32, 8 for float64);
- one exchange costs: 6 ceil(r_g / a) MPI messages (LAMMPS' brick swaps) at latency alpha, plus
  n_g w 8 bytes at the network bandwidth beta_net, plus (GPU) the host staging the plugin does:
  border rows device->host and ghost rows host->device, (n_b + n_g) w 8 bytes at beta_pcie,
  plus a fixed cost per exchange t_x (synchronisation, packing loops, tensor ops);
- compute: the measured time of one energy+forces evaluation of n atoms (model level, H100,
  benchmarks/README "On a GPU"), interpolated linearly between the measured sizes, linearly
  extrapolated above 32k atoms; every rank computes its local atoms only (no ghost features).
Both directions of an exchange overlap nothing (LAMMPS' brick comm is blocking per swap).
"""

from __future__ import annotations

import argparse
import math

RHO = 4 / 3.61**3  # atoms / Å^3, fcc Cu
# measured (benchmarks/README, H100 80GB, torch 2.11, Facet-S, energy + forces per call, ms)
GPU_MS = {
    "float32": {108: 30.6, 500: 30.7, 2048: 37.1, 8000: 52.6, 32000: 188.8},
    "float64": {108: 23.6, 500: 23.2, 2048: 29.1, 8000: 75.5, 32000: 283.8},
}


def compute_ms(n: float, table: dict[int, float]) -> float:
    xs = sorted(table)
    if n <= xs[0]:
        return table[xs[0]]
    for a, b in zip(xs, xs[1:], strict=False):
        if n <= b:
            return table[a] + (table[b] - table[a]) * (n - a) / (b - a)
    a, b = xs[-2], xs[-1]
    return table[b] + (table[b] - table[a]) / (b - a) * (n - b)


def geometry(n: float, r_g: float) -> tuple[float, float, float]:
    a = (n / RHO) ** (1 / 3)
    n_g = RHO * ((a + 2 * r_g) ** 3 - a**3)
    n_b = RHO * (a**3 - max(a - 2 * r_g, 0.0) ** 3)
    return a, n_g, n_b


def halo_ms(n: float, p: argparse.Namespace, staging: bool = True, network: bool = True,
            wire_bytes: int = 8) -> float:
    """Exchange time per MD step (ms) of a rank with n atoms. ``staging``: the plugin's host
    round trip (as implemented); ``network``: other ranks (False: one GPU, LAMMPS copies its
    periodic images in memory); ``wire_bytes``: bytes per value (8: float64 as implemented)."""
    a, n_g, n_b = geometry(n, p.r_g)
    per = p.t_x_ms
    if network:
        swaps = 6 * math.ceil(p.r_g / a)
        per += swaps * p.alpha_us * 1e-3 + n_g * p.width * wire_bytes / (p.beta_net * 1e6)
    if staging:
        per += (n_b + n_g) * p.width * wire_bytes / (p.beta_pcie * 1e6)
    return p.exchanges * per


def n_at_fraction(p, frac: float, table, **kw) -> float:
    """Atoms per rank above which the exchange stays below ``frac`` of a step (log grid)."""
    grid = [10 ** (2 + k / 50) for k in range(301)]  # 100 .. 1e8
    worst = None
    for n in grid:
        h = halo_ms(n, p, **kw)
        if h / (h + compute_ms(n, table)) > frac:
            worst = n
    if worst is None:
        return grid[0]
    return next((n for n in grid if n > worst), math.inf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(GPU_MS), default="float32")
    p.add_argument("--width", type=int, default=480, help="values per ghost atom and exchange")
    p.add_argument("--exchanges", type=int, default=4, help="exchanges per MD step, 2 (L - 1)")
    p.add_argument("--r-g", type=float, default=7.0, help="comm cutoff r_max + skin (Å)")
    p.add_argument("--alpha-us", type=float, default=3.0, help="MPI latency per message (µs)")
    p.add_argument("--beta-net", type=float, default=25.0, help="network GB/s per GPU")
    p.add_argument("--beta-pcie", type=float, default=25.0, help="host<->GPU GB/s")
    p.add_argument("--t-x-ms", type=float, default=0.2, help="fixed cost per exchange (ms)")
    p.add_argument("--cpu-atoms", type=int, default=0,
                   help="CPU check: atoms of the measured system (one node, 1 and 2 ranks)")
    p.add_argument("--cpu-ms-per-atom", type=float, default=0.0,
                   help="CPU check: measured compute per atom and step on 1 rank (ms)")
    args = p.parse_args()
    table = GPU_MS[args.dtype]
    wire = 4 if args.dtype == "float32" else 8  # the plugin sends rows in the model's precision

    print(f"Facet-S {args.dtype}, {args.exchanges} exchanges x {args.width} values ({wire} bytes "
          f"each) per ghost atom and step, r_g {args.r_g} Å; alpha {args.alpha_us} µs, "
          f"network {args.beta_net} GB/s, PCIe {args.beta_pcie} GB/s, {args.t_x_ms} ms fixed "
          f"per exchange\n")
    print("| atoms per GPU | ghosts | border atoms | compute ms | halo ms as implemented "
          "(share of step) | halo ms GPU-resident (share) |")
    print("|---:|---:|---:|---:|---:|---:|")
    staged = {"wire_bytes": wire}
    resident = {"staging": False, "wire_bytes": wire}
    for n in (2048, 8000, 32000, 128000, 512000):
        _, n_g, n_b = geometry(n, args.r_g)
        c = compute_ms(n, table)
        h, h0 = halo_ms(n, args, **staged), halo_ms(n, args, **resident)
        print(f"| {n:,} | {n_g:,.0f} | {n_b:,.0f} | {c:.1f} | {h:.1f} ({100 * h / (c + h):.0f} %)"
              f" | {h0:.1f} ({100 * h0 / (c + h0):.0f} %) |")
    n10 = n_at_fraction(args, 0.10, table, **staged)
    n10r = n_at_fraction(args, 0.10, table, **resident)
    def above(n):
        return "at every size from 100 atoms" if n <= 100 else f"above {n:,.0f} atoms per GPU"

    print(f"\nThe exchange stays below 10 % of a step {above(n10)} as implemented, "
          f"{above(n10r)} with a GPU-resident exchange (pack kernels + CUDA-aware MPI).")

    print("\nWeak scaling (atoms per GPU fixed): ms per step, efficiency against 1 GPU (which "
          "still exchanges with its own periodic images, in memory); + log2(P) latencies for "
          "the re-neighbouring decision's allreduce")
    sizes = (8000, 32000, 128000)
    print("| GPUs | " + " | ".join(f"{n:,} atoms/GPU" for n in sizes) + " |")
    print("|---:|" + "---:|" * len(sizes))
    base = {n: compute_ms(n, table) + halo_ms(n, args, network=False, **staged)
            for n in sizes}
    for gpus in (1, 2, 8, 64, 1024):
        cells = []
        for n in sizes:
            if gpus == 1:
                t = base[n]
            else:
                t = compute_ms(n, table) + halo_ms(n, args, **staged) + \
                    math.log2(gpus) * args.alpha_us * 1e-3
            cells.append(f"{t:.0f} ms ({100 * base[n] / t:.0f} %)")
        print(f"| {gpus} | " + " | ".join(cells) + " |")

    print("\nStrong scaling (total atoms fixed): ms per step (parallel efficiency against the "
          "compute of all atoms on one GPU divided by P; atoms per GPU)")
    totals = (1_000_000, 10_000_000)
    print("| GPUs | " + " | ".join(f"{t:,} atoms" for t in totals) + " |")
    print("|---:|" + "---:|" * len(totals))
    for gpus in (8, 32, 128, 512, 1024):
        cells = []
        for total in totals:
            n = total / gpus
            t = compute_ms(n, table) + halo_ms(n, args, **staged) + \
                math.log2(gpus) * args.alpha_us * 1e-3
            ideal = compute_ms(total, table) / gpus
            cells.append(f"{t:.0f} ms ({100 * ideal / t:.0f} %, {n:,.0f}/GPU)")
        print(f"| {gpus} | " + " | ".join(cells) + " |")

    if args.cpu_atoms and args.cpu_ms_per_atom:
        # one node: messages are memory copies (alpha 1 µs, 5 GB/s), staging is a memcpy too
        print(f"\nCPU check, {args.cpu_atoms} atoms in a cube, split into 1 or 2 slabs along x "
              "(LAMMPS' grid for 2 ranks), alpha 1 µs, 5 GB/s for messages and row copies, "
              f"{args.cpu_ms_per_atom} ms compute per atom:")
        print("| ranks | atoms per rank | ghosts per rank | compute ms | exchange ms per step "
              "(share) |")
        print("|---:|---:|---:|---:|---:|")
        side = (args.cpu_atoms / RHO) ** (1 / 3)
        times = {}
        for ranks in (1, 2):
            ax = side / ranks
            n = args.cpu_atoms / ranks
            n_g = RHO * ((ax + 2 * args.r_g) * (side + 2 * args.r_g) ** 2 - ax * side**2)
            n_b = RHO * (ax * side**2 - max(ax - 2 * args.r_g, 0) * max(side - 2 * args.r_g, 0)
                         ** 2)
            swaps = 6 * math.ceil(args.r_g / ax)
            per = 0.05 + swaps * 1e-3 + (n_g + (n_g + n_b)) * args.width * 8 / 5e6
            halo = args.exchanges * per
            comp = args.cpu_ms_per_atom * n
            times[ranks] = comp + halo
            print(f"| {ranks} | {n:.0f} | {n_g:.0f} | {comp:.0f} | {halo:.1f} "
                  f"({100 * halo / (comp + halo):.2f} %) |")
        print(f"predicted 2-rank speed-up {times[1] / times[2]:.2f}x")

if __name__ == "__main__":
    main()
