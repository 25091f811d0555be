"""Markdown tables of the method and INFER benchmarks, read from their JSON results.

RESULTS.md's tables are pasted from this script's output, so no number is copied by hand:
    python benchmarks/tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# Published classic-protocol accuracies (%), as cited by FRePo for MTT; other methods
# published no MNIST/Fashion-MNIST numbers.
PUBLISHED = {("mnist", "mtt", 1): 91.4, ("mnist", "mtt", 10): 97.3,
             ("fashion_mnist", "mtt", 1): 75.1, ("fashion_mnist", "mtt", 10): 87.2}
# CIFAR-10, ConvNet, full training set and official budget (research note trajectory-matching.md:
# MTT, FTD, DATM and PAD papers; random subset from the MTT/DC table). Soft-label methods'
# numbers are with their soft labels; M-DATM published none for CIFAR-10.
PUBLISHED.update({("cifar10", "mtt", 1): 46.3, ("cifar10", "mtt", 10): 65.3,
                  ("cifar10", "ftd", 1): 46.8, ("cifar10", "ftd", 10): 66.6,
                  ("cifar10", "datm", 1): 46.9, ("cifar10", "datm", 10): 66.8,
                  ("cifar10", "pad", 1): 47.2, ("cifar10", "pad", 10): 67.4,
                  ("cifar10", "random", 1): 14.4, ("cifar10", "random", 10): 26.0})
ROWS = [  # (report key, label)
    ("distilled_convnet", "distilled set"),
    ("distilled_convnet_hard_labels", "same images, hard labels (argmax)"),
    ("ema_convnet", "EMA of the images (FTD)"),
    ("random_subset", "random real subset"),
    ("random_subset_soft", "random real subset, expert soft labels"),
]


def pct(rep: dict) -> str:
    return f"{100 * rep['mean']:.2f} ± {100 * rep['std']:.2f}"


def method_rows(dataset: str, prefix: str = "methods") -> list[str]:
    """One row per set and baseline of ``<prefix>_<dataset>*.json`` (the published number
    beside it)."""
    reports = {}
    for path in sorted(RESULTS.glob(f"{prefix}_{dataset}*.json")):
        reports.update(json.loads(path.read_text()))
    lines = []
    order = ["mtt", "ftd", "datm", "mdatm", "pad"]
    for key in sorted(reports, key=lambda k: (int(k.split("_ipc")[1]),
                                              order.index(k.split("_ipc")[0]))):
        method, ipc = key.split("_ipc")[0], int(key.split("_ipc")[1])
        rep = reports[key]
        runs = len(rep["distilled_convnet"]["accuracies"])
        epochs = rep["config"]["evaluation"]["epochs"]
        for field, label in ROWS:
            if field not in rep:
                continue
            published = PUBLISHED.get((dataset, method, ipc)) if field.startswith("dist") else None
            if field == "random_subset":
                published = PUBLISHED.get((dataset, "random", ipc))
            pub = "" if published is None or "hard" in field else f"{published}"
            agree = rep.get("hard_labels_class_order_fraction")
            if field.endswith("hard_labels") and agree is not None:
                label += f" ({100 * agree:.0f} % equal class order)"
            wall = rep[field].get("wall_seconds", rep["wall_seconds"]) / 60  # soft baseline: own
            lines.append(f"| {ipc} | {method} | {label} | {pct(rep[field])} | {runs} | "
                         f"{epochs} | {pub} | {wall:.0f} min |")
    return lines


def infer_rows(dataset: str, ipc: int = 10) -> list[str]:
    path = RESULTS / f"infer_{dataset}_ipc{ipc}.json"
    if not path.exists():
        return []
    rep = json.loads(path.read_text())
    labels = {"infer_protocol": ("INFER set", "INFER's student recipe"),
              "classic": ("INFER set", "classic"),
              "random_infer_protocol": ("random real subset, same teacher labels",
                                        "INFER's student recipe"),
              "random_classic": ("random real subset, same teacher labels", "classic")}
    lines = []
    for key, (what, protocol) in labels.items():
        if key in rep:
            r = rep[key]
            lines.append(f"| {what} | {protocol} | {r['n_images']} | {pct(r)} | "
                         f"{len(r['accuracies'])} | {r['wall_seconds'] / 60:.0f} min |")
    return lines


def window_rows(dataset: str) -> list[str]:
    """M-DATM's window search (mdatm_window.py), one row per candidate."""
    lines = []
    for path in sorted(RESULTS.glob(f"mdatm_window_{dataset}_ipc*.json")):
        reports = json.loads(path.read_text())
        for key in sorted(reports, key=lambda k: reports[k]["window"]["max_start_epoch"]):
            rep, win = reports[key], reports[key]["window"]
            window = f"[{win['min_start_epoch']}, {win['max_start_epoch']})"
            lines.append(
                f"| {rep['config']['ipc']} | {window} | "
                f"{win['fraction_of_datm']:g} | {pct(rep['distilled_convnet'])} | "
                f"{len(rep['distilled_convnet']['accuracies'])} | "
                f"{rep['config']['evaluation']['epochs']} | {rep['wall_seconds'] / 60:.0f} min |")
    return lines


def matching_rows(pattern: str) -> list[str]:
    """What the matching loop did, for the reports that record it (cifar10.py)."""
    lines = []
    for path in sorted(RESULTS.glob(pattern)):
        for key, rep in json.loads(path.read_text()).items():
            if "matching" not in rep:
                continue
            m, d = rep["matching"], rep["config"]["distill"]
            threshold = "off" if d.get("threshold") is None else f"{d['threshold']:g}"
            lines.append(
                f"| {path.stem} | {key} | {threshold} | {d['lr_teacher']:g} | "
                f"{m['skipped']} of {m['iterations']} | {m['loss_first20_mean']:.2f} | "
                f"{m['loss_last20_mean']:.2f} | {m['syn_lr_final']:.4f} | "
                f"{pct(rep['distilled_convnet'])} | {rep['wall_seconds'] / 60:.0f} min |")
    return lines


def main() -> None:
    head = ("| IPC | method | set | accuracy (%) | runs | eval epochs | published | "
            "wall (whole run) |\n|---|---|---|---|---|---|---|---|")
    for dataset in ("mnist", "fashion_mnist", "cifar10"):
        rows = method_rows(dataset)
        if rows:
            print(f"\n### {dataset}\n\n{head}")
            print("\n".join(rows))
    rows = method_rows("cifar10", prefix="long")
    if rows:
        print(f"\n### cifar10, 450 iterations\n\n{head}")
        print("\n".join(rows))
    rows = (matching_rows("methods_cifar10*.json")
            + matching_rows("mdatm_diagnostic_cifar10_*.json")
            + matching_rows("long_cifar10_*.json"))
    if rows:
        print("\n### Matching loop, cifar10\n\n| file | run | threshold | initial step size | "
              "iterations skipped | loss, first 20 | loss, last 20 | final step size | "
              "accuracy (%) | wall |\n|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    rows = window_rows("fashion_mnist")
    if rows:
        print("\n### M-DATM window search, fashion_mnist\n\n| IPC | window [T-, T+) | "
              "fraction k of DATM's width | accuracy (%) | runs | eval epochs | wall |\n"
              "|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    for dataset in ("fashion_mnist", "cifar10"):
        rows = infer_rows(dataset)
        if rows:
            print(f"\n### INFER, {dataset}, IPC 10\n\n| set | protocol | training images | "
                  "accuracy (%) | runs | wall |\n|---|---|---|---|---|---|")
            print("\n".join(rows))


if __name__ == "__main__":
    main()
