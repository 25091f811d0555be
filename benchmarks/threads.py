"""Wall time of the main job (`datadistill run`, MTT on digits) by torch thread count.

Runs the main job as shipped, each time from scratch in a fresh folder (experts, distillation,
evaluation), with ``--threads 1`` and ``--threads 2``, first on the machine as it is ("idle")
and then with one other busy process beside it: a single-threaded torch matmul loop, as another
user's job would be. The order is interleaved (1, 2 per condition) so that drift in the
machine's load hits both counts alike; compare counts within a condition as a ratio. Records
the wall time and the two accuracies of each run (the result must not depend on the count),
prints a markdown table, writes JSON.

    python benchmarks/threads.py                                  # the full main job, 4 runs
    python benchmarks/threads.py --repeats 2 --out benchmarks/results/threads.json
    python benchmarks/threads.py distill.iterations=10 evaluation.epochs=50   # quick look

``OMP_NUM_THREADS`` is removed from the children's environment so that ``--threads`` decides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPIN = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\n"
        "while True:\n    a = torch.tanh(a @ a)\n")


def child_env() -> dict[str, str]:
    """This environment with our source first on the path and no OMP/MKL thread setting."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def run_main_job(threads: int, overrides: list[str]) -> dict:
    """One `datadistill run` from scratch; wall seconds and the reported accuracies."""
    with tempfile.TemporaryDirectory(prefix="threads_") as tmp:
        cmd = [sys.executable, "-m", "datadistill", "run", *overrides, "--out", tmp,
               "--quiet", "--threads", str(threads)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=child_env(), cwd=ROOT, capture_output=True)
        seconds = time.perf_counter() - start
        report = json.loads((Path(tmp) / "eval.json").read_text())
    return {"threads": threads, "seconds": round(seconds, 1),
            "distilled": round(100 * report["distilled_convnet"]["mean"], 2),
            "random": round(100 * report["random_subset"]["mean"], 2)}


def measure(condition: str, counts: list[int], repeats: int, overrides: list[str]) -> list[dict]:
    """Every count ``repeats`` times, interleaved, with a busy process beside when asked."""
    spinner = None
    if condition == "busy":
        spinner = subprocess.Popen([sys.executable, "-c", SPIN], env=child_env())
        time.sleep(2)  # let it reach its loop
    rows = []
    try:
        for rep in range(repeats):
            for n in counts:
                row = {"condition": condition, "repeat": rep, **run_main_job(n, overrides)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| condition | threads | wall (s) | distilled (%) | random (%) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['threads']} | {r['seconds']:.0f} | "
                     f"{r['distilled']:.2f} | {r['random']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="key=value overrides of the main job")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--conditions", nargs="+", default=["idle", "busy"],
                   choices=["idle", "busy"])
    p.add_argument("--out", default="benchmarks/results/threads.json")
    args = p.parse_args(argv)
    rows = []
    for condition in args.conditions:
        rows += measure(condition, args.threads, args.repeats, args.overrides)
    print(table(rows))
    payload = {"rows": rows, "argv": sys.argv[1:], "cpus": os.cpu_count(),
               "torch": torch.__version__, "python": platform.python_version(),
               "machine": platform.machine()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
