"""The model registry is complete in a fresh process: no import order needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.data import create_dataset
from datadistill.evaluation.baselines import random_subset

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _fresh(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_fresh_process_lists_infer_teachers():
    out = _fresh("-c", "from datadistill.models import list_models; print(list_models())")
    assert out.returncode == 0, out.stderr
    for name in ("resnet18_cifar", "mobilenetv2_cifar", "efficientnet_b0_cifar",
                 "shufflenet_g2", "resnet18_imagenet"):
        assert name in out.stdout, name


def test_eval_with_an_infer_teacher_from_a_fresh_process(tmp_path):
    train = create_dataset("digits", split="train")
    x, y = random_subset(train, 1, generator=torch.Generator().manual_seed(0))
    path = save_distilled(DistilledSet(images=x, labels=y, lr=0.01, info=train.info,
                                       space="normalized", ipc=1, method="random"),
                          tmp_path / "set")
    out = _fresh("-m", "datadistill", "eval", str(path), "--models", "resnet18_cifar",
                 "--epochs", "1", "--runs", "1", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "resnet18_cifar" in out.stdout and "%" in out.stdout
