"""The memory estimate: traced step graph, structure of both modes, CLI and the refusal."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import pytest
import torch

from datadistill.cli import main
from datadistill.data import dataset_info
from datadistill.errors import ConfigError
from datadistill.experts.store import ExpertStore, save_expert, write_meta
from datadistill.matching import student_forward
from datadistill.models import create_model
from datadistill.runtime import devices
from datadistill.tm import memory
from datadistill.tm.distill import DistillConfig, distill
from datadistill.tm.memory import (
    Iteration,
    estimate_config,
    estimate_memory,
    fitting_micro_batch,
    trace_step,
)


@pytest.fixture(scope="module")
def footprint():
    return trace_step(create_model("convnet", 1, 10, 8, width=8), (1, 8, 8), 10)


def test_trace_is_linear_in_the_batch(footprint):
    """The traced graph of one step on 3 images is per_step + 3 x per_image."""
    model = create_model("convnet", 1, 10, 8, width=8)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    three = memory._traced_bytes(student_forward(model), theta0, (1, 8, 8), 10, 3, False)
    assert footprint.per_image > 0
    assert three == footprint.per_step + 3 * footprint.per_image
    assert footprint.path == "convnet_fast" and footprint.num_params == theta0.numel()
    generic = trace_step(model, (1, 8, 8), 10, fast=False)
    assert generic.path == "generic" and generic.per_image > 0
    # the norm values the adjoint forward pass records: (mu, rstd, s, A, B) per channel of
    # each instance norm, float32; the generic student records none
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels == 8 for m in norms)
    assert footprint.norm_per_image == 5 * 4 * 8 * len(norms) and generic.norm_per_image == 0


def test_adjoint_estimate_counts_the_tiles_a_rebuilt_step_keeps(footprint):
    """A width-32 ConvNet-3 on 32x32 images runs its 16x16 and 8x8 layers as Winograd: a
    rebuilt step keeps the transforms of each layer's input and of the gradient its input
    gradient takes, 36 values per 4x4 tile and channel (16 and 4 tiles per image)."""
    wide = trace_step(create_model("convnet", 3, 10, 32, width=32), (3, 32, 32), 10)
    assert wide.tiles_per_image == 36 * (16 + 4) * (32 + 32) * 4
    assert footprint.tiles_per_image == 0  # width 8: no layer takes Winograd
    it = Iteration(num_images=20, syn_steps=5, mode="adjoint", micro_batch=4)
    without = dataclasses.replace(wide, tiles_per_image=0)
    assert (estimate_memory(wide, it).graph - estimate_memory(without, it).graph
            == 4 * wide.tiles_per_image)  # one chunk's, whatever the steps
    cuda = dataclasses.replace(it, device="cuda")  # the CUDA student keeps no tiles
    assert estimate_memory(wide, cuda).graph == estimate_memory(without, cuda).graph
    unrolled = dataclasses.replace(it, mode="unrolled")  # freed before the backward pass
    assert estimate_memory(wide, unrolled).graph == estimate_memory(without, unrolled).graph


def test_soft_labels_add_their_state(footprint):
    hard = estimate_memory(footprint, Iteration(num_images=10, syn_steps=5, mode="adjoint"))
    soft = estimate_memory(footprint, Iteration(num_images=10, syn_steps=5, mode="adjoint",
                           soft_labels=True))
    assert soft.state - hard.state == 3 * 10 * 10 * 4  # logits, their grad and momentum


def test_unrolled_grows_with_steps_adjoint_is_flat(footprint):
    common = dict(num_images=20, batch_syn=10)
    unrolled = [estimate_memory(footprint, Iteration(syn_steps=n, mode="unrolled", **common))
                for n in (1, 10, 20, 40)]
    adjoint = [estimate_memory(footprint, Iteration(syn_steps=n, mode="adjoint", **common))
               for n in (1, 10, 20, 40)]
    totals = [e.total for e in unrolled]
    assert totals == sorted(totals) and len(set(totals)) == 4
    # unrolled graph grows by one step's graph per step
    step = (unrolled[3].graph - unrolled[2].graph) / 20
    assert unrolled[2].graph - unrolled[1].graph == pytest.approx(10 * step, abs=2)
    assert step >= 10 * footprint.per_image
    # adjoint: same graph whatever the steps; only the (N + 1) x P snapshots grow, and the
    # N x P recorded step gradients beside them (each step is one chunk here), and the
    # rebuilt steps' norm values (all but the kept last one; 10 images a step)
    assert len({e.graph for e in adjoint}) == 1
    norm = 10 * footprint.norm_per_image
    assert adjoint[3].snapshots - adjoint[0].snapshots \
        == 2 * 39 * footprint.num_params * 4 + 39 * norm
    chunked = estimate_memory(footprint, Iteration(syn_steps=40, mode="adjoint", micro_batch=5,
                                                   **common))
    assert adjoint[3].snapshots - chunked.snapshots == 41 * footprint.num_params * 4 + 39 * norm
    assert all(a.total < u.total for a, u in zip(adjoint[1:], unrolled[1:], strict=True))


def test_adjoint_is_linear_in_micro_batch(footprint):
    totals = [estimate_memory(footprint, Iteration(num_images=40, syn_steps=30, mode="adjoint",
                              micro_batch=m)).total for m in (1, 2, 3, 4, 8)]
    d = totals[1] - totals[0]
    assert d > 0
    for m, t in zip((1, 2, 3, 4, 8), totals, strict=True):
        # each total truncates its four parts to whole bytes (< 4 bytes), d carries two such
        assert t == pytest.approx(totals[0] + (m - 1) * d, abs=4 * m)
    beyond = estimate_memory(footprint, Iteration(num_images=40, syn_steps=30, mode="adjoint",
                             batch_syn=8, micro_batch=100))
    eight = estimate_memory(footprint, Iteration(num_images=40, syn_steps=30, mode="adjoint",
                            micro_batch=8))
    assert beyond.total - beyond.snapshots == totals[-1] - eight.snapshots  # a chunk <= the batch
    # one chunk a step: the g_i are recorded, and 29 rebuilt steps' norm values of 8 images
    assert beyond.snapshots == 2 * eight.snapshots + 29 * 8 * footprint.norm_per_image


def test_kept_graphs_add_one_unrolled_step_each(footprint):
    """distill.kept_graphs=K adds K - 1 of the unrolled student's step graphs to the adjoint
    estimate (at most N of them) and, for any K > 1, the rebuilt step's graph and temporaries
    that the then kept heap holds; nothing where micro-batches split the step (no graph is
    kept then)."""
    def est(k, **kw):
        return estimate_memory(footprint, Iteration(num_images=20, syn_steps=10, batch_syn=10,
                                                    mode="adjoint", kept_graphs=k, **kw))
    unrolled = [estimate_memory(footprint, Iteration(num_images=20, syn_steps=n, batch_syn=10,
                                                     mode="unrolled")) for n in (10, 11)]
    step = unrolled[1].graph - unrolled[0].graph  # one unrolled step's graph
    assert step > 0
    one, two, four, all_, past = est(1), est(2), est(4), est(10), est(25)
    heap = two.graph - one.graph - step  # the rebuilt step's, beside the kept graphs
    assert heap > 0
    assert four.graph - one.graph == pytest.approx(3 * step + heap, abs=10)  # whole bytes
    assert all_.graph - one.graph == pytest.approx(9 * step + heap, abs=10) and past == all_
    assert est(4, micro_batch=5) == est(1, micro_batch=5)


def test_float64_doubles_the_graph(footprint):
    f32 = estimate_memory(footprint, Iteration(num_images=10, syn_steps=5, mode="unrolled"))
    f64 = estimate_memory(footprint, Iteration(num_images=10, syn_steps=5, mode="unrolled",
                                               dtype_bytes=8))
    assert f64.graph == pytest.approx(2 * f32.graph, abs=2)
    with pytest.raises(ConfigError, match="grad_mode='bptt'"):
        estimate_memory(footprint, Iteration(num_images=10, syn_steps=5, mode="bptt"))


def test_fitting_micro_batch_is_the_largest_that_fits(footprint):
    common = dict(num_images=40, syn_steps=30)
    at5 = estimate_memory(footprint, Iteration(mode="adjoint", micro_batch=5, **common)).total
    assert fitting_micro_batch(footprint, at5, **common) == 5
    assert fitting_micro_batch(footprint, at5 - 1, **common) == 4
    assert fitting_micro_batch(footprint, 10**15, **common) == 40
    at1 = estimate_memory(footprint, Iteration(mode="adjoint", micro_batch=1, **common)).total
    assert fitting_micro_batch(footprint, at1 - 1, **common) is None


def test_estimate_config_counts_the_real_data():
    info = dataset_info("digits")
    cfg = DistillConfig.of(dataset="digits", ipc=2, syn_steps=10)
    full = estimate_config(cfg, info)
    sub = estimate_config(DistillConfig.of(dataset="digits", ipc=2, syn_steps=10,
                                        train_per_class=5), info)
    assert full.unrolled.data == (1437 + 360) * (64 * 4 + 8)
    assert sub.unrolled.data == (50 + 360) * (64 * 4 + 8)
    assert full.unrolled.details["batch"] == 20


def test_cli_estimate_prints_both_modes(capsys, monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: 10**12)
    assert main(["estimate", "digits/mtt_ipc1", "distill.syn_steps=40"]) == 0
    out = capsys.readouterr().out
    assert "40 steps" in out and "unrolled:" in out and "adjoint (micro_batch 10)" in out
    assert "unrolled fits" in out and "distill.micro_batch=10" in out


def _gb_after(label: str, text: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(label))
    return float(line.split(":")[1].split("GB")[0])


def test_cli_estimate_grows_with_steps_for_unrolled_only(capsys):
    outs = []
    for steps in (10, 80):
        assert main(["estimate", "digits/mtt_ipc1", f"distill.syn_steps={steps}"]) == 0
        outs.append(capsys.readouterr().out)
    assert _gb_after("unrolled", outs[1]) > _gb_after("unrolled", outs[0])


def test_spilled_snapshots_leave_the_adjoint_estimate_flat_in_syn_steps():
    fp = estimate_config(DistillConfig.of(dataset="digits", ipc=1),
                         dataset_info("digits")).footprint

    def snap(steps: int, how: str) -> int:
        return estimate_memory(fp, Iteration(mode="adjoint", num_images=10, syn_steps=steps,
                               snapshots=how)).snapshots

    # theta_N and the one in use, and as many of the recorded g_i (each step one chunk);
    # spilled, the steps' norm values are not recorded
    assert snap(10, "spill") == snap(80, "spill") == 2 * 2 * fp.num_params * 4
    assert fp.norm_per_image > 0
    assert snap(80, "memory") - snap(10, "memory") \
        == 2 * 70 * fp.num_params * 4 + 70 * 10 * fp.norm_per_image


def _free_between_adjoint_and_unrolled(micro: int) -> int:
    """Free memory where the unrolled digits run does not fit and adjoint fits up to micro."""
    cfg = DistillConfig.of(dataset="digits", ipc=1, syn_steps=20)
    est = estimate_config(cfg, dataset_info("digits"))
    fp = est.footprint
    free = estimate_memory(fp, Iteration(mode="adjoint", num_images=10, syn_steps=20,
                                         micro_batch=micro, real_images=1437 + 360,
                                         snapshots=cfg.grad.snapshots)).total
    assert free < est.unrolled.total
    return free


@pytest.mark.parametrize("command", ["distill", "run"])
def test_unrolled_run_that_does_not_fit_is_refused(command, tmp_path, capsys, monkeypatch):
    free = _free_between_adjoint_and_unrolled(3)
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    code = main([command, "digits/mtt_ipc1", "device=cpu", "--out", str(tmp_path / "r"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "distill.grad_mode=adjoint distill.micro_batch=3" in err
    assert "distill.memory_check=false" in err
    assert not (tmp_path / "r" / "experts").exists()  # refused before any work


def test_too_many_kept_graphs_are_refused_naming_the_most_that_fit(monkeypatch, capsys):
    """An adjoint run whose kept graphs do not fit is refused before any work, naming the
    largest distill.kept_graphs that does; `datadistill estimate` prints that number."""
    cfg = DistillConfig.of(dataset="digits", ipc=1, syn_steps=20, grad_mode="adjoint",
                           kept_graphs=20)
    fp = estimate_config(cfg, dataset_info("digits")).footprint
    common = dict(num_images=10, syn_steps=20, real_images=1437 + 360,
                  snapshots=cfg.grad.snapshots)
    free = estimate_memory(fp, Iteration(mode="adjoint", kept_graphs=7, **common)).total
    assert free < estimate_memory(fp, Iteration(mode="adjoint", kept_graphs=8, **common)).total
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    with pytest.raises(ConfigError, match=r"kept_graphs 20;.*Use distill.kept_graphs=7,"):
        memory.check_memory(cfg)
    assert main(["estimate", "digits/mtt_ipc1", "distill.syn_steps=20"]) == 0
    assert "up to distill.kept_graphs=7 " in capsys.readouterr().out


def test_refusal_when_nothing_fits_and_the_override(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "free_memory", lambda device: 1000)
    cfg = DistillConfig.of(dataset="digits", ipc=1, syn_steps=20)
    with pytest.raises(ConfigError, match="micro_batch=1 does not fit"):
        memory.check_memory(cfg)
    assert memory.check_memory(DistillConfig.of(dataset="digits", ipc=1,
                                             memory_check=False)) is None
    with pytest.raises(ConfigError, match="grad_mode=adjoint"):
        distill(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # the refusal leaves no empty run folder


def test_meminfo_available(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n")
    assert devices._meminfo_available(str(f)) == 1000 * 1024
    assert devices._meminfo_available(str(tmp_path / "missing")) > 10**15


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_store_unmaps_each_expert_after_reading(tmp_path):
    """Cycling through experts keeps no file mapped, so RSS does not grow with them."""
    write_meta(tmp_path, {"format_version": 1, "epochs": 4, "num_params": 100})
    for i in range(5):
        save_expert(tmp_path, i, torch.full((5, 100), float(i)), torch.zeros(5))
    store = ExpertStore(tmp_path)
    pairs = [store.epoch_pair(i, 1, 2) for i in range(5)]
    gc.collect()
    assert str(tmp_path) not in Path("/proc/self/maps").read_text()
    assert [float(a[0]) for a, _ in pairs] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_every_copy_of_the_synthetic_set_is_a_term():
    # The state grows with the set by one set's bytes per entry of SET_COPIES (set, momentum,
    # gradient), in both modes: so the estimate tracks IPC 50 as it does IPC 10.
    from datadistill.tm.memory import SET_COPIES

    fp = trace_step(create_model("convnet", 1, 10, 8, width=8), (1, 8, 8), 10)
    for mode in ("unrolled", "adjoint"):
        small = estimate_memory(fp, Iteration(num_images=100, syn_steps=2, mode=mode, batch_syn=10))
        large = estimate_memory(fp, Iteration(num_images=500, syn_steps=2, mode=mode, batch_syn=10))
        copy = 400 * 1 * 8 * 8 * 4  # 400 more images of 1 x 8 x 8 float32
        assert large.state - small.state == sum(SET_COPIES.values()) * copy
        assert large.details["set_copy"] == 500 * 64 * 4 and large.graph == small.graph
