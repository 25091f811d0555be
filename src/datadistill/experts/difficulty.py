"""Per-sample difficulty scores and the per-class easiest-first order used by PAD's scheduler.

PAD (Li, Guo et al., arXiv 2408.03360, section 3.1) ranks the real training samples by a
difficulty score and trains the experts on an easy-to-hard schedule
(``datadistill.experts.curriculum``). The official repository ships only the resulting index
files (``data_indices/{CIFAR10,CIFAR100,TinyImageNet}_GraNd.pt``: int64 [C, n], row c = the
train indices of class c, easiest first) and never computes scores; the paper names EL2N,
the files GraNd (research note trajectory-matching.md section 5.1). Both scorers are here:

- EL2N (Paul et al., NeurIPS 2021, eq. 2): ||softmax(f(x)) - onehot(y)||_2;
- GraNd (Paul et al., eq. 1, restricted to the last layer as in DeepCore): the l2 norm of the
  per-sample gradient of the cross-entropy w.r.t. the classifier's weight and bias. With
  h the classifier input, that gradient is (p - y) h^T and (p - y), so its norm is
  ||p - y||_2 * sqrt(||h||^2 + 1) (no "+ 1" without a bias); computed in closed form.

Each score is averaged over ``num_models`` networks (DeepCore ``repeat`` = 10) trained briefly
from independent random inits (constant-lr SGD, ``epochs`` epochs). Higher = harder.

Example:
    >>> scores = el2n_scores(x, y, model_fn=lambda: nn.Linear(4, 3),
    ...                      training=BriefTraining(num_models=2, epochs=1),
    ...                      generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
    >>> order = difficulty_order(scores, y, num_classes=3)                  # doctest: +SKIP
    >>> save_difficulty(order, "cifar10_el2n.pt")                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from datadistill.errors import ArtifactError, CompatibilityError, ConfigError
from datadistill.io import save_tensors
from datadistill.runtime.progress import progress_bar
from datadistill.training import FitHooks, FitOptions, fit, images_only, seeded

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ScoreFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DifficultyOrder:
    """Per-class dataset indices sorted easiest first, with the scores that produced them.

    ``indices[c]`` is an int64 (n_c,) tensor; classes may differ in size. ``scores`` is (N,)
    (higher = harder) or None for imported official orders.
    """

    indices: list[torch.Tensor]
    scores: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.indices)

    @property
    def class_sizes(self) -> list[int]:
        return [int(t.numel()) for t in self.indices]

    def validate(self, labels: torch.Tensor) -> None:
        """Raise CompatibilityError unless every row holds distinct indices of its own class.

        Catches orders computed for another dataset, split or sample ordering.
        """
        n = int(labels.numel())
        seen = torch.zeros(n, dtype=torch.bool)
        for c, idx in enumerate(self.indices):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise CompatibilityError(
                    f"difficulty order row {c} has indices outside [0, {n}); it was made for "
                    "another dataset or split. Recompute it with el2n_scores/grand_scores.")
            if bool((labels[idx] != c).any()):
                raise CompatibilityError(
                    f"difficulty order row {c} contains samples of other classes; the dataset "
                    "order or class mapping differs from the one it was made for. Recompute it.")
            if bool(seen[idx].any()) or len(torch.unique(idx)) != idx.numel():
                raise CompatibilityError(f"difficulty order row {c} repeats sample indices.")
            seen[idx] = True


def sort_by_difficulty(scores: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> list[torch.Tensor]:
    """Per-class indices sorted by ascending score (easiest first); ties keep index order.

    Example:
        >>> sort_by_difficulty(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([0, 1, 0]), 2)
        [tensor([2, 0]), tensor([1])]
    """
    if scores.shape != labels.shape:
        raise ConfigError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} "
                          "must both be (N,).")
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()  # (n_c,) ascending
        order = torch.sort(scores[idx], stable=True).indices
        out.append(idx[order].long())
    return out


def difficulty_order(scores: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     meta: dict[str, Any] | None = None) -> DifficultyOrder:
    """A :class:`DifficultyOrder` from (N,) scores and labels."""
    return DifficultyOrder(sort_by_difficulty(scores, labels, num_classes),
                           scores.detach().float().cpu(), dict(meta or {}))


@dataclass(frozen=True)
class BriefTraining:
    """How each scoring network is trained before it scores: ``num_models`` networks,
    ``epochs`` epochs of SGD at constant ``lr`` with cross-entropy (DeepCore's defaults),
    each batch optionally augmented with ``augment(x, generator=)`` (e.g. a
    :class:`datadistill.data.augment.DSA`). ``epochs=0`` scores at initialisation."""

    num_models: int = 10
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: Callable[..., torch.Tensor] | None = None


def el2n_scores(images: torch.Tensor, labels: torch.Tensor, *,
                model_fn: Callable[[], nn.Module], **kwargs: Any) -> torch.Tensor:
    """EL2N (N,): ||softmax(f(x)) - onehot(y)||_2 averaged over briefly trained networks.

    Keyword arguments are those of :func:`average_scores` (training, generator, ...).
    """
    return average_scores(images, labels, model_fn=model_fn, score_fn=el2n, **kwargs)


def grand_scores(images: torch.Tensor, labels: torch.Tensor, *,
                 model_fn: Callable[[], nn.Module], **kwargs: Any) -> torch.Tensor:
    """Last-layer GraNd (N,) averaged over briefly trained networks (see module docstring)."""
    return average_scores(images, labels, model_fn=model_fn, score_fn=grand, **kwargs)


def average_scores(images: torch.Tensor, labels: torch.Tensor, *,
                   model_fn: Callable[[], nn.Module], score_fn: ScoreFn,
                   training: BriefTraining = BriefTraining(),
                   generator: torch.Generator | None = None,
                   device: str | torch.device = "cpu", progress: bool = False) -> torch.Tensor:
    """Mean of ``score_fn(net, images, labels)`` over ``training.num_models`` briefly trained
    nets.

    Each net comes from ``model_fn()`` under a seed drawn from ``generator`` (the global RNG
    state is restored afterwards) and is trained as ``training`` says (:class:`BriefTraining`).
    """
    if training.num_models < 1:
        raise ConfigError(f"num_models must be >= 1, got {training.num_models}; DeepCore uses "
                          "10.")
    total = torch.zeros(len(labels), dtype=torch.float64)
    for _ in progress_bar(range(training.num_models), enabled=progress, desc="difficulty",
                          leave=False, stage=True):
        net = _build(model_fn, generator).to(device)
        _train_briefly(net, images, labels, training, generator, device)
        total += _batched_scores(net, images, labels, score_fn, training.batch_size,
                                 device).double()
    return (total / training.num_models).float()


def el2n(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample EL2N of one network on one batch: (B,)."""
    with torch.no_grad():
        logits = net(x)  # (B, K)
        err = F.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return err.norm(dim=1)


def grand(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample norm of the CE gradient w.r.t. the last nn.Linear (weight and bias): (B,)."""
    fc = _last_linear(net)
    captured: list[torch.Tensor] = []
    hook = fc.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits = net(x)  # (B, K)
    finally:
        hook.remove()
    h = captured[-1].reshape(len(x), -1)  # (B, D) classifier input
    err = F.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
    extra = 1.0 if fc.bias is not None else 0.0
    return err.norm(dim=1) * torch.sqrt(h.pow(2).sum(dim=1) + extra)


def _last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("GraNd needs a model whose classifier is an nn.Linear; use EL2N.")
    return linears[-1]


def _build(model_fn: Callable[[], nn.Module], generator: torch.Generator | None) -> nn.Module:
    """model_fn() under a seed drawn from ``generator``, without touching the global RNG."""
    if generator is None:
        return model_fn()
    return seeded(model_fn, int(torch.randint(0, 2**62, (1,), generator=generator)))


def _train_briefly(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   training: BriefTraining, generator: torch.Generator | None,
                   device: str | torch.device) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=training.lr, momentum=training.momentum,
                          weight_decay=training.weight_decay)
    fit(net, images, labels, opt,
        FitOptions(epochs=training.epochs, batch_size=training.batch_size, device=device),
        FitHooks(augment=None if training.augment is None else images_only(training.augment)),
        generator=generator)


def _batched_scores(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    score_fn: ScoreFn, batch_size: int,
                    device: str | torch.device) -> torch.Tensor:
    net.eval()  # no augmentation, eval mode, as when scoring in DeepCore
    parts = [score_fn(net, images[s:s + batch_size].to(device),
                      labels[s:s + batch_size].to(device)).cpu()
             for s in range(0, len(labels), batch_size)]
    return torch.cat(parts)


def save_difficulty(order: DifficultyOrder, path: str | Path) -> Path:
    """Write ``{"format_version", "indices", "scores", "meta"}`` with torch.save (tensors only).

    ``meta`` must hold plain values (str, int, float, bool, lists, dicts) so the file loads
    with ``weights_only=True``.
    """
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION,
               "indices": [t.detach().cpu().long() for t in order.indices],
               "scores": None if order.scores is None else order.scores.detach().cpu(),
               "meta": dict(order.meta)}
    save_tensors(payload, path)  # atomic: no half-written file on interruption
    return path


def load_difficulty(path: str | Path) -> DifficultyOrder:
    """Read a file from :func:`save_difficulty`, or an official PAD ``data_indices/*.pt``."""
    obj = _safe_load(path)
    if isinstance(obj, torch.Tensor):
        return _from_official(obj, path)
    if not isinstance(obj, dict) or "indices" not in obj:
        raise ArtifactError(f"{path} is not a difficulty-order file (no 'indices'); write one "
                            "with save_difficulty or pass an official data_indices/*.pt.")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has difficulty format_version {version}, this datadistill "
                            f"reads {FORMAT_VERSION}; recompute the scores.")
    return DifficultyOrder([t.long() for t in obj["indices"]], obj.get("scores"),
                           dict(obj.get("meta") or {}))


def import_official_indices(path: str | Path) -> DifficultyOrder:
    """An official PAD index file (int64 [C, n], row c easiest first) as a DifficultyOrder."""
    obj = _safe_load(path)
    if not isinstance(obj, torch.Tensor):
        raise ArtifactError(f"{path} is not an official PAD index file (a [C, n] tensor).")
    return _from_official(obj, path)


def _from_official(t: torch.Tensor, path: str | Path) -> DifficultyOrder:
    if t.dim() != 2 or t.dtype not in (torch.int64, torch.int32):
        raise ArtifactError(
            f"{path} holds a tensor of shape {tuple(t.shape)} / {t.dtype}; PAD's scheduler "
            "needs a per-class [C, n] integer order (e.g. CIFAR10_GraNd.pt; the flat "
            "CIFAR10_ConvNet.pt cannot be sliced per class).")
    rows: Sequence[torch.Tensor] = list(t.long())
    return DifficultyOrder([r.clone() for r in rows], None,
                           {"source": str(path), "official": True})


def _safe_load(path: str | Path) -> Any:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"difficulty file {path} does not exist; check the path.") from None
    except Exception as exc:  # unpickling refused or corrupt file
        raise ArtifactError(f"cannot read difficulty file {path} safely ({exc}); it must hold "
                            "only tensors and plain values.") from exc
