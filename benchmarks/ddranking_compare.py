"""Classic vs DD-Ranking scoring of one distilled set, on real data, CPU-scale.

Makes one MTT set under the CPU-scale protocol of `benchmarks/methods.py` (same overrides:
3,000 training images, 2 experts of 4 epochs, 80 iterations; RESULTS.md section 4), then
scores it twice, each with its own random-subset baseline:

- classic: `evaluate` (learned lr, last epoch) beside `baseline_random` (lr 0.01);
- ddranking: `datadistill.evaluation.ddranking.score`, which trains the set, a random
  subset with the same label type (lr searched), and the full-data reference, and reports
  HLR, IOR, LRS and ARS per round.

Both protocols train for `--epochs` epochs (the classic loop runs epochs + 1 with its lr
decay after epoch epochs // 2 + 1; DD-Ranking's StepLR steps at epochs // 2), test every
`--test-every` epochs on the same fixed class-balanced `--test-per-class` subset of the test
split, and run `--runs` rounds. DD-Ranking's full-data reference (the protocol's 3,000
training images, no augmentation, the package's full-data batch: 512 when RESULTS 9 was
measured, now 256) is trained once for `--full-epochs` epochs and
reused by every round (its cached-accuracy mode). `--part` runs one protocol, so the two can
run side by side; every part is resumable (a finished part is skipped).

Example (RESULTS.md section 9):
    python benchmarks/ddranking_compare.py --dataset fashion_mnist --root ../shared/data \\
        --ipc 10 --epochs 40 --runs 3 --test-every 10 --test-per-class 200 --full-epochs 4 \\
        --part ddranking --out benchmarks/results/ddranking_fashion_mnist_ipc10.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datadistill.data import prepare  # noqa: E402
from datadistill.tm.config import distill_config, load_pipeline_config
from datadistill.tm.pipeline import train_pipeline_experts  # noqa: E402, E501
from methods import build_parser, overrides  # noqa: E402


def make_set(args, work: Path):
    """The MTT set of the methods.py protocol (distill resumes; experts are reused)."""
    from datadistill.artifacts.distilled import load_distilled
    from datadistill.tm.distill import distill

    ipc = args.ipc[0]
    cfg = load_pipeline_config(f"{args.dataset}/mtt_ipc{ipc}", overrides(args, "mtt", ipc))
    data = prepare(cfg.dataset, cfg.data_root, zca=cfg.zca, train_per_class=cfg.train_per_class)
    done = work / "distill" / "metrics.jsonl"
    if (work / "distill" / "best" / "meta.json").is_file() and done.is_file() and len(
            done.read_text().splitlines()) >= args.iterations:  # finished: read it back only
        return cfg, data, load_distilled(work / "distill" / "best")
    store = train_pipeline_experts(cfg, work / "experts", data=data, progress=True)
    result = distill(distill_config(cfg, expert_dir=str(work / "experts")), work / "distill",
                     data=data, store=store, progress=True)
    return cfg, data, load_distilled(result.best_dir)


def test_subset(test, per_class: int, seed: int):
    """A fixed class-balanced subset of the test split (both protocols test on the same one)."""
    from dataclasses import replace

    from datadistill.evaluation.baselines import random_subset

    if per_class <= 0:
        return test
    x, y = random_subset(test, per_class, torch.Generator().manual_seed(seed + 77))
    return replace(test, images=x, labels=y)


def classic(args, data, ds) -> dict:
    """Classic protocol: the set (learned lr; last and best of periodic) and the random subset."""
    from datadistill.evaluation.baselines import baseline_random
    from datadistill.evaluation.protocols import evaluate

    syn = evaluate(ds.images, ds.labels, data.test, lr=ds.lr, num_runs=args.runs,
                   epochs=args.epochs, seed=args.seed + 1000, report="both",
                   period=args.test_every, progress=True, space=ds.space)
    rdm = baseline_random(data, ds.ipc, num_runs=args.runs, epochs=args.epochs,
                          seed=args.seed + 2000, progress=True)
    return {"distilled": syn.to_dict(), "random_subset": rdm.to_dict()}


def ddranking(args, data, ds) -> dict:
    """DD-Ranking protocol (MTT's config) with the epochs scaled as stated in RESULTS.md."""
    from datadistill.evaluation.ddranking import full_reference, preset_for, score

    half = max(1, args.epochs // 2)
    cfg = preset_for("mtt", rounds=args.runs, ars=args.ars,
                     train={"epochs": args.epochs, "step_size": half,
                            "test_every": args.test_every},
                     full={"epochs": args.full_epochs, "step_size": max(1, args.full_epochs // 2),
                           "test_every": args.test_every})
    full = full_reference(data, cfg, seed=args.seed)  # once, reused by every round
    cfg.full_accuracy = full.best
    partial = Path(args.out).with_suffix(".partial.json")

    def save_partial(r, rep):  # a long run keeps its finished rounds
        partial.write_text(json.dumps({**rep.to_dict(), "full_reference": full.__dict__},
                                      indent=2) + "\n")
        print(f"round {r + 1} done: {rep}", flush=True)

    report = score(ds.images, ds.labels, data, cfg, syn_lr=ds.lr, seed=args.seed,
                   progress=True, on_round=save_partial).to_dict()
    report["full_reference"] = full.__dict__
    return report


def full_only(args, data, ds) -> dict:
    """A longer full-data reference alone (`--full-epochs`), to recompute HLR and LRS from the
    same per-round accuracies (DD-Ranking's cached full-data accuracy)."""
    from datadistill.evaluation.ddranking import full_reference, preset_for

    cfg = preset_for("mtt", full={"epochs": args.full_epochs,
                                  "step_size": max(1, args.full_epochs // 2),
                                  "test_every": args.test_every})
    return full_reference(data, cfg, seed=args.seed).__dict__


def rescored(d: dict, full: float) -> dict:
    """HLR and LRS of each round again, with another full-data accuracy."""
    from datadistill.evaluation.scores import hard_label_recovery, label_robust_score

    hlr = [hard_label_recovery(full, r["syn_hard"]["best"]) for r in d["rounds"]]
    return {"hlr": hlr, "lrs": [label_robust_score(h, r["ior"]) for h, r in
                                zip(hlr, d["rounds"], strict=True)]}


def pct(values) -> str:
    import numpy as np

    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def table(out: Path) -> str:
    """The RESULTS.md rows from the JSON file (either part may be missing)."""
    res = json.loads(out.read_text())
    rows = ["| protocol | set | accuracy (%) | lr | reported | rounds |",
            "|---|---|---|---|---|---|"]
    if "classic" in res:
        syn, rdm = res["classic"]["distilled"], res["classic"]["random_subset"]
        n = len(syn["accuracies"])
        rows.append(f"| classic | MTT set | {pct(syn['accuracies'])} | learned "
                    f"{syn['settings']['lr']:.4g} | last epoch | {n} |")
        rows.append(f"| classic | MTT set | {pct(syn['settings']['best_accuracies'])} | learned "
                    f"{syn['settings']['lr']:.4g} | best of tests every "
                    f"{syn['settings']['period']} epochs | {n} |")
        rows.append(f"| classic | random subset, hard labels | {pct(rdm['accuracies'])} | 0.01 "
                    f"(fixed) | last epoch | {len(rdm['accuracies'])} |")
    if "ddranking" in res:
        d = res["ddranking"]
        rounds = d["rounds"]
        lrs = sorted({r["random"]["lr"] for r in rounds})
        rows.append(f"| ddranking | MTT set | {pct([r['syn']['best'] for r in rounds])} | learned "
                    f"{rounds[0]['syn']['lr']:.4g} | best of tests every 10 epochs | "
                    f"{len(rounds)} |")
        rows.append(f"| ddranking | random subset, hard labels | "
                    f"{pct([r['random']['best'] for r in rounds])} | searched: {lrs} | best of "
                    f"tests every 10 epochs | {len(rounds)} |")
        full = d["full_reference"]
        rows.append(f"| ddranking | full data (all training images, no aug, "
                    f"{full['tested_epochs'][-1]} epochs) | {100 * full['best']:.2f} | "
                    f"0.01 | best of tests | 1 |")
        rows.append("")
        rows.append("| score | mean ± std (%) | per round (%) |")
        rows.append("|---|---|---|")
        for key in ("hlr", "ior", "lrs", "ars"):
            if key in d["summary"]:
                s = d["summary"][key]
                per = ", ".join(f"{100 * v:.2f}" for v in s["values"])
                rows.append(f"| {key.upper()} | {pct(s['values'])} | {per} |")
        for key, full in res.items():
            if key.startswith("full_"):
                again = rescored(d, full["best"])
                for name, vals in again.items():
                    per = ", ".join(f"{100 * v:.2f}" for v in vals)
                    rows.append(f"| {name.upper()}, full data {key[5:]} epochs "
                                f"({100 * full['best']:.2f} %) | {pct(vals)} | {per} |")
    return "\n".join(rows)


def main() -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--set-only", action="store_true", help="stop after making the set")
    parser.add_argument("--part", choices=["classic", "ddranking", "both", "full"],
                        default="both", help="full: only a full-data reference of --full-epochs")
    parser.add_argument("--test-every", type=int, default=10)
    parser.add_argument("--test-per-class", type=int, default=0, help="0: the whole test split")
    parser.add_argument("--full-epochs", type=int, default=200)
    parser.add_argument("--ars", action="store_true", help="also train without augmentation")
    parser.add_argument("--table", action="store_true", help="print the RESULTS.md rows")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work) / f"{args.dataset}_ddranking_mtt_ipc{args.ipc[0]}"
    start = time.time()
    cfg, data, ds = make_set(args, work)
    print(f"set ready in {time.time() - start:.0f} s: {tuple(ds.images.shape)}, lr {ds.lr:.4g}",
          flush=True)
    if args.set_only:
        return
    from dataclasses import replace

    data = replace(data, test=test_subset(data.test, args.test_per_class, args.seed))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = (("classic", classic), ("ddranking", ddranking))
    if args.part == "full":
        parts = ((f"full_{args.full_epochs}", full_only),)
    for part, func in parts:
        results = json.loads(out.read_text()) if out.exists() else {}
        if args.part not in (part, "both", "full") or part in results:
            continue  # finished earlier: the command is resumable
        t0 = time.time()
        report = func(args, data, ds)
        report["wall_seconds"] = round(time.time() - t0, 1)
        report["protocol_args"] = vars(args)
        results = json.loads(out.read_text()) if out.exists() else {}  # another part may have
        results[part] = report
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{part} done in {report['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
