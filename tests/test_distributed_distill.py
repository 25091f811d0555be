"""Adjoint distillation shared by two processes (torchrun, gloo on CPU) equals one process.

Each student step's mini-batch is split between the ranks and the partial gradients are
all-reduced (matching/adjoint.py), so the synthetic set, labels and learned step size after a
few iterations must equal the single-process run to rounding (1e-5). The launches use
``python -m torch.distributed.run --standalone`` on the embedded digits at toy scale.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datadistill.artifacts.distilled import load_distilled
from datadistill.cli import main
from datadistill.data import prepare
from datadistill.errors import CompatibilityError
from datadistill.experts import ExpertConfig, train_experts
from datadistill.matching import student_forward
from datadistill.matching.adjoint import AdjointGrads, check_shared_batch
from datadistill.matching.adjoint_steps import (
    Replay,
    StepRecord,
    Sums,
    chunks,
    step_gradient,
    step_vjp,
)
from datadistill.matching.student import label_loss
from datadistill.models import create_model, flatten_params

SRC = Path(__file__).resolve().parents[1] / "src"
# toy scale: 10 images (IPC 1), mini-batches of 7 (shares of 3 and 4, then 1 and 2), 3 steps
TOY = ["distill.syn_steps=3", "distill.eval_runs=0", "distill.eval_every=0",
       "distill.batch_syn=7", "distill.expert_epochs=1", "distill.max_start_epoch=1",
       "distill.checkpoint_every=1"]


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    cfg = ExpertConfig(dataset="digits", num_experts=1, epochs=2, batch_size=64)
    folder = tmp_path_factory.mktemp("experts")
    train_experts(cfg, prepare("digits"), folder, progress=False)
    return folder


def _args(config: str, out: Path, experts: Path, extra: list[str]) -> list[str]:
    return ["distill", config, *TOY, *extra, "--experts", str(experts), "--out", str(out),
            "--quiet"]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "datadistill", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _assert_same_set(one: Path, two: Path) -> None:
    a, b = load_distilled(one / "distill" / "last"), load_distilled(two / "distill" / "last")
    assert a.extra["iteration"] == b.extra["iteration"]
    assert (a.extra["world_size"], b.extra["world_size"]) == (1, 2)
    assert a.images.shape == b.images.shape and float(a.images.abs().max()) > 0
    assert torch.allclose(a.images, b.images, rtol=0, atol=1e-5)
    if a.labels.dtype.is_floating_point:  # learned soft labels
        assert torch.allclose(a.labels, b.labels, rtol=0, atol=1e-5)
    else:
        assert torch.equal(a.labels, b.labels)
    assert b.lr == pytest.approx(a.lr, rel=1e-5)
    assert a.lr != pytest.approx(0.01, rel=1e-6)  # the step size did learn


def test_two_processes_resume_to_the_single_process_result(experts, tmp_path):
    """MTT, hard labels: 2 iterations under K=2, resumed under K=2 to 4, equal K=1 (4)."""
    one, two = tmp_path / "one", tmp_path / "two"
    adjoint = ["distill.grad_mode=adjoint"]
    assert main(_args("digits/mtt_ipc1", one, experts,
                      adjoint + ["distill.iterations=4"])) == 0
    first = _torchrun(_args("digits/mtt_ipc1", two, experts, adjoint + ["distill.iterations=2"]))
    assert first.returncode == 0, first.stderr
    assert load_distilled(two / "distill" / "last").extra["iteration"] == 2
    again = _torchrun(_args("digits/mtt_ipc1", two, experts, adjoint + ["distill.iterations=4"]))
    assert again.returncode == 0, again.stderr
    _assert_same_set(one, two)
    rows = (two / "distill" / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in rows if '"loss"' in r]) == 4  # rank 0 alone wrote, once per step


def test_two_processes_with_kept_graphs_give_the_single_process_result(experts, tmp_path):
    """distill.kept_graphs=3 under K=2 (each rank keeps the graphs of its shares of the last
    steps) gives the set of one process with the default kept_graphs=1."""
    one, two = tmp_path / "one", tmp_path / "two"
    adjoint = ["distill.grad_mode=adjoint", "distill.iterations=2"]
    assert main(_args("digits/mtt_ipc1", one, experts, adjoint)) == 0
    run = _torchrun(_args("digits/mtt_ipc1", two, experts, adjoint + ["distill.kept_graphs=3"]))
    assert run.returncode == 0, run.stderr
    _assert_same_set(one, two)


@pytest.mark.slow  # one more pair of processes (~15 s on 2 shared cores)
def test_two_processes_learn_the_same_soft_labels(experts, tmp_path):
    """DATM: learned soft labels and the correct-sample initialisation, under K=2."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ["distill.grad_mode=adjoint", "distill.iterations=3", "distill.threshold=null"]
    assert main(_args("digits/datm_ipc1", one, experts, extra)) == 0
    run = _torchrun(_args("digits/datm_ipc1", two, experts, extra))
    assert run.returncode == 0, run.stderr
    _assert_same_set(one, two)


def test_unrolled_mode_is_refused_under_two_processes(experts, tmp_path):
    run = _torchrun(_args("digits/mtt_ipc1", tmp_path / "two", experts,
                          ["distill.grad_mode=unrolled", "distill.iterations=1"]))
    assert run.returncode != 0
    assert "distill.grad_mode=adjoint" in run.stderr
    assert "cannot be split across processes" in run.stderr


# ----------------------------------------------------------------------------- in process


def test_batchnorm_student_cannot_share_its_batch():
    bn = create_model("convnet_bn", 1, 3, 8, width=8)
    with pytest.raises(CompatibilityError, match="2 processes share.*BatchNorm"):
        check_shared_batch(bn, 2, 10, "model=convnet_bn")
    check_shared_batch(bn, 1, 10)  # one process splits nothing
    check_shared_batch(create_model("convnet", 1, 3, 8, width=8), 2, 10)  # instance norm


def _toy(soft: bool):
    torch.manual_seed(0)
    model = create_model("convnet", 1, 3, 8, width=8).double()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(9, 1, 8, 8, generator=gen, dtype=torch.float64)
    labels = (torch.randn(9, 3, generator=gen, dtype=torch.float64) if soft
              else torch.arange(9) % 3)
    idx = torch.randperm(9, generator=gen)[:7]
    return student_forward(model), flatten_params(model), images, labels, StepRecord(idx, None)


@pytest.mark.parametrize("micro_batch", [None, 2])
@pytest.mark.parametrize("world", [2, 3, 8])
def test_rank_shares_partition_the_batch(world, micro_batch):
    rows = [i for r in range(world) for c in chunks(7, micro_batch, r, world)
            for i in range(7)[c.rows]]
    weights = [c.weight for r in range(world) for c in chunks(7, micro_batch, r, world)]
    assert rows == list(range(7))  # every row once, in order
    assert sum(weights) == pytest.approx(1.0)
    assert max(len(range(7)[c.rows]) for r in range(world)
               for c in chunks(7, micro_batch, r, world)) <= (micro_batch or 7)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("world", [2, 3])
def test_partial_step_products_sum_to_the_whole(soft, world):
    """Each rank's share of g_i, of H_i lambda and of the image/label/step-size products,
    summed over the ranks, equals the single-process values (float64)."""
    forward, theta, images, labels, rec = _toy(soft)
    loss_fn = label_loss(labels)
    lam = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64)
    alpha = torch.tensor(0.05, dtype=torch.float64)

    def sums():
        return Sums(torch.zeros_like(images), torch.zeros_like(labels) if soft else None,
                    torch.zeros((), dtype=torch.float64))

    single = Replay(forward, loss_fn, images, labels)
    whole_g = step_gradient(single, theta, rec)
    whole = sums()
    whole_lam = step_vjp(single, theta, rec, alpha, lam, whole)
    g, hv, parts = torch.zeros_like(theta), torch.zeros_like(theta), sums()
    for r in range(world):  # no process group: each call returns the rank's partial sum
        share = Replay(forward, loss_fn, images, labels, rank=r, world=world)
        g += step_gradient(share, theta, rec)
        hv += step_vjp(share, theta, rec, alpha, lam, parts) - lam
    assert torch.allclose(g, whole_g, rtol=1e-12, atol=1e-14)
    assert torch.allclose(lam + hv, whole_lam, rtol=1e-12, atol=1e-14)
    got = AdjointGrads(parts.images, parts.syn_lr, parts.labels)
    assert torch.allclose(got.images, whole.images, rtol=1e-12, atol=1e-14)
    assert float(whole.images.abs().max()) > 0
    assert torch.allclose(got.syn_lr, whole.syn_lr, rtol=1e-12)
    if soft:
        assert torch.allclose(got.labels, whole.labels, rtol=1e-12, atol=1e-14)


def _rank_pid(launcher: int, rank: str, timeout: float = 60) -> int:
    """The pid of the worker of `rank` among the launcher's children (from their environment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{launcher}/task").glob("*"):
            for child in (task / "children").read_text().split():
                try:
                    env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in env:
                    return int(child)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} appeared")


@pytest.mark.slow  # a torchrun pair (~15-20 s on 2 shared cores)
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_a_killed_rank_is_one_error_line_on_the_survivor(experts, tmp_path):
    """kill -9 of rank 1 during adjoint distillation (an all-reduce every student step): rank 0
    names the failed rank and the command that resumes, instead of gloo's traceback."""
    out = tmp_path / "two"
    args = _args("digits/mtt_ipc1", out, experts,
                 ["distill.grad_mode=adjoint", "distill.iterations=100000"])
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "--monitor-interval", "2", "-m", "datadistill", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        metrics = out / "distill" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and '"loss"' in metrics.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "distill did not start"
            time.sleep(0.2)
        os.kill(_rank_pid(proc.pid, "1"), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, err
    assert ours[0].startswith("error: rank 1 of 2 ended (its process is gone")
    assert "while rank 0 waited for it" in ours[0]
    assert "torchrun --nproc_per_node 2 -m datadistill distill digits/mtt_ipc1" in ours[0]
    assert "pair.cc" not in err and "Connection reset" not in err  # no raw gloo traceback
    assert "distributed_c10d.py" not in err


def test_a_lost_peer_is_translated_to_one_error_line(monkeypatch, capsys):
    """The translation alone: gloo's RuntimeError on rank 0 of 2, rank 1's process gone."""
    import socket

    from datadistill import cli, distributed

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names no process any more
    monkeypatch.setattr(distributed, "_PEERS", [(socket.gethostname(), os.getpid()),
                                                (socket.gethostname(), gone.pid)])
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["datadistill", "run", "digits/mtt_ipc1", "ipc=1"])
    args = cli.parse_args(cli.build_parser(), ["presets"])

    def collective(_):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1: "
                           "Connection reset by peer. This is typically caused by ...")

    args.func = collective
    assert cli._run(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: rank 1 of 2 ended")
    assert err.rstrip().endswith("torchrun --nproc_per_node 2 -m datadistill run "
                                 "digits/mtt_ipc1 ipc=1")
    args.func = lambda _: (_ for _ in ()).throw(RuntimeError("a bug, not a lost peer"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli._run(args)
