"""M-DATM's matching window, chosen by a documented search.

M-DATM (the ECCV-2024 challenge track 1 winner) is DATM without soft labels and with a
narrower matching window. Its code repository is empty and the paper's window values are not
available, so the shipped M-DATM configs derive the window from DATM's by one rule:

    keep T-, and set T+ = T- + ceil(k * (T+_DATM - T-)), a fixed window [T-, T+)

and this script measures which width fraction k to use. Each candidate k runs M-DATM (hard
labels, no ZCA, GSAM experts, fixed window) through the whole pipeline under the CPU-scale
protocol of `methods.py`, with longer experts so that the window has room: by default
8-epoch experts and a DATM proxy window [0, 4) (half the trajectory, as DATM's CIFAR-100 and
Tiny ImageNet IPC 10 windows [0, 50) and [10, 50) end at half of 100-epoch experts). The
candidates k = 0.25, 0.5, 0.75, 1 give T+ = 1, 2, 3, 4; k = 1 is DATM's full range, fixed.

Every candidate shares the same experts, initial images (same seed) and evaluation, so the
window is the only difference. Results go to one JSON file keyed `ipc<N>_tplus<T+>`; the
command is resumable (finished candidates are skipped), and two copies of it can run side by
side (each claims a candidate before running it). The choice and its numbers are in
benchmarks/RESULTS.md section 4.

Example:
    python benchmarks/mdatm_window.py --dataset fashion_mnist --root ../shared/data \\
        --ipc 10 --expert-epochs 8 --max-start 4 --epochs 300 --runs 2 \\
        --out benchmarks/results/mdatm_window_fashion_mnist_ipc10.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from datadistill.tm.presets import mdatm_max_start

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import build_parser, run_one, save  # noqa: E402


def candidate_windows(min_start: int, datm_max_start: int,
                      fractions: list[float]) -> list[tuple[float, int]]:
    """(k, T+) for each width fraction k of DATM's window [T-, T+_DATM); duplicates dropped."""
    if datm_max_start <= min_start:
        raise ValueError(f"DATM's window [{min_start}, {datm_max_start}) is empty; "
                         "pass a larger --max-start")
    seen: dict[int, float] = {}
    for k in fractions:
        if not 0 < k <= 1:
            raise ValueError(f"width fraction {k} is outside (0, 1]")
        seen.setdefault(mdatm_max_start(min_start, datm_max_start, k), k)
    return sorted(((k, t) for t, k in seen.items()), key=lambda kt: kt[1])


def claim(path: Path) -> bool:
    """Take a candidate for this process; False if a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False  # its owner is still running it
        except (ProcessLookupError, ValueError):
            path.write_text(str(os.getpid()))  # stale claim of an interrupted run
            return True
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def main() -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument("--min-start", type=int, default=0, help="T-, kept by every candidate")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.set_defaults(methods=["mdatm"], ipc=[10], expert_epochs=8, max_start=4,
                        epochs=300, runs=2, random_for=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for ipc in args.ipc:
        for k, tplus in candidate_windows(args.min_start, args.max_start, args.fractions):
            key = f"ipc{ipc}_tplus{tplus}"
            results = json.loads(out.read_text()) if out.exists() else {}
            lock = Path(args.work) / args.dataset / f"mdatm_window_{key}.claim"
            if key in results or not claim(lock):
                continue
            report = run_one(args, "mdatm", ipc, f"mdatm_window_{key}",
                             [f"distill.min_start_epoch={args.min_start}",
                              f"distill.max_start_epoch={tplus}"])
            report["window"] = {"min_start_epoch": args.min_start, "max_start_epoch": tplus,
                                "fraction_of_datm": k, "datm_max_start_epoch": args.max_start}
            save(out, key, report)
            lock.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
