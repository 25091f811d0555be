"""Time and peak memory of one step under each CPU allocator setting, one fresh process each.

The settings (environment variables read when ``datadistill`` is imported, see its
``__init__``):

    defaults     THP_MEM_ALLOC_ENABLE=0 DATADISTILL_KEEP_FREED_MEMORY=0: PyTorch's and glibc's
    huge_pages   THP_MEM_ALLOC_ENABLE=1 DATADISTILL_KEEP_FREED_MEMORY=0: huge pages only
    kept         THP_MEM_ALLOC_ENABLE=1 DATADISTILL_KEEP_FREED_MEMORY=1: the package's default

The steps are those of ``benchmarks/step_profile.py`` (CIFAR-10 shapes, ConvNet-3 width 128,
one torch thread). For each (step, setting): one warm-up call, then ``--iterations`` timed
calls; seconds (median) and the process's peak RSS (``ru_maxrss``). The settings alternate
per step, in ``--rounds`` rounds.

    python benchmarks/allocator.py --kinds train unrolled_1 --iterations 3
    python benchmarks/allocator.py --kinds unrolled_10 adjoint_10 --iterations 1 \
        --out benchmarks/results/allocator_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "defaults": {"THP_MEM_ALLOC_ENABLE": "0", "DATADISTILL_KEEP_FREED_MEMORY": "0"},
    "huge_pages": {"THP_MEM_ALLOC_ENABLE": "1", "DATADISTILL_KEEP_FREED_MEMORY": "0"},
    "kept": {"THP_MEM_ALLOC_ENABLE": "1", "DATADISTILL_KEEP_FREED_MEMORY": "1"},
}


def worker(kind: str, iterations: int) -> dict:
    import datadistill  # noqa: I001  (first: its allocator settings apply to every tensor)
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from step_profile import build

    torch.set_num_threads(1)
    step = build(kind, 128)
    step()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"kind": kind, "times": times, "sec": statistics.median(times),
            "keeps_freed_memory": datadistill.KEEPS_FREED_MEMORY,
            "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(kind: str, setting: str, iterations: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--iterations", str(iterations)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=os.environ | SETTINGS[setting])
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)} ({setting})\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"setting": setting}


def table(rows: list[dict]) -> str:
    lines = ["| step | " + " | ".join(f"{s} s (peak RSS GB)" for s in SETTINGS) + " |",
             "|---|" + "---|" * len(SETTINGS)]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        cells = []
        for s in SETTINGS:
            got = [r for r in rows if r["kind"] == kind and r["setting"] == s]
            cells.append(" / ".join(f"{r['sec']:.2f} ({r['max_rss_mb'] / 1024:.2f})"
                                    for r in got) or "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="*", default=["train", "unrolled_1"])
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.iterations)))
        return 0
    rows = []
    for _ in range(args.rounds):
        for kind in args.kinds:
            for setting in args.settings:
                rows.append(run(kind, setting, args.iterations))
                print(f"# {kind} {setting}: {rows[-1]['sec']:.3f} s, "
                      f"{rows[-1]['max_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        from datadistill.io import write_json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json({"rows": rows, "argv": sys.argv[1:]}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
