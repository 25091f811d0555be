"""Random-subset and full-data baselines under the classic protocol.

Reproduces the "Random" rows of the DC/MTT tables and a full-data ConvNet accuracy on real
data. Writes one JSON file per dataset with every run's accuracy and the settings used.

Example (the command behind benchmarks/RESULTS.md):
    python benchmarks/baselines.py --dataset mnist --root ../shared/data \
        --ipc 1 10 --runs 3 --full-epochs 2 --out benchmarks/results/baselines_mnist.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from datadistill.data import prepare
from datadistill.evaluation.baselines import baseline_full, baseline_random
from datadistill.runtime.devices import default_device


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", default=None)
    parser.add_argument("--ipc", type=int, nargs="*", default=[1, 10])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1000, help="classic protocol epochs")
    parser.add_argument("--full-epochs", type=int, default=0, help="0 skips the full-data run")
    parser.add_argument("--full-runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    data = prepare(args.dataset, args.root, zca=False, device="cpu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine()
    results["dataset"] = args.dataset
    for ipc in args.ipc:
        start = time.time()
        report = baseline_random(
            data, ipc, num_runs=args.runs, epochs=args.epochs, seed=args.seed,
            device=args.device, progress=True,
        )
        row = report.to_dict() | {"seconds": round(time.time() - start, 1)}
        results[f"random_ipc{ipc}"] = row
        out.write_text(json.dumps(results, indent=2))
        print(f"{args.dataset} random IPC {ipc}: {100 * report.mean:.2f} ± {100 * report.std:.2f}")
    if args.full_epochs:
        start = time.time()
        report = baseline_full(
            data, epochs=args.full_epochs, num_runs=args.full_runs, seed=args.seed,
            device=args.device, progress=True,
        )
        results[f"full_e{args.full_epochs}"] = report.to_dict() | {
            "seconds": round(time.time() - start, 1)
        }
        out.write_text(json.dumps(results, indent=2))
        print(f"{args.dataset} full data, {args.full_epochs} epochs: {100 * report.mean:.2f}")


if __name__ == "__main__":
    main()
