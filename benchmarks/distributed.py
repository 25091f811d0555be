"""Throughput of 1 vs K processes under torchrun: expert training and adjoint distillation.

Everything goes through the command line a user runs, ``torchrun --nproc_per_node K -m
datadistill experts|distill CONFIG key=value ...``, one torch thread per process
(``OMP_NUM_THREADS=1``, ``--threads 1``), the process counts one after the other in the same
invocation (so that they share the machine's load), on the same inputs:

experts   ``--experts`` experts of ``--expert-epochs`` epochs of the config's recipe (default
          ``cifar10/mtt_ipc10``: ConvNet-3, 3x32x32, batch 256) on ``--train-per-class``
          real images per class. Time: the command's wall time minus its start-up, which is
          measured by the same command once more on the finished store (it then only
          imports, prepares the data, joins the group and finds nothing to train). Figure:
          experts per second.
distill   adjoint distillation at the config's shape (``cifar10/mtt_ipc10``: IPC 10, 100
          images, full batch per student step) with ``--syn-steps`` student steps and
          ``--iterations`` iterations, from the experts above; each iteration's own time is in
          ``metrics.jsonl``; the first is left out (warm-up). Figure: iterations per second.

The speed-up is K processes' figure over 1 process's. ZCA is off (``zca=false``) so that
start-up is not a 3072 x 3072 eigendecomposition per process; the shapes and the work per
expert epoch and per student step are those of the config. The student steps are fewer than
the config's 30 so that one iteration takes seconds, not a minute, on one CPU thread: the
adjoint split (each rank takes its share of every step's mini-batch) is the same at any
step count.

The lead's measurement (CIFAR-10 subset, idle 2-core machine; about 10 minutes):

    PYTHONPATH=src python benchmarks/distributed.py --root ../shared/data/cifar10-subset \\
        --procs 1 2 --experts 4 --expert-epochs 3 --train-per-class 200 \\
        --syn-steps 10 --iterations 5 --out benchmarks/results/distributed_cpu.json

A quick check of the plumbing (digits, seconds):

    PYTHONPATH=src python benchmarks/distributed.py --config digits/mtt_ipc1 --procs 1 2 \\
        --experts 2 --expert-epochs 3 --train-per-class 50 --syn-steps 4 --iterations 3 \\
        --out /tmp/distributed_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")


def overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides both stages take (the experts stage checks the distill window
    against the expert length, so it gets the distillation keys too)."""
    out = [f"experts.num_experts={args.experts}", f"experts.epochs={args.expert_epochs}",
           f"train_per_class={args.train_per_class}", "zca=false", "device=cpu",
           "distill.grad_mode=adjoint", f"distill.syn_steps={args.syn_steps}",
           f"distill.iterations={args.iterations}", "distill.max_start_epoch=1",
           "distill.eval_runs=0", f"distill.eval_every={args.iterations}",
           f"distill.checkpoint_every={args.iterations}"]
    if args.root:
        out.append(f"data_root={args.root}")
    return out + list(args.extra)


def launch(k: int, stage: str, out: Path, args: argparse.Namespace) -> float:
    """Run ``stage`` on ``k`` processes; wall seconds. Raises with the stderr tail on failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={k}", "-m", "datadistill", stage, args.config, "--out", str(out),
           "--quiet", "--threads", "1", *overrides(args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def measure_experts(k: int, work: Path, args: argparse.Namespace) -> dict:
    run = work / f"run{k}"  # the run folder: the store is run/experts
    wall = launch(k, "experts", run, args)
    startup = launch(k, "experts", run, args)  # finished store: start-up and checks only
    trained = max(wall - startup, 1e-9)
    return {"procs": k, "experts": args.experts, "wall_seconds": wall,
            "startup_seconds": startup, "train_seconds": trained,
            "experts_per_second": args.experts / trained}


def measure_distill(k: int, work: Path, store: Path, args: argparse.Namespace) -> dict:
    run = work / f"distill{k}"
    run.mkdir(parents=True, exist_ok=True)
    shutil.copytree(store, run / "experts")  # the same experts for every process count
    wall = launch(k, "distill", run, args)
    rows = [json.loads(r) for r in (run / "distill" / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "loss" in r]
    timed = times[1:] or times
    per_iter = sum(timed) / len(timed)
    return {"procs": k, "iterations": len(times), "wall_seconds": wall, "times": times,
            "seconds_per_iteration": per_iter, "iterations_per_second": 1.0 / per_iter}


def table(experts: list[dict], distill: list[dict]) -> str:
    """Markdown: one row per process count, with the speed-up over one process."""
    lines = ["| processes | experts/s | speed-up | iterations/s (adjoint) | speed-up |",
             "|---|---|---|---|---|"]
    base_e = next((r["experts_per_second"] for r in experts if r["procs"] == 1), None)
    base_d = next((r["iterations_per_second"] for r in distill if r["procs"] == 1), None)
    by_e = {r["procs"]: r for r in experts}
    by_d = {r["procs"]: r for r in distill}
    for k in sorted(set(by_e) | set(by_d)):
        e, d = by_e.get(k), by_d.get(k)
        cells = []
        for row, key, base in ((e, "experts_per_second", base_e),
                               (d, "iterations_per_second", base_d)):
            if row is None:
                cells += ["-", "-"]
            else:
                cells += [f"{row[key]:.4f}", f"{row[key] / base:.2f}x" if base else "-"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="cifar10/mtt_ipc10")
    p.add_argument("--root", default=None, help="data folder (CIFAR-10: the subset's parent)")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--experts", type=int, default=4, help="divisible by every process count")
    p.add_argument("--expert-epochs", type=int, default=3)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--syn-steps", type=int, default=10)
    p.add_argument("--iterations", type=int, default=5, help=">= 2 (the first is warm-up)")
    p.add_argument("--stages", nargs="+", default=["experts", "distill"],
                   choices=["experts", "distill"])
    p.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    p.add_argument("extra", nargs="*", help="further key=value overrides for both stages")
    args = p.parse_args(argv)
    uneven = [k for k in args.procs if args.experts % k]
    if uneven:
        p.error(f"--experts {args.experts} is not divisible by {uneven} processes: the "
                "ranks would train unequal shares and the figure would mix in idle time")
    if args.expert_epochs < 3:  # max_start_epoch 1 + expert_epochs 2 of the window
        p.error("--expert-epochs must be at least 3 (the distillation window needs 3 epochs)")
    experts, distill = [], []
    with tempfile.TemporaryDirectory(prefix="dd_distributed_") as tmp:
        work = Path(tmp)
        for k in args.procs:
            if "experts" in args.stages or k == args.procs[0]:
                row = measure_experts(k, work, args)
                if "experts" in args.stages:
                    experts.append(row)
                    print(f"# experts, {k} process(es): {row['experts_per_second']:.4f}/s",
                          file=sys.stderr, flush=True)
        store = work / f"run{args.procs[0]}" / "experts"
        for k in args.procs if "distill" in args.stages else []:
            row = measure_distill(k, work, store, args)
            distill.append(row)
            print(f"# distill, {k} process(es): {row['iterations_per_second']:.4f} it/s",
                  file=sys.stderr, flush=True)
    print(table(experts, distill))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "experts": experts, "distill": distill, "argv": sys.argv[1:],
        "overrides": overrides(args), "config": args.config, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
