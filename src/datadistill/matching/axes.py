"""The strategy axes of trajectory matching: one typed group of ``distill`` keys per axis.

MTT, FTD, DATM, M-DATM and PAD share one loop and differ along a few independent axes. Each
axis is a small dataclass holding the keys that switch it, with a ``check()`` (run when it is
built) that calls the validator living beside the axis's math;
:class:`datadistill.tm.config.DistillSection` holds one of each as a nested section
(``cfg.window``, ``cfg.labels``, ``cfg.mask``, ``cfg.ema``, ``cfg.grad``):

=========  ===============================================  ======================  ========
axis       keys (``distill.<key>``)                          math and validator      methods
=========  ===============================================  ======================  ========
window     expert_epochs, max_start_epoch, min_start_epoch,  ``matching/window.py``  DATM
           window, current_max_start_epoch, expansion_end
labels     label_mode, lr_y, momentum_y                      ``soft_labels.py``      DATM/PAD
mask       param_mask, param_mask_ratio                      ``masks.py``            PAD
ema        ema_decay                                         ``ema.py``              FTD
grad       grad_mode, micro_batch, snapshots, fast_student,  ``adjoint.py``          (any)
           memory_check
=========  ===============================================  ======================  ========

The keys are spelt flat wherever a config is written (``distill.grad_mode=adjoint``, as in
every YAML, checkpoint and saved config): one alias table maps each flat key to its nested
path (:func:`datadistill.config.key_aliases`), so what users write and what runs have saved
keeps its meaning. A new axis is one dataclass here, its validator beside its math, and one
``flat_section`` field more of ``DistillSection``.

Example:
    >>> WindowAxis(window="expanding", current_max_start_epoch=10, expansion_end=100).window
    'expanding'
    >>> GradAxis(micro_batch=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    datadistill.errors.ConfigError: distill.micro_batch=4 needs distill.grad_mode=adjoint: ...
"""

from __future__ import annotations

from dataclasses import dataclass

from datadistill.config import check_choice
from datadistill.errors import ConfigError
from datadistill.matching.adjoint import SNAPSHOT_MODES, check_grad_config
from datadistill.matching.ema import check_ema_config
from datadistill.matching.masks import check_mask_config
from datadistill.matching.soft_labels import check_labels_config
from datadistill.matching.window import check_window_config


def check_at_least(axis: object, names: tuple[str, ...], minimum: int) -> None:
    """ConfigError naming the first of ``names`` whose value on ``axis`` is below ``minimum``."""
    for name in names:
        if getattr(axis, name) < minimum:
            raise ConfigError(f"distill.{name} must be >= {minimum}, got {getattr(axis, name)}")


class Axis:
    """A strategy axis: a dataclass of ``distill`` keys whose ``check()`` validates them."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        raise NotImplementedError


@dataclass
class WindowAxis(Axis):
    """Which stretch of an expert trajectory is matched: start t ~ U[T-, T+), target t + M."""

    expert_epochs: int = 3  # M: target = start epoch + M
    max_start_epoch: int = 25  # T+: start epoch ~ U[min_start_epoch, T+)
    min_start_epoch: int = 0  # T-: lower end of the window (DATM)
    window: str = "fixed"  # fixed (MTT) | expanding upper bound (DATM)
    current_max_start_epoch: int | None = None  # T: initial upper bound of window=expanding
    expansion_end: int | None = None  # iteration at which the upper bound reaches T+

    def check(self) -> None:
        check_at_least(self, ("expert_epochs", "max_start_epoch"), 1)
        check_at_least(self, ("min_start_epoch",), 0)
        check_window_config(self.window, min_start=self.min_start_epoch,
                            max_start=self.max_start_epoch,
                            current_max_start=self.current_max_start_epoch,
                            expansion_end=self.expansion_end)


@dataclass
class LabelAxis(Axis):
    """What the synthetic labels are: hard class indices, or learnable (N, K) logits."""

    label_mode: str = "hard"  # hard (MTT) | soft: learnable (N, K) logits (DATM/PAD)
    lr_y: float = 2.0  # SGD lr on soft labels (DATM: 2-10); label_mode=soft only
    momentum_y: float = 0.9  # SGD momentum on soft labels (DATM: 0.9)

    def check(self) -> None:
        check_labels_config(self.label_mode)


@dataclass
class MaskAxis(Axis):
    """Which entries of the flat parameters count in the matching loss (PAD)."""

    param_mask: str = "none"  # none | depth | loss: entries kept in the loss (PAD)
    param_mask_ratio: float = 0.0  # fraction of the flat parameters dropped by param_mask

    def check(self) -> None:
        check_mask_config(self.param_mask)


@dataclass
class EmaAxis(Axis):
    """An exponential moving average of the images, saved and evaluated beside them (FTD)."""

    # Updated only when the images are (a threshold skip skips it too; distill.py docstring).
    ema_decay: float | None = None

    def check(self) -> None:
        check_ema_config(self.ema_decay)


@dataclass
class GradAxis(Axis):
    """How dL/d(images, step size, soft labels) is taken through the N student steps, and
    what memory that takes."""

    # "unrolled" (the official way) keeps the graph of all steps, memory ~ syn_steps x batch;
    # "adjoint" replays one step at a time backwards (matching/adjoint.py), memory ~ one
    # step: the same gradient up to rounding, and the same random draws.
    grad_mode: str = "unrolled"  # unrolled | adjoint
    # Adjoint mode only: each step's mini-batch runs in chunks of this many images (memory ~
    # micro_batch images' activations); exact unless the student couples samples (BatchNorm).
    micro_batch: int | None = None
    # Adjoint mode only: theta_0 ... theta_N stay in "memory" or are "spill"ed (temporary
    # file on CPU, host memory on CUDA): bitwise the same gradients, memory flat in syn_steps.
    snapshots: str = "spill"
    # Adjoint mode only: the forward pass keeps the graphs of the last kept_graphs steps (each
    # one chunk) for the backward pass instead of rebuilding them: bitwise the same gradients,
    # kept_graphs - 1 more step graphs in memory, that many fewer extra passes.
    kept_graphs: int = 1
    fast_student: bool = True  # hand-written ConvNet double backward (same values, faster)
    memory_check: bool = True  # refuse an unrolled run estimated above the free memory

    def check(self) -> None:
        check_choice("distill.snapshots", self.snapshots, SNAPSHOT_MODES)
        check_grad_config(self.grad_mode, self.micro_batch, self.kept_graphs)
