"""Nothing finished is lost: metrics log, per-run final evaluation, reports, refused reruns."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from datadistill.cli import main
from datadistill.data import create_dataset
from datadistill.errors import CompatibilityError
from datadistill.evaluation import protocols as evaluate_mod
from datadistill.evaluation.protocols import evaluate
from datadistill.experts import ExpertConfig, train_experts
from datadistill.runtime.runlog import RunCache, StageClock
from datadistill.tm.config import load_pipeline_config
from datadistill.tm.distill import DistillConfig, distill
from datadistill.tm.pipeline import run_pipeline


@pytest.fixture(scope="module")
def store(digits, tmp_path_factory):
    cfg = ExpertConfig(dataset="digits", num_experts=2, epochs=4, lr=0.1, batch_size=64,
                       model_kwargs={"width": 8})
    return train_experts(cfg, digits, tmp_path_factory.mktemp("experts"), progress=False)


def _cfg(**kw):
    base = dict(dataset="digits", model_kwargs={"width": 8}, ipc=1, syn_steps=2,
                expert_epochs=2, max_start_epoch=2, lr_img=10.0, lr_teacher=0.01,
                iterations=4, eval_every=4, eval_runs=1, eval_epochs=1, checkpoint_every=50)
    return DistillConfig.of(**(base | kw))


def _rows(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]  # time: wall clock


class _Kill(Exception):
    pass


def _stop_at(n):
    def hook(it, row):
        if it == n:
            raise _Kill

    return hook


def test_kill_before_the_first_checkpoint_keeps_the_iteration_0_evaluation(digits, store,
                                                                          tmp_path):
    solo = distill(_cfg(), tmp_path / "solo", data=digits, store=store, progress=False)
    with pytest.raises(_Kill):  # killed at iteration 2: the last checkpoint is iteration 0
        distill(_cfg(), tmp_path / "cut", data=digits, store=store, progress=False,
                on_iteration=_stop_at(2))
    distill(_cfg(), tmp_path / "cut", data=digits, store=store, progress=False)
    assert _rows(tmp_path / "cut" / "metrics.jsonl") == _rows(solo.metrics_path)
    assert [r["iteration"] for r in _rows(solo.metrics_path) if r.get("eval")] == [0, 4]


def test_torn_last_line_is_ignored_with_a_warning(digits, store, tmp_path, caplog):
    solo = distill(_cfg(), tmp_path / "solo", data=digits, store=store, progress=False)
    with pytest.raises(_Kill):
        distill(_cfg(), tmp_path / "cut", data=digits, store=store, progress=False,
                on_iteration=_stop_at(1))
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 2, "lo')  # a write cut by a kill
    with caplog.at_level(logging.WARNING):
        distill(_cfg(), tmp_path / "cut", data=digits, store=store, progress=False)
    assert "torn last line" in caplog.text
    assert _rows(tmp_path / "cut" / "metrics.jsonl") == _rows(solo.metrics_path)


def test_evaluation_resumes_at_the_first_unfinished_run(tmp_path, monkeypatch):
    test = create_dataset("digits", split="test")
    images, labels = torch.randn(10, 1, 8, 8), torch.arange(10)
    kw = dict(num_runs=3, epochs=1, model_kwargs={"width": 8})
    solo = evaluate(images, labels, test, **kw)
    real, calls = evaluate_mod.train_and_test, []

    def dies_at_run_2(*a, **k):
        calls.append(k["run"])
        if k["run"] == 2 and len(calls) == 3:
            raise _Kill
        return real(*a, **k)

    monkeypatch.setattr(evaluate_mod, "train_and_test", dies_at_run_2)
    cache = tmp_path / "eval_runs.jsonl"
    with pytest.raises(_Kill):
        evaluate(images, labels, test, cache=RunCache(cache, "x"), **kw)
    resumed = evaluate(images, labels, test, cache=RunCache(cache, "x"), **kw)
    assert calls == [0, 1, 2, 2]  # runs 0 and 1 were not trained again
    assert resumed.accuracies == solo.accuracies
    evaluate(images * 2, labels, test, cache=RunCache(cache, "x"), **kw)
    assert calls[4:] == [0, 1, 2]  # another set: nothing reused


def test_stage_clock_sums_every_call(tmp_path, monkeypatch):
    now = iter([0.0, 5.0, 100.0, 103.0])
    monkeypatch.setattr("datadistill.runtime.runlog.time.time", lambda: next(now))
    with StageClock(tmp_path / "s.json").stage("distill"):
        pass
    clock = StageClock(tmp_path / "s.json")
    with clock.stage("distill"):
        pass
    assert clock.report() == {"distill": 8.0, "total": 8.0}


SMALL = ["experts.num_experts=1", "experts.epochs=3", "distill.iterations=2",
         "distill.syn_steps=2", "distill.max_start_epoch=1", "distill.expert_epochs=2",
         "distill.eval_every=0", "distill.eval_runs=0", "evaluation.runs=2",
         "evaluation.epochs=1", "model_kwargs={width: 8}"]


def test_refused_rerun_writes_nothing_and_restart_is_named(tmp_path):
    run_pipeline(load_pipeline_config("digits/mtt_ipc1", SMALL), tmp_path, progress=False)
    before = (tmp_path / "pipeline.json").read_text()
    runs = (tmp_path / "eval_runs.jsonl").read_text()
    assert runs.count('"distilled_convnet"') == 2 and runs.count('"random_subset"') == 2
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    changed = load_pipeline_config("digits/mtt_ipc1", [*SMALL, "distill.lr_img=5"])
    with pytest.raises(CompatibilityError, match="--restart"):
        run_pipeline(changed, tmp_path, progress=False)
    other_experts = load_pipeline_config("digits/mtt_ipc1", [*SMALL, "experts.lr=0.5"])
    with pytest.raises(CompatibilityError, match="another expert config"):
        run_pipeline(other_experts, tmp_path, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert (tmp_path / "pipeline.json").read_text() == before
    report = run_pipeline(changed, tmp_path, progress=False, restart=True)
    assert json.loads((tmp_path / "pipeline.json").read_text())["distill"]["lr_img"] == 5
    assert report["seconds"]["total"] >= report["seconds"]["distill"]


def test_unwritable_report_goes_to_stdout_and_a_fallback_file(tmp_path, capsys, monkeypatch):
    def full(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("datadistill.io.atomic_write", full)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    code = main(["baseline", "random", "--epochs", "1", "--runs", "1", "--quiet",
                 "--out", str(tmp_path / "b.json")])
    out, err = capsys.readouterr()
    assert code == 2 and "No space left on device" in err and "saved to" in err
    report = json.loads(out[out.index("{"):])
    assert report["protocol"] == "random"
    fallback = next(tmp_path.glob("datadistill-b-*.json"))
    assert json.loads(fallback.read_text()) == report


def test_repair_rebuilds_best_last_and_the_report(tmp_path, capsys):
    from datadistill.artifacts.distilled import load_distilled

    cfg = load_pipeline_config("digits/mtt_ipc1", [
        *SMALL, "distill.iterations=4", "distill.eval_every=2", "distill.eval_runs=1",
        "distill.eval_epochs=1", "distill.lr_img=1000"])
    report = run_pipeline(cfg, tmp_path, progress=False)
    folder = tmp_path / "distill"
    best, last = load_distilled(folder / "best"), load_distilled(folder / "last")
    (folder / "best" / "tensors.pt").write_bytes(b"torn")
    (folder / "last" / "meta.json").unlink()
    (tmp_path / "eval.json").unlink()
    assert main(["repair", str(tmp_path), "--quiet"]) == 0
    assert "rebuilt best/ by replaying iterations 0-2" in capsys.readouterr().out  # best: it 2
    for before, after in ((best, load_distilled(folder / "best")),
                          (last, load_distilled(folder / "last"))):
        assert torch.equal(before.images, after.images) and before.lr == after.lr
        assert before.extra == after.extra
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["distilled_convnet"]["accuracies"] == report["distilled_convnet"]["accuracies"]


def test_rerunning_a_finished_run_rebuilds_a_damaged_best(tmp_path):
    from datadistill.artifacts.distilled import load_distilled

    cfg = load_pipeline_config("digits/mtt_ipc1", SMALL)
    run_pipeline(cfg, tmp_path, progress=False)
    best = load_distilled(tmp_path / "distill" / "best")
    (tmp_path / "distill" / "best" / "meta.json").write_text("{")
    run_pipeline(cfg, tmp_path, progress=False)
    again = load_distilled(tmp_path / "distill" / "best")
    assert torch.equal(best.images, again.images) and best.extra == again.extra


def test_a_swapped_best_is_refused_on_rerun_and_repair_restores_it(tmp_path, capsys):
    from datadistill.artifacts.distilled import load_distilled, save_distilled

    cfg = load_pipeline_config("digits/mtt_ipc1", SMALL)
    run_pipeline(cfg, tmp_path, progress=False)
    best_dir = tmp_path / "distill" / "best"
    best = load_distilled(best_dir)
    report = (tmp_path / "eval.json").read_text()
    other = dataclasses.replace(best, images=best.images.flip(0))  # another valid set
    save_distilled(other, best_dir)
    with pytest.raises(CompatibilityError, match=r"is not the set .*eval.json scored .*repair"):
        run_pipeline(cfg, tmp_path, progress=False)
    assert (tmp_path / "eval.json").read_text() == report  # not rewritten
    assert main(["repair", str(tmp_path), "--quiet"]) == 0
    assert torch.equal(load_distilled(best_dir).images, best.images)
    run_pipeline(cfg, tmp_path, progress=False)  # the same set again: accepted
