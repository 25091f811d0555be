"""The imagenet1k/* presets: TESLA's settings, adjoint by default, and the memory forecast
that refuses a setting before any work."""

from __future__ import annotations

import re

import pytest

from datadistill.cli import main
from datadistill.tm import memory
from datadistill.tm.config import distill_config, load_pipeline_config

CONFIGS = [f"imagenet1k/{m}_ipc{i}" for m in ("mtt", "datm") for i in (1, 10, 50)]
GB = 1e9


@pytest.mark.parametrize("name", CONFIGS)
def test_presets_carry_teslas_settings_and_the_adjoint_default(name):
    cfg = distill_config(load_pipeline_config(name, []))
    assert (cfg.dataset, cfg.model, cfg.model_kwargs["depth"], cfg.zca) == (
        "imagenet64", "convnet", 4, False)
    # TESLA README ImageNet-1K command
    assert (cfg.syn_steps, cfg.window.expert_epochs, cfg.window.max_start_epoch, cfg.lr_img,
            cfg.lr_lr, cfg.lr_teacher, cfg.batch_syn) == (10, 3, 10, 1e4, 1e-4, 0.01, 100)
    assert (cfg.grad.grad_mode, cfg.grad.micro_batch) == ("adjoint", 25)
    assert cfg.labels.label_mode == ("soft" if "datm" in name else "hard")


def test_estimate_prints_the_peak_per_gpu_for_1_2_4_8_processes(capsys):
    assert main(["estimate", "imagenet1k/datm_ipc50"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"(\d) process(?:es|  ): +([\d.]+) GB \((\d+) images per step", out)
    assert [int(k) for k, _, _ in rows] == [1, 2, 4, 8]
    assert [int(b) for _, _, b in rows] == [100, 50, 25, 13]  # ceil(batch_syn / K)
    peaks = [float(p) for _, p, _ in rows]
    # more processes shrink the graph (not below micro_batch 25); from 4 on, a share (25
    # images) is one micro_batch, so each step's gradient is recorded too: 2 x P floats with
    # spilled snapshots (+0.02 GB)
    assert peaks[1] <= peaks[0] and peaks[3] < peaks[2] <= peaks[1] + 0.02
    assert peaks[-1] < peaks[0]
    # the state (50,000 images x 3 x 64 x 64 and 1,000-way logits, with gradient and momentum)
    state = 3 * 50_000 * (3 * 64 * 64 + 1000) * 4 / GB
    assert peaks[0] > state


@pytest.mark.parametrize(("free_gb", "fix"), [
    (8.7, r"distill\.micro_batch=(\d+)"),
    (2.0, r"synthetic set itself is too large"),
])
def test_a_setting_that_cannot_fit_is_refused_before_any_work(monkeypatch, tmp_path, capsys,
                                                              free_gb, fix):
    monkeypatch.setattr(memory, "free_memory", lambda device: int(free_gb * GB))
    out = tmp_path / "run"
    code = main(["run", "imagenet1k/datm_ipc50", f"data_root={tmp_path / 'none'}",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"error: the adjoint student needs about [\d.]+ GB", err)
    found = re.search(fix, err)
    assert found, err
    if found.groups():  # the named micro_batch is smaller than the config's 25 and fits
        assert 1 <= int(found.group(1)) < 25
    assert not (out / "experts").exists()  # nothing trained, nothing read
