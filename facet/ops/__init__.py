"""Facet's fused CPU kernels (``facet::`` torch operators), built on first use and cached.

``uvu_tp.cpp`` holds the channel-wise tensor product of one irrep block (and of all blocks of a
layer in one call), forward and backward, evaluated edge by edge in cache (see its header): the
same function as
``UVUTensorProduct.forward_slots``'s padded batched matmul with about 4x fewer multiplications
and no slot-sized intermediates. ``s2_mlp.cpp`` holds the spherical-grid MLP of ``S2Mixing``
(grid transform, two SiLU layers, projection back) one atom at a time in cache;
``block_norm.cpp`` the equivariant layer norm (and the gain after it) one row at a time;
``irreps_linear.cpp`` the linear maps of irrep blocks (several summed) in one call. They serve
inference only (no gradient for the weights, no double backward): ``facet.ops.use_fused`` switches a
model's modules to them; CPU packages (``facet.aoti``) and TorchScript files call them, and the
LAMMPS plugin compiles the same sources in.

The library is compiled once per source, torch version and CPU vector ISA with the system C++
compiler (``$CXX`` or ``c++``; the same one AOTInductor needs) into ``$FACET_OPS_CACHE`` (default
``~/.cache/facet/ops``), under a file lock so that MPI ranks starting together build it once.

Examples:
    >>> import facet.ops
    >>> facet.ops.load()            # doctest: +SKIP
    '/home/me/.cache/facet/ops/facet_ops-....so'
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from facet.errors import FacetError

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("uvu_tp.cpp", "s2_mlp.cpp", "block_norm.cpp", "irreps_linear.cpp"))
HEADERS = (Path(__file__).with_name("blas.h"),)
OPS_VERSION = 4  # bump when an operator is added or its schema or meaning changes
OPS = ("facet::uvu_tp_block", "facet::uvu_tp_block_backward", "facet::uvu_tp_layer",
       "facet::uvu_tp_layer_backward", "facet::s2_mlp",
       "facet::s2_mlp_backward", "facet::block_norm", "facet::block_norm_backward",
       "facet::irreps_linear", "facet::irreps_linear_backward")

_loaded: str | None = None
_load_error: FacetOpsError | None = None


class FacetOpsError(FacetError, RuntimeError):
    """The fused kernels could not be built or loaded (no C++ compiler, a failed build)."""


def isa_flags() -> list[str]:
    """Compiler flags for this CPU's vector ISA, as torch detects it (AVX2/AVX-512 on x86;
    none elsewhere: the compiler's baseline)."""
    cap = torch.backends.cpu.get_cpu_capability()
    # CPU_CAPABILITY_*: ATen's vector classes (at::vec, used for SiLU's exp) take that ISA
    if cap.startswith("AVX512"):
        return ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if cap == "AVX2":
        return ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def _registered() -> bool:
    """Whether this process already has the operators (our library, or the LAMMPS plugin)."""
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU") for op in OPS)
    except RuntimeError:  # "operator ... does not exist"
        return False


def cache_dir() -> Path:
    return Path(os.environ.get("FACET_OPS_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facet/ops")


def _build_commands(sources: tuple[Path, ...], target: Path) -> list[list[str]]:
    """The compiler calls that build ``target``: one object per source, then the link.

    The sources are compiled with ``-fopenmp`` (``at::parallel_for`` is an inline template:
    without it the kernels' loops over atoms run on one thread whatever torch's thread count)
    but linked without it: the OpenMP symbols then resolve to the runtime torch itself loaded
    (its bundled libgomp), not to a second copy of the compiler's."""
    from torch.utils.cpp_extension import include_paths, library_paths

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    compile_flags = ["-O3", "-std=c++17", "-fPIC", "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                     *isa_flags(), *(f"-I{p}" for p in include_paths())]
    objects = [target.parent / f"{target.stem}-{source.stem}.o" for source in sources]
    cmds = [[cxx, *compile_flags, "-c", str(source), "-o", str(obj)]
            for source, obj in zip(sources, objects, strict=True)]
    libs = library_paths()
    cmds.append([cxx, "-shared", *map(str, objects), "-o", str(target),
                 *(f"-L{p}" for p in libs), *(f"-Wl,-rpath,{p}" for p in libs),
                 "-lc10", "-ltorch_cpu", "-ltorch"])
    return cmds


def library_path() -> Path:
    """Where this source, torch version and ISA's library is (or will be) cached."""
    key = hashlib.sha256()
    for source in SOURCES + HEADERS:
        try:
            key.update(source.read_bytes())
        except OSError as exc:
            raise FacetOpsError(f"the fused kernels' source {source} is missing ({exc}): "
                                "reinstall facet-lammps") from None
    key.update(" ".join([torch.__version__, str(OPS_VERSION), *isa_flags(), sys.platform,
                         "openmp"])
               .encode())
    return cache_dir() / f"facet_ops-{key.hexdigest()[:16]}.so"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(force: bool = False) -> Path:
    """Compile the library into the cache (if not there yet) and return its path."""
    target = library_path()
    if target.exists() and not force:
        return target
    with _locked(target.parent):
        if target.exists() and not force:
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            for cmd in _build_commands(SOURCES, partial):
                try:
                    run = subprocess.run(cmd, capture_output=True, text=True)
                except OSError as exc:
                    raise FacetOpsError(
                        f"cannot build Facet's fused kernels: no C++ compiler ({exc}). Install "
                        "g++ (or set CXX), or run without them (FACET_FUSED_KERNELS=0)"
                    ) from None
                if run.returncode != 0:
                    raise FacetOpsError(
                        "building Facet's fused kernels failed:\n  " + " ".join(cmd) + "\n"
                        + run.stderr[-4000:] + "\nSet FACET_FUSED_KERNELS=0 to run without them.")
            os.replace(partial, target)
    return target


def load() -> str:
    """Make the ``facet::`` operators available in this process (build on first use);
    returns the library's path ("" when another library, e.g. the LAMMPS plugin, registered
    them). Raises ``FacetOpsError`` with the reason when that is impossible."""
    global _loaded, _load_error
    if _loaded is not None:
        return _loaded
    if _load_error is not None:
        raise _load_error
    try:
        path = ""
        if not _registered():
            path = str(build())
            torch.ops.load_library(path)
        _register_python_parts()
    except FacetOpsError as exc:
        _load_error = exc
        raise
    except (OSError, RuntimeError) as exc:
        _load_error = FacetOpsError(f"loading Facet's fused kernels failed: {exc}")
        raise _load_error from None
    _loaded = path
    return path


def enabled() -> bool:
    """Whether to use the fused kernels where they apply: ``FACET_FUSED_KERNELS`` is not
    ``0`` and they build and load here (a failure is remembered, not raised)."""
    if os.environ.get("FACET_FUSED_KERNELS", "1") == "0":
        return False
    try:
        load()
    except FacetOpsError:
        return False
    return True


def wanted(fused: bool | None, device: str = "cpu") -> bool:
    """A ``fused=`` argument resolved: as given, or (None) on for the CPU where ``enabled()``."""
    return fused if fused is not None else (device == "cpu" and enabled())


def _register_python_parts() -> None:
    """The operators' output shapes for tracing (fake tensors); their autograd is in C++."""

    def fake_forward(x, nbr, t, basis, c, path_of_k):
        return x.new_empty((nbr.shape[0], x.shape[2], t.shape[3]))

    def fake_backward(grad, x, nbr, t, basis, c, path_of_k):
        return x.new_empty(x.shape), t.new_empty(t.shape), basis.new_empty(basis.shape)

    def fake_layer(xs, nbr, y, basis, coefficients, couplings, path_of_k, blocks):
        starts = range(0, len(blocks), 8)
        return ([y.new_empty((nbr.shape[0], blocks[i + 3], blocks[i + 1])) for i in starts],
                [y.new_empty((y.shape[0], y.shape[1], blocks[i + 2], blocks[i + 3]))
                 for i in starts])

    def fake_layer_backward(grads, xs, ts, nbr, y, basis, coefficients, couplings, path_of_k,
                            blocks):
        return [x.new_empty(x.shape) for x in xs], y.new_empty(y.shape), \
            basis.new_empty(basis.shape)

    def fake_s2(z, to_grid, w2, from_grid, heads):
        return z.new_empty((z.shape[0], z.shape[1], heads * w2.shape[1]))

    def fake_s2_backward(grad, z, to_grid, w2, from_grid, heads):
        return z.new_empty(z.shape)

    def fake_norm(xs, num_scalar_blocks, joint, eps, gain):
        return [x.new_empty(x.shape) for x in xs]

    def fake_norm_backward(grads, xs, num_scalar_blocks, joint, eps, gain):
        return [x.new_empty(x.shape) for x in xs]

    def fake_linear(xs, weights, paths, alphas, out_shapes, right):
        cols = out_shapes[1::2] if right is None else [right.shape[1]] * (len(out_shapes) // 2)
        return [xs[0].new_empty((xs[0].shape[0], d, c))
                for d, c in zip(out_shapes[0::2], cols, strict=True)]

    def fake_linear_backward(grads, inputs, weights, paths, alphas, out_shapes, right):
        return [grads[0].new_empty(x.shape) for x in inputs]

    for op, fake in zip(OPS, (fake_forward, fake_backward, fake_layer, fake_layer_backward,
                              fake_s2, fake_s2_backward,
                              fake_norm, fake_norm_backward, fake_linear, fake_linear_backward),
                        strict=True):
        torch.library.register_fake(op)(fake)


@contextlib.contextmanager
def fused(model: torch.nn.Module, on: bool = True) -> Iterator[torch.nn.Module]:
    """``use_fused(model, on)`` for the duration of a block, then each tensor product as it
    was (so a calculator can evaluate a module its caller may also train)."""
    tps = _fusable(model)
    before = [tp.fused for tp in tps]
    try:
        yield use_fused(model, on)
    finally:
        for tp, was in zip(tps, before, strict=True):
            tp.fused = was


def use_fused(model: torch.nn.Module, on: bool = True) -> torch.nn.Module:
    """Switch every tensor product of ``model`` to the fused kernels (``on``) or back; loads
    them first when switching on (``FacetOpsError`` if they cannot be built). Returns
    ``model``. Inference only: the radial coefficients must not require gradients."""
    if on:
        load()
    _switch(_fusable(model), on)
    return model


def _switch(modules: list[torch.nn.Module], on: bool) -> None:
    """Each module on its fused kernels (``on``, where it has them: ``fusable``) or off."""
    for module in modules:
        module.fused = on and getattr(module, "fusable", True)


class InferenceState:
    """A model's inference state, entered and left by ``with``: every weight without gradients
    (autograd then records only what the gradient with respect to the inputs needs) and every
    fusable module on the fused kernels (``fused``) or not; on leaving, each weight and module as
    it was, so that a caller can go on training the model. The weights and modules are listed once
    here (``fused()`` and ``functional_call`` walk the module tree on every call: ~1 ms).

    Args:
        model: the module (weights and fusable submodules listed now; ones added later are not
            switched: they keep their own state, which changes speed, not numbers).
        fused: the fused kernels on (loaded now; ``FacetOpsError`` if they cannot be built).

    Examples:
        >>> state = InferenceState(model, fused=True)   # doctest: +SKIP
        >>> with state:                                 # doctest: +SKIP
        ...     energy = model(...)
    """

    def __init__(self, model: torch.nn.Module, fused: bool) -> None:
        if fused:
            load()
        self.fused = fused
        self.weights = list(model.parameters())
        self.modules = _fusable(model)
        self._saved: list[tuple[list[bool], list[bool]]] = []

    def __enter__(self) -> InferenceState:
        self._saved.append(([w.requires_grad for w in self.weights],
                            [m.fused for m in self.modules]))
        for w in self.weights:
            w.requires_grad_(False)
        _switch(self.modules, self.fused)
        return self

    def __exit__(self, *exc) -> None:
        grads, fused_before = self._saved.pop()
        for w, g in zip(self.weights, grads, strict=True):
            w.requires_grad_(g)
        for m, f in zip(self.modules, fused_before, strict=True):
            m.fused = f


def _fusable(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``model`` with a fused evaluation (tensor products, interactions, S2 grid
    MLPs, layer norms)."""
    from facet.layers import E3LayerNorm, Interaction
    from facet.s2 import S2Mixing
    from facet.tensor_product import UVUTensorProduct

    return [m for m in model.modules()
            if isinstance(m, (UVUTensorProduct, Interaction, S2Mixing, E3LayerNorm))]
