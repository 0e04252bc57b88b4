"""Errors inside LAMMPS that stop every MPI rank: never a hang.

LAMMPS turns an exception raised by an ML-IAP model into ``error->all``, which waits for every
rank to report the same error. When only some ranks raise (a ghost shell too thin on the ranks
at a border, a GPU out of memory on one node), the others wait forever in the next halo
exchange or reduction: the job hangs until the wall-clock limit. So:

- where LAMMPS' communicator is known (``FacetLammps`` passes it), the ranks first agree on
  whether any of them found a problem (``agree``) and then all raise the same error together;
- otherwise an error on a multi-rank job prints its message with the rank and aborts the whole
  job (``MPI_Abort``, what LAMMPS' own ``error->one`` does); a serial run raises as usual, so
  LAMMPS prints the message and Python callers can catch it.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import NoReturn

# launcher variables that hold the number of processes of the job (MPICH/Hydra, Open MPI,
# PMIx, SLURM's srun)
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                   "SLURM_NTASKS")
# seconds between printing an abort message and ending the job
_ABORT_GRACE_S = 2.0
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def _env_int(names: tuple[str, ...]) -> int | None:
    for key in names:
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return None


def job_size() -> int:
    """Number of processes in this MPI job, from mpi4py when it is already loaded, else from
    the launcher's environment (1 when neither says)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_size()
    return _env_int(_SIZE_VARIABLES) or 1


def job_rank() -> int:
    """This process's rank in the MPI job (0 when unknown)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_rank()
    return _env_int(_RANK_VARIABLES) or 0


def agree(problem: str | None, comm) -> str | None:
    """The first problem any rank of ``comm`` (mpi4py) reports, the same on every rank, with
    the rank that found it; None when no rank has one. Collective: every rank must call it."""
    problems = comm.allgather(problem)
    for rank, message in enumerate(problems):
        if message is not None:
            return message if comm.Get_size() == 1 else f"{message} (found on rank {rank})"
    return None


def abort(message: str, exc: BaseException | None = None) -> NoReturn:
    """Print ``message`` (and the traceback of ``exc``) for this rank and end the whole job."""
    text = f"ERROR on proc {job_rank()}: {message}\n"
    if exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed stream must not stop the abort
            pass
    # MPI_Abort makes the launcher kill every process at once; output this rank has flushed
    # into the launcher's pipe but that was not yet forwarded is lost with it (seen with
    # MPICH's Hydra on a loaded machine: the job ended without a word). A failing job can
    # spare a moment so that its message reaches the user.
    time.sleep(_ABORT_GRACE_S)
    try:
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(1)
    except Exception:  # no usable mpi4py: the launcher ends the job when a rank exits non-zero
        pass
    os._exit(1)


def stop(exc: BaseException) -> NoReturn:
    """Raise ``exc`` in a serial run; in a multi-rank job, where the other ranks may be waiting
    in a collective, abort the job with its message instead (no hang). A ``FacetError`` is a
    message for the user and comes without a traceback."""
    from facet.errors import FacetError

    if job_size() > 1:
        abort(f"{type(exc).__name__}: {exc}", None if isinstance(exc, FacetError) else exc)
    raise exc
