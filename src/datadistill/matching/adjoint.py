"""Adjoint-mode trajectory matching: the exact gradient of the unrolled student, at constant memory.

The student of MTT (Cazenavette et al., CVPR 2022, Eq. 2) takes N steps

    theta_{i+1} = theta_i - alpha * g_i,   g_i = grad_theta l(theta_i; A_i(X_{b_i}), Y_{b_i}),

and the matching loss L(theta_N) is differentiated through all of them. The unrolled path
(:func:`datadistill.matching.unroll_student`) keeps the graph of every step, so its memory
grows with N x batch. Here the same gradient is taken in two passes (reverse-mode adjoint):

- :func:`student_trajectory` runs the N steps without keeping a graph and records theta_0 ...
  theta_N ((N + 1) x P floats), each step's mini-batch indices b_i and its DSA draw A_i. It
  consumes the generator exactly as the unrolled student does (the permutation, then the DSA
  draw, per step), so both modes follow the same random stream.
- :func:`adjoint_backward` starts from lambda_N = dL/dtheta_N and, for i = N-1 ... 0, rebuilds
  step i's graph alone (same indices, same DSA draw applied again) and takes one
  vector-Jacobian product of g_i with v = -alpha lambda_{i+1}:

      lambda_i   = lambda_{i+1} - alpha H_i lambda_{i+1}        (H_i = dg_i/dtheta_i)
      dL/dX_b_i += -alpha (dg_i/dX_b_i)^T lambda_{i+1}          (and dL/dY for soft labels)
      dL/dalpha += -g_i . lambda_{i+1}

  The loss (normalisation, PAD masks) enters through lambda_N only; theta_0 is a constant.

  The last step's graph is not rebuilt when that step is one chunk: the forward pass builds
  it with ``create_graph`` (its g_N-1 is then the unrolled student's own first-order gradient)
  and keeps it for the backward pass, which starts there. That saves one of the N extra
  forward + backward passes at the memory of one step's graph, which the backward pass holds
  anyway. ``kept_graphs=K`` (:class:`AdjointOptions`) keeps the last K steps' graphs so:
  K - 1 more step graphs in memory (as many as the unrolled student holds for K steps), K - 1
  fewer extra passes. The gradients are bitwise the same for every K (a kept graph is the
  rebuilt one, computed earlier); K = N costs the unrolled student's memory.

Where a step is one chunk (on this rank) and its graph is not kept, the forward pass also
records its g_i (this rank's part), stored as the snapshots are (up to N x P more floats, in
memory or spilled). The backward pass
then rebuilds that step as a graph only: its g_i is not needed as a value (the product is
linear in g_i and the double backward reads the saved maps and weights), so the ConvNet's
convolutions skip their first-order weight-gradient kernels there
(:func:`datadistill.models.convnet_ops.weight_grad_values`), one of the three kernels of each
convolution in the rebuilt forward + first-order pass, and dL/dalpha reads the recorded g_i:
the same values, so the gradients are bitwise those of a rebuild that computes them.

The result is the unrolled gradient up to rounding (tests: float64, relative error < 1e-6).
Memory: one step's graph plus the recorded trajectory, whatever N is. The (N + 1) x P
snapshots theta_i can leave the resident set (``snapshots="spill"``, :class:`SnapshotStore`):
on a CPU student they go to an unlinked temporary file, written and read back with positioned
I/O (``os.pwrite``/``os.preadv``; not mmap, whose pages would count in the RSS), on CUDA to
host memory. The bytes come back unchanged, so the gradients are bitwise those of the
in-memory trajectory; only theta_N and the snapshot in use stay resident.

``micro_batch=K`` processes each step's mini-batch in chunks of K images, in both passes: g_i
is the sum of the chunks' gradients of the loss weighted by |chunk| / batch (the loss is a mean
over the batch), and the products are summed likewise, so the largest graph holds K images.
The DSA draw is made for the whole mini-batch (as without chunks) and sliced per chunk. This
is exact only when samples do not interact in the forward pass (instance/layer/group/no norm);
:func:`check_micro_batch` refuses BatchNorm models.

Under ``torchrun`` with K processes (:mod:`datadistill.distributed`) each step's mini-batch is
shared: rank r takes the r-th of K consecutive parts of it (then cut into micro-batches).
Every rank draws the same indices and DSA parameters (same seeded generator), so only the
sums are split: the forward pass all-reduces each step's partial g_i (the same update on every
rank), the backward pass each step's partial H_i lambda_{i+1} (lambda_i is needed whole at the
next step), and the image / soft-label / step-size sums once at the end (they are linear in
the ranks' chunks and are read only after the last step). Communication per student step: two
all-reduces of P floats; per iteration: one of the synthetic set. One process takes the whole
batch and gives bitwise the single-process results.

The step kernels (g_i and the product of one step, chunk by chunk and rank by rank) are in
:mod:`datadistill.matching.adjoint_steps`; this module records the trajectory and drives the
two passes.

Example:
    >>> steps = StudentSteps(syn_steps=20, dsa=DSA())                       # doctest: +SKIP
    >>> traj = student_trajectory(forward, theta0, images, labels, syn_lr, steps,
    ...                           generator=g)                              # doctest: +SKIP
    >>> theta_n = traj.final.requires_grad_()                               # doctest: +SKIP
    >>> loss = matching_loss(theta_n, theta0, target)                       # doctest: +SKIP
    >>> (lam,) = torch.autograd.grad(loss, theta_n)                         # doctest: +SKIP
    >>> grads = adjoint_backward(forward, traj, images, labels, syn_lr, lam)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import torch
from torch import nn

from datadistill import distributed
from datadistill.config import check_choice
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.labels import is_soft
from datadistill.matching.adjoint_steps import (
    Graph,
    Recorded,
    Replay,
    StepRecord,
    Sums,
    kept_step,
    local_gradient,
    reduced,
    step_vjp,
)
from datadistill.matching.student import BatchSampler, ForwardFn, StudentSteps, label_loss
from datadistill.models.convnet_ops import NormValues
from datadistill.runtime.allocator import large_blocks_returned

SNAPSHOT_MODES = ("memory", "spill")


class SnapshotStore:
    """theta_0 ... theta_N of one trajectory, kept in memory or spilled out of it.

    ``mode="memory"`` keeps every (P,) tensor. ``mode="spill"`` keeps only the last one: on
    CPU the others go to a temporary file (unlinked as soon as it is created, so it never
    outlives the process; :meth:`close` frees it), on CUDA to host memory. Reads return the
    exact bytes written.

    Example:
        >>> store = SnapshotStore("spill")
        >>> store.append(torch.arange(3.0)); store.append(torch.ones(3))
        >>> store[0].tolist(), len(store)
        ([0.0, 1.0, 2.0], 2)
        >>> store.close()
    """

    def __init__(self, mode: str = "memory", directory: str | None = None):
        if mode not in SNAPSHOT_MODES:
            raise ValueError(f"snapshots={mode!r}; choose one of {', '.join(SNAPSHOT_MODES)}")
        self.mode, self._dir = mode, directory
        self._kept: list[torch.Tensor] = []  # memory: all; spill on CUDA: host copies
        self._fd: int | None = None  # spill on CPU: the unlinked file
        self._last: torch.Tensor | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def last(self) -> torch.Tensor:
        """(P,) the newest snapshot, resident."""
        return self._last

    def append(self, theta: torch.Tensor) -> None:
        """Add theta_n (detached (P,)); in spill mode the previous last leaves memory."""
        theta = theta.detach()
        if self.mode == "memory":
            self._kept.append(theta)
        elif self._last is not None:
            self._spill(self._n - 1, self._last)
        self._last, self._n = theta, self._n + 1

    def __getitem__(self, i: int) -> torch.Tensor:
        i = i + self._n if i < 0 else i
        if not 0 <= i < self._n:
            raise IndexError(f"snapshot {i} of {self._n}")
        if self.mode == "memory":
            return self._kept[i]
        if i == self._n - 1:
            return self._last
        if self._last.is_cuda:
            return self._kept[i].to(self._last.device)
        return self._read(i)

    def _spill(self, i: int, theta: torch.Tensor) -> None:
        if theta.is_cuda:
            self._kept.append(theta.cpu())
            return
        if self._fd is None:
            fd, path = tempfile.mkstemp(prefix="datadistill-theta-", dir=self._dir)
            os.unlink(path)  # gone from the directory at once; the descriptor keeps the data
            self._fd = fd
        raw = theta.contiguous().view(torch.uint8).numpy()  # (P * itemsize,) bytes
        offset = i * raw.nbytes
        written = 0
        while written < raw.nbytes:  # pwrite may write less than asked
            written += os.pwrite(self._fd, memoryview(raw[written:]), offset + written)

    def _read(self, i: int) -> torch.Tensor:
        out = torch.empty_like(self._last)
        raw = out.view(torch.uint8).numpy()
        got = os.preadv(self._fd, [raw], i * raw.nbytes)
        if got != raw.nbytes:
            raise OSError(f"snapshot {i}: read {got} of {raw.nbytes} bytes from the spill file")
        return out

    def close(self) -> None:
        """Free the spill file (and the kept tensors); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._kept = []

    def __del__(self):
        self.close()


@dataclass
class Trajectory:
    """The student's parameters after every step, and how each step was taken.

    A context manager: leaving it closes the snapshot store (frees a spill file).
    """

    thetas: SnapshotStore  # N + 1 detached (P,) tensors: theta_0 ... theta_N
    steps: list[StepRecord]  # N records, step i maps thetas[i] to thetas[i + 1]
    settings: StudentSteps  # how the steps were taken: the backward replays the DSA and loss
    options: AdjointOptions  # its chunk size, which the backward pass uses too
    # the graphs of the last options.kept_graphs steps (by step index), kept from the forward
    # pass where a step is one chunk: the backward pass uses each instead of rebuilding it
    # (once; then it is dropped)
    kept: dict[int, Graph] = field(default_factory=dict)
    # g_i (this rank's part) of every step that is one chunk (on this rank) and whose graph
    # is not kept, stored as the snapshots are (store position by step index), so that the
    # backward pass rebuilds those steps' graphs without their values (the weight-gradient
    # kernels skipped) and reads g_i
    grads: SnapshotStore | None = None
    grad_at: dict[int, int] = field(default_factory=dict)
    # the norm blocks' values recorded with those g_i where the snapshots are in memory
    # (convnet_ops.NormValues: (N, C)-sized; each used once, then dropped)
    norm: dict[int, NormValues] = field(default_factory=dict)

    def grad(self, i: int) -> torch.Tensor | None:
        """Step i's recorded g_i (this rank's part), or None where it was not recorded."""
        return None if i not in self.grad_at else self.grads[self.grad_at[i]]

    @property
    def final(self) -> torch.Tensor:
        """(P,) theta_N, detached (make it a leaf with ``requires_grad_`` for lambda_N)."""
        return self.thetas.last

    def close(self) -> None:
        """Free the snapshots and recorded gradients (a spilled trajectory's temporary files)
        and the kept graphs."""
        self.thetas.close()
        if self.grads is not None:
            self.grads.close()
        self.kept, self.norm = {}, {}

    def __enter__(self) -> Trajectory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class AdjointGrads:
    """dL/d(learnable inputs) from :func:`adjoint_backward`."""

    images: torch.Tensor  # (N_syn, C, H, W)
    syn_lr: torch.Tensor  # () in the step size's dtype
    labels: torch.Tensor | None  # (N_syn, K) for learnable soft labels, else None


def _ranks() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun; (0, 1) when single."""
    return distributed.rank(), distributed.world_size()


@dataclass(frozen=True)
class AdjointOptions:
    """The adjoint pass's own settings: ``micro_batch`` (chunk size within a step; None =
    the whole batch), ``snapshots`` ("memory" or "spill", see :class:`SnapshotStore`) and
    ``kept_graphs`` (how many of the last steps keep their graph from the forward pass for
    the backward pass, where a step is one chunk; see the module docstring).

    Example:
        >>> AdjointOptions(micro_batch=16).snapshots
        'memory'
    """

    micro_batch: int | None = None
    snapshots: str = "memory"
    kept_graphs: int = 1


def student_trajectory(forward: ForwardFn, theta0: torch.Tensor, images: torch.Tensor,
                       labels: torch.Tensor, syn_lr: torch.Tensor, steps: StudentSteps, *,
                       generator: torch.Generator | None = None,
                       options: AdjointOptions | None = None) -> Trajectory:
    """Forward pass of adjoint mode: the N student steps without a graph, recorded.

    Arguments as :func:`datadistill.matching.unroll_student` (same draws from ``generator``,
    in the same order), plus ``options`` (:class:`AdjointOptions`: chunk size and where the
    snapshots live), which the trajectory keeps with ``steps`` for the backward pass. On an
    error the store is closed before the error propagates.

    Example:
        >>> traj = student_trajectory(forward, theta0, x, y, syn_lr,
        ...                           StudentSteps(syn_steps=5))                  # doctest: +SKIP
        >>> len(traj.thetas), len(traj.steps)                                     # doctest: +SKIP
        (6, 5)
    """
    options = options or AdjointOptions()
    with large_blocks_returned(_returns_blocks(images, options)):  # see runtime.allocator
        return _trajectory(forward, theta0, images, labels, syn_lr, steps, generator, options)


def _returns_blocks(images: torch.Tensor, options: AdjointOptions) -> bool:
    """Whether the passes return large freed blocks to the kernel (CPU, one kept graph): that
    keeps the adjoint mode's memory at one step's graph, at the cost of fresh pages for every
    step's large tensors. With several kept graphs the run has opted for memory, and faulting
    in the kept graphs' pages anew at every iteration cost more time than they saved: there
    the freed memory stays in the process, as for the unrolled student."""
    return images.device.type == "cpu" and options.kept_graphs == 1


def _trajectory(forward: ForwardFn, theta0: torch.Tensor, images: torch.Tensor,
                labels: torch.Tensor, syn_lr: torch.Tensor, steps: StudentSteps,
                generator: torch.Generator | None, options: AdjointOptions) -> Trajectory:
    rank, world = _ranks()
    replay = Replay(forward, steps.loss_fn or label_loss(labels), images, labels, steps.dsa,
                    options.micro_batch, rank, world)
    sampler = BatchSampler(images.shape[0], steps.batch_syn, generator)
    alpha = syn_lr.detach()
    traj = Trajectory(SnapshotStore(options.snapshots), [], steps, options)
    traj.thetas.append(theta0)
    try:
        for i in range(steps.syn_steps):
            idx = sampler.next().to(images.device)
            draw = None if steps.dsa is None else steps.dsa.sample(
                len(idx), tuple(images.shape[-2:]), generator)
            rec = StepRecord(idx, draw)
            theta = traj.thetas.last
            parts = replay.chunks(len(idx))
            if i >= steps.syn_steps - options.kept_graphs and len(parts) == 1:
                g, traj.kept[i] = kept_step(replay, theta, rec, parts[0])  # holds its g_i
            else:
                norm = NormValues() if len(parts) == 1 and options.snapshots == "memory" \
                    else None
                local = local_gradient(replay, theta, rec, norm)
                g = reduced(replay, local, theta)
                if norm is not None and norm.items:
                    traj.norm[i] = norm
                if len(parts) == 1:  # rebuilt as a graph only: record its g_i
                    if traj.grads is None:
                        traj.grads = SnapshotStore(options.snapshots)
                    traj.grad_at[i] = len(traj.grads)
                    traj.grads.append(local)
            traj.thetas.append(theta - alpha * g)  # (P,) as the unrolled update
            traj.steps.append(rec)
    except BaseException:
        traj.close()
        raise
    return traj


def adjoint_backward(forward: ForwardFn, traj: Trajectory, images: torch.Tensor,
                     labels: torch.Tensor, syn_lr: torch.Tensor,
                     lam: torch.Tensor) -> AdjointGrads:
    """Backward pass of adjoint mode: dL/d(images, syn_lr, soft labels) from lambda_N.

    Args:
        forward, images, labels, syn_lr: as given to :func:`student_trajectory` for ``traj``
            (the values must be unchanged); the DSA, loss and chunk size are the ones
            ``traj`` recorded.
        traj: the recorded forward pass.
        lam: (P,) lambda_N = dL/dtheta_N of the matching loss.

    Returns:
        :class:`AdjointGrads`; ``labels`` is None for hard labels.

    Example:
        >>> g = adjoint_backward(forward, traj, x, y, syn_lr, lam)        # doctest: +SKIP
        >>> g.images.shape == x.shape                                     # doctest: +SKIP
        True
    """
    with large_blocks_returned(_returns_blocks(images, traj.options)):  # runtime.allocator
        return _backward(forward, traj, images, labels, syn_lr, lam)


def _backward(forward: ForwardFn, traj: Trajectory, images: torch.Tensor,
              labels: torch.Tensor, syn_lr: torch.Tensor, lam: torch.Tensor) -> AdjointGrads:
    steps, alpha = traj.settings, syn_lr.detach()
    rank, world = _ranks()
    replay = Replay(forward, steps.loss_fn or label_loss(labels), images, labels, steps.dsa,
                    traj.options.micro_batch, rank, world)
    sums = Sums(torch.zeros_like(images, memory_format=torch.contiguous_format),
                torch.zeros_like(labels) if is_soft(labels) else None,
                torch.zeros((), dtype=lam.dtype, device=lam.device))
    kept, traj.kept = traj.kept, {}  # used once: a second backward rebuilds every step
    for i in range(len(traj.steps) - 1, -1, -1):  # lam: lambda_{i+1} -> lambda_i
        # a kept graph leaves the dict first, so the product below frees it
        recorded, g = kept.pop(i, None), None
        if recorded is None and (g := traj.grad(i)) is not None:
            recorded = Recorded(g, traj.norm.pop(i, None))
        lam = step_vjp(replay, traj.thetas[i], traj.steps[i], alpha, lam, sums, recorded,
                       first=i == 0)
    if world > 1:  # the sums are linear in each rank's chunks: one reduction at the end
        for part in (sums.images, sums.labels, sums.syn_lr):
            if part is not None:
                distributed.all_reduce_sum_(part)
    return AdjointGrads(sums.images, sums.syn_lr.to(syn_lr.dtype), sums.labels)


def couples_samples(model: nn.Module) -> bool:
    """True when the model's forward mixes samples of a batch (BatchNorm in training mode).

    Example:
        >>> couples_samples(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
        True
        >>> couples_samples(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(2, 2)))
        False
    """
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_micro_batch(model: nn.Module, micro_batch: int | None, batch: int,
                      model_name: str = "the student") -> None:
    """CompatibilityError if ``micro_batch`` would split a batch that the model couples.

    ``batch`` is the student's mini-batch (batch_syn, or the whole synthetic set). A chunk as
    large as the batch splits nothing, so it is always allowed.
    """
    if micro_batch is None or micro_batch >= batch or not couples_samples(model):
        return
    raise CompatibilityError(
        f"distill.micro_batch={micro_batch} splits each student step's batch of {batch} images "
        f"into chunks, but {model_name} has BatchNorm layers: they normalise with statistics "
        "of the whole batch, so the chunks' gradients would not add up to the step's gradient. "
        "Set distill.micro_batch=null (adjoint mode alone already keeps memory flat in "
        "syn_steps), or use a student without batch coupling (e.g. model=convnet with "
        "instance norm).")


def check_shared_batch(model: nn.Module, world: int, batch: int,
                       model_name: str = "the student") -> None:
    """CompatibilityError if ``world`` processes would split a batch that the model couples.

    Under torchrun each rank takes a part of every step's mini-batch, which changes the
    gradient of a model whose samples interact (BatchNorm), as micro-batches would.
    """
    if world <= 1 or batch <= 1 or not couples_samples(model):
        return
    raise CompatibilityError(
        f"{world} processes share each student step's batch of {batch} images, but "
        f"{model_name} has BatchNorm layers: they normalise with statistics of the whole "
        "batch, so the processes' partial gradients would not add up to the step's gradient. "
        "Run it in one process (without torchrun), or use a student without batch coupling "
        "(e.g. model=convnet with instance norm).")


GRAD_MODES = ("unrolled", "adjoint")  # how the meta-gradient is computed


def check_grad_config(grad_mode: str, micro_batch: int | None, kept_graphs: int = 1) -> None:
    """The grad axis of a distillation config (``distill.grad_mode``, ``micro_batch`` and
    ``kept_graphs``).

    >>> check_grad_config("adjoint", 4)
    """
    check_choice("distill.grad_mode", grad_mode, GRAD_MODES)
    if isinstance(kept_graphs, bool) or not isinstance(kept_graphs, int) or kept_graphs < 1:
        raise ConfigError(f"distill.kept_graphs must be an integer >= 1, got {kept_graphs!r} "
                          "(1 keeps only the last step's graph: the adjoint mode's least memory)")
    if kept_graphs != 1 and grad_mode != "adjoint":
        raise ConfigError(f"distill.kept_graphs={kept_graphs} needs distill.grad_mode=adjoint: "
                          "the unrolled student keeps every step's graph already.")
    if micro_batch is None:
        return
    if micro_batch < 1:
        raise ConfigError(f"distill.micro_batch must be >= 1 or null, got {micro_batch}")
    if grad_mode != "adjoint":
        raise ConfigError(f"distill.micro_batch={micro_batch} needs distill.grad_mode=adjoint: "
                          "the unrolled graph keeps every chunk's activations until the end "
                          "of the iteration, so chunking would save no memory there.")
