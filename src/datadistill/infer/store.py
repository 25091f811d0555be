"""The INFER distilled set as stored: base images + compensators + static labels.

INFER (Zhang et al., ICLR 2025, Sec. 3.3) counts its storage as K*C real base images plus
K*M compensators (each image-sized), which fits the budget of IPC*C images because
K = int(IPC / (M/C + 1)). The training set is materialised on demand: for every group k,
class c and variant v in {base, teacher 0..M-1} the instance is x_c^k (+ u_k^m), clamped to
the valid pixel range, labelled with the teachers' mean logits (one C-vector per instance).
The official code instead writes every materialised image as a JPEG; we keep the compact form.

Files (``torch.load(weights_only=True)``, written atomically, ``meta.json`` last)::

    <dir>/infer.pt    {"base": (K, C, Ch, H, W), "compensators": (K, M, Ch, H, W),
                       "labels": (K*(M+1)*C, classes) [optional], "source_indices": (K, C)}
    <dir>/meta.json   format_version, dataset info, ipc, teachers, counts, storage, config

Example:
    >>> s = load_infer_set("runs/cifar100_infer_ipc10")                   # doctest: +SKIP
    >>> inst = s.materialise(); inst.images.shape                         # doctest: +SKIP
    torch.Size([4500, 3, 32, 32])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datadistill import __version__, distributed
from datadistill.artifacts.distilled import DistilledSet
from datadistill.data import DatasetInfo
from datadistill.errors import ArtifactError
from datadistill.io import load_tensors, read_json, save_tensors, write_json

FORMAT_VERSION = 1
TENSORS_FILE = "infer.pt"
META_FILE = "meta.json"


@dataclass
class Instances:
    """The materialised training set, class-major: class c, then group k, then variant.

    Attributes:
        images: (N, Ch, H, W) normalised, N = C * K * (M + 1).
        labels: (N,) int64 class of each instance.
        soft_labels: (N, classes) stored ensemble logits, or None before labelling.
        group: (N,) int64 class-group index k.
        variant: (N,) int64: -1 for the real base image, m for x + u_{k,m}.
    """

    images: torch.Tensor
    labels: torch.Tensor
    soft_labels: torch.Tensor | None
    group: torch.Tensor
    variant: torch.Tensor


@dataclass
class StorageReport:
    """What the stored set costs, against INFER's budget of IPC * C image-sized tensors."""

    image_units: int  # K*C base images + K*M compensators
    budget_units: int  # IPC * C
    instances: int  # K*(M+1)*C training instances they expand to
    image_bytes: int  # bytes of base images + compensators as stored
    label_values: int  # numbers in the static label table (instances * classes)
    label_bytes: int  # bytes of the static label table as stored

    @property
    def within_budget(self) -> bool:
        return self.image_units <= self.budget_units


@dataclass
class InferSet:
    """Base images, compensators and static labels of one INFER distillation.

    Example:
        >>> s = InferSet(base, comps, None, info, 10, ["resnet18_cifar"])  # doctest: +SKIP
        >>> s.storage().image_units <= 10 * info.num_classes             # doctest: +SKIP
        True
    """

    base: torch.Tensor  # (K, C, Ch, H, W) normalised real images, base[k, c] of class c
    compensators: torch.Tensor  # (K, M, Ch, H, W), u_{k,m} shared by all classes of group k
    labels: torch.Tensor | None  # (K*(M+1)*C, classes) logits in materialise() order
    info: DatasetInfo
    ipc: int  # the nominal budget this set was made for
    teachers: list[str]  # architecture of compensator m, in order
    source_indices: torch.Tensor | None = None  # (K, C) positions in the training split
    config: dict | None = None  # resolved InferConfig
    extra: dict = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return int(self.base.shape[0])

    @property
    def num_teachers(self) -> int:
        return int(self.compensators.shape[1])

    @property
    def instances_per_class(self) -> int:
        return self.num_groups * (self.num_teachers + 1)

    def materialise(self) -> Instances:
        """Expand to the K*(M+1)*C instances x_c^k + u_{k,m} (and the base images), clamped to
        the normalised image of [0, 1] pixels."""
        k, c, m = self.num_groups, self.info.num_classes, self.num_teachers
        zero = torch.zeros_like(self.compensators[:, :1])  # (K, 1, Ch, H, W): the base variant
        u = torch.cat([zero, self.compensators], 1)  # (K, M+1, Ch, H, W)
        x = self.base[:, :, None] + u[:, None]  # (K, C, M+1, Ch, H, W)
        lo, hi = _pixel_bounds(self.info, x)
        x = torch.clamp(x, lo, hi).transpose(0, 1).reshape(c * k * (m + 1), *x.shape[3:])
        per_class = k * (m + 1)
        return Instances(
            images=x,
            labels=torch.arange(c).repeat_interleave(per_class),
            soft_labels=self.labels,
            group=torch.arange(k).repeat_interleave(m + 1).repeat(c),
            variant=torch.arange(-1, m).repeat(c * k),
        )

    def storage(self) -> StorageReport:
        """Stored image-units and label-table size against the IPC budget."""
        k, c, m = self.num_groups, self.info.num_classes, self.num_teachers
        images = self.base.numel() * self.base.element_size()
        images += self.compensators.numel() * self.compensators.element_size()
        labels = self.labels if self.labels is not None else torch.empty(0)
        return StorageReport(
            image_units=k * c + k * m,
            budget_units=self.ipc * c,
            instances=k * (m + 1) * c,
            image_bytes=images,
            label_values=labels.numel(),
            label_bytes=labels.numel() * labels.element_size(),
        )

    def to_distilled(self) -> DistilledSet:
        """The materialised set as a :class:`DistilledSet` with soft (logit) labels, for the
        classic evaluation and exports. It no longer fits the budget as stored."""
        inst = self.materialise()
        if inst.soft_labels is None:
            raise ArtifactError("this INFER set has no labels yet; compute them first")
        extra = {
            **self.extra,
            "num_groups": self.num_groups,
            "teachers": list(self.teachers),
            "instances_per_class": self.instances_per_class,
        }
        return DistilledSet(
            images=inst.images,
            labels=inst.soft_labels.clone(),
            lr=None,
            info=self.info,
            space="normalized",
            ipc=self.ipc,
            method="infer",
            config=self.config,
            extra=extra,
        )


def _pixel_bounds(info: DatasetInfo, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel normalised images of raw 0 and 1, shaped (Ch, 1, 1) like ``like``."""
    mean = torch.tensor(info.mean, dtype=like.dtype, device=like.device)[:, None, None]
    std = torch.tensor(info.std, dtype=like.dtype, device=like.device)[:, None, None]
    return -mean / std, (1 - mean) / std


def save_infer_set(s: InferSet, directory: str | Path) -> Path:
    """Write ``infer.pt`` then ``meta.json`` into ``directory``; returns the directory."""
    directory = Path(directory)
    tensors = {"base": s.base.detach().cpu(), "compensators": s.compensators.detach().cpu()}
    if s.labels is not None:
        tensors["labels"] = s.labels.detach().cpu()
    if s.source_indices is not None:
        tensors["source_indices"] = s.source_indices.detach().cpu()
    save_tensors(tensors, directory / TENSORS_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "infer_set",
        "method": "infer",
        "info": dataclasses.asdict(s.info),
        "ipc": s.ipc,
        "teachers": list(s.teachers),
        "num_groups": s.num_groups,
        "num_teachers": s.num_teachers,
        "instances_per_class": s.instances_per_class,
        "space": "normalized",
        "storage": dataclasses.asdict(s.storage()),
        "file_bytes": (directory / TENSORS_FILE).stat().st_size,
        "config": s.config,
        "extra": s.extra,
        "version": __version__,
        **distributed.metadata(),
    }
    write_json(meta, directory / META_FILE)
    return directory


def load_infer_set(directory: str | Path) -> InferSet:
    """Read a set written by :func:`save_infer_set` (tensors with weights_only=True)."""
    directory = Path(directory)
    meta = read_json(directory / META_FILE)
    if meta.get("kind") != "infer_set" or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} is not an INFER set of format {FORMAT_VERSION} (kind "
            f"{meta.get('kind')!r}, format {meta.get('format_version')}); "
            "re-run `datadistill infer`"
        )
    tensors = load_tensors(directory / TENSORS_FILE)
    info = DatasetInfo(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["info"].items()}
    )
    s = InferSet(
        base=tensors["base"],
        compensators=tensors["compensators"],
        labels=tensors.get("labels"),
        info=info,
        ipc=meta["ipc"],
        teachers=meta["teachers"],
        source_indices=tensors.get("source_indices"),
        config=meta.get("config"),
        extra=meta.get("extra", {}),
    )
    _check_shapes(s, directory)
    return s


def _check_shapes(s: InferSet, where: Path) -> None:
    k, c = s.num_groups, s.info.num_classes
    shape = (s.info.channels, *s.info.image_size)
    ok = s.base.dim() == 5 and tuple(s.base.shape[1:]) == (c, *shape)
    ok = ok and tuple(s.compensators.shape) == (k, len(s.teachers), *shape)
    n = k * (len(s.teachers) + 1) * c
    ok = ok and (s.labels is None or tuple(s.labels.shape) == (n, c))
    if not ok:
        raise ArtifactError(
            f"{where}: tensor shapes do not match meta.json (base {tuple(s.base.shape)}, "
            f"compensators {tuple(s.compensators.shape)}); the files are from different runs, "
            "re-run `datadistill infer`"
        )
