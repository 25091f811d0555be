"""The training core (training.fit and its pieces) and the run driver (runs.run_all)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datadistill.runs import Cached, Run, run_all
from datadistill.runtime.runlog import RunCache
from datadistill.training import (
    EpochEnd,
    FitHooks,
    FitOptions,
    cosine_schedule,
    derive_seeds,
    fit,
    images_only,
    run_seeds,
    seeded,
    shuffled_batches,
)


def _data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.arange(n) % 2


def _net() -> nn.Module:
    return seeded(lambda: nn.Linear(3, 2), 1)


def test_fit_equals_a_hand_written_loop():
    x, y = _data()
    noise = lambda xb, generator: xb + 0.1 * torch.randn(xb.shape, generator=generator)  # noqa: E731
    a, b = _net(), _net()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    schedule, _ = cosine_schedule(opt_a, 3)
    ends: list[EpochEnd] = []
    fit(a, x, y, opt_a, FitOptions(epochs=3, batch_size=4),
        FitHooks(augment=images_only(noise), schedule=schedule, after_epoch=ends.append),
        generator=torch.Generator().manual_seed(7))
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_b, T_max=3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        for idx in torch.randperm(10, generator=gen).split(4):
            loss = F.cross_entropy(b(noise(x[idx], generator=gen)), y[idx])
            opt_b.zero_grad()
            loss.backward()
            opt_b.step()
        sched.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert [e.epoch for e in ends] == [0, 1, 2] and all(e.steps == 3 for e in ends)
    assert ends[-1].mean_loss > 0


def test_fit_resumes_from_a_start_epoch_and_uses_the_pool():
    x, y = _data()
    seen: list[torch.Tensor] = []

    def spy(xb, yb, generator):
        seen.append(yb)
        return xb, yb

    net = _net()
    fit(net, x, y, torch.optim.SGD(net.parameters(), lr=0.1),
        FitOptions(epochs=3, batch_size=10, start_epoch=2),
        FitHooks(augment=spy, epoch_pool=lambda e: torch.tensor([1, 3, 5])))
    assert len(seen) == 1 and sorted(seen[0].tolist()) == [1, 1, 1]  # one epoch, pool only


def test_shuffled_batches_pool_and_single_item_batches():
    g = torch.Generator().manual_seed(0)
    assert [len(b) for b in shuffled_batches(5, 2, g)] == [2, 2, 1]
    assert [len(b) for b in shuffled_batches(5, 2, g, drop_single=True)] == [2, 2]
    pool = torch.tensor([7, 8, 9])
    order = torch.cat(list(shuffled_batches(3, 2, torch.Generator().manual_seed(3), pool=pool)))
    assert torch.equal(order, pool[torch.randperm(3, generator=torch.Generator().manual_seed(3))])


def test_seeded_builds_reproducibly_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = seeded(lambda: torch.randn(4), 5), seeded(lambda: torch.randn(4), 5)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    assert run_seeds(0, 1) == derive_seeds(0, 1) != run_seeds(0, 2)


def test_run_all_gathers_in_order_with_seeds_from_seed_and_index_only(tmp_path):
    runs: list[Run] = []

    def one_run(run: Run) -> float:
        runs.append(run)
        return float(run.index) / 10

    partial: list[list[float]] = []
    out = run_all(3, one_run, seed=4, after_run=lambda i, vals: partial.append(list(vals)))
    assert out.values == [0.0, 0.1, 0.2] and len(out.seconds) == 3
    assert partial == [[0.0], [0.0, 0.1], [0.0, 0.1, 0.2]]
    assert runs[2] == Run.of(4, 2) == run_all(5, lambda r: r, seed=4).values[2]
    assert (runs[1].init_seed, runs[1].train_seed) == run_seeds(4, 1)
    # A cache answers the runs it holds; only the others are run.
    cache = RunCache(tmp_path / "runs.jsonl", "key")
    cache.put("fp", 1, 0.9, 1.5)
    runs.clear()
    out = run_all(3, one_run, seed=4, done=Cached(cache, "fp"))
    assert out.values == [0.0, 0.9, 0.2] and [r.index for r in runs] == [0, 2]
    assert cache.get("fp", 2) == (0.2, out.seconds[2])


def test_run_all_propagates_a_failing_run():
    def boom(run: Run) -> float:
        raise ValueError(f"run {run.index}")

    with pytest.raises(ValueError, match="run 0"):
        run_all(2, boom)
