"""glibc malloc settings for a LAMMPS process that runs Facet through ML-IAP.

glibc's default allocator serves large blocks with fresh ``mmap()`` calls and gives freed memory
back to the system, so every model evaluation page-faults its tensors in anew and ranks wait on
the faults (LAMMPS' "CPU use" 73-87 % instead of 98-100 %; ML-IAP steps 1.1-1.4x longer where
ranks waited, benchmarks/README "The allocator setting on the ML-IAP paths"). The ML-IAP
object therefore has glibc keep freed memory for reuse, as ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=<large>`` in the environment would; the process's memory then stays at
its peak. The native plugin does the same in C++ (``lammps_plugin/pair_facet.cpp``, keyword
``malloc_tuning``).

Settings in the environment take precedence (``MALLOC_*_``, ``GLIBC_TUNABLES``);
``FACET_MALLOC_TUNING=0`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import os

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
ENVIRONMENT = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
SWITCH = "FACET_MALLOC_TUNING"

_done: str | None = None


def tune_malloc() -> str:
    """Have glibc keep freed memory for reuse (once per process); returns what was done, for
    the log."""
    global _done
    if _done is not None:
        return _done
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "no", "off", "false"):
        _done = f"glibc malloc defaults ({SWITCH}=0)"
    elif any(k in os.environ for k in ENVIRONMENT):
        _done = "glibc malloc left as set in the environment (MALLOC_*_ or GLIBC_TUNABLES)"
    else:
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # noqa: B018  (glibc only)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            _done = "not glibc: allocator untouched"
        else:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            if mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1:
                _done = ("glibc malloc keeps freed memory for reuse (M_MMAP_MAX 0, "
                         f"M_TRIM_THRESHOLD 2 GiB; {SWITCH}=0 leaves the defaults)")
            else:
                _done = "mallopt failed: glibc malloc defaults"
    return _done
