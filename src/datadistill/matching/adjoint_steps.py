"""One student step of adjoint mode, replayed: its gradient g_i and its vector-Jacobian product.

The kernels under :mod:`datadistill.matching.adjoint`, which records the trajectory and drives
the two passes. A step's mini-batch is cut into chunks (``micro_batch``; under torchrun, this
rank's share first), each chunk's graph is built from a fresh leaf theta_i and the step's
recorded indices and DSA draw, and the chunks' results are summed with the weight
|chunk| / batch (the loss is a mean over the batch).

Example:
    >>> replay = Replay(forward, label_loss(labels), images, labels, dsa=DSA())  # doctest: +SKIP
    >>> g = step_gradient(replay, theta, StepRecord(idx, draw))                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from datadistill import distributed
from datadistill.labels import is_soft, label_loss
from datadistill.matching.student import ForwardFn, LossFn
from datadistill.models.convnet_ops import NormValues, norm_values, weight_grad_values
from datadistill.models.winograd import FORWARD, INPUT_GRAD, kept_tiles


@dataclass
class StepRecord:
    """What replays one student step exactly: its mini-batch and its DSA draw."""

    idx: torch.Tensor  # (b,) int64 indices of the mini-batch, on the images' device
    draw: object | None  # datadistill.data.augment.AugDraw for all b images, or None (no DSA)


@dataclass(frozen=True, eq=False)
class Replay:
    """What every step of one pass shares: the student ``forward`` and ``loss_fn``, the
    synthetic ``images`` and ``labels`` (values unchanged between the passes), the ``dsa``
    whose recorded draws are applied again, the chunk size ``micro_batch`` (None: the whole
    share) and this process's ``rank`` among ``world`` (one process: 0 of 1)."""

    forward: ForwardFn
    loss_fn: LossFn
    images: torch.Tensor  # (N_syn, C, H, W)
    labels: torch.Tensor  # (N_syn,) or (N_syn, K)
    dsa: Any = None
    micro_batch: int | None = None
    rank: int = 0
    world: int = 1

    def chunks(self, batch: int) -> list[Chunk]:
        """This rank's chunks of a step's mini-batch of ``batch`` images."""
        return chunks(batch, self.micro_batch, self.rank, self.world)


@dataclass(frozen=True)
class Chunk:
    rows: slice  # positions within the step's mini-batch
    weight: float  # |chunk| / batch: the chunk's share of the batch-mean loss


def chunks(batch: int, micro_batch: int | None, rank: int = 0, world: int = 1) -> list[Chunk]:
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
    return [Chunk(slice(s, min(s + size, hi)), (min(s + size, hi) - s) / batch)
            for s in range(lo, hi, size)]


def _chunk_batch(replay: Replay, rec: StepRecord, chunk: Chunk, need_grad: bool):
    """(x leaf, augmented x, y leaf) of one chunk; leaves are fresh (K, ...) tensors."""
    rows = rec.idx[chunk.rows]
    x = replay.images.detach()[rows].requires_grad_(need_grad)  # (K, C, H, W)
    y = replay.labels.detach()[rows]  # (K,) or (K, K_cls)
    if need_grad and is_soft(replay.labels):
        y.requires_grad_(True)
    xa = x if rec.draw is None else replay.dsa.apply(x, rec.draw.select(chunk.rows))
    return x, xa, y


def _chunk_grad(replay: Replay, theta: torch.Tensor, xa: torch.Tensor, y: torch.Tensor,
                weight: float, create_graph: bool) -> torch.Tensor:
    """(P,) gradient of the chunk's weighted loss w.r.t. theta (a leaf)."""
    ce = replay.loss_fn(replay.forward(theta, xa), y)
    if weight != 1.0:  # without chunks g_i is exactly the unrolled student's gradient
        ce = ce * weight
    (g,) = torch.autograd.grad(ce, theta, create_graph=create_graph)
    return g


# what a rebuilt chunk keeps for its product (winograd.kept_tiles): its convolutions' inputs
# and the gradients its input gradients take, each read again there
REBUILD_KEEPS = (FORWARD, INPUT_GRAD)


@dataclass
class Graph:
    """One chunk of a step with its graph: g (P,) = d(weighted loss)/d theta, create_graph."""

    theta: torch.Tensor  # (P,) leaf theta_i
    x: torch.Tensor  # (K, C, H, W) leaf rows of the images
    y: torch.Tensor  # (K,) or (K, K_cls) rows of the labels (a leaf when soft)
    g: torch.Tensor  # (P,) attached to the graph of theta, x (and y)


def build(replay: Replay, theta: torch.Tensor, rec: StepRecord, chunk: Chunk,
          values: bool = True, norm: NormValues | None = None) -> Graph:
    """Chunk ``chunk`` of step ``rec`` at the leaf ``theta``, differentiable twice.

    ``values=False``: the graph only, for a step whose g the forward pass recorded; the
    ConvNet's convolutions then skip their weight-gradient kernels and ``g``'s values are not
    the gradient (:func:`datadistill.models.convnet_ops.weight_grad_values`). ``norm``: the
    norm blocks' values the forward pass recorded for this step (:func:`local_gradient`),
    which the blocks then read instead of computing them again."""
    with torch.enable_grad(), weight_grad_values(values), norm_values(norm, replay=True):
        x, xa, y = _chunk_batch(replay, rec, chunk, need_grad=True)
        g = _chunk_grad(replay, theta, xa, y, chunk.weight, True)
    return Graph(theta, x, y, g)


def kept_step(replay: Replay, theta: torch.Tensor, rec: StepRecord,
              chunk: Chunk) -> tuple[torch.Tensor, Graph]:
    """(g_i, its graph) of a step that is one chunk (on this rank): the last step of the
    forward pass, whose graph the backward pass would otherwise rebuild at once."""
    graph = build(replay, theta.detach().requires_grad_(True), rec, chunk)
    g = graph.g.detach()  # the same values as the first-order gradient without a graph
    if replay.world == 1:
        return g, graph
    return distributed.all_reduce_sum_(g.clone()), graph  # the graph keeps this rank's part


def rebuild_tile_bytes(forward: ForwardFn, theta: torch.Tensor, images: torch.Tensor,
                       labels: torch.Tensor) -> int:
    """Bytes of the tile transforms that the rebuild of one chunk of ``images`` (hard
    ``labels``) at ``theta`` keeps for its product: traced for the memory estimate."""
    replay, b = Replay(forward, label_loss(labels), images, labels), len(images)
    with kept_tiles(*REBUILD_KEEPS) as tiles:
        build(replay, theta.detach().requires_grad_(True), StepRecord(torch.arange(b), None),
              Chunk(slice(0, b), 1.0), values=False)
        return tiles.nbytes


def local_gradient(replay: Replay, theta: torch.Tensor, rec: StepRecord,
                   norm: NormValues | None = None) -> torch.Tensor | None:
    """(P,) this rank's part of g_i at theta_i, summed over its chunks (None for an empty
    share); no graph is kept. ``norm``: where the norm blocks' values are recorded (a step
    that is one chunk), for :func:`build` to read back."""
    theta = theta.detach().requires_grad_(True)
    g = None
    for chunk in replay.chunks(len(rec.idx)):
        _, xa, y = _chunk_batch(replay, rec, chunk, need_grad=False)
        with torch.enable_grad(), norm_values(norm, replay=False), kept_tiles(FORWARD):
            gc = _chunk_grad(replay, theta, xa, y, chunk.weight, False)
        g = gc if g is None else g.add_(gc)
    return g


def reduced(replay: Replay, local: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """g_i from the ranks' parts (``local`` itself in one process; else a new tensor, the
    all-reduced sum, an empty share adding nothing); ``like``: a (P,) tensor."""
    if replay.world == 1:
        return local
    g = torch.zeros_like(like.detach()) if local is None else local.clone()
    return distributed.all_reduce_sum_(g)


def step_gradient(replay: Replay, theta: torch.Tensor, rec: StepRecord) -> torch.Tensor:
    """(P,) g_i at theta_i, summed over the chunks (and over the ranks); no graph is kept.

    Under several processes each rank sums its own chunks and the partial sums are
    all-reduced, so every rank takes the same step.
    """
    return reduced(replay, local_gradient(replay, theta, rec), theta)


@dataclass
class Sums:
    """Accumulators of the backward pass."""

    images: torch.Tensor  # (N_syn, C, H, W)
    labels: torch.Tensor | None  # (N_syn, K) or None
    syn_lr: torch.Tensor  # ()


@dataclass
class Recorded:
    """What the forward pass recorded of a step that is one chunk (on this rank) and whose
    graph it did not keep: this rank's part of g_i, and the norm blocks' values taken with it
    (:func:`local_gradient`; None where none were)."""

    g: torch.Tensor  # (P,)
    norm: NormValues | None = None


def step_vjp(replay: Replay, theta: torch.Tensor, rec: StepRecord, alpha: torch.Tensor,
             lam: torch.Tensor, sums: Sums, recorded: Graph | Recorded | None = None,
             first: bool = False) -> torch.Tensor | None:
    """Rebuild step i chunk by chunk; accumulate into ``sums``; return lambda_i.

    ``recorded``, what the forward pass kept of a step that is one chunk (on this rank):
    its graph (a :class:`Graph`: not rebuilt), or this rank's part of its g_i and its norm
    values (a :class:`Recorded`: the step is rebuilt as a graph only, ``build(values=False)``,
    without the weight-gradient kernels and the norm passes whose values it has, and the step
    size's term reads this g_i, the values the rebuilt graph would have had), or None
    (rebuilt with its values).
    ``first`` (step 0): lambda_0 is not needed (theta_0 is a constant), so the product leaves
    theta out, nothing is reduced and None is returned.

    Under several processes the rank's chunks give a partial H_i lambda_{i+1}, all-reduced
    here (lambda_i is needed by every rank at the next step); the partial sums of the images,
    labels and step size stay per rank until the end of the backward pass.
    """
    world = replay.world
    kept = recorded if isinstance(recorded, Graph) else None
    g, norm = (recorded.g, recorded.norm) if isinstance(recorded, Recorded) else (None, None)
    theta = theta.detach().requires_grad_(True) if kept is None else kept.theta
    v = -alpha * lam  # (P,) adjoint of g_i, since theta_{i+1} = theta_i - alpha g_i
    # single: lambda_i accumulated in place; several: the rank's share of -alpha H lambda
    lam_prev = None if first else lam.clone() if world == 1 else torch.zeros_like(lam)
    soft = is_soft(replay.labels)
    parts = replay.chunks(len(rec.idx))
    if recorded is not None and len(parts) != 1:
        raise ValueError(f"a recorded step is one chunk, but this step has {len(parts)}")
    for chunk in parts:
        with kept_tiles(*REBUILD_KEEPS) as tiles:
            graph = kept or build(replay, theta, rec, chunk, values=g is None, norm=norm)
            tiles.roles = frozenset()  # the product's own maps are read once
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
        gc = graph.g.detach() if g is None else g
        sums.syn_lr -= (gc * lam).sum()  # -g_i . lambda_{i+1}, chunk by chunk
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
