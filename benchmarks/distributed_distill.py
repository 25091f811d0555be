"""Throughput of adjoint distillation in one process vs K processes (torchrun), same run.

Each student step's mini-batch is shared by the K processes (``matching/adjoint.py``), so on
K idle cores (one torch thread each) an iteration should take about 1/K of the time. This
runs the real loop (:func:`datadistill.tm.distill.distill`, adjoint mode, ``eval_runs=0``) at a
shape from ``benchmarks/memory.py`` (default: CIFAR-10, ConvNet-3, IPC 10, 30 steps, the whole
set of 100 images per step) on random tensors of the right shapes (a random expert store,
random real images: see memory.py), alternately with 1 and with K processes, ``--repeats``
times, each in fresh processes. Reported: the median seconds per iteration (wall, rank 0's
``time`` column, the first iteration of each run left out) per process count, the speedup
1 / K, and the largest difference between the final images of the two counts (they must agree
to rounding).

    python benchmarks/distributed_distill.py --procs 2 --iterations 3 --repeats 2 \\
        --out benchmarks/results/distributed_distill_cpu.json
    python benchmarks/distributed_distill.py --steps 3 --ipc 1 --iterations 2   # quick look

Needs K free cores (or K GPUs: ``--device cuda``, one per process); on a shared machine the
speedup says more about the other jobs than about the code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _memory_module():
    """benchmarks/memory.py (the random store and data of the right shapes)."""
    spec = importlib.util.spec_from_file_location("dd_memory_bench", ROOT / "benchmarks" /
                                                  "memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _cell(args):
    mem = _memory_module()
    return mem, mem.Cell(f"{args.dataset}_ipc{args.ipc}_steps{args.steps}", args.dataset,
                         args.ipc, args.steps, "adjoint", batch_syn=args.batch_syn,
                         micro_batch=args.micro_batch, iterations=args.iterations,
                         extra={"device": args.device})


def worker(args) -> None:
    """Under torchrun (or alone): run the distillation, rank 0 writes its times as JSON."""
    from datadistill import distributed
    from datadistill.artifacts.distilled import load_distilled
    from datadistill.tm.distill import distill

    torch.set_num_threads(1)
    distributed.init_from_env()
    mem, cell = _cell(args)
    cfg = mem._config(cell, args.store)
    data = mem._real_data(cell.dataset, cell.ipc)
    distill(cfg, args.run_dir, data=data, progress=False)
    if distributed.is_main():
        rows = [json.loads(line) for line in (Path(args.run_dir) / "metrics.jsonl").open()]
        times = [r["time"] for r in rows if "loss" in r]
        images = load_distilled(Path(args.run_dir) / "last").images
        torch.save(images, Path(args.run_dir) / "images.pt")
        Path(args.run_dir, "times.json").write_text(json.dumps(times))
    distributed.barrier()
    distributed.shutdown()


def run_once(args, procs: int, store: Path, tmp: Path, n: int) -> dict:
    run_dir = tmp / f"run_{n}_{procs}"
    own = [sys.executable, str(Path(__file__).resolve()), "--worker", "--store", str(store),
           "--run-dir", str(run_dir), *args.passthrough]
    cmd = own if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc_per_node", str(procs), *own[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed:\n{proc.stderr[-3000:]}")
    times = json.loads((run_dir / "times.json").read_text())
    return {"procs": procs, "times": times, "seconds": time.perf_counter() - start,
            "load_at_start": None, "images": str(run_dir / "images.pt")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=2, help="K, the processes to compare with 1")
    p.add_argument("--repeats", type=int, default=2, help="(1, K) pairs, interleaved")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100",
                                                            "tiny_imagenet"])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-syn", type=int, default=None)
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--iterations", type=int, default=3, help="per run (>= 2; first untimed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    args.passthrough = ["--dataset", args.dataset, "--ipc", str(args.ipc), "--steps",
                        str(args.steps), "--iterations", str(args.iterations), "--device",
                        args.device]
    if args.batch_syn:
        args.passthrough += ["--batch-syn", str(args.batch_syn)]
    if args.micro_batch:
        args.passthrough += ["--micro-batch", str(args.micro_batch)]
    mem, cell = _cell(args)
    runs = []
    with tempfile.TemporaryDirectory(prefix="dd_dist_") as tmp:
        store = Path(tmp) / "store"
        mem.write_store(store, cell)
        for n in range(args.repeats):
            for procs in (1, args.procs):
                load = os.getloadavg()
                run = run_once(args, procs, store, Path(tmp), n)
                run["load_at_start"] = load
                runs.append(run)
                print(f"{procs} process(es): s/it {[round(t, 2) for t in run['times']]}",
                      file=sys.stderr, flush=True)
        ref = torch.load(runs[0]["images"], weights_only=True)
        diff = max(float((torch.load(r["images"], weights_only=True) - ref).abs().max())
                   for r in runs)
    med = {k: statistics.median(t for r in runs if r["procs"] == k for t in r["times"][1:])
           for k in (1, args.procs)}
    summary = {"shape": cell.name, "procs": args.procs, "median_sec_per_iter": med,
               "speedup": med[1] / med[args.procs], "max_image_difference": diff,
               "runs": [{k: v for k, v in r.items() if k != "images"} for r in runs],
               "argv": sys.argv[1:], "torch": torch.__version__, "cpus": os.cpu_count()}
    print(f"{cell.name}: 1 process {med[1]:.2f} s/it, {args.procs} processes "
          f"{med[args.procs]:.2f} s/it, speedup {summary['speedup']:.2f}x; final images "
          f"agree to {diff:.1e}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
