"""The student's compiled CPU loops on and off, interleaved in one process.

Times one matching iteration (``step_profile.build``: CIFAR-10 shapes, ConvNet-3 width 128,
DSA on, one torch thread) with the C tile transforms and tile products, the norm block's C
passes and the images' matmul input gradient ("on"), and with the PyTorch forms they replace
("off": ``torch.bmm`` for the products, oneDNN for the images' gradient; the rest is what
``DATADISTILL_C_KERNELS=0`` gives), alternating on/off so that a busy host slows both alike.

    python benchmarks/ckernels.py --kinds unrolled_1 adjoint_1 --rounds 3 \
        --out benchmarks/results/ckernels_ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def _switches():
    """(module, attribute, value when off) for every compiled form."""
    from datadistill.models import convnet_ops, winograd

    return [(winograd, "_native", lambda name, t: None),
            (convnet_ops, "compiled_passes", lambda *maps: False),
            (convnet_ops, "_few_input_channels", lambda *args: False)]


def _set(on: bool, saved: list) -> None:
    for (module, name, off), value in zip(_switches(), saved, strict=True):
        setattr(module, name, value if on else off)


def main(argv: list[str] | None = None) -> int:
    import step_profile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["unrolled_1", "adjoint_1"],
                   choices=["unrolled_1", "adjoint_1", "unrolled_10", "adjoint_10"])
    p.add_argument("--rounds", type=int, default=3, help="timed on/off pairs per kind")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    saved = [getattr(m, n) for m, n, _ in _switches()]
    rows = []
    for kind in args.kinds:
        step = step_profile.build(kind, 128)
        for on in (True, False):  # warm-up, both forms (the first call compiles)
            _set(on, saved)
            step()
        times: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.rounds):
            for on in (True, False):
                _set(on, saved)
                t0 = time.perf_counter()
                step()
                times["on" if on else "off"].append(time.perf_counter() - t0)
        _set(True, saved)
        on_s, off_s = (statistics.median(times[k]) for k in ("on", "off"))
        rows.append({"kind": kind, "on_s": on_s, "off_s": off_s, "off_over_on": off_s / on_s,
                     "times": times})
        print(f"# {kind}: on {on_s:.3f} s, off {off_s:.3f} s", file=sys.stderr, flush=True)
    print("| step | C loops on, s | off, s | off / on | on (each round) | off (each round) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        each = {k: ", ".join(f"{t:.2f}" for t in r["times"][k]) for k in ("on", "off")}
        print(f"| {r['kind']} | {r['on_s']:.3f} | {r['off_s']:.3f} | {r['off_over_on']:.2f}x "
              f"| {each['on']} | {each['off']} |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "cpu": step_profile._cpu(),
                                        "torch": torch.__version__, "argv": sys.argv}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
