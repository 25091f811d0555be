"""Wall time of `python -m datadistill --version` for two source trees, alternated.

    python benchmarks/startup_time.py OLD_SRC NEW_SRC [--runs 5]

Each SRC is a `src` folder (the one holding `datadistill/`); it goes first on PYTHONPATH of a
fresh interpreter. The two trees run in turn (old, new, old, new, ...), so load on the machine
falls on both alike. Prints every time, then min and median per tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def time_version(src: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "datadistill", "--version"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="src folder of the older tree")
    parser.add_argument("new", help="src folder of the newer tree")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.runs):
        for name in ("old", "new"):
            times[name].append(time_version(getattr(args, name)))
    for name, values in times.items():
        print(f"{name}: " + " ".join(f"{v:.2f}" for v in values)
              + f"  min {min(values):.2f} s  median {statistics.median(values):.2f} s")
    ratio = statistics.median(times["old"]) / statistics.median(times["new"])
    print(f"median ratio old/new: {ratio:.1f}")


if __name__ == "__main__":
    main()
