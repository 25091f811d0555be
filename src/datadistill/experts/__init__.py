"""Expert trajectories (MTT, Cazenavette et al., CVPR 2022, Sec. 3.1): training and the store.

    train_experts(cfg, data, out_dir)        -> ExpertStore   (resumable, one file per expert)
    ExpertStore(directory)                   .load(i) -> (E+1, P), .epoch_pair, .meta
    import_replay_buffers(files, out_dir, cfg) -> ExpertStore   (official replay_buffer_{n}.pt)

Strategy modules for the presets live beside them: ``gsam`` (FTD's flat experts),
``curriculum`` and ``difficulty`` (PAD's per-epoch data selection).

Example:
    >>> store = train_experts(ExpertConfig(dataset="digits", num_experts=2, epochs=3),
    ...                       prepare("digits"), "runs/digits/experts")     # doctest: +SKIP
"""

from datadistill.experts.legacy import import_replay_buffers
from datadistill.experts.store import FORMAT_VERSION, ExpertStore, expert_path
from datadistill.experts.train import (
    ExpertConfig,
    ExpertSection,
    expert_seeds,
    train_experts,
    train_one_expert,
)

__all__ = [
    "FORMAT_VERSION",
    "ExpertConfig",
    "ExpertSection",
    "ExpertStore",
    "expert_path",
    "expert_seeds",
    "import_replay_buffers",
    "train_experts",
    "train_one_expert",
]
