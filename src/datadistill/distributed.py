"""Several processes under ``torchrun``: the one place that talks to ``torch.distributed``.

``torchrun --nproc_per_node K -m datadistill <stage> CONFIG`` starts K copies of the CLI with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`init_from_env`
(called once by the CLI) joins them into one process group, gloo on CPU and NCCL when CUDA is
visible. A plain ``datadistill ...`` (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) stays a single
process and every function here is then a cheap no-op: ``rank() == 0``, ``world_size() == 1``,
reductions return their input.

Rules every stage follows:

- independent trainings (evaluation runs, experts, teachers) are dealt out by index with
  :func:`datadistill.runs.run_all` (rank r takes items r, r+K, r+2K, ...), and what an item
  computes depends on its index only, never on the rank, so results equal a single-process run;
- rank 0 alone prints, shows progress and writes reports and checkpoints (:func:`is_main`);
  other ranks log at WARNING;
- a rank that raises exits non-zero, and torchrun then stops every other rank and reports
  that rank's error; a rerun resumes from what rank 0 wrote.

Example:
    >>> rank(), world_size(), is_main(), active()
    (0, 1, True, False)
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import sys
import time
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from datadistill.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a collective waits for a silent peer before failing. A rank that raises is stopped
# by torchrun long before this; the timeout only bounds a hang (e.g. a rank killed by the OS).
TIMEOUT = timedelta(minutes=30)


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def active() -> bool:
    """True when this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when single)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """How many processes share the work (1 when single)."""
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's index on its own machine (``LOCAL_RANK``; 0 when single)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if active() else 0


def is_main() -> bool:
    """True on rank 0, the one process that prints and writes."""
    return rank() == 0


def backend() -> str | None:
    """``"gloo"`` or ``"nccl"`` while active, else None."""
    return dist.get_backend() if active() else None


def init_from_env() -> int:
    """Join the process group torchrun describes; returns the world size (1: nothing to do).

    NCCL when CUDA is visible (each rank on GPU ``LOCAL_RANK``), gloo otherwise. Safe to call
    twice. Set ``DATADISTILL_BACKEND=gloo`` to force gloo on a GPU machine.
    """
    size = env_world_size()
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world_size() if size > 1 else 1
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run datadistill as "
                          "one process (without torchrun)")
    chosen = os.environ.get("DATADISTILL_BACKEND") or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=chosen, timeout=TIMEOUT)
    log.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), chosen)
    _PEERS[:] = all_gather_objects((socket.gethostname(), os.getpid()))  # for peer_failure
    return dist.get_world_size()


# (host, pid) of every rank, gathered when the group is joined: a surviving rank uses them to
# name the rank whose process is gone.
_PEERS: list[tuple[str, int]] = []
# What gloo (and NCCL's socket transport) raise in a collective when a peer's process is gone.
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
             "Connection refused", "ECONNRESET", "EPIPE", "remote process exited")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child its launcher has not reaped yet is a zombie: gone all the same
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def lost_ranks() -> list[int]:
    """The other ranks on this machine whose processes have ended (unknown elsewhere)."""
    host, me = socket.gethostname(), rank()
    return [r for r, (h, pid) in enumerate(_PEERS) if r != me and h == host and _process_gone(pid)]


def resume_command(argv: list[str] | None = None) -> str:
    """The torchrun command line that reruns this command (any process count resumes)."""
    per_node = os.environ.get("LOCAL_WORLD_SIZE") or str(env_world_size())
    args = sys.argv[1:] if argv is None else argv
    return f"torchrun --nproc_per_node {per_node} -m datadistill {shlex.join(args)}"


def peer_failure(err: BaseException) -> str | None:
    """One line for a collective that failed because another rank's process ended (killed,
    out of memory, crashed), naming that rank and the command that resumes; None when `err`
    is anything else.

    Example:
        >>> peer_failure(ValueError("x")) is None
        True
    """
    if not isinstance(err, RuntimeError) or env_world_size() <= 1:
        return None
    if not any(p.lower() in str(err).lower() for p in PEER_LOST):
        return None
    lost = lost_ranks()
    for _ in range(20):  # the peer's sockets close before its exit completes: wait up to 2 s
        if lost:
            break
        time.sleep(0.1)
        lost = lost_ranks()
    size, me = env_world_size(), int(os.environ.get("RANK", "0") or 0)
    who = (f"rank {', '.join(map(str, lost))} of {size} ended (its process is gone: killed or "
           "crashed; torchrun's summary has its exit code)" if lost else
           f"another rank of the {size} stopped answering (its connection closed)")
    return (f"{who} while rank {me} waited for it; what was written before is kept: rerun to "
            f"resume, with any number of processes: {resume_command()}")


def shutdown(*, finished: bool = True) -> None:
    """Leave the process group (end of the CLI command); no-op when single.

    ``finished`` (the command succeeded): every rank first waits for the others, so none tears
    its connections down while a peer still talks to it (gloo aborts the peer with "terminate
    called without an active exception"). A rank that failed leaves at once; torchrun stops
    the others.
    """
    if finished and active():
        wait_for_others()
    _WAIT_GROUP.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: str) -> str:
    """``"cuda"`` becomes this rank's own GPU (``cuda:LOCAL_RANK``) under several processes."""
    if device == "cuda" and active():
        return f"cuda:{local_rank()}"
    return device


def _comm_device(tensor: torch.Tensor) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and CUDA ones, by copying)
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returns it. No-op when single.

    Every rank must call this in the same order with the same shape and dtype.
    """
    if not active():
        return tensor
    where = _comm_device(tensor)
    if where == tensor.device:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
    moved = tensor.to(where)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    tensor.copy_(moved)
    return tensor


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` when single). Picklable, small objects."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when single)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every rank reaches this point; no-op when single."""
    if active():
        if backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# A rank that finished its share may wait for hours while another trains (a teacher of 200
# epochs, PAD's difficulty scoring): those waits use a CPU group of their own with this timeout,
# so the short TIMEOUT of the collectives above still catches a hang.
WAIT_TIMEOUT = timedelta(days=7)
_WAIT_GROUP: list = []  # the gloo group of wait_for_others, made on first use


def wait_for_others() -> None:
    """A barrier with no practical time limit: every rank waits until all arrive here.

    For the end of a sharded stage and for ranks waiting while rank 0 computes what all of
    them then read from disk. No-op when single. Every rank must call it at the same point.
    """
    if not active():
        return
    if not _WAIT_GROUP:  # collective: every rank creates it at the same call
        _WAIT_GROUP.append(dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT))
    dist.barrier(group=_WAIT_GROUP[0])


def metadata() -> dict:
    """What every output records about the processes that made it: ``{"world_size": K}``."""
    return {"world_size": world_size()}
