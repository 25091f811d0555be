"""Trajectory-matching presets on real data under one documented CPU-scale protocol.

Runs the main pipeline (experts -> distillation -> classic evaluation) for each requested
method and IPC on MNIST or Fashion-MNIST, with the shipped `<dataset>/<method>_ipc<N>`
config and the CPU-scale overrides below, and writes every report to one JSON file. Soft-label
presets are also evaluated with hard labels (argmax), so the label effect is visible; FTD's
EMA set is evaluated beside its raw set.

The CPU-scale protocol (stated in benchmarks/RESULTS.md with the numbers) reduces the amount
of work and nothing else of a preset:
- every stage sees a seeded class-balanced subset of `--train-per-class` training images per
  class (the test split stays whole);
- `--experts` experts of `--expert-epochs` epochs, mini-batch `--expert-batch`, per-epoch
  monitoring accuracy on `--test-samples` test images; presets with the same expert recipe
  (e.g. FTD and DATM: GSAM, ZCA) share one store;
- the matching window is scaled into the short experts: T+ = `--max-start`, DATM's expanding
  window starts at T = T+ // 2 and reaches T+ at half the iterations; PAD's curriculum is
  scaled the same way (add phase ends at epoch 1, removals after epochs 2 and 3) and its
  difficulty is EL2N over `--score-models` networks of `--score-epochs` epochs;
- `--syn-steps` student steps on mini-batches of at most `--batch-syn` images, `--iterations`
  outer iterations, no evaluation while distilling (the last set is the result);
- FTD's EMA keeps its horizon relative to the run: decay d becomes 1 - 1/h with
  h = (iterations / official iterations) / (1 - d_official), so 0.9995 over 5000 iterations
  (h = 2000, 40 % of the run) becomes 1 - 1/32 over 80; with the official decay the EMA of
  a short run would be almost exactly the initial images;
- final evaluation: the classic protocol, `--runs` fresh networks of `--epochs` epochs;
  challenge scoring off. The random-subset baseline is drawn from the same subset, evaluated
  with the same protocol, for the methods in `--random-for`.

Example (each method/IPC pair is resumable: rerun the same command after an interruption):
    python benchmarks/methods.py --dataset fashion_mnist --root ../shared/data \\
        --methods mtt ftd datm mdatm pad --ipc 1 --epochs 1000 \\
        --out benchmarks/results/methods_fashion_mnist_ipc1.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from datadistill.config import config_to_dict
from datadistill.tm.config import expert_config, load_pipeline_config
from datadistill.tm.pipeline import run_pipeline

EXPANDING = ("datm", "pad")


def overrides(args: argparse.Namespace, method: str, ipc: int) -> list[str]:
    """The CPU-scale protocol as `key=value` overrides of the shipped config."""
    out = [f"data_root={args.root}"] if args.root else []
    out += [
        f"train_per_class={args.train_per_class}",
        f"experts.num_experts={args.experts}",
        f"experts.epochs={args.expert_epochs}",
        f"experts.batch_size={args.expert_batch}",
        f"experts.test_samples={args.test_samples}",
        f"distill.syn_steps={args.syn_steps}",
        f"distill.batch_syn={args.batch_syn}",
        f"distill.max_start_epoch={args.max_start}",
        f"distill.iterations={args.iterations}",
        f"distill.eval_every={args.iterations}",
        "distill.eval_runs=0",
        f"evaluation.runs={args.runs}",
        f"evaluation.epochs={args.epochs}",
        "evaluation.protocols=[classic]",
        f"evaluation.random_baseline={str(method in args.random_for).lower()}",
        f"seed={args.seed}",
    ]
    if method in EXPANDING:
        out += [f"distill.current_max_start_epoch={max(1, args.max_start // 2)}",
                f"distill.expansion_end={max(1, args.iterations // 2)}"]
    if method == "ftd":
        official = load_pipeline_config(f"{args.dataset}/{method}_ipc{ipc}").distill
        horizon = (args.iterations / official.iterations) / (1 - official.ema.ema_decay)
        out.append(f"distill.ema_decay={1 - 1 / max(horizon, 1.0):.6g}")
    if method == "pad":
        out += ["curriculum.schedule.add_end_epoch=1", "curriculum.schedule.rm_epoch_first=2",
                "curriculum.schedule.rm_epoch_second=3",
                f"curriculum.score_models={args.score_models}",
                f"curriculum.score_epochs={args.score_epochs}"]
    return out


def shared_expert_dir(cfg, root: Path) -> Path:
    """One store per distinct expert recipe (config, data subset and curriculum)."""
    recipe = {"experts": config_to_dict(expert_config(cfg)),
              "curriculum": config_to_dict(cfg.curriculum) if cfg.curriculum else None}
    recipe["experts"].pop("device", None)
    recipe["experts"].pop("data_root", None)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return root / f"experts-{digest}"


def build_parser(description: str) -> argparse.ArgumentParser:
    """The protocol's options; `mdatm_window.py` reuses them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default=None, help="e.g. ../shared/data")
    parser.add_argument("--methods", nargs="+", default=["mtt", "ftd", "datm", "mdatm", "pad"])
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--experts", type=int, default=2)
    parser.add_argument("--expert-epochs", type=int, default=4)
    parser.add_argument("--expert-batch", type=int, default=64)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--score-models", type=int, default=2)
    parser.add_argument("--score-epochs", type=int, default=2)
    parser.add_argument("--max-start", type=int, default=2)
    parser.add_argument("--syn-steps", type=int, default=20)
    parser.add_argument("--batch-syn", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--random-for", nargs="*", default=["mtt"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/bench", help="folder for experts and sets")
    parser.add_argument("--out", required=True)
    parser.add_argument("extra", nargs="*", help="further key=value overrides for every run")
    return parser


def run_one(args: argparse.Namespace, method: str, ipc: int, key: str,
            extra: list[str] = ()) -> dict:
    """One preset through the whole pipeline under the protocol; the report, with wall time."""
    name = f"{args.dataset}/{method}_ipc{ipc}"
    cfg = load_pipeline_config(name, overrides(args, method, ipc) + args.extra + list(extra))
    work = Path(args.work) / args.dataset
    start = time.time()
    report = run_pipeline(cfg, work / key, progress=True, expert_dir=shared_expert_dir(cfg, work))
    report["wall_seconds"] = round(time.time() - start, 1)
    report["protocol"] = vars(args)
    return report


def save(out: Path, key: str, report: dict) -> None:
    """Add one report to the results file (re-read first: two processes may share it)."""
    results = json.loads(out.read_text()) if out.exists() else {}
    results[key] = report
    out.write_text(json.dumps(results, indent=2))
    summary = {k: round(100 * v["mean"], 2) for k, v in report.items()
               if isinstance(v, dict) and "mean" in v}
    print(f"{key}: {summary}", flush=True)


def main() -> None:
    args = build_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    for ipc in args.ipc:
        for method in args.methods:
            key = f"{method}_ipc{ipc}"
            if key in results:
                continue  # finished earlier: the command is resumable
            save(out, key, run_one(args, method, ipc, key))


if __name__ == "__main__":
    main()
