"""`datadistill run imagenette/...` end to end on a generated ILSVRC-layout tree, and the
checks that keep a subset on its own classes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datadistill.cli import main
from datadistill.data.imagenet import SUBSETS

WNIDS = [f"n{i:08d}" for i in range(1000)]  # sorted order = class id


def _jpeg(path: Path, seed: int, side: int = 12) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def make_tree(root: Path, name: str = "imagenette", train: int = 2, val: int = 1) -> Path:
    """The standard train/val layout: 1000 train folders, images only in the subset's."""
    for c in range(1000):
        (root / "train" / WNIDS[c]).mkdir(parents=True, exist_ok=True)
    for c in SUBSETS[name]:
        for j in range(train):
            _jpeg(root / "train" / WNIDS[c] / f"{WNIDS[c]}_{j}.JPEG", 10 * c + j)
        for j in range(val):
            _jpeg(root / "val" / WNIDS[c] / f"val_{c}_{j}.JPEG", 10**5 + 10 * c + j)
    return root


TINY = ["model_kwargs.width=4", "experts.num_experts=1", "experts.epochs=2",
        "experts.batch_size=10", "distill.syn_steps=2", "distill.max_start_epoch=1",
        "distill.expert_epochs=1", "distill.iterations=2", "distill.eval_every=2",
        "distill.eval_runs=1", "distill.eval_epochs=1", "evaluation.runs=1",
        "evaluation.epochs=1"]


def test_subset_run_end_to_end_through_the_cli(tmp_path, monkeypatch, capsys):
    root = make_tree(tmp_path / "in1k")
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(["run", "imagenette/mtt_ipc1", f"data_root={root}", *TINY, "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert len(report["distilled_convnet"]["accuracies"]) == 1
    assert len(report["random_subset"]["accuracies"]) == 1  # the step that used to crash
    assert report["random_subset"]["settings"]["ipc"] == 1
    # A rerun resumes every finished network from eval_runs.jsonl (the fingerprint of
    # cached images is stable) and reports the same numbers.
    assert main(["run", "imagenette/mtt_ipc1", f"data_root={root}", *TINY, "--out", str(out),
                 "--quiet"]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["random_subset"]["accuracies"] == report["random_subset"]["accuracies"]
