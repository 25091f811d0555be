"""Evaluation runs spread over processes: ``run_all``'s rounds, and ``torchrun`` end to end.

The round logic is checked in one process with threads standing in for ranks; the end-to-end
tests launch ``torchrun --nproc_per_node 2`` (gloo, one thread each) on the embedded digits
and compare with a single process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from datadistill.artifacts.distilled import DistilledSet, save_distilled
from datadistill.cli import main
from datadistill.data import create_dataset, random_subset
from datadistill.evaluation.baselines import baseline_random
from datadistill.runs import Cached, Group, OnDisk, Run, RunFailed, pending, run_all
from datadistill.runtime.runlog import RunCache

SRC = Path(__file__).resolve().parents[1] / "src"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- rounds, in process


class FakeGroup:
    """K ranks as K threads: gather and share through a barrier, as torch.distributed does."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=20)
        self.slots: list = [None] * size

    def group(self, rank: int) -> Group:
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before all have read
            return out

        def share(obj):
            return gather(obj)[0]

        return Group(rank, self.size, gather, share, lambda: self.barrier.wait())

    def run(self, call) -> list:
        """``call(group)`` on every rank; each rank's result or exception, in rank order."""
        out: list = [None] * self.size

        def target(rank: int) -> None:
            try:
                out[rank] = call(self.group(rank))
            except Exception as err:  # noqa: BLE001 - returned for the test to inspect
                out[rank] = err

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out


def test_rounds_deal_the_missing_runs_and_every_rank_gets_all_results(tmp_path):
    cache = RunCache(tmp_path / "runs.jsonl", "key")
    cache.put("fp", 2, 0.25, 9.0)  # finished by an earlier, interrupted call
    ran: dict[int, list[int]] = {0: [], 1: [], 2: []}
    partial: list[tuple[int, list[float]]] = []

    def call(group: Group):
        def one_run(run: Run) -> float:
            ran[group.rank].append(run.index)
            assert run == Run.of(7, run.index)  # seeds from (seed, index) only
            return run.index / 10

        return run_all(7, one_run, seed=7, done=Cached(cache, "fp"), group=group,
                       after_run=lambda i, vals: partial.append((i, list(vals))))

    results = FakeGroup(3).run(call)
    expected = [0.0, 0.1, 0.25, 0.3, 0.4, 0.5, 0.6]
    assert [r.values for r in results] == [expected] * 3
    assert all(r.seconds[2] == 9.0 for r in results)
    # runs 0, 1, 3, 4, 5, 6 dealt in rounds of 3: [0, 1, 3] then [4, 5, 6]
    assert ran == {0: [0, 4], 1: [1, 5], 2: [3, 6]}
    # rank 0 alone calls after_run, in run order, with the results of runs 0..i
    assert partial == [(i, expected[: i + 1]) for i in (0, 1, 3, 4, 5, 6)]
    # rank 0 alone stored them: one line per run in the file
    rows = _lines(tmp_path / "runs.jsonl")
    assert sorted(r["run"] for r in rows) == list(range(7))
    # resumed with another number of processes, nothing is run again
    fresh = RunCache(tmp_path / "runs.jsonl", "key")

    def again(run: Run) -> float:
        raise AssertionError(f"run {run.index} ran again")

    def resumed(group: Group):
        return run_all(7, again, seed=7, done=Cached(fresh, "fp"), group=group).values

    assert FakeGroup(2).run(resumed) == [expected, expected]


def test_runs_that_write_their_own_files_resume_by_file_in_rounds(tmp_path):
    # experts and teachers: a run is finished when its file is there (rank 0 looks, every
    # rank skips the same runs), each rank writes its own runs' files
    (tmp_path / "1").write_text("earlier")  # finished by an earlier, interrupted call
    ran: dict[int, list[int]] = {0: [], 1: []}

    def call(group: Group):
        def one_run(run: Run) -> None:
            ran[group.rank].append(run.index)
            (tmp_path / str(run.index)).write_text(str(run.train_seed))

        written = OnDisk(lambda i: (tmp_path / str(i)).is_file())
        return run_all(5, one_run, seed=3, done=written, group=group).values

    assert FakeGroup(2).run(call) == [[None] * 5] * 2
    assert ran == {0: [0, 3], 1: [2, 4]}  # runs 0, 2, 3, 4 in rounds of 2: [0, 2] then [3, 4]
    assert (tmp_path / "1").read_text() == "earlier"
    assert [(tmp_path / str(i)).read_text() for i in (0, 4)] == [
        str(Run.of(3, 0).train_seed), str(Run.of(3, 4).train_seed)]
    assert pending(5, OnDisk(lambda i: (tmp_path / str(i)).is_file())) == []


def test_every_rank_waits_without_a_time_limit_before_each_exchange():
    # a rank with no run in the last round waits there for the others' training (hours for
    # a teacher): in wait(), whose barrier has no practical limit, not in the gather
    fake, events = FakeGroup(2), {0: [], 1: []}

    def call(group: Group):
        def gather(obj):
            events[group.rank].append("gather")
            return group.gather(obj)

        def wait():
            events[group.rank].append("wait")
            group.wait()

        logged = Group(group.rank, group.size, gather, group.share, wait)
        return run_all(3, lambda run: float(run.index), group=logged).values

    assert fake.run(call) == [[0.0, 1.0, 2.0]] * 2
    assert events == {r: ["wait", "gather"] * 2 for r in (0, 1)}


def test_a_run_failing_on_one_rank_stops_every_rank_with_its_message():
    def call(group: Group):
        def one_run(run: Run) -> float:
            if run.index == 3:
                raise ValueError("no memory left")
            return 0.5

        return run_all(4, one_run, group=group)

    own, other = FakeGroup(2).run(call)
    assert isinstance(own, RunFailed) and isinstance(other, ValueError)  # run 3 is rank 1's
    assert str(other) == "no memory left"
    with pytest.raises(RunFailed, match="run 4 failed on rank 1: ValueError: no memory left"):
        raise own


# ----------------------------------------------------------------------------- torchrun


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _without_process_details(report: dict) -> dict:
    """A report less what differs by process count: world_size (each model's entry and its
    settings record it) and each run's seconds."""
    out = json.loads(json.dumps(report))
    for rep in out.values():
        rep["settings"].pop("seconds_per_run")
        assert rep.pop("world_size") == rep["settings"].pop("world_size")
    return out


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    train = create_dataset("digits", split="train")
    x, y = random_subset(train, 1, generator=torch.Generator().manual_seed(0))
    ds = DistilledSet(images=x, labels=y, lr=0.05, info=train.info, space="normalized", ipc=1,
                      method="random")
    return save_distilled(ds, tmp_path_factory.mktemp("dist_eval") / "set")


def test_sharded_eval_report_equals_the_single_process_report(tmp_path, tiny_set):
    args = ["eval", str(tiny_set), "--epochs", "2", "--runs", "3", "--models", "convnet", "mlp",
            "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    proc = _torchrun("-m", "datadistill", *args, "--out", str(tmp_path / "two.json"),
                     cwd=tmp_path)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["convnet"]["settings"]["world_size"] == 1
    assert two["convnet"]["settings"]["world_size"] == 2
    assert len(two["mlp"]["settings"]["seconds_per_run"]) == 3
    assert _without_process_details(two) == _without_process_details(one)
    assert proc.stdout.count("report written to") == 1  # rank 0 alone prints and writes


RESUME = """
    import json, sys
    from datadistill import distributed
    from datadistill.evaluation.baselines import baseline_random
    from datadistill.runtime.runlog import RunCache

    distributed.init_from_env()
    rep = baseline_random("digits", 1, epochs=1, num_runs=4, model_kwargs={"width": 8},
                          cache=RunCache(sys.argv[1], "random_subset"))
    got = {"accuracies": rep.accuracies, "world_size": rep.settings["world_size"]}
    with open(sys.argv[2] + f".{distributed.rank()}", "w") as f:
        json.dump(got, f)
    distributed.shutdown()
"""


def test_an_interrupted_sharded_baseline_resumes_from_the_cache(tmp_path):
    kw = dict(epochs=1, num_runs=4, model_kwargs={"width": 8})
    full = tmp_path / "full.jsonl"
    single = baseline_random("digits", 1, cache=RunCache(full, "random_subset"), **kw)
    # An interrupted evaluation: run 1 finished (marked with a value no run gives), 0, 2, 3 not.
    rows = _lines(full)
    done = next(r for r in rows if r["run"] == 1)
    done["accuracy"] = 0.123
    runs = tmp_path / "eval_runs.jsonl"
    runs.write_text(json.dumps(done) + "\n")
    script = tmp_path / "resume.py"
    script.write_text(textwrap.dedent(RESUME))
    _torchrun(str(script), str(runs), str(tmp_path / "out.json"), cwd=tmp_path)
    expected = [single.accuracies[0], 0.123, *single.accuracies[2:]]
    for rank in (0, 1):  # every rank holds every result
        got = json.loads((tmp_path / f"out.json.{rank}").read_text())
        assert got == {"accuracies": expected, "world_size": 2}
    # rank 0 alone appended the three missing runs, once each, with the single process's values
    rows = _lines(runs)
    assert len(rows) == 4 and {r["run"]: r["accuracy"] for r in rows} == dict(enumerate(expected))


CALLERS = """
    import json, sys
    import torch
    from datadistill import distributed
    from datadistill.evaluation.baselines import baseline_full, baseline_random
    from datadistill.data import prepare, random_subset
    from datadistill.evaluation.ddranking import preset_for, score
    from datadistill.evaluation.protocols import evaluate
    from datadistill.infer.config import StudentConfig
    from datadistill.infer.student import evaluate_student_images

    distributed.init_from_env()
    real = prepare("digits")
    x, y = random_subset(real.train, 1, torch.Generator().manual_seed(0))
    W = {"width": 8}
    out = {
        "periodic": evaluate(x, y, real.test, epochs=4, num_runs=3, report="both", period=2,
                             model_kwargs=W),
        "challenge": evaluate(x, None, real.test, protocol="challenge", epochs=2, num_runs=3,
                              unofficial=True, model_kwargs=W),
        "cross": evaluate(x, y, real.test, model="mlp", epochs=2, num_runs=3),
        "random": baseline_random(real, 1, epochs=1, num_runs=3, model_kwargs=W),
        "full": baseline_full(real, epochs=1, num_runs=2, model_kwargs=W),
        "student": evaluate_student_images(
            x, torch.nn.functional.one_hot(y, 10).float() * 4, real.test,
            StudentConfig(model="convnet", model_kwargs=W, epochs=2, eval_every=1, num_runs=3,
                          batch_size=8)),
        "ddranking": score(x, y, real, preset_for(
            "mtt", rounds=3, ars=False, full_accuracy=0.8, lr_grid=(0.01, 0.05),
            model_kwargs=W, train={"epochs": 2, "step_size": 1}), syn_lr=0.02),
    }
    if distributed.is_main():
        with open(sys.argv[1], "w") as f:
            json.dump({k: v.to_dict() for k, v in out.items()}, f)
    distributed.shutdown()
"""


@pytest.mark.slow
def test_every_caller_sharded_equals_one_process(tmp_path):
    """Classic with periodic tests, challenge, another architecture, both baselines, INFER's
    students and DD-Ranking's rounds: 2 processes give the single process's results."""
    script = tmp_path / "callers.py"
    script.write_text(textwrap.dedent(CALLERS))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], env=env,
                   check=True, timeout=300)
    _torchrun(str(script), str(tmp_path / "two.json"), cwd=tmp_path)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for name in one:
        assert (one[name]["settings"].pop("world_size"),
                two[name]["settings"].pop("world_size")) == (1, 2), name
        for rep in (one[name], two[name]):
            rep["settings"].pop("seconds_per_run", None)
        assert two[name] == one[name], name
    assert len(set(one["random"]["accuracies"])) > 1  # the runs differ: the order matters
