"""The whole ImageNet-1K pipeline (experts, adjoint distillation, evaluation, random subsets) on
generated stand-ins in both input forms; under one and two processes in the slow test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datadistill.artifacts.distilled import load_distilled
from datadistill.cli import main
from datadistill.experts.store import expert_path
from imagenet64_standin import write_release, write_tree

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["model_kwargs.width=4", "experts.num_experts=2", "experts.epochs=2",
        "experts.test_samples=200", "distill.max_start_epoch=1", "distill.expert_epochs=1",
        "distill.syn_steps=2", "distill.iterations=2", "distill.eval_every=2",
        "distill.eval_runs=1", "distill.eval_epochs=2", "evaluation.runs=2",
        "evaluation.epochs=2"]


def test_fast_pipeline_on_a_few_classes(tmp_path):
    root = write_tree(tmp_path / "tree", classes=4, per_class=3, val_per_class=2)
    out = tmp_path / "run"
    assert main(["run", "imagenet1k/datm_ipc1", f"data_root={root}", *TINY,
                 "distill.batch_syn=3", "distill.micro_batch=2", "--out", str(out),
                 "--quiet"]) == 0
    report = json.loads((out / "eval.json").read_text())
    for key in ("distilled_convnet", "distilled_convnet_hard_labels", "random_subset",
                "random_subset_soft"):
        assert len(report[key]["accuracies"]) == 2, key
    assert report["random_subset_soft"]["settings"]["labels"] == "soft"
    best = load_distilled(out / "distill" / "best")
    assert best.images.shape == (4, 3, 64, 64) and best.labels.shape == (4, 4)
    assert report["config"]["distill"]["grad_mode"] == "adjoint"


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args: list[str], procs: int) -> None:
    launch = ([sys.executable] if procs == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", "--no-python", sys.executable])
    proc = subprocess.run([*launch, "-m", "datadistill", *args], capture_output=True,
                          text=True, env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("form", ["release", "tree"])
def test_whole_pipeline_one_and_two_processes_agree(tmp_path, form):
    writer = write_release if form == "release" else write_tree
    root = writer(tmp_path / form, classes=1000, per_class=2, val_per_class=1)
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"run{procs}"
        _run(["run", "imagenet1k/datm_ipc1", f"data_root={root}", *TINY, "--out", str(out),
              "--quiet"], procs)
        runs[procs] = out
    one, two = runs[1], runs[2]
    for i in range(2):  # experts depend on their index only: bitwise
        a = torch.load(expert_path(one / "experts", i), weights_only=True)
        b = torch.load(expert_path(two / "experts", i), weights_only=True)
        assert torch.equal(a["params"], b["params"])
    x, y = load_distilled(one / "distill" / "best"), load_distilled(two / "distill" / "best")
    assert x.images.shape == (1000, 3, 64, 64) and x.labels.shape == (1000, 1000)
    # the step's batch is split between the ranks and summed: equal to rounding
    torch.testing.assert_close(y.images, x.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(y.labels, x.labels, rtol=0, atol=1e-5)
    ra, rb = (json.loads((r / "eval.json").read_text()) for r in (one, two))
    assert (ra.get("world_size", 1), rb["world_size"]) == (1, 2)
    for key in ("distilled_convnet", "random_subset", "random_subset_soft"):
        assert ra[key]["accuracies"] == rb[key]["accuracies"], key
