"""Import the official MTT/FTD/DATM/PAD expert buffers into an :class:`ExpertStore`.

The official ``buffer.py`` writes ``replay_buffer_{n}.pt`` with ``torch.save`` of a list of
experts, each a list of ``epochs + 1`` snapshots, each a list of CPU tensors in
``model.parameters()`` order (research note trajectory-matching.md Sec. 1.4). Plain nested
lists of tensors load with ``torch.load(..., weights_only=True)``, so no code is unpickled.
The buffers carry no record of how they were made: the caller states dataset, model, ZCA and
the training recipe, and every tensor shape is checked against the model built from them.

Example:
    >>> files = sorted(Path("buffers/CIFAR10/ConvNet").glob("replay_buffer_*.pt"))  # doctest: +SKIP
    >>> store = import_replay_buffers(files, "runs/cifar10/experts",
    ...                               ExpertConfig(dataset="cifar10", zca=True))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from datadistill.data import dataset_info
from datadistill.errors import ArtifactError, CompatibilityError
from datadistill.experts.store import ExpertStore, save_expert, write_meta
from datadistill.experts.train import ExpertConfig, store_meta
from datadistill.io import load_error_reason
from datadistill.models.functional import param_spec
from datadistill.runtime.lock import locks_output
from datadistill.training import build_model

logger = logging.getLogger(__name__)


@locks_output("out_dir")
def import_replay_buffers(files: Sequence[str | Path], out_dir: str | Path,
                          cfg: ExpertConfig) -> ExpertStore:
    """Convert official replay buffers (in the given file order) into a store at ``out_dir``.

    ``cfg`` states what the buffers do not record: the dataset, model (``model_kwargs``), ZCA
    and how they were trained (``lr``, ``batch_size``, ``optimizer``, ``dsa_strategy``,
    ``seed``; recorded in meta.json), and the storage ``dtype``. The number of epochs and of
    experts are read from the buffers.
    """

    info = dataset_info(cfg.dataset)
    net = build_model(cfg, info)
    shapes = [tuple(s) for s in param_spec(net).shapes]
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    count, epochs = 0, None
    for path in files:
        for expert in _read_buffer(Path(path)):
            params = _flatten_expert(expert, shapes, f"{path}, expert {count}")  # (E+1, P)
            if epochs is None:
                epochs = params.shape[0] - 1
            elif params.shape[0] - 1 != epochs:
                raise CompatibilityError(f"{path}: expert {count} has {params.shape[0] - 1} "
                                         f"epochs, earlier ones {epochs}; import them apart.")
            save_expert(directory, count, params, torch.full((epochs + 1,), float("nan")),
                        cfg.dtype)
            count += 1
    if count == 0:
        raise ArtifactError(f"no experts found in {list(map(str, files))}")
    cfg = dataclasses.replace(cfg, epochs=epochs, num_experts=count)
    meta = store_meta(cfg, info, net, cfg.dsa_strategy or info.dsa_strategy)
    meta.update(config=None, produced_by=meta["produced_by"].replace(
        "train_experts", "import_replay_buffers"), source_files=[str(p) for p in files])
    write_meta(directory, meta)
    logger.info("imported %d experts of %d epochs into %s", count, epochs, directory)
    return ExpertStore(directory)


def _read_buffer(path: Path) -> list:
    try:
        buffer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(f"{path} is not a readable replay buffer ({load_error_reason(err)}); "
                            "expected torch."
                            "save of a list of experts (lists of lists of tensors).") from None
    if not isinstance(buffer, list):
        raise ArtifactError(f"{path} holds {type(buffer).__name__}, expected a list of experts")
    return buffer


def _flatten_expert(expert, shapes: list[tuple[int, ...]], where: str) -> torch.Tensor:
    """A list of epochs (lists of tensors in parameters() order) -> (E+1, P) float32."""
    if not isinstance(expert, list) or not expert:
        raise ArtifactError(f"{where}: expected a non-empty list of epoch snapshots")
    rows = []
    for e, snapshot in enumerate(expert):
        got = [tuple(t.shape) for t in snapshot] if isinstance(snapshot, list) else None
        if got != shapes:
            raise CompatibilityError(
                f"{where}, epoch {e}: parameter shapes {got} do not match the model's {shapes}; "
                "pass the dataset/model/model_kwargs the buffer was trained with.")
        rows.append(torch.cat([t.detach().float().reshape(-1) for t in snapshot]))
    return torch.stack(rows)
