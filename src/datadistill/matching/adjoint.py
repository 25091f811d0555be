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
  anyway.

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

Example:
    >>> traj = student_trajectory(forward, theta0, images, labels, syn_lr, syn_steps=20,
    ...                           dsa=DSA(), generator=g)                   # doctest: +SKIP
    >>> theta_n = traj.final.requires_grad_()                               # doctest: +SKIP
    >>> loss = matching_loss(theta_n, theta0, target)                       # doctest: +SKIP
    >>> (lam,) = torch.autograd.grad(loss, theta_n)                         # doctest: +SKIP
    >>> grads = adjoint_backward(forward, traj, images, labels, syn_lr, lam,
    ...                          dsa=DSA())                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from datadistill import distributed
from datadistill.config import check_choice
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.labels import is_soft
from datadistill.matching.student import BatchSampler, ForwardFn, LossFn, label_loss


@dataclass
class StepRecord:
    """What replays one student step exactly: its mini-batch and its DSA draw."""

    idx: torch.Tensor  # (b,) int64 indices of the mini-batch, on the images' device
    draw: object | None  # datadistill.data.augment.AugDraw for all b images, or None (no DSA)


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
    # the last step's graph, kept from the forward pass when that step is one chunk: the
    # backward pass starts there, so it uses it instead of rebuilding it (once; then None)
    kept: _Graph | None = None

    @property
    def final(self) -> torch.Tensor:
        """(P,) theta_N, detached (make it a leaf with ``requires_grad_`` for lambda_N)."""
        return self.thetas.last

    def close(self) -> None:
        """Free the snapshots (a spilled trajectory's temporary file) and a kept graph."""
        self.thetas.close()
        self.kept = None

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


@dataclass(frozen=True)
class _Chunk:
    rows: slice  # positions within the step's mini-batch
    weight: float  # |chunk| / batch: the chunk's share of the batch-mean loss


def _chunks(batch: int, micro_batch: int | None, rank: int = 0,
            world: int = 1) -> list[_Chunk]:
    """This rank's share of the step's mini-batch, as consecutive chunks of <= ``micro_batch``.

    Under ``world`` processes rank r takes the r-th of ``world`` consecutive parts of the batch
    (sizes differ by at most one; a part may be empty when batch < world); one process takes
    the whole batch. Each chunk keeps its weight |chunk| / batch, so the ranks' partial sums
    add up to the step's gradient and products.
    """
    lo, hi = rank * batch // world, (rank + 1) * batch // world
    if hi <= lo:
        return []
    size = hi - lo if micro_batch is None else min(micro_batch, hi - lo)
    return [_Chunk(slice(s, min(s + size, hi)), (min(s + size, hi) - s) / batch)
            for s in range(lo, hi, size)]


def _ranks() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun; (0, 1) when single."""
    return distributed.rank(), distributed.world_size()


def _chunk_batch(images: torch.Tensor, labels: torch.Tensor, rec: StepRecord, chunk: _Chunk,
                 dsa, need_grad: bool):
    """(x leaf, augmented x, y leaf) of one chunk; leaves are fresh (K, ...) tensors."""
    rows = rec.idx[chunk.rows]
    x = images.detach()[rows].requires_grad_(need_grad)  # (K, C, H, W)
    y = labels.detach()[rows]  # (K,) or (K, K_cls)
    if need_grad and is_soft(labels):
        y.requires_grad_(True)
    xa = x if rec.draw is None else dsa.apply(x, rec.draw.select(chunk.rows))
    return x, xa, y


def _chunk_grad(forward: ForwardFn, loss_fn: LossFn, theta: torch.Tensor, xa: torch.Tensor,
                y: torch.Tensor, weight: float, create_graph: bool) -> torch.Tensor:
    """(P,) gradient of the chunk's weighted loss w.r.t. theta (a leaf)."""
    ce = loss_fn(forward(theta, xa), y)
    if weight != 1.0:  # without chunks g_i is exactly the unrolled student's gradient
        ce = ce * weight
    (g,) = torch.autograd.grad(ce, theta, create_graph=create_graph)
    return g


@dataclass
class _Graph:
    """One chunk of a step with its graph: g (P,) = d(weighted loss)/d theta, create_graph."""

    theta: torch.Tensor  # (P,) leaf theta_i
    x: torch.Tensor  # (K, C, H, W) leaf rows of the images
    y: torch.Tensor  # (K,) or (K, K_cls) rows of the labels (a leaf when soft)
    g: torch.Tensor  # (P,) attached to the graph of theta, x (and y)


def _build(forward: ForwardFn, loss_fn: LossFn, theta: torch.Tensor, images, labels,
           rec: StepRecord, chunk: _Chunk, dsa) -> _Graph:
    """Chunk ``chunk`` of step ``rec`` at the leaf ``theta``, differentiable twice."""
    with torch.enable_grad():  # also under a caller's no_grad: DSA is part of the graph
        x, xa, y = _chunk_batch(images, labels, rec, chunk, dsa, need_grad=True)
        g = _chunk_grad(forward, loss_fn, theta, xa, y, chunk.weight, True)
    return _Graph(theta, x, y, g)


def _kept_step(forward: ForwardFn, loss_fn: LossFn, theta: torch.Tensor, images, labels,
               rec: StepRecord, chunk: _Chunk, dsa, world: int) -> tuple[torch.Tensor, _Graph]:
    """(g_i, its graph) of a step that is one chunk (on this rank): the last step of the
    forward pass, whose graph the backward pass would otherwise rebuild at once."""
    graph = _build(forward, loss_fn, theta.detach().requires_grad_(True), images, labels, rec,
                   chunk, dsa)
    g = graph.g.detach()  # the same values as the first-order gradient without a graph
    if world == 1:
        return g, graph
    return distributed.all_reduce_sum_(g.clone()), graph  # the graph keeps this rank's part


def _step_gradient(forward: ForwardFn, loss_fn: LossFn, theta: torch.Tensor,
                   images: torch.Tensor, labels: torch.Tensor, rec: StepRecord, dsa,
                   micro_batch: int | None, rank: int = 0, world: int = 1) -> torch.Tensor:
    """(P,) g_i at theta_i, summed over the chunks (and over the ranks); no graph is kept.

    Under several processes each rank sums its own chunks and the partial sums are
    all-reduced, so every rank takes the same step.
    """
    theta = theta.detach().requires_grad_(True)
    g = None
    for chunk in _chunks(len(rec.idx), micro_batch, rank, world):
        _, xa, y = _chunk_batch(images, labels, rec, chunk, dsa, need_grad=False)
        with torch.enable_grad():
            gc = _chunk_grad(forward, loss_fn, theta, xa, y, chunk.weight, False)
        g = gc if g is None else g.add_(gc)
    if world == 1:
        return g
    g = torch.zeros_like(theta.detach()) if g is None else g  # an empty share adds nothing
    return distributed.all_reduce_sum_(g)


def student_trajectory(forward: ForwardFn, theta0: torch.Tensor, images: torch.Tensor,
                       labels: torch.Tensor, syn_lr: torch.Tensor, *, syn_steps: int,
                       batch_syn: int | None = None, dsa=None,
                       generator: torch.Generator | None = None,
                       loss_fn: LossFn | None = None,
                       micro_batch: int | None = None,
                       snapshots: str = "memory") -> Trajectory:
    """Forward pass of adjoint mode: the N student steps without a graph, recorded.

    Arguments as :func:`datadistill.matching.unroll_student` (same draws from ``generator``,
    in the same order), plus ``micro_batch`` (chunk size within a step; None = whole batch)
    and ``snapshots`` ("memory" or "spill", see :class:`SnapshotStore`). On an error the
    store is closed before the error propagates.

    Example:
        >>> traj = student_trajectory(forward, theta0, x, y, syn_lr, syn_steps=5)  # doctest: +SKIP
        >>> len(traj.thetas), len(traj.steps)                                     # doctest: +SKIP
        (6, 5)
    """
    loss_fn = loss_fn or label_loss(labels)
    sampler = BatchSampler(images.shape[0], batch_syn, generator)
    alpha = syn_lr.detach()
    rank, world = _ranks()
    traj = Trajectory(SnapshotStore(snapshots), [])
    traj.thetas.append(theta0)
    try:
        for i in range(syn_steps):
            idx = sampler.next().to(images.device)
            draw = None if dsa is None else dsa.sample(len(idx), tuple(images.shape[-2:]),
                                                       generator)
            rec = StepRecord(idx, draw)
            theta = traj.thetas.last
            chunks = _chunks(len(idx), micro_batch, rank, world)
            if i == syn_steps - 1 and len(chunks) == 1:  # one step's graph, as the backward's
                g, traj.kept = _kept_step(forward, loss_fn, theta, images, labels, rec,
                                          chunks[0], dsa, world)
            else:
                g = _step_gradient(forward, loss_fn, theta, images, labels, rec, dsa,
                                   micro_batch, rank, world)
            traj.thetas.append(theta - alpha * g)  # (P,) as the unrolled update
            traj.steps.append(rec)
    except BaseException:
        traj.close()
        raise
    return traj


@dataclass
class _Sums:
    """Accumulators of the backward pass."""

    images: torch.Tensor  # (N_syn, C, H, W)
    labels: torch.Tensor | None  # (N_syn, K) or None
    syn_lr: torch.Tensor  # ()


def _step_vjp(forward: ForwardFn, loss_fn: LossFn, theta: torch.Tensor, images, labels,
              rec: StepRecord, alpha: torch.Tensor, lam: torch.Tensor, sums: _Sums, dsa,
              micro_batch: int | None, rank: int = 0, world: int = 1,
              kept: _Graph | None = None, first: bool = False) -> torch.Tensor | None:
    """Rebuild step i chunk by chunk; accumulate into ``sums``; return lambda_i.

    ``kept``: the step's one chunk with its graph from the forward pass (not rebuilt).
    ``first`` (step 0): lambda_0 is not needed (theta_0 is a constant), so the product leaves
    theta out, nothing is reduced and None is returned.

    Under several processes the rank's chunks give a partial H_i lambda_{i+1}, all-reduced
    here (lambda_i is needed by every rank at the next step); the partial sums of the images,
    labels and step size stay per rank until the end of the backward pass.
    """
    theta = theta.detach().requires_grad_(True) if kept is None else kept.theta
    v = -alpha * lam  # (P,) adjoint of g_i, since theta_{i+1} = theta_i - alpha g_i
    # single: lambda_i accumulated in place; several: the rank's share of -alpha H lambda
    lam_prev = None if first else lam.clone() if world == 1 else torch.zeros_like(lam)
    soft = is_soft(labels)
    chunks = _chunks(len(rec.idx), micro_batch, rank, world)
    if kept is not None and len(chunks) != 1:
        raise ValueError(f"a kept graph is one chunk, but this step has {len(chunks)}")
    for chunk in chunks:
        graph = kept or _build(forward, loss_fn, theta, images, labels, rec, chunk, dsa)
        inputs = ([] if first else [theta]) + [graph.x] + ([graph.y] if soft else [])
        with torch.enable_grad():
            outs = list(torch.autograd.grad(graph.g, inputs, grad_outputs=v,
                                            allow_unused=True))
        rows = rec.idx[chunk.rows]
        if not first:
            _add(lam_prev, outs.pop(0))
        _add(sums.images, outs[0], rows)
        if soft:
            _add(sums.labels, outs[1], rows)
        sums.syn_lr -= (graph.g.detach() * lam).sum()  # -g_i . lambda_{i+1}, chunk by chunk
    if first or world == 1:
        return lam_prev
    return distributed.all_reduce_sum_(lam_prev).add_(lam)


def _add(acc: torch.Tensor, value: torch.Tensor | None, rows: torch.Tensor | None = None):
    """acc += value (at ``rows`` of dim 0 when given); None (no dependence) adds nothing."""
    if value is None:
        return
    if rows is None:
        acc.add_(value)
    else:
        acc.index_add_(0, rows, value)


def adjoint_backward(forward: ForwardFn, traj: Trajectory, images: torch.Tensor,
                     labels: torch.Tensor, syn_lr: torch.Tensor, lam: torch.Tensor, *,
                     dsa=None, loss_fn: LossFn | None = None,
                     micro_batch: int | None = None) -> AdjointGrads:
    """Backward pass of adjoint mode: dL/d(images, syn_lr, soft labels) from lambda_N.

    Args:
        forward, images, labels, syn_lr, dsa, loss_fn, micro_batch: as given to
            :func:`student_trajectory` for ``traj`` (the values must be unchanged).
        traj: the recorded forward pass.
        lam: (P,) lambda_N = dL/dtheta_N of the matching loss.

    Returns:
        :class:`AdjointGrads`; ``labels`` is None for hard labels.

    Example:
        >>> g = adjoint_backward(forward, traj, x, y, syn_lr, lam)        # doctest: +SKIP
        >>> g.images.shape == x.shape                                     # doctest: +SKIP
        True
    """
    loss_fn = loss_fn or label_loss(labels)
    alpha = syn_lr.detach()
    rank, world = _ranks()
    sums = _Sums(torch.zeros_like(images, memory_format=torch.contiguous_format),
                 torch.zeros_like(labels) if is_soft(labels) else None,
                 torch.zeros((), dtype=lam.dtype, device=lam.device))
    kept, traj.kept = traj.kept, None  # used once: a second backward rebuilds every step
    for i in range(len(traj.steps) - 1, -1, -1):  # lam: lambda_{i+1} -> lambda_i
        lam = _step_vjp(forward, loss_fn, traj.thetas[i], images, labels, traj.steps[i], alpha,
                        lam, sums, dsa, micro_batch, rank, world,
                        kept if i == len(traj.steps) - 1 else None, first=i == 0)
        kept = None  # its graph is freed by the product above
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


def check_grad_config(grad_mode: str, micro_batch: int | None) -> None:
    """The grad axis of a distillation config (``distill.grad_mode`` and ``micro_batch``).

    >>> check_grad_config("adjoint", 4)
    """
    check_choice("distill.grad_mode", grad_mode, GRAD_MODES)
    if micro_batch is None:
        return
    if micro_batch < 1:
        raise ConfigError(f"distill.micro_batch must be >= 1 or null, got {micro_batch}")
    if grad_mode != "adjoint":
        raise ConfigError(f"distill.micro_batch={micro_batch} needs distill.grad_mode=adjoint: "
                          "the unrolled graph keeps every chunk's activations until the end "
                          "of the iteration, so chunking would save no memory there.")
