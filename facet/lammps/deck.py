"""The LAMMPS input lines that run a deployed Facet model, written in one place.

``facet-deploy`` prints them, ``FacetLammps`` runs them and the examples document them, so the
ghost cutoff, the ``ghostneigh`` flag and the quoting of paths are decided here only.
"""

from __future__ import annotations

import math
import re
from os import PathLike
from pathlib import Path

# characters that end or change a word in a LAMMPS input line: blanks, quotes, comment, variable
_NEEDS_QUOTES = re.compile(r"[\s'\"#$&]")


def quote(word: str | PathLike) -> str:
    """``word`` as one LAMMPS argument: as is when it is plain, else in double, single or
    triple quotes (whichever it does not contain); ``#`` and ``$`` are literal inside quotes.

    Examples:
        >>> quote("/models/cu.pt")
        '/models/cu.pt'
        >>> quote("/my models/cu.pt")
        '"/my models/cu.pt"'
    """
    text = str(word)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    if '"""' not in text:
        return f'"""{text}"""'
    raise ValueError(f"{text!r} cannot be quoted for a LAMMPS input line")


def recommended_comm_cutoff(r_max: float, num_layers: int, skin: float = 2.0) -> float:
    """Ghost cutoff (Å) for an L-layer model on the plain ML-IAP path: L * r_max + skin, plus
    1 Å so the shell can be verified from atom positions (the outermost atoms lie up to about
    one spacing inside the shell)."""
    return float(math.ceil(num_layers * r_max + skin + 1.0))


def mliap_lines(path: str | PathLike, elements: list[str], r_max: float, num_layers: int,
                kokkos: bool = False, skin: float = 2.0) -> list[str]:
    """``pair_style``, ``pair_coeff`` and, where needed, ``comm_modify`` for ML-IAP unified.

    Plain path: ghost neighbour lists (``ghostneigh`` 1) and a ghost shell of the receptive
    field. KOKKOS path (``-k on ... -sf kk``): a one-cutoff halo, ghost features come from the
    per-layer exchange (``ghostneigh`` 0, default ghost cutoff). ``path`` may be ``EXISTS``
    (an object handed over with ``lammps.mliap.load_unified``)."""
    target = str(path) if str(path) == "EXISTS" else quote(Path(path).resolve())
    lines = [
        f"pair_style mliap unified {target} {0 if kokkos else 1}",
        f"pair_coeff * * {' '.join(elements)}",
    ]
    if num_layers > 1 and not kokkos:
        lines.append(f"comm_modify cutoff {recommended_comm_cutoff(r_max, num_layers, skin):g}")
    return lines


def plugin_lines(path: str | PathLike, elements: list[str],
                 library: str | PathLike | None = None) -> list[str]:
    """``plugin load``, ``pair_style facet`` and ``pair_coeff`` for the native plugin
    (``deploy/build_plugin.sh`` builds ``library``; None: a placeholder). The deck must use
    ``units metal`` and ``newton on`` (LAMMPS' default); the default ghost cutoff suffices."""
    lib = quote(Path(library).resolve()) if library else "<path of facetplugin.so>"
    return [
        f"plugin load {lib}",
        f"pair_style facet {quote(Path(path).resolve())}",
        f"pair_coeff * * {' '.join(elements)}",
    ]
