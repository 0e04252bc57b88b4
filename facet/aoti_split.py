"""A layer's forward that keeps its activations and a backward that uses them, for export.

``layer{k}_vjp`` (``facet.aoti``) recomputes the layer's forward before its backward: what a
runtime with bounded memory wants (chunks). Where memory allows, the forward can instead return
the activations its backward needs, and the backward take them, so that nothing is computed
twice. ``split_layer`` builds that pair of programs from the same joint graph the VJP program
comes from (``make_fx`` of forward + ``torch.autograd.grad``): nodes that depend on
``grad_out`` form the backward, the forward nodes they read are saved (returned by the forward,
passed to the backward), except symbolic sizes and tensors whose size is not linear in one
input size (e.g. ``n_out * max_neighbours`` rows of a gather), which the backward recomputes
from their inputs so that every saved size can be declared to ``torch.export`` as a derived
dimension. The results equal the VJP program's (same graph, same order of operations).

================  =====================================================  ========================
program           inputs                                                 outputs
================  =====================================================  ========================
``layer{k}_fwd``  h [n_in, d_k], neighbour [E], rij [E, 3], slots         h [n_out, d_k+1],
                  [n_out, M]                                             saved_0, saved_1, ...
``layer{k}_bwd``  the same, then saved_0, saved_1, ..., grad_out          grad_h [n_in, d_k],
                  [n_out, d_k+1]                                         grad_rij [E, 3]
================  =====================================================  ========================
"""

from __future__ import annotations

import sympy
import torch
from torch.export import Dim, ExportedProgram


def _is_size(node: torch.fx.Node) -> bool:
    return not isinstance(node.meta.get("val"), torch.Tensor)


def _linear_size(node: torch.fx.Node) -> bool:
    """Every dimension of the node's tensor is constant or linear in one symbol."""
    for d in node.meta["val"].shape:
        if isinstance(d, torch.SymInt):
            e = sympy.expand(d.node.expr)
            if len(e.free_symbols) > 1:
                return False
            if e.free_symbols and sympy.degree(e, next(iter(e.free_symbols))) > 1:
                return False
    return True


def _partition(gm: torch.fx.GraphModule):
    """(forward GraphModule, backward GraphModule, saved nodes) of a joint graph with
    placeholders (h, neighbour, rij, slots, grad_out) and outputs (out, grad_h, grad_rij)."""
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = nodes[-1]
    out, grad_h, grad_rij = output.args[0]
    backward = set()
    for n in nodes:
        if n is inputs[4] or any(a in backward for a in n.all_input_nodes):
            backward.add(n)
    backward.discard(output)
    saved: list[torch.fx.Node] = []
    recomputed: set[torch.fx.Node] = set()
    seen: set[torch.fx.Node] = set()

    def needed(n: torch.fx.Node) -> None:
        if n in seen or n in backward or n.op == "placeholder":
            return
        seen.add(n)
        if _is_size(n) or not _linear_size(n):
            recomputed.add(n)
            for a in n.all_input_nodes:
                needed(a)
        else:
            saved.append(n)

    for n in nodes:
        if n in backward:
            for a in n.all_input_nodes:
                needed(a)
    for n in (grad_h, grad_rij):
        needed(n)

    forward_graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in nodes:
        if n not in backward and n is not output:
            env[n] = forward_graph.node_copy(n, lambda a: env[a])
    forward_graph.output((env[out], *[env[s] for s in saved]))
    backward_graph = torch.fx.Graph()
    benv: dict[torch.fx.Node, torch.fx.Node] = {}
    for p in inputs[:4]:
        benv[p] = backward_graph.placeholder(p.name)
    for i, s in enumerate(saved):
        benv[s] = backward_graph.placeholder(f"saved_{i}")
    benv[inputs[4]] = backward_graph.placeholder("grad_out")
    for n in nodes:
        if n is not output and n not in inputs and (n in backward or n in recomputed):
            benv[n] = backward_graph.node_copy(n, lambda a: benv[a])
    backward_graph.output((benv[grad_h], benv[grad_rij]))
    modules = []
    for graph in (forward_graph, backward_graph):
        m = torch.fx.GraphModule(gm, graph)
        m.graph.eliminate_dead_code()
        m.recompile()
        modules.append(m)
    return modules[0], modules[1], saved, inputs


def split_layer(model, k: int, args: list[torch.Tensor], dims: list[dict[int, Dim]],
                trace) -> tuple[ExportedProgram, ExportedProgram]:
    """``torch.export`` programs ``layer{k}_fwd`` and ``layer{k}_bwd`` (module docstring) of a
    frozen ``model``. ``args`` = example (h, neighbour, rij, slots, grad_out); ``dims`` = the
    dynamic dims of the first four (as for ``layer{k}``), the last's rows are ``dims[3][0]``;
    ``trace`` = ``facet.aoti._trace``."""

    def joint(h, neighbour, rij, slots, grad_out):
        h = h.detach().requires_grad_(True)
        rij = rij.detach().requires_grad_(True)
        out = model.layer_slots(k, h, neighbour, rij, slots)
        gh, gr = torch.autograd.grad([out], [h, rij], [grad_out], allow_unused=True)
        return out.detach(), torch.zeros_like(h) if gh is None else gh, gr

    fwd, bwd, saved, inputs = _partition(trace(joint, args))
    # the trace's size symbols -> the export's dims; saved sizes as derived dims
    symbol_dims = {}
    for p, spec in zip(inputs, [*dims, {0: dims[3][0]}], strict=True):
        for d, dim in spec.items():
            size = p.meta["val"].shape[d]
            if isinstance(size, torch.SymInt):
                symbol_dims[size.node.expr] = dim

    def spec(size):
        if isinstance(size, int):
            return None
        e = sympy.expand(size.node.expr)
        if not e.free_symbols:
            return None
        symbol = next(iter(e.free_symbols))
        if symbol not in symbol_dims:  # a size that is constant in practice (rij's 3)
            return None
        a, b = int(e.coeff(symbol)), int(e - e.coeff(symbol) * symbol)
        dim = symbol_dims[symbol]
        dim = dim if a == 1 else a * dim
        return dim if b == 0 else dim + b

    saved_dims = [{i: spec(s) for i, s in enumerate(n.meta["val"].shape) if spec(s) is not None}
                  or None for n in saved]
    with torch.no_grad():
        saved_values = fwd(*args[:4])[1:]
    ep_fwd = torch.export.export(fwd, tuple(args[:4]), dynamic_shapes=tuple(dims), strict=False)
    ep_bwd = torch.export.export(bwd, (*args[:4], *saved_values, args[4]),
                                 dynamic_shapes=(*dims, *saved_dims, {0: dims[3][0]}),
                                 strict=False)
    return ep_fwd, ep_bwd
