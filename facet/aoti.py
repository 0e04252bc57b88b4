"""Facet as an AOTInductor package: export, compile, check and run without TorchScript.

``build_package(model, "model.pt2")`` (``facet-deploy model.pt --format aoti``) exports the
model's slot-map entry points (``Facet.energy_forces_slots``, ``layer_slots``, ...) with
``torch.export`` and compiles each with AOTInductor into one ``.pt2`` package of named
programs, weights frozen in as constants. Shapes are dynamic (atoms, pairs, neighbour slots):

=================  ==========================================================  ====================
program            inputs                                                      outputs
=================  ==========================================================  ====================
``energy_forces``  species [N] int64, neighbour [E] int64, rij [E, 3],         e [n_{L-1}],
                   slots_0 [n_0, M] int64, ..., slots_{L-1} [n_{L-1}, M]         dE/drij [E, 3]
``embed``          species [N]                                                 h_0 [N, d_0]
``layer{k}``       h [n_in, d_k], neighbour [E], rij [E, 3], slots [n_out, M]  h [n_out, d_{k+1}]
``layer{k}_vjp``   the same and grad_out [n_out, d_{k+1}]                      grad_h [n_in, d_k],
                                                                               grad_rij [E, 3]
``readout``        h [n, d_L], species [n]                                     e [n], de.sum/dh
=================  ==========================================================  ====================

``slots`` is the neighbour-slot map (``facet.tensor_product.neighbour_slots``): row i lists the
indices of the pairs centred on atom i, padded with E. A layer computes the features of the
first ``n_out`` rows of ``h`` (rows are ordered so; edges may reach any row). ``energy_forces``
is the whole contract in one pass (energies of the first ``n_{L-1}`` atoms and the gradient of
their sum), with hop pruning as row prefixes ``slots_k = slots[:n_k]`` of one map; the layer
programs serve runtimes that exchange features between layers (LAMMPS KOKKOS, and the native
plugin's ``pair_style facet model.pt2``, ``lammps_plugin/facet_aoti.cpp``) or recompute in
chunks (large systems, ``facet.chunks``); ``layer{k}_vjp`` recomputes its layer. Every size
must be at least 2 (the runtime below pads smaller calls with isolated dummy atoms and pairs).

The package also holds ``extra/facet.json``: format version, torch version, dtype, device, CPU
ISA, elements, r_max, layers, feature widths, programs. ``read_metadata`` reads it without
loading any code and ``check_compatible`` says clearly when a package was built for another
device, torch version or CPU. ``AOTIPotential`` runs a package behind the same contract as
``facet.contract.FacetPotential``.

The export route (torch 2.13): ``make_fx(tracing_mode="symbolic")`` of the function including
its ``torch.autograd.grad``, then ``torch.export`` of that graph with dynamic dims, then
``torch._inductor.aot_compile`` per program (``autograd.grad`` inside ``torch.export`` itself
fails). Compiling takes about 1-3 CPU-minutes per program for Facet-S.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from facet.chunks import resolve_chunking, row_chunks
from facet.errors import FacetError
from facet.jitcompat import quiet_torchscript
from facet.tensor_product import neighbour_slots

FORMAT = "facet-aoti"
FORMAT_VERSION = 1
METADATA_FILE = "facet.json"  # stored as extra/facet.json in the .pt2 archive
PROGRAM_SETS = ("all", "single", "layers")


class FacetPackageError(FacetError, RuntimeError):
    """An AOTInductor package that cannot run here (other device, torch version or CPU), or a
    file that is not a Facet package."""


# -- export ------------------------------------------------------------------------------------
def program_names(num_layers: int, programs: str = "all") -> list[str]:
    """Names of the programs of a package: ``programs`` = ``"all"``, ``"single"`` (only
    ``energy_forces``) or ``"layers"`` (only the per-layer ones)."""
    if programs not in PROGRAM_SETS:
        raise ValueError(f"programs must be one of {PROGRAM_SETS}, not {programs!r}")
    layers = ["embed", "readout"] + [f"layer{k}{s}" for k in range(num_layers)
                                     for s in ("", "_vjp")]
    return {"all": ["energy_forces", *layers], "single": ["energy_forces"],
            "layers": layers}[programs]


def example_inputs(model, seed: int = 0) -> dict[str, Any]:
    """A small cluster (jittered cubic lattice, spacing r_max / 2, all species) with hop pruning
    (a few local atoms in a corner), whose sizes N, E, M, n_0 > n_1 > ... all differ, so that
    tracing keeps every dynamic size a separate symbol."""
    from facet.contract import hop_pruning

    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    side = (4, 4, 4 + model.num_interactions)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in side], indexing="ij"), -1)
    pos = grid.reshape(-1, 3).to(torch.float64) * (0.5 * model.r_max)
    pos = pos + 0.1 * model.r_max * torch.rand(pos.shape, generator=g, dtype=torch.float64)
    n = pos.shape[0]
    d = torch.cdist(pos, pos)
    pi, pj = torch.nonzero((d < model.r_max) & ~torch.eye(n, dtype=torch.bool), as_tuple=True)
    species = torch.randint(0, model.num_species, (n,), generator=g)
    # locals: the 3 atoms nearest the origin corner, numbered first
    order = torch.argsort(pos.norm(dim=1), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    species, pos = species[order], pos[order]
    pi, pj = rank[pi], rank[pj]
    sp, c, nb, used, n_out = hop_pruning(species, pi, pj, 3, model.num_interactions)
    rij = (pos[pj] - pos[pi])[used].to(dtype)
    slots = neighbour_slots(c, n_out[0], c.shape[0])
    sizes = [sp.shape[0], c.shape[0], slots.shape[1], *n_out]
    if len(set(sizes)) != len(sizes) or min(sizes) < 3:
        raise RuntimeError(f"example sizes not distinct: {sizes} (try another seed)")
    return {"species": sp, "centre": c, "neighbour": nb, "rij": rij, "n_out": n_out,
            "slots": [slots[:m] for m in n_out]}


def _frozen(model):
    """A copy in eval mode with every weight a constant (no gradients: inference)."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _trace(fn: Callable, args: Sequence[torch.Tensor]):
    """make_fx of ``fn`` (autograd included) with symbolic shapes, every input dim its own
    symbol."""
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    with fx_config.patch(use_duck_shape=False):
        return make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)


def _layer_functions(model, k: int):
    """Layer k's forward and VJP as functions of tensors only (what make_fx traces)."""

    def fwd(h, neighbour, rij, slots):
        return model.layer_slots(k, h, neighbour, rij, slots)

    def vjp(h, neighbour, rij, slots, grad_out):
        return model.layer_slots_vjp(k, h, neighbour, rij, slots, grad_out)

    return fwd, vjp


def export_programs(model, programs: str = "all", log: Callable[[str], None] | None = None
                    ) -> dict[str, torch.export.ExportedProgram]:
    """``torch.export`` programs of ``model`` (see the module docstring), by name."""
    from torch.export import Dim

    model = _frozen(model)
    ex = example_inputs(model)
    names = program_names(model.num_interactions, programs)
    n_layers = model.num_interactions
    sp, nb, rij, slots, n_out = ex["species"], ex["neighbour"], ex["rij"], ex["slots"], ex["n_out"]
    N, E, M = Dim("n_atoms", min=2), Dim("n_pairs", min=2), Dim("max_neighbours", min=2)
    n_dims = [Dim(f"n_out_{k}", min=2) for k in range(n_layers)]
    hs = [model.embed(sp)]
    for k in range(n_layers):
        hs.append(model.layer_slots(k, hs[k], nb, rij, slots[k]).detach())
    out: dict[str, torch.export.ExportedProgram] = {}

    def export(name, fn, args, dynamic):
        t0 = time.perf_counter()
        gm = _trace(fn, args)
        out[name] = torch.export.export(gm, tuple(args), dynamic_shapes=tuple(dynamic),
                                        strict=False)
        if log:
            log(f"exported {name} ({len(out[name].graph.nodes)} nodes, "
                f"{time.perf_counter() - t0:.0f} s)")

    if "energy_forces" in names:
        export("energy_forces",
               lambda s, n, r, *sl: model.energy_forces_slots(s, n, r, list(sl)),
               [sp, nb, rij, *slots],
               [{0: N}, {0: E}, {0: E}, *[{0: d, 1: M} for d in n_dims]])
    if "embed" in names:
        export("embed", lambda s: model.embed(s), [sp], [{0: N}])
        export("readout", lambda h, s: model.readout_vjp(h, s), [hs[-1], sp[: n_out[-1]]],
               [{0: N}, {0: N}])
    for k in range(n_layers):
        if f"layer{k}" not in names:
            continue
        n_in = N if k == 0 else n_dims[k - 1]
        dyn = [{0: n_in}, {0: E}, {0: E}, {0: n_dims[k], 1: M}]
        fwd, vjp = _layer_functions(model, k)
        export(f"layer{k}", fwd, [hs[k], nb, rij, slots[k]], dyn)
        export(f"layer{k}_vjp", vjp, [hs[k], nb, rij, slots[k], torch.ones_like(hs[k + 1])],
               [*dyn, {0: n_dims[k]}])
    return out


@contextlib.contextmanager
def inductor_workarounds() -> Iterator[None]:
    """Compile without Inductor's 2-D tiled CPU kernels (``CppTile2DKernel``), vectorising
    along the innermost contiguous loop instead.

    torch 2.13's tiled kernel miscomputes the inner stride of an indirect atomic add that it
    fuses with a transposed load (the gradient of a neighbour gather, ``x[nbr_pad]``, in the
    scalar layer's VJP): it writes past its buffer and corrupts the heap (found with the tiny
    test model: ``layer1_vjp`` crashed, index ``x1 + 2*x1_inner + 8*nbr`` for an 8-wide row).
    Set ``FACET_AOTI_TILE2D=1`` to compile with the tiled kernels (to check a newer torch).
    """
    if os.environ.get("FACET_AOTI_TILE2D") == "1":
        yield
        return
    from torch._inductor.codegen import cpp as inductor_cpp

    original = inductor_cpp.TilingSelect.select_tiling

    def one_dimensional(self, fn_list, var_sizes_list):
        factors, indices, stats = original(self, fn_list, var_sizes_list)
        if len(indices) == 2:
            return factors[-1:], indices[-1:], stats
        return factors, indices, stats

    inductor_cpp.TilingSelect.select_tiling = one_dimensional
    try:
        yield
    finally:
        inductor_cpp.TilingSelect.select_tiling = original


def cpu_isa() -> str:
    """The vector ISA Inductor compiles CPU kernels for on this machine (e.g. ``avx512``)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa())


def package_metadata(model, device: str, programs: list[str], threads: int,
                     fused: bool = False) -> dict[str, Any]:
    from facet import __version__
    from facet.ops import OPS_VERSION

    cfg = model.config
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "facet_version": __version__,
        "torch_version": str(torch.__version__),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": device,
        "cpu_isa": cpu_isa() if device == "cpu" else "",
        "threads": threads,  # 0: kernels use the caller's OpenMP thread count
        # >0: the programs call facet.ops' operators of this version (facet::uvu_tp_block...)
        "fused_kernels": OPS_VERSION if fused else 0,
        "elements": list(cfg.elements), "r_max": float(cfg.r_max),
        "num_layers": int(model.num_interactions),
        "feature_dims": [int(d) for d in model.feature_dims],
        "programs": programs,
        "config": cfg.to_dict(),
        "provenance": getattr(model, "provenance", {}),
    }


def build_package(model, path: str | os.PathLike | None = None, *, programs: str = "all",
                  device: str = "cpu", threads: int = 0, fused: bool | None = None,
                  log: Callable[[str], None] | None = None) -> bytes:
    """Export and compile ``model`` (in its own dtype) into an AOTInductor package; write it
    to ``path`` if given and return its bytes. ``programs``: ``"all"`` (default),
    ``"single"`` (``energy_forces`` only) or ``"layers"`` (per-layer programs only).
    ``threads``: 0 (default) lets the CPU kernels use the caller's OpenMP/torch thread count,
    N > 0 fixes it at N. ``device="cuda"`` needs a GPU (and CUDA torch) where it compiles.
    ``fused``: the tensor products call ``facet.ops``' fused CPU kernels (3-5x faster than
    the compiled batched matmul; every runtime that loads the package needs them: the Python
    loaders build them, the LAMMPS plugin has them compiled in); None (default) = on for CPU
    packages where they build and ``FACET_FUSED_KERNELS`` is not 0."""
    with warnings.catch_warnings():
        # torch 2.13 warns about its own pytree internals when it copies exported programs
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                                category=FutureWarning)
        return _build_package(model, path, programs=programs, device=device, threads=threads,
                              fused=fused, log=log)


def _build_package(model, path, *, programs: str, device: str, threads: int,
                   fused: bool | None, log: Callable[[str], None] | None) -> bytes:
    from torch.export.pt2_archive._package import package_pt2

    import facet.ops

    fused = facet.ops.wanted(fused, device)
    if fused and device != "cpu":
        raise ValueError("the fused kernels (facet.ops) run on the CPU only: fused=False")
    model = copy.deepcopy(model).to(device)
    facet.ops.use_fused(model, fused)
    eps = export_programs(model, programs, log)
    meta = package_metadata(model, device, list(eps), threads, fused)
    options: dict[str, Any] = {
        "aot_inductor.package": True,
        "aot_inductor.metadata": {"facet_format": f"{FORMAT}-{FORMAT_VERSION}"},
        "cpp.dynamic_threads": threads <= 0,
        # the tiling workaround below is not part of Inductor's cache key: compile afresh
        "fx_graph_cache": False,
    }
    if threads > 0:
        options["cpp.threads"] = threads
    files = {}
    for name, ep in eps.items():
        t0 = time.perf_counter()
        args, kwargs = ep.example_inputs
        # no aot_inductor.model_name_for_generated_files: with a fixed name, torch 2.13 reuses
        # a same-named wrapper left in its cache directory by an earlier compile of the same
        # graph code (another model's weight shapes and values: wrong numbers or index errors)
        # (quiet_torchscript: torch's own compile path touches torch.jit.script_method)
        with inductor_workarounds(), quiet_torchscript():
            files[name] = torch._inductor.aot_compile(ep.module(), args, kwargs,
                                                      options=options)
        if log:
            log(f"compiled {name} ({time.perf_counter() - t0:.0f} s)")
    buf = io.BytesIO()
    package_pt2(buf, aoti_files=files, extra_files={METADATA_FILE: json.dumps(meta)})
    data = buf.getvalue()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.pt2")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return data


# -- loading -----------------------------------------------------------------------------------
def _as_bytes(package: str | os.PathLike | bytes) -> bytes:
    if isinstance(package, (bytes, bytearray)):
        return bytes(package)
    path = Path(package)
    if not path.exists():
        raise FacetPackageError(f"{path}: no such package")
    return path.read_bytes()


def read_metadata(package: str | os.PathLike | bytes) -> dict[str, Any]:
    """The Facet metadata of a package (path or bytes), read without loading its code."""
    data = _as_bytes(package)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            name = next((n for n in z.namelist() if n.endswith(f"extra/{METADATA_FILE}")), None)
            if name is None:
                raise FacetPackageError("not a Facet AOTInductor package (no extra/facet.json)")
            meta = json.loads(z.read(name))
    except zipfile.BadZipFile:
        raise FacetPackageError("not a Facet AOTInductor package (not a .pt2 archive)") from None
    if meta.get("format") != FORMAT:
        raise FacetPackageError("not a Facet AOTInductor package")
    return meta


def compatibility_problems(meta: dict[str, Any], device: str | torch.device = "cpu"
                           ) -> list[str]:
    """Why a package with metadata ``meta`` cannot run on ``device`` here (empty: it can)."""
    device = torch.device(device)
    problems = []
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        problems.append(f"package format version {meta.get('format_version')} is newer than "
                        f"this facet's ({FORMAT_VERSION}): update facet")
    built = str(meta.get("torch_version", "?"))
    if built.split("+")[0] != str(torch.__version__).split("+")[0]:
        problems.append(f"it was compiled with torch {built} and this is torch "
                        f"{torch.__version__} (AOTInductor packages are not portable between "
                        "torch versions)")
    if meta.get("device") != device.type:
        problems.append(f"it was compiled for {meta.get('device')} and is asked to run on "
                        f"{device.type}")
    elif device.type == "cuda" and not torch.cuda.is_available():
        problems.append("it was compiled for cuda and torch sees no GPU here")
    from facet.ops import OPS_VERSION

    if int(meta.get("fused_kernels", 0)) > OPS_VERSION:
        problems.append(f"it calls fused kernels of version {meta['fused_kernels']}, newer than "
                        f"this facet's ({OPS_VERSION}): update facet")
    if device.type == "cpu" and meta.get("cpu_isa"):
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list

        here = [str(isa) for isa in valid_vec_isa_list()]
        if meta["cpu_isa"] not in here:
            problems.append(f"it was compiled for the CPU instruction set {meta['cpu_isa']!r}, "
                            f"which this CPU lacks (it supports {here or ['none']})")
    return problems


def check_compatible(meta: dict[str, Any], device: str | torch.device = "cpu") -> None:
    """Raise ``FacetPackageError`` saying why the package cannot run here, if it cannot."""
    problems = compatibility_problems(meta, device)
    if problems:
        raise FacetPackageError(
            "this Facet AOTInductor package cannot run here: " + "; ".join(problems)
            + ". Build it again on this machine: `facet-deploy <checkpoint> --format aoti`")


@contextlib.contextmanager
def _scratch_tmpdir() -> Iterator[str]:
    """A fresh directory that is ``$TMPDIR`` (for libtorch's extraction) while the block runs,
    removed with its contents afterwards."""
    scratch = tempfile.mkdtemp(prefix="facet-aoti-")
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = scratch
    try:
        yield scratch
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        shutil.rmtree(scratch, ignore_errors=True)


class AOTIPackage:
    """The loaded programs of a package (``programs[name](*inputs)``) and its metadata."""

    def __init__(self, package: str | os.PathLike | bytes, device: str | torch.device = "cpu"):
        from torch.export.pt2_archive._package import load_pt2

        data = _as_bytes(package)
        self.meta = read_metadata(data)
        self.device = torch.device(device)
        check_compatible(self.meta, self.device)
        self.dtype = getattr(torch, self.meta["dtype"])
        self.num_layers = int(self.meta["num_layers"])
        self.feature_dims = list(self.meta["feature_dims"])
        index = self.device.index if self.device.index is not None else -1
        if int(self.meta.get("fused_kernels", 0)):
            import facet.ops

            try:
                facet.ops.load()
            except facet.ops.FacetOpsError as exc:
                raise FacetPackageError(
                    f"this package calls Facet's fused CPU kernels, which are unavailable here: "
                    f"{exc}. Or build the package without them: `facet-deploy <checkpoint> "
                    "--format aoti --no-fused-kernels`") from None
        # load_pt2 writes a buffer to a temporary file for the loader; keep a file of our own
        # so that the same bytes (e.g. from an ML-IAP object) load the same way everywhere.
        # libtorch extracts every program into $TMPDIR/aotinductor_* and removes it only in
        # its destructor, which an aborted job (a LAMMPS error exit, MPI_Abort) never runs:
        # extract into a scratch $TMPDIR of ours and remove it once the programs are loaded
        # (they stay mapped), as the native plugin does
        with _scratch_tmpdir() as scratch:
            path = os.path.join(scratch, "package.pt2")
            with open(path, "wb") as f:
                f.write(data)
            contents = load_pt2(path, device_index=index)
        self.programs = dict(contents.aoti_runners)

    def has(self, *names: str) -> bool:
        return all(n in self.programs for n in names)

    def has_layers(self) -> bool:
        return self.has("embed", "readout", *[f"layer{k}{s}" for k in range(self.num_layers)
                                              for s in ("", "_vjp")])


# -- running -----------------------------------------------------------------------------------
def _pad_slots(slots: torch.Tensor, pad_value: int) -> torch.Tensor:
    """At least 2 slot columns (the programs' minimum size)."""
    if slots.shape[1] >= 2:
        return slots
    extra = slots.new_full((slots.shape[0], 2 - slots.shape[1]), pad_value)
    return torch.cat([slots, extra], dim=1)


class ChunkPlan:
    """Row chunks of one layer's output rows ``0..n_out`` (edges sorted by centre), each with
    the rows it reads (its own first, then its edges' other neighbours), its neighbours
    renumbered into those rows and its slot map."""

    def __init__(self, centre: torch.Tensor, neighbour: torch.Tensor, n_out: int,
                 chunk_edges: int):
        dev = centre.device
        counts = torch.bincount(centre, minlength=n_out)
        rows, edges = row_chunks(counts, chunk_edges)
        self.chunks = []
        for c in range(len(rows) - 1):
            a, b, ea, eb = rows[c], rows[c + 1], edges[c], edges[c + 1]
            if b == a:
                continue
            nb = neighbour[ea:eb]
            others = torch.unique(nb)
            others = others[(others < a) | (others >= b)]
            read = torch.cat([torch.arange(a, b, device=dev), others])
            # neighbours renumbered into `read`: own rows a..b-1 -> 0.., others after them
            nb_local = torch.where(
                (nb >= a) & (nb < b), nb - a,
                (b - a) + torch.searchsorted(others, nb))
            slots = neighbour_slots(centre[ea:eb] - a, b - a, eb - ea)
            self.chunks.append((a, b, ea, eb, read, nb_local, slots))


class AOTIPotential:
    """``FacetPotential``'s contract over an AOTInductor package: ``pot(species, pair_i,
    pair_j, rij, nlocal) -> (e_local [nlocal], dE_local/drij [P, 3])``.

    Up to ``single_pass_edges`` pairs (after hop pruning) the ``energy_forces`` program runs
    once; above it the recomputing evaluation runs over the per-layer programs in chunks of
    about ``chunk_edges`` pairs (``facet.chunks``; the same numbers to rounding, bounded
    memory). A package without the per-layer programs always takes the single pass, one
    without ``energy_forces`` always the per-layer path.
    """

    def __init__(self, package: str | os.PathLike | bytes | AOTIPackage,
                 device: str | torch.device = "cpu", chunk_edges: int | None = None,
                 single_pass_edges: int | None = None):
        self.package = package if isinstance(package, AOTIPackage) else AOTIPackage(package,
                                                                                   device)
        self.device = self.package.device
        self.dtype = self.package.dtype
        self.num_layers = self.package.num_layers
        self.meta = self.package.meta
        self.chunk_edges, self.single_pass_edges = resolve_chunking(
            self.device.type, chunk_edges, single_pass_edges,
            fused=bool(int(self.meta.get("fused_kernels", 0))))
        self.last_evaluation = ""

    def evaluation(self, n_pairs: int) -> str:
        """``"single pass"`` or ``"recomputing"``: which evaluation ``n_pairs`` pairs take."""
        pkg = self.package
        if not pkg.has("energy_forces"):
            return "recomputing"
        if (self.chunk_edges > 0 and n_pairs > self.single_pass_edges and pkg.has_layers()):
            return "recomputing"
        return "single pass"

    def __call__(self, species: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor,
                 rij: torch.Tensor, nlocal: int) -> tuple[torch.Tensor, torch.Tensor]:
        from facet.contract import hop_pruning

        rij = rij.detach().to(self.dtype)
        sp, pi, pj, used, n_out = hop_pruning(species, pair_i, pair_j, int(nlocal),
                                              self.num_layers)
        x = rij[used] if used.shape[0] != rij.shape[0] else rij
        self.last_evaluation = self.evaluation(int(pi.shape[0]))
        if self.last_evaluation == "single pass":
            e, g = self.single_pass(sp, pi, pj, x, n_out)
        else:
            e, g = self.recomputing(sp, pi, pj, x, n_out)
        if used.shape[0] == rij.shape[0]:
            return e, g
        return e, torch.zeros_like(rij).index_put_((used,), g)

    def single_pass(self, species, centre, neighbour, rij, n_out: list[int]):
        """``energy_forces`` on a hop-pruned graph (``facet.contract.hop_pruning``)."""
        n_edges = rij.shape[0]
        small = min(species.shape[0], n_edges, *n_out) < 2
        if small:  # 2 isolated dummy atoms first and 2 unused dummy pairs last
            species = torch.cat([species.new_zeros(2), species])
            centre, neighbour = centre + 2, neighbour + 2
            n_out = [m + 2 for m in n_out]
            dummy = torch.zeros(2, 3, dtype=rij.dtype, device=rij.device)
            dummy[:, 0] = 1.0
            rij = torch.cat([rij, dummy])
            neighbour = torch.cat([neighbour, neighbour.new_tensor([0, 1])])
        slots = neighbour_slots(centre, n_out[0], centre.shape[0])
        if small:
            slots = torch.where(slots == n_edges, n_edges + 2, slots)
        slots = _pad_slots(slots, rij.shape[0])
        e, g = self.package.programs["energy_forces"](
            species, neighbour, rij, *[slots[:m] for m in n_out])
        if small:
            return e[2:], g[:n_edges]
        return e, g

    # -- per-layer programs (recomputing evaluation; the KOKKOS exchange path uses these) ----
    def _call_layer(self, name: str, h, nb_local, x, slots, *extra):
        """A per-layer program on one chunk, padding sizes below 2 with isolated dummies."""
        n_in, n_edges, n_out = h.shape[0], x.shape[0], slots.shape[0]
        prog = self.package.programs[name]
        if min(n_in, n_edges, n_out) >= 2:
            return prog(h, nb_local, x, _pad_slots(slots, n_edges), *extra)
        # 2 dummy rows first (zero features, no edges), 2 unused dummy pairs last
        h = torch.cat([h.new_zeros(2, h.shape[1]), h])
        nb_local = torch.cat([nb_local + 2, nb_local.new_tensor([0, 1])])
        dummy = torch.zeros(2, 3, dtype=x.dtype, device=x.device)
        dummy[:, 0] = 1.0
        x = torch.cat([x, dummy])
        slots = torch.where(slots == n_edges, n_edges + 2, slots)
        slots = _pad_slots(torch.cat([slots.new_full((2, slots.shape[1]), n_edges + 2), slots]),
                           n_edges + 2)
        extra = tuple(torch.cat([t.new_zeros(2, t.shape[1]), t]) for t in extra)
        out = prog(h, nb_local, x, slots, *extra)
        if name.endswith("_vjp"):
            return out[0][2:], out[1][:n_edges]
        return out[2:]

    def embed(self, species: torch.Tensor) -> torch.Tensor:
        if species.shape[0] < 2:
            return self.package.programs["embed"](torch.cat([species.new_zeros(2), species]))[2:]
        return self.package.programs["embed"](species)

    def readout_vjp(self, h: torch.Tensor, species: torch.Tensor):
        """Per-atom energies and d(sum e)/dh."""
        if species.shape[0] < 2:
            e, g = self.package.programs["readout"](
                torch.cat([h.new_zeros(2, h.shape[1]), h]),
                torch.cat([species.new_zeros(2), species]))
            return e[2:], g[2:]
        return self.package.programs["readout"](h, species)

    def layer_forward_chunked(self, index: int, h: torch.Tensor, plan: ChunkPlan,
                              x: torch.Tensor, n_out: int) -> torch.Tensor:
        """Layer ``index`` for rows ``0..n_out`` of ``h`` in the chunks of ``plan`` (edges
        sorted by centre, ``x`` their r_ij)."""
        out = h.new_empty(n_out, self.package.feature_dims[index + 1])
        for a, b, ea, eb, read, nb_local, slots in plan.chunks:
            out[a:b] = self._call_layer(f"layer{index}", h[read], nb_local, x[ea:eb], slots)
        return out

    def layer_backward_chunked(self, index: int, h: torch.Tensor, plan: ChunkPlan,
                               x: torch.Tensor, grad_out: torch.Tensor, need_grad_h: bool
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """VJP of ``layer_forward_chunked``: ``(grad_x [edges of the plan, 3], grad_h)``."""
        grad_x = torch.zeros_like(x)
        grad_h = torch.zeros_like(h) if need_grad_h else h.new_zeros(0, h.shape[1])
        for a, b, ea, eb, read, nb_local, slots in plan.chunks:
            gh, gr = self._call_layer(f"layer{index}_vjp", h[read], nb_local, x[ea:eb], slots,
                                      grad_out[a:b])
            grad_x[ea:eb] = gr
            if need_grad_h:
                grad_h.index_add_(0, read, gh)
        return grad_x, grad_h

    def recomputing(self, species, centre, neighbour, rij, n_out: list[int]):
        """The recomputing evaluation over the per-layer programs (hop-pruned graph)."""
        by_centre = torch.argsort(centre, stable=True)
        c, nb, x = centre[by_centre], neighbour[by_centre], rij[by_centre]
        chunk = self.chunk_edges if self.chunk_edges > 0 else max(int(c.shape[0]), 1)
        n_edges = [int((c < m).sum()) for m in n_out]  # layer k: a prefix of the edges
        plans = [ChunkPlan(c[:e], nb[:e], m, chunk) for e, m in zip(n_edges, n_out,
                                                                     strict=True)]
        hs = [self.embed(species)]
        for k in range(self.num_layers):
            e = n_edges[k]
            hs.append(self.layer_forward_chunked(k, hs[k], plans[k], x[:e], n_out[k]))
        e_local, g = self.readout_vjp(hs[-1], species[: n_out[-1]])
        g_x = torch.zeros_like(x)
        for k in range(self.num_layers - 1, -1, -1):
            e = n_edges[k]
            g_rij, g = self.layer_backward_chunked(k, hs[k], plans[k], x[:e], g, k > 0)
            g_x[:e] += g_rij
        return e_local, torch.zeros_like(rij).index_put_((by_centre,), g_x)
