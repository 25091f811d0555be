"""Method presets: each trajectory-matching method is MTT plus a documented set of overrides.

A preset is data, not code: a mapping of pipeline-config overrides (top-level keys and the
``experts`` / ``distill`` sections) that switches the distiller's strategy slots. The shipped
YAML configs hold the per-dataset, per-IPC official values; the preset holds what the method
changes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datadistill.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    paper: str
    changes: str  # one line: what differs from MTT
    overrides: dict[str, Any] = field(default_factory=dict)
    deviations: str = ""  # where our defaults differ from the official code, and why


PRESETS: dict[str, Preset] = {
    "mtt": Preset(
        name="mtt",
        paper="Cazenavette et al., Dataset Distillation by Matching Training Trajectories, "
        "CVPR 2022",
        changes="baseline: plain-SGD experts, window U[0, T+), hard labels, normalised "
        "parameter-matching loss",
        deviations="a NaN/inf loss or a non-positive learned step size stops the run with an "
        "error instead of continuing silently",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'; available presets: {', '.join(sorted(PRESETS))}"
        ) from None


def preset_overrides(name: str, dataset: str | None = None, ipc: int | None = None) -> dict:
    """The overrides the preset applies beneath the YAML file (dataset/IPC for future use)."""
    return dict(get_preset(name).overrides)
