"""The CPU halves of the CUDA comparisons (tests/parity.py, tests/test_gpu.py), on the CPU.

Without a GPU these show that the harness runs every stage, that a run compared with itself is
bitwise equal (so a CUDA difference is rounding, not a seed or an order the device changed),
that a rounding-level change of the inputs stays well inside every tolerance, and that a real
change (another seed, another step size) is caught.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import parity as P
from datadistill.experts.store import ExpertStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("parity_store")
    from datadistill.experts import train_experts

    train_experts(P.expert_config(), P.digits(), directory, device="cpu", progress=False)
    return directory


def _cases(store):
    return {
        "experts": lambda d, w, data=None: P.run_experts(d, w, data=data),
        "distill_mtt_adjoint": lambda d, w, data=None: P.run_distill(
            d, w, ExpertStore(store), "mtt", "adjoint", data=data),
        "distill_datm_unrolled": lambda d, w, data=None: P.run_distill(
            d, w, ExpertStore(store), "datm", "unrolled", data=data),
        "distill_ftd_adjoint": lambda d, w, data=None: P.run_distill(
            d, w, ExpertStore(store), "ftd", "adjoint", data=data),
        "eval": lambda d, w, data=None: P.run_eval(d, w, data=data),
    }


@pytest.mark.parametrize("name", ["experts", "distill_mtt_adjoint", "distill_datm_unrolled",
                                  "distill_ftd_adjoint", "eval"])
def test_cpu_against_cpu_is_bitwise_and_a_one_ulp_change_stays_inside(name, store, tmp_path):
    fn = _cases(store)[name]
    ref = fn("cpu", tmp_path / "a")
    rows = P.compare_stage(lambda d, w: fn(d, w), "cpu", "cpu", tmp_path / "same")
    assert not P.failures(rows), P.describe(rows)
    assert all(r.get("rel", 0.0) == 0.0 and r.get("max_abs", 0.0) == 0.0 for r in rows)
    # Every training pixel one ulp up: the tolerance must hold with a 10x margin (measured:
    # <= 1e-6 of the displacement, tolerances 1e-3); keys that are the inputs themselves move.
    moved = P.compare(ref, fn("cpu", tmp_path / "b", data=P.digits(perturb=True)))
    for row in moved:
        if row["key"] == "initial_images":
            assert not row["ok"]  # the drawn real images: one ulp apart, so not bitwise
            continue
        assert row["ok"], row
        if row["kind"] in ("close", "losses"):
            assert row["rel"] <= row["tol"] / 10, row


def test_a_real_change_is_caught(store, tmp_path):
    from datadistill.tm.distill import distill

    ref = P.run_distill("cpu", tmp_path / "a", ExpertStore(store), "mtt", "unrolled")
    cfg = P.distill_config("mtt", "unrolled", "cpu")
    cfg = dataclasses.replace(cfg, lr_img=cfg.lr_img * 1.01)  # a 1 % larger image step size
    distill(cfg, tmp_path / "b", data=P.digits(), store=ExpertStore(store), progress=False)
    rows = {r["key"]: r for r in P.compare(ref, P.distill_values(tmp_path / "b"))}
    assert not rows["images"]["ok"] and rows["initial_images"]["ok"] and rows["draws"]["ok"]
    seeded = P.compare(P.run_experts("cpu", tmp_path / "e0"),
                       P.run_experts("cpu", tmp_path / "e1", seed=1))
    assert {r["key"] for r in P.failures(seeded)} >= {"expert0.init", "expert0.trajectory"}


def test_compare_reports_each_kind():
    t = torch.tensor([1.0, 2.0])
    rows = P.compare(
        {"e": P.Exact([1, 2]), "c": P.Close(t + 1, 1e-3, origin=t), "p": P.Points([0.5]),
         "l": P.Losses([2.0]), "gone": P.Exact(0)},
        {"e": P.Exact([1, 3]), "c": P.Close(t + 1.0005), "p": P.Points([0.53]),
         "l": P.Losses([2.001])})
    by = {r["key"]: r for r in rows}
    assert not by["e"]["ok"] and by["gone"] == {"key": "gone", "ok": False,
                                                "error": "missing on one side"}
    # 0.0005 * sqrt(2) off a displacement of norm sqrt(2): 5e-4 <= 1e-3
    assert by["c"]["ok"] and by["c"]["rel"] == pytest.approx(5e-4, rel=1e-3)
    assert not by["p"]["ok"] and by["p"]["max_abs"] == pytest.approx(0.03)
    assert by["l"]["ok"] and by["l"]["rel"] == pytest.approx(5e-4)
    shape = P.compare({"c": P.Close(torch.zeros(2))}, {"c": P.Close(torch.zeros(3))})
    assert shape[0]["ok"] is False and "shape" in shape[0]["error"]


def test_strict_fp32_restores_the_flags():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    with P.strict_fp32():
        assert not torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.deterministic
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before


def test_the_runner_writes_its_rows_and_fails_loudly(tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert P.main(["--device", "cpu", "--only", "eval", "baselines", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and set(report["stages"]) == {"eval", "baselines"}
    assert report["torchrun_nccl"].startswith("skipped")
    with pytest.raises(SystemExit, match="unknown comparison"):
        P.main(["--device", "cpu", "--only", "evall"])
    if not torch.cuda.is_available():
        assert P.main(["--device", "cuda"]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["experts", "distill"])
def test_the_torchrun_pair_on_gloo_matches_one_process(stage, tmp_path):
    """The NCCL pair of test_gpu.py, run on the CPU (gloo): the same harness end to end."""
    rows = P.compare_pair("cpu", tmp_path, stage)
    assert not P.failures(rows), P.describe(rows)
    assert {r["key"]: r for r in rows}["world_size"]["got"] == 2


@pytest.mark.slow
def test_every_stage_cpu_against_cpu(tmp_path):
    report = P.run_all("cpu", only=None, pairs=False)
    assert report["ok"], json.dumps({k: v for k, v in report["stages"].items() if not v["ok"]})
