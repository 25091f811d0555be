"""Trajectory-matching presets on real data under one documented CPU-scale protocol.

Runs the main pipeline (experts -> distillation -> classic evaluation) for each requested
method and IPC on MNIST or Fashion-MNIST, with the shipped `<dataset>/<method>_ipc<N>`
config and the CPU-scale overrides below, and writes every report to one JSON file. Soft-label
presets are also evaluated with hard labels (argmax), so the label effect is visible.

The CPU-scale protocol (stated in benchmarks/RESULTS.md with the numbers) reduces only the
amount of work: the number and length of the experts, the distillation iterations and the
evaluations made during distillation. The final evaluation is the classic protocol.

Example (each method/IPC pair is resumable: rerun the same command after an interruption):
    python benchmarks/methods.py --dataset fashion_mnist --root ../shared/data \
        --methods mtt ftd datm mdatm pad --ipc 1 10 --experts 5 --expert-epochs 8 \
        --iterations 200 --runs 3 --out benchmarks/results/methods_fashion_mnist.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from datadistill.pipeline import load_pipeline_config, run_pipeline


def overrides(args: argparse.Namespace, method: str) -> list[str]:
    """The CPU-scale protocol as `key=value` overrides of the shipped config."""
    out = [f"data_root={args.root}"] if args.root else []
    out += [
        f"experts.num_experts={args.experts}",
        f"experts.epochs={args.expert_epochs}",
        f"distill.iterations={args.iterations}",
        f"distill.eval_every={args.iterations // 2}",
        f"distill.eval_runs={args.search_runs}",
        f"distill.eval_epochs={args.search_epochs}",
        f"evaluation.runs={args.runs}",
        f"evaluation.epochs={args.epochs}",
        f"seed={args.seed}",
    ]
    if method in ("datm", "pad", "mdatm"):
        # The window must fit inside the shortened experts.
        out.append(f"distill.expansion_end={max(1, args.iterations // 2)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default=None, help="e.g. ../shared/data")
    parser.add_argument("--methods", nargs="+", default=["mtt", "ftd", "datm", "mdatm", "pad"])
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--experts", type=int, default=5)
    parser.add_argument("--expert-epochs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--search-runs", type=int, default=1)
    parser.add_argument("--search-epochs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/bench", help="folder for experts and sets")
    parser.add_argument("--out", required=True)
    parser.add_argument("extra", nargs="*", help="further key=value overrides for every run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    for ipc in args.ipc:
        for method in args.methods:
            key = f"{method}_ipc{ipc}"
            if key in results:
                continue  # finished earlier: the command is resumable
            name = f"{args.dataset}/{method}_ipc{ipc}"
            cfg = load_pipeline_config(name, overrides(args, method) + args.extra)
            start = time.time()
            report = run_pipeline(cfg, Path(args.work) / args.dataset / key, progress=True)
            report["wall_seconds"] = round(time.time() - start, 1)
            results[key] = report
            out.write_text(json.dumps(results, indent=2))
            summary = {k: round(100 * v["mean"], 2) for k, v in report.items()
                       if isinstance(v, dict) and "mean" in v}
            print(f"{name}: {summary}")


if __name__ == "__main__":
    main()
