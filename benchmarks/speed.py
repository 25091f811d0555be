"""Speed and memory of one trajectory-matching iteration: ours vs the official style.

The official MTT/FTD/DATM/PAD student is a ``ReparamModule``: one flat parameter vector whose
views are re-assigned into the wrapped module as plain attributes before every forward, then
the module's own forward (GroupNorm, generic double backward) runs. Ours is
:func:`datadistill.matching.student_forward` (hand-written ConvNet kernels with a lean double
backward, channels_last on CPU). Both run the same unroll (:func:`unroll_student`), loss and
outer SGD step, on the CIFAR-10 shape: ConvNet-3 width 128, 3x32x32 images, 10 classes;
IPC 1 with 50 student steps and IPC 10 with 30 steps (full batch), DSA on and off.

The official-style student runs twice: ``official``, in a process with this package's CPU
allocator settings (huge pages, freed memory kept: see ``datadistill/__init__.py``), which
isolates what the kernels gain; and ``official_default``, with PyTorch's and glibc's defaults
(``THP_MEM_ALLOC_ENABLE=0``, ``DATADISTILL_KEEP_FREED_MEMORY=0``), as the official code runs in
its own process. ``--impls`` picks a subset.

Each (configuration, implementation) runs in a fresh subprocess so that the peak memory is its
own: max RSS from ``resource.getrusage`` on CPU (tracemalloc does not see torch's allocations),
``torch.cuda.max_memory_allocated`` on CUDA. Prints a markdown table, writes JSON.

    python benchmarks/speed.py                              # full CIFAR-10 shape (slow on CPU)
    python benchmarks/speed.py --width 32 --steps-scale 0.1 --iterations 1   # quick look
    python benchmarks/speed.py --device cuda --out benchmarks/results/speed_cuda.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

CONFIGS = [(1, 50), (10, 30)]  # (ipc, syn_steps) of MTT's CIFAR-10 settings
IMPLS = ("official_default", "official", "ours")
_DEFAULT_ENV = {"THP_MEM_ALLOC_ENABLE": "0", "DATADISTILL_KEEP_FREED_MEMORY": "0"}


class FlatParamModule(nn.Module):
    """The official-style student: flat vector views re-assigned into the module per forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.fused = False  # the plain modules, as the official code runs them
        self.slots = []  # (owner module, attribute name, shape)
        for name, p in list(self.module.named_parameters()):
            owner_name, _, attr = name.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            delattr(owner, attr)
            self.slots.append((owner, attr, p.shape))
        self.sizes = [s.numel() for _, _, s in self.slots]

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for (owner, attr, shape), chunk in zip(self.slots, flat.split(self.sizes), strict=True):
            setattr(owner, attr, chunk.view(shape))
        return self.module(x)


def worker(args: argparse.Namespace) -> dict:
    """One configuration in this process: seconds per iteration and peak memory."""
    from datadistill.data.augment import DSA
    from datadistill.matching import StudentSteps, matching_loss, student_forward, unroll_student
    from datadistill.models import create_model, flatten_params

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("convnet", 3, 10, 32, width=args.width).to(dev)
    forward = student_forward(model) if args.impl == "ours" else FlatParamModule(model)
    import datadistill
    n = 10 * args.ipc
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 32, generator=gen).to(dev).requires_grad_()
    labels = torch.arange(10, device=dev).repeat_interleave(args.ipc)
    syn_lr = torch.tensor(0.01, device=dev, requires_grad=True)
    theta0 = flatten_params(model).to(dev)
    target = theta0 + 0.01 * torch.randn(theta0.numel(), generator=gen).to(dev)
    opt_img = torch.optim.SGD([images], lr=100.0, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=1e-7, momentum=0.5)
    dsa = DSA() if args.dsa else None
    base_rss = _max_rss_mb()

    def iteration() -> None:
        theta_n = unroll_student(forward, theta0, images, labels, syn_lr,
                                 StudentSteps(args.syn_steps, dsa=dsa), generator=gen)
        loss = matching_loss(theta_n, theta0, target)
        images.grad, syn_lr.grad = torch.autograd.grad(loss, [images, syn_lr])
        opt_img.step()
        opt_lr.step()

    times, cpu = [], []
    for i in range(args.warmup + args.iterations):
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        iteration()
        _sync(dev)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    out = {"impl": args.impl, "keeps_freed_memory": datadistill.KEEPS_FREED_MEMORY,
           "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"), "ipc": args.ipc,
           "syn_steps": args.syn_steps, "dsa": args.dsa,
           "width": args.width, "device": str(dev), "threads": torch.get_num_threads(),
           "sec_per_iter": statistics.median(times), "times": times,
           "cpu_sec_per_iter": statistics.median(cpu),  # all threads; robust to preemption
           "max_rss_mb": _max_rss_mb(), "rss_before_loop_mb": base_rss}
    if dev.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(args: argparse.Namespace, impl: str, ipc: int, steps: int, dsa: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--ipc", str(ipc),
           "--syn-steps", str(steps), "--width", str(args.width), "--device", args.device,
           "--iterations", str(args.iterations), "--warmup", str(args.warmup),
           "--threads", str(args.threads)] + (["--dsa"] if dsa else [])
    env = os.environ | (_DEFAULT_ENV if impl == "official_default" else {})
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown: wall and CPU seconds per iteration of each implementation that ran, and ours
    against each official-style run (CPU time is robust to a busy machine)."""
    mem = "cuda_max_allocated_mb" if rows and "cuda_max_allocated_mb" in rows[0] else "max_rss_mb"
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    others = [i for i in impls if i != "ours"]
    head = (["IPC", "steps", "DSA"] + [f"{i} s/it (CPU s/it)" for i in impls]
            + [f"ours vs {i} (CPU)" for i in others if "ours" in impls]
            + [f"{i} {mem}" for i in impls])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keyed = {(r["ipc"], r["syn_steps"], r["dsa"], r["impl"]): r for r in rows}
    for ipc, steps, dsa in sorted({(r["ipc"], r["syn_steps"], r["dsa"]) for r in rows}):
        got = {i: keyed[(ipc, steps, dsa, i)] for i in impls if (ipc, steps, dsa, i) in keyed}
        cells = [str(ipc), str(steps), "on" if dsa else "off"]
        cells += [f"{got[i]['sec_per_iter']:.3f} ({got[i]['cpu_sec_per_iter']:.3f})"
                  if i in got else "-" for i in impls]
        if "ours" in got:
            b = got["ours"]
            cells += [f"{got[i]['sec_per_iter'] / b['sec_per_iter']:.2f}x "
                      f"({got[i]['cpu_sec_per_iter'] / b['cpu_sec_per_iter']:.2f}x)"
                      if i in got else "-" for i in others]
        cells += [f"{got[i][mem]:.0f}" if i in got else "-" for i in impls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=128, help="ConvNet width (official: 128)")
    p.add_argument("--ipc", type=int, nargs="*", default=None, help="subset of IPC 1 / 10")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply the syn_steps (50 / 30) by this, for quick looks")
    p.add_argument("--dsa-modes", default="on,off", help="on,off | on | off")
    p.add_argument("--iterations", type=int, default=2, help="timed iterations per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--impls", nargs="*", default=list(IMPLS), choices=IMPLS,
                   help="which students to run (default: all three)")
    p.add_argument("--out", default="benchmarks/results/speed.json")
    # worker mode (one configuration, called by the parent in a fresh process)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--syn-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dsa", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.ipc = args.ipc[0]
        print(json.dumps(worker(args)))
        return 0
    rows = []
    modes = [m == "on" for m in args.dsa_modes.split(",")]
    for ipc, steps in CONFIGS:
        if args.ipc and ipc not in args.ipc:
            continue
        steps = max(1, round(steps * args.steps_scale))
        for dsa in modes:
            for impl in args.impls:  # same run, alternating, fresh process each
                rows.append(run_one(args, impl, ipc, steps, dsa))
                print(f"# {impl} ipc={ipc} steps={steps} dsa={dsa}: "
                      f"{rows[-1]['sec_per_iter']:.3f} s/it", file=sys.stderr)
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "argv": sys.argv[1:]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
