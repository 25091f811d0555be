"""Every trajectory-matching preset on the CIFAR-10 subset under one CPU-scale protocol.

The protocol of `methods.py` (same pipeline, same shipped `cifar10/<method>_ipc<N>` configs,
same reductions of work, same resumable JSON), with three changes so that the presets'
mechanisms can act on CIFAR-10 (benchmarks/RESULTS.md section 11 states the numbers):

- windows are each preset's own, not one T+ for all: the official (T-, T, T+) at IPC 1, and
  at IPC 10 the official epochs times `--window-scale` (rounded up), so MTT/FTD's [0, 20)
  becomes [0, 5), DATM/PAD's expanding 10 -> 20 becomes 3 -> 5 and M-DATM's [0, 15) becomes
  [0, 4). DATM/PAD's window reaches T+ at the same fraction of the run as officially
  (iteration 1000 of 10000, so `--iterations` / 10);
- PAD's data schedule is scaled by the same factor as the IPC-10 windows (official add phase
  to epoch 20, removals after 40 and 60), so the matched epochs fall in the same phase of the
  curriculum as in the official IPC-1/10 runs (the add phase and just past it);
- every soft-label set is also evaluated beside a random subset with the same label kind:
  IPC random real images per class (same seeded draw as the hard-label baseline) labelled
  with the logits that the preset's own label rule gives them (the experts' final epoch,
  averaged over the experts that classify each image correctly, DATM's rule), evaluated
  with the same protocol, lr 0.01 and batch. The hard-label evaluation of a soft-label set
  uses the argmax of the learned logits; the report records how many of them equal the
  class-order labels (the challenge's), so the two can be told apart.

The run is 450 matching iterations per set (`--iterations`; 150 gives the shorter pass that
RESULTS section 11 also reports): about 13 minutes of one core at IPC 10, plus about 8
minutes for the three 200-epoch evaluations and the random subset beside them.

Two processes (one torch thread each), split by expert recipe so that no store is trained
by both (MTT: plain SGD; FTD and DATM share GSAM with ZCA; PAD: GSAM with its curriculum;
M-DATM: GSAM without ZCA):
    OMP_NUM_THREADS=1 python benchmarks/cifar10.py --root ../shared/data/cifar10-subset \\
        --methods mtt ftd datm --out benchmarks/results/methods_cifar10_a.json &
    OMP_NUM_THREADS=1 python benchmarks/cifar10.py --root ../shared/data/cifar10-subset \\
        --methods pad mdatm --out benchmarks/results/methods_cifar10_b.json
Each method/IPC pair is stored when done and skipped when the command is rerun; an
interrupted distillation resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from datadistill.artifacts.distilled import load_distilled
from datadistill.data import prepare
from datadistill.evaluation.protocols import evaluate
from datadistill.experts import ExpertStore
from datadistill.experts.train import ExpertConfig, build_model
from datadistill.matching.soft_labels import init_soft_labels
from datadistill.tm.config import load_pipeline_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import build_parser, overrides, run_one, save, shared_expert_dir  # noqa: E402

DEFAULTS = dict(dataset="cifar10", train_per_class=100, experts=2, expert_epochs=6,
                expert_batch=64, test_samples=1000, syn_steps=10, batch_syn=20,
                iterations=450, runs=3, epochs=200, random_for=["mtt", "mdatm"])
SCHEDULE = ("add_end_epoch", "rm_epoch_first", "rm_epoch_second")


def scaled(epoch: int | None, scale: float) -> int | None:
    """An official epoch count at CPU scale: rounded up, at least 1."""
    return None if epoch is None else max(1, math.ceil(scale * epoch))


def window_overrides(args, method: str, ipc: int) -> list[str]:
    """Each preset's own matching window (and PAD's schedule) at CPU scale."""
    official = load_pipeline_config(f"cifar10/{method}_ipc{ipc}")
    d, scale = official.distill, (1.0 if ipc == 1 else args.window_scale)
    w = d.window
    out = [f"distill.max_start_epoch={scaled(w.max_start_epoch, scale)}"]
    if w.min_start_epoch:
        out.append(f"distill.min_start_epoch={math.floor(scale * w.min_start_epoch)}")
    if w.window == "expanding":
        end = round(args.iterations * w.expansion_end / d.iterations)
        out += [f"distill.current_max_start_epoch={scaled(w.current_max_start_epoch, scale)}",
                f"distill.expansion_end={max(1, end)}"]
    if official.curriculum is not None:
        schedule = official.curriculum.schedule
        out += [f"curriculum.schedule.{k}={scaled(getattr(schedule, k), args.window_scale)}"
                for k in SCHEDULE]
    return out


def soft_random(args, method: str, ipc: int) -> dict:
    """A random real subset with the preset's own soft-label rule, classic protocol."""
    cfg = load_pipeline_config(f"cifar10/{method}_ipc{ipc}", overrides(args, method, ipc)
                               + args.extra + window_overrides(args, method, ipc))
    data = prepare("cifar10", cfg.data_root, zca=cfg.zca, train_per_class=cfg.train_per_class)
    gen = torch.Generator().manual_seed(args.seed + 2000)
    parts = []
    for c in range(10):  # ipc random indices of class c
        idx = torch.nonzero(data.train.labels == c).flatten()
        parts.append(idx[torch.randperm(len(idx), generator=gen)[:ipc]])
    pick = torch.cat(parts)  # (10 * ipc,) class-major
    images, hard = data.train.images[pick], data.train.labels[pick]
    store = ExpertStore(shared_expert_dir(cfg, Path(args.work) / args.dataset))
    finals = [store.load(i)[-1] for i in range(len(store))]  # final epoch, (P,) each
    model = build_model(ExpertConfig(model=cfg.model, model_kwargs=cfg.model_kwargs), data.info)
    logits = init_soft_labels(images, hard, finals, model).detach()  # (10 * ipc, 10)
    start = time.time()
    rep = evaluate(images, logits, data.test, lr=0.01, num_runs=args.runs, epochs=args.epochs,
                   batch_size=cfg.evaluation.batch_size, seed=args.seed + 2000, progress=True,
                   space=data.train.space)
    return rep.to_dict() | {"wall_seconds": round(time.time() - start, 1),
                            "argmax_equals_class": float((logits.argmax(1) == hard).float()
                                                         .mean())}


def matching_summary(run_dir: Path) -> dict:
    """What the matching loop did (from its metrics.jsonl): skips, loss and step size."""
    rows = [json.loads(line) for line in (run_dir / "distill" / "metrics.jsonl").open()
            if line.strip()]
    rows = [r for r in rows if "loss" in r]  # one row per iteration
    first, last = rows[:20], rows[-20:]
    return {"iterations": len(rows),
            "skipped": sum(bool(r.get("skipped")) for r in rows),
            "loss_first20_mean": sum(r["loss"] for r in first) / len(first),
            "loss_last20_mean": sum(r["loss"] for r in last) / len(last),
            "syn_lr_final": rows[-1]["syn_lr"]}


def class_order_agreement(report: dict, ipc: int) -> float:
    """Fraction of argmax labels equal to the class-order labels [0]*ipc + [1]*ipc + ..."""
    best = load_distilled(report["outputs"]["best"])
    order = torch.arange(best.hard_labels.max().item() + 1).repeat_interleave(ipc)
    return float((best.hard_labels.cpu() == order).float().mean())


def finished(results: dict, key: str, args, out: Path) -> bool:
    """Whether `key` is stored in `out` by a run of the same length; a stored run of another
    length is refused rather than silently kept under this command's settings."""
    if key not in results:
        return False
    stored = results[key].get("protocol", {}).get("iterations")
    if stored is not None and stored != args.iterations:
        raise SystemExit(
            f"{out} already holds {key} from a {stored}-iteration run, and this command asks "
            f"for {args.iterations}: pass --iterations {stored} to keep adding to that file, "
            f"or --out a new file (and --work a new folder) for {args.iterations} iterations")
    return True


def main() -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.set_defaults(**DEFAULTS)
    parser.add_argument("--window-scale", type=float, default=0.25)
    parser.add_argument("--soft-random-for", nargs="*", default=["datm", "pad"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    for ipc in args.ipc:
        for method in args.methods:
            key = f"{method}_ipc{ipc}"
            if finished(results, key, args, out):
                continue  # finished earlier: the command is resumable
            report = run_one(args, method, ipc, key, window_overrides(args, method, ipc))
            report["matching"] = matching_summary(Path(args.work) / args.dataset / key)
            if "distilled_convnet_hard_labels" in report:
                report["hard_labels_class_order_fraction"] = class_order_agreement(report, ipc)
            if method in args.soft_random_for:
                report["random_subset_soft"] = soft_random(args, method, ipc)
            save(out, key, report)


if __name__ == "__main__":
    main()
