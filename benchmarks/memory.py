"""Peak memory and time of one distillation iteration, unrolled vs adjoint, beside the estimate.

Every cell runs the real loop (:func:`datadistill.tm.distill.distill`, ``eval_runs=0``) for a few
iterations in its own subprocess, so that its peak RSS (``VmHWM``, and ``ru_maxrss``) is its
own. Inputs are random tensors of the right shapes: a random expert store with the model's P
written to a temporary folder by the parent, random real images (``ipc`` per class for the
initialisation, one per class as the test split). The two modes of a shape run one after the
other in the same invocation (interleaved), so their time ratio is measured under the same
machine load. Seconds per iteration leave out the first iteration.

Cells (``--cells``):
    steps     CIFAR-10 shape (ConvNet-3, 3x32x32, 10 classes), IPC 10, full batch, syn_steps
              10/20/40/80 and 30 (the time ratio); unrolled only where its estimate is below
              ``--max-gb``, else marked "does not fit here"
    official  adjoint only, the shipped MTT hyperparameters: CIFAR-100 IPC 10 and IPC 50,
              Tiny ImageNet IPC 10 (ConvNetD4, 64x64)
    tiny      CIFAR-10 shape, IPC 1, syn_steps 2, both modes: checks the plumbing in seconds
    imagenet1k  ImageNet-1K IPC 10 (1,000 x 10 images, ConvNetD4, 64 px), adjoint, batch_syn
              100, micro_batch 25, syn_steps 4, real images from a disk cache; one iteration:
              python benchmarks/memory.py --cells imagenet1k --iterations 1 \\
                  --out benchmarks/results/memory_imagenet1k.json
    store     one run cycling through 100 experts of 50 epochs (CIFAR-10 shape, syn_steps 1,
              IPC 1): RSS after every iteration, to show the store's share stays flat
    calibrate small CIFAR-10 cells (unrolled syn_steps 2 and 6; adjoint micro_batch 25, 100)
              from which :data:`datadistill.tm.memory.CALIBRATION` is fitted; calibrate_generic
              the same with the generic functional student (fast_student=false)

    python benchmarks/memory.py --cells steps official store \\
        --out benchmarks/results/memory_cpu.json

The time ratio of the two modes (``--repeats R``): the cells run R times in turn (unrolled,
adjoint, unrolled, adjoint, ...), each in a fresh process, and the summary gives, per shape,
the median CPU seconds of every timed iteration of each mode and their ratio, beside each
pair's own ratio (a busy machine slows both modes of a pair alike):

    python benchmarks/memory.py --cells steps --only cifar10_ipc10_steps30 \\
        --iterations 3 --repeats 3 --out benchmarks/results/memory_cpu_ratio.json

On a GPU (``--device cuda``) each cell's peak is the device's own,
``torch.cuda.max_memory_allocated`` (what the CUDA estimate predicts: no process base, no
data), beside the RSS; cells are skipped above 90 % of the GPU's memory
(``benchmarks/gpu_check.sh`` runs it so). A cell that fails makes the exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

GB = 1e9


@dataclass
class Cell:
    """One measured configuration."""

    name: str
    dataset: str  # shape only: cifar10 | cifar100 | tiny_imagenet
    ipc: int
    syn_steps: int
    mode: str  # unrolled | adjoint
    batch_syn: int | None = None
    micro_batch: int | None = None
    depth: int = 3
    iterations: int = 3
    experts: int = 2
    epochs: int = 50
    max_start_epoch: int = 20
    extra: dict = field(default_factory=dict)  # more DistillConfig fields
    device: str = "cpu"  # cpu (peak RSS) | cuda (peak CUDA memory, max_memory_allocated)


SHAPES = {"cifar10": (3, 32, 32, 10), "cifar100": (3, 32, 32, 100),
          "tiny_imagenet": (3, 64, 64, 200), "imagenet64": (3, 64, 64, 1000)}


def steps_cells(iterations: int) -> list[Cell]:
    cells = []
    for steps in (10, 20, 30, 40, 80):
        for mode in ("unrolled", "adjoint"):
            cells.append(Cell(f"cifar10_ipc10_steps{steps}", "cifar10", 10, steps, mode,
                              iterations=iterations))
    return cells


def official_cells(iterations: int) -> list[Cell]:
    """The shipped MTT configs (configs/<dataset>/mtt_ipcN.yaml), adjoint mode."""
    return [Cell("cifar100_ipc10", "cifar100", 10, 20, "adjoint", iterations=iterations),
            Cell("cifar100_ipc50", "cifar100", 50, 80, "adjoint", batch_syn=125,
                 iterations=iterations, max_start_epoch=40),
            Cell("tiny_ipc10", "tiny_imagenet", 10, 20, "adjoint", batch_syn=200, depth=4,
                 iterations=iterations, max_start_epoch=40)]


def imagenet1k_cells(iterations: int, syn_steps: int = 4) -> list[Cell]:
    """ImageNet-1K at the real IPC-10 shape (1,000 classes x 10 images, ConvNetD4, 64 px),
    adjoint with imagenet1k/mtt_ipc10's batch_syn 100 and micro_batch 25; the real images are
    read from a uint8 disk cache as ImageNet's are (``cached``), so none is held in memory.
    ``syn_steps`` is lowered from 10 to keep one iteration to minutes on one core: the adjoint
    peak does not depend on it (spilled snapshots)."""
    return [Cell("imagenet1k_ipc10", "imagenet64", 10, syn_steps, "adjoint", batch_syn=100,
                 micro_batch=25, depth=4, iterations=iterations, experts=1, epochs=12,
                 max_start_epoch=10, extra={"cached": True})]


def tiny_cells(iterations: int) -> list[Cell]:
    """A plumbing check (seconds on a CPU): CIFAR-10 shape, IPC 1, 2 steps, both modes."""
    return [Cell("tiny_ipc1_steps2", "cifar10", 1, 2, mode, iterations=iterations)
            for mode in ("unrolled", "adjoint")]


def store_cells() -> list[Cell]:
    return [Cell("store_100x50", "cifar10", 1, 1, "unrolled", iterations=100, experts=100,
                 extra={"track_rss": True})]


def calibrate_cells(iterations: int, generic: bool = False) -> list[Cell]:
    """Unrolled at 2 and 6 steps, adjoint at micro_batch 25 and 100 (fast or generic student)."""
    tag, extra = ("calib_generic", {"fast_student": False}) if generic else ("calib", {})
    cells = [Cell(f"{tag}_unrolled_steps{s}", "cifar10", 10, s, "unrolled",
                  iterations=iterations, extra=extra) for s in (2, 6)]
    cells += [Cell(f"{tag}_adjoint_micro{m}", "cifar10", 10, 6, "adjoint", micro_batch=m,
                   iterations=iterations, extra=extra) for m in (25, 100)]
    return cells


# ----------------------------------------------------------------------------- worker


def _real_data(dataset: str, ipc: int, cache_dir: str | None = None):
    """Random real data of the right shape: ipc images per class (train), one per class (test);
    with ``cache_dir``, random uint8 pixels in cache files read per batch (`CachedImages`)."""
    from datadistill.data import dataset_info
    from datadistill.data.cache import CachedImages
    from datadistill.data.info import ImageSet
    from datadistill.data.prepare import RealData

    info = dataset_info(dataset)
    c, h, w, k = SHAPES[dataset]
    gen = torch.Generator().manual_seed(0)

    def split(per_class: int) -> ImageSet:
        labels = torch.arange(k).repeat_interleave(per_class)  # (k * per_class,)
        if cache_dir is None:
            images = torch.randn(len(labels), c, h, w, generator=gen)
        else:  # written in blocks: the pixels never sit in this process's memory whole
            path = Path(cache_dir) / f"split{per_class}.u8"
            with open(path, "wb") as f:
                for start in range(0, len(labels), 1000):
                    n = min(1000, len(labels) - start)
                    f.write(torch.randint(0, 256, (n, c, h, w), generator=gen,
                                          dtype=torch.uint8).numpy().tobytes())
            images = CachedImages(path, len(labels), h, info.mean, info.std)
        return ImageSet(images=images, labels=labels, info=info, space="normalized")

    return RealData(train=split(ipc), test=split(1), info=info, zca=None)


def _config(cell: Cell, expert_dir: str):
    from datadistill.tm.distill import DistillConfig

    kw = dict(method="mtt", dataset=cell.dataset, ipc=cell.ipc, syn_steps=cell.syn_steps,
              batch_syn=cell.batch_syn, expert_epochs=2, max_start_epoch=cell.max_start_epoch,
              lr_img=1000.0, lr_teacher=0.01, iterations=cell.iterations, eval_every=0,
              eval_runs=0, checkpoint_every=10**6, expert_dir=expert_dir, memory_check=False,
              model_kwargs={"depth": cell.depth} if cell.depth != 3 else {}, device=cell.device)
    kw.update({k: v for k, v in cell.extra.items() if k not in ("track_rss", "cached")})
    if cell.mode != "unrolled" or cell.micro_batch is not None:
        kw.update(grad_mode=cell.mode, micro_batch=cell.micro_batch)
    return DistillConfig.of(**kw)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def worker(cell: Cell, expert_dir: str) -> dict:
    """Run the cell's distillation here and return its measurements."""
    from datadistill.tm.distill import distill

    torch.set_num_threads(1)
    cfg = _config(cell, expert_dir)
    cache = tempfile.TemporaryDirectory() if cell.extra.get("cached") else None
    data = _real_data(cell.dataset, cell.ipc, cache.name if cache else None)
    times, cpu, rss = [], [], []
    clock = [time.process_time()]

    def hook(it: int, row: dict) -> None:
        times.append(row["time"])
        cpu.append(time.process_time() - clock[0])  # one thread: robust to a busy machine
        clock[0] = time.process_time()
        if cell.extra.get("track_rss"):
            rss.append(_status_kb("VmRSS") * 1024)
        iteration_peak.append(_status_kb("VmHWM") * 1024)  # since the last reset
        _reset_peak()  # the next iteration's own peak, without set-up and final saves

    iteration_peak: list[int] = []

    cuda = cell.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_setup = _status_kb("VmRSS") * 1024
    with tempfile.TemporaryDirectory() as out:
        distill(cfg, out, data=data, progress=False, on_iteration=hook)
    timed = times[1:] or times
    gpu = {}
    if cuda:  # the device's own peak: what the CUDA estimate predicts (no process base)
        gpu = {"cuda_peak_bytes": torch.cuda.max_memory_allocated(),
               "cuda_reserved_bytes": torch.cuda.max_memory_reserved(),
               "gpu": torch.cuda.get_device_name()}
    return {"cell": asdict(cell), "times": times, **gpu,
            "sec_per_iter": sum(timed) / len(timed), "cpu_times": cpu,
            "cpu_sec_per_iter": sum(cpu[1:] or cpu) / len(cpu[1:] or cpu),
            "vmhwm_bytes": _status_kb("VmHWM") * 1024,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_loop_bytes": rss_setup, "rss_per_iteration_bytes": rss,
            "iteration_peak_bytes": iteration_peak}


# ----------------------------------------------------------------------------- parent


def estimate_cell(cell: Cell) -> dict:
    """The memory estimate of the cell (the real data here: ipc + 1 images per class)."""
    from datadistill.data import dataset_info
    from datadistill.tm.memory import estimate_config

    cfg = _config(cell, "unused")
    info = dataset_info(cell.dataset)
    held = 0 if cell.extra.get("cached") else (cell.ipc + 1) * info.num_classes
    est = estimate_config(cfg, info, real_images=held)
    chosen = est.unrolled if cell.mode == "unrolled" else est.adjoint
    return {"estimate_bytes": chosen.total, "parts": asdict(chosen)}


def write_store(directory: Path, cell: Cell) -> None:
    """A random expert store: ``cell.experts`` files of (epochs + 1, P) float32."""
    from datadistill.data import dataset_info
    from datadistill.experts.store import save_expert, write_meta
    from datadistill.experts.train import ExpertConfig, store_meta
    from datadistill.training import build_model

    info = dataset_info(cell.dataset)
    ecfg = ExpertConfig(model="convnet", model_kwargs=_config(cell, "x").model_kwargs,
                        epochs=cell.epochs, num_experts=cell.experts)
    model = build_model(ecfg, info, init_seed=0)
    p = sum(t.numel() for t in model.parameters())
    directory.mkdir(parents=True, exist_ok=True)
    write_meta(directory, store_meta(ecfg, info, model, info.dsa_strategy))
    gen = torch.Generator().manual_seed(1)
    for i in range(cell.experts):
        params = 0.05 * torch.randn(cell.epochs + 1, p, generator=gen)  # (E+1, P)
        save_expert(directory, i, params, torch.zeros(cell.epochs + 1))


def run_cell(cell: Cell, store_root: Path, max_gb: float) -> dict:
    est = estimate_cell(cell)
    row = {"cell": asdict(cell), **est}
    if est["estimate_bytes"] > max_gb * GB:
        row["skipped"] = f"does not fit here, estimate {est['estimate_bytes'] / GB:.1f} GB"
        return row
    key = f"{cell.dataset}_d{cell.depth}_{cell.experts}x{cell.epochs}"
    directory = store_root / key
    if not (directory / "meta.json").is_file():
        write_store(directory, cell)
    row["load_at_start"] = os.getloadavg()  # 1/5/15-minute load: how busy the machine was
    cmd = [sys.executable, __file__, "--worker", json.dumps(asdict(cell)), str(directory)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
        return row
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    row["wall_seconds"] = time.time() - t0
    row["error_vs_estimate"] = _peak(row) / row["estimate_bytes"] - 1
    return row


def _peak(row: dict) -> int:
    """The measured peak the estimate predicts: CUDA memory on a GPU, else peak RSS."""
    return row["cuda_peak_bytes"] if "cuda_peak_bytes" in row else row["vmhwm_bytes"]


def table(rows: list[dict]) -> str:
    """Markdown: estimate beside the measured peak; wall and CPU seconds per iteration."""
    lines = ["| cell | mode | steps | batch | micro | estimate GB | peak GB (RSS; CUDA on a GPU)"
             " | peak vs estimate | s/it | CPU s/it |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cell"]
        b = c["batch_syn"] or SHAPES[c["dataset"]][3] * c["ipc"]
        mode = c["mode"] + (f", kept_graphs {_kept(r)}" if _kept(r) != 1 else "")
        head = (f"| {c['name']} | {mode} | {c['syn_steps']} | {b} | "
                f"{c['micro_batch'] or '-'} | {r['estimate_bytes'] / GB:.2f} | ")
        if "vmhwm_bytes" in r:
            cpu = f"{r['cpu_sec_per_iter']:.1f}" if "cpu_sec_per_iter" in r else "-"
            lines.append(head + f"{_peak(r) / GB:.2f} | {100 * r['error_vs_estimate']:+.0f}"
                         f" % | {r['sec_per_iter']:.1f} | {cpu} |")
        else:
            lines.append(head + f"{r.get('skipped') or r.get('error')} | | | |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    """Per shape measured in both modes: adjoint / unrolled time per iteration.

    ``cpu``/``wall``: median over every timed iteration (the first of each process left out)
    of all the runs of a mode, adjoint over unrolled; ``pairs``: each (unrolled, adjoint) pair's
    ratio of mean CPU seconds per iteration, in the order they ran.
    """
    out: dict = {}
    keys = dict.fromkeys((r["cell"]["name"], _kept(r)) for r in rows
                         if r["cell"]["mode"] == "adjoint")
    for name, kept in keys:
        runs = {m: [r for r in rows if r["cell"]["name"] == name and r["cell"]["mode"] == m
                    and "cpu_times" in r and (m == "unrolled" or _kept(r) == kept)]
                for m in ("unrolled", "adjoint")}
        if not runs["unrolled"] or not runs["adjoint"]:
            continue
        name = name if kept == 1 else f"{name}, kept_graphs {kept}"
        cpu = {m: [t for r in rs for t in (r["cpu_times"][1:] or r["cpu_times"])]
               for m, rs in runs.items()}
        wall = {m: [t for r in rs for t in (r["times"][1:] or r["times"])]
                for m, rs in runs.items()}
        med = {m: statistics.median(v) for m, v in cpu.items()}
        wmed = {m: statistics.median(v) for m, v in wall.items()}
        out[name] = {"cpu_median_s": med, "wall_median_s": wmed,
                     "cpu": med["adjoint"] / med["unrolled"],
                     "wall": wmed["adjoint"] / wmed["unrolled"],
                     "timed_iterations": {m: len(v) for m, v in cpu.items()},
                     "pairs": [a["cpu_sec_per_iter"] / u["cpu_sec_per_iter"]
                               for u, a in zip(runs["unrolled"], runs["adjoint"], strict=False)]}
    return out


def _kept(row: dict) -> int:
    """The cell's distill.kept_graphs (1 where not set)."""
    return row["cell"].get("extra", {}).get("kept_graphs", 1)


def ratio_lines(summary: dict) -> str:
    return "\n".join(
        f"{name}: adjoint / unrolled = {r['cpu']:.3f} (CPU, median of "
        f"{r['timed_iterations']['adjoint']} / {r['timed_iterations']['unrolled']} timed "
        f"iterations: {r['cpu_median_s']['adjoint']:.1f} / {r['cpu_median_s']['unrolled']:.1f} "
        f"s), {r['wall']:.3f} (wall); per pair: "
        + ", ".join(f"{p:.3f}" for p in r["pairs"]) for name, r in summary.items())


def fit_calibration(rows: list[dict]) -> dict:
    """GRAPH, TRANSIENT and base from the four calibrate cells (see datadistill.tm.memory).

    GRAPH: slope of the unrolled peak over syn_steps / the traced step graph; GRAPH +
    TRANSIENT: slope of the adjoint peak over micro_batch / the traced bytes per image; base:
    the mean of the four intercepts once the other parts are taken off.
    """
    by = {(r["cell"]["mode"], r["cell"]["syn_steps"], r["cell"]["micro_batch"]): r
          for r in rows}
    (u2, u6), (a25, a100) = ([by[k] for k in sorted(k for k in by if k[0] == m)]
                             for m in ("unrolled", "adjoint"))
    b = u2["parts"]["details"]["batch"]
    fp = _footprint(Cell(**u2["cell"]))
    step = b * fp.per_image + fp.per_step
    ds = u6["cell"]["syn_steps"] - u2["cell"]["syn_steps"]
    graph = (u6["vmhwm_bytes"] - u2["vmhwm_bytes"]) / ds / step
    dm = a100["cell"]["micro_batch"] - a25["cell"]["micro_batch"]
    both = (a100["vmhwm_bytes"] - a25["vmhwm_bytes"]) / dm / fp.per_image
    bases = []
    for r in (u2, u6, a25, a100):
        c, p = r["cell"], r["parts"]
        if c["mode"] == "unrolled":
            g = c["syn_steps"] * step * graph + b * fp.per_image * (both - graph)
        else:
            g = c["micro_batch"] * fp.per_image * both + fp.per_step + p["snapshots"]
        bases.append(r["vmhwm_bytes"] - g - p["data"] - p["state"])
    return {"graph": graph, "transient": both - graph, "base": sum(bases) / 4, "bases": bases}


def _footprint(cell: Cell):
    from datadistill.data import dataset_info
    from datadistill.tm.memory import footprint_for

    return footprint_for(_config(cell, "unused"), dataset_info(cell.dataset))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["steps"],
                   choices=["steps", "official", "store", "calibrate", "calibrate_generic", "tiny",
                            "imagenet1k"])
    p.add_argument("--iterations", type=int, default=3, help="iterations per cell (>= 2)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the cells this many times in turn (interleaved modes)")
    p.add_argument("--max-gb", type=float, default=None,
                   help="skip cells estimated above it (default 12 on cpu, 90 %% of the GPU)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (peak CUDA memory per cell)")
    p.add_argument("--only", nargs="*", default=None, help="cell names to keep")
    p.add_argument("--modes", default="unrolled,adjoint")
    p.add_argument("--kept-graphs", nargs="+", type=int, default=[1],
                   help="adjoint cells: one run per distill.kept_graphs value, in turn")
    p.add_argument("--out", default="benchmarks/results/memory_cpu.json")
    p.add_argument("--table", nargs="+", default=None,
                   help="print the table of JSON results (estimates recomputed)")
    p.add_argument("--fit", default=None, help="fit CALIBRATION from a calibrate JSON file")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fit:
        print(json.dumps(fit_calibration(json.loads(Path(args.fit).read_text())["rows"])))
        return 0
    if args.table:  # estimates recomputed with the current CALIBRATION
        rows = [r for f in args.table for r in json.loads(Path(f).read_text())["rows"]]
        for r in rows:
            r.update(estimate_cell(Cell(**r["cell"])))
            if "vmhwm_bytes" in r:
                r["error_vs_estimate"] = r["vmhwm_bytes"] / r["estimate_bytes"] - 1
        print(table(rows))
        return 0
    if args.worker:
        cell = Cell(**json.loads(args.worker[0]))
        print(json.dumps(worker(cell, args.worker[1])))
        return 0
    makers = {"steps": lambda: steps_cells(args.iterations),
              "official": lambda: official_cells(args.iterations),
              "store": store_cells, "calibrate": lambda: calibrate_cells(args.iterations),
              "tiny": lambda: tiny_cells(args.iterations),
              "imagenet1k": lambda: imagenet1k_cells(args.iterations),
              "calibrate_generic": lambda: calibrate_cells(args.iterations, generic=True)}
    cells = [dataclasses.replace(c, device=args.device) for name in args.cells
             for c in makers[name]()
             if c.mode in args.modes.split(",") and (not args.only or c.name in args.only)]
    cells = [c if c.mode != "adjoint" or k == 1 else
             dataclasses.replace(c, extra={**c.extra, "kept_graphs": k})
             for c in cells for k in (args.kept_graphs if c.mode == "adjoint" else [1])]
    cells = cells * max(1, args.repeats)  # u, a, u, a, ...: both modes under the same load
    max_gb = args.max_gb
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        if max_gb is None:
            max_gb = 0.9 * torch.cuda.get_device_properties(torch.device(args.device)
                                                            ).total_memory / GB
    max_gb = 12.0 if max_gb is None else max_gb
    rows = []
    with tempfile.TemporaryDirectory(prefix="dd_memory_") as tmp:
        for cell in cells:
            rows.append(run_cell(cell, Path(tmp), max_gb))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))
    summary = ratios(rows)
    if summary:
        print(ratio_lines(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "ratios": summary, "argv": sys.argv[1:],
                               "device": args.device, "torch": torch.__version__},
                              indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
