"""Mutation check of the default test suite: does it catch small, realistic wiring bugs?

Each mutant is one exact, short source snippet and its replacement (a bug someone could
plausibly write: an off-by-one, a dropped argument, a constant changed). For every mutant the
script copies ``src/``, ``tests/``, ``benchmarks/`` (without results) and ``pyproject.toml``
to a temporary folder, applies the mutant there (the working tree is never touched) and runs
the default suite on the copy:

    python -m pytest -x -q -p no:cacheprovider        (PYTHONPATH = the copy's src)

plus ``-p _mutate_order``, a plugin written to the copy that runs the wiring tests first so
that a caught mutant stops within seconds (``--alphabetical``: pytest's own order). The
tests collected are the same either way; only the order they run in changes.

A mutant is *caught* when the suite fails, *missed* when it passes, *not applicable* when its
snippet is not found exactly once in its file (the code moved on: update the snippet; it is
reported, never silently skipped), and *timeout* when the suite ran past ``--timeout``. The
unmutated suite runs first (``baseline``); when it fails, nothing else is run.

    python benchmarks/mutate.py --list                  # mutants and whether each applies
    python benchmarks/mutate.py                         # all of them (~1 suite run each)
    python benchmarks/mutate.py --only best_is_worst --only no_final_eval
    python benchmarks/mutate.py          # on the shared machine

Writes ``benchmarks/results/mutation.json`` (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "src/datadistill/"
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
# Run first: the files that test the wiring, so that a caught mutant stops within seconds
# (-x). Collection stays in pytest's own order (some tests parametrize over registries that
# other test modules fill on import); a small plugin only reorders the collected items.
FIRST = ("test_loop_wiring.py", "test_cli_commands.py", "test_distill.py", "test_evaluate.py",
         "test_ckernels.py", "test_winograd.py", "test_kept_tiles.py", "test_image_conv.py",
         "test_infer.py", "test_pipeline.py", "test_main_job.py")
ORDER_PLUGIN = "_mutate_order"
ORDER_SOURCE = f'''"""Run the wiring tests first; written by benchmarks/mutate.py."""

FIRST = {FIRST!r}


def pytest_collection_modifyitems(config, items):
    rank = {{name: i for i, name in enumerate(FIRST)}}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable
'''


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # exact snippet, must occur exactly once in `file`
    new: str
    description: str


def _m(name: str, file: str, old: str, new: str, description: str) -> Mutant:
    return Mutant(name, PKG + file, old, new, description)


MUTANTS = [
    # ---- the ten bugs the suite used to miss (loop, protocols, INFER, CLI)
    _m("datm_window_off_by_one", "tm/distill.py", "window_bounds(cfg.window.window, it,",
       "window_bounds(cfg.window.window, it + 1,",
       "DATM window upper bound uses it + 1 instead of it"),
    _m("pad_mask_not_used", "tm/distill.py",
       "matching_loss(theta_n, theta0, target, _mask(cfg, theta_n, target))",
       "matching_loss(theta_n, theta0, target, None)",
       "PAD's parameter mask never reaches the matching loss"),
    _m("best_is_worst", "tm/outputs.py", 'row["mean"] > state.best_accuracy',
       'row["mean"] < state.best_accuracy', "best/ keeps the worst evaluation"),
    _m("expert_always_first", "tm/distill.py", "i = int(state.expert_order[state.expert_pos])",
       "i = int(state.expert_order[0])", "every iteration takes the first expert of the order"),
    _m("checkpoint_drops_ema", "tm/outputs.py",
       "state.ema = loop.ema.state_dict() if loop.ema is not None else None", "state.ema = None",
       "checkpoint loses FTD's image EMA (a resume restarts it)"),
    _m("classic_momentum_0_5", "evaluation/classic.py", "MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4",
       "MOMENTUM, WEIGHT_DECAY = 0.5, 5e-4", "classic protocol SGD momentum 0.9 -> 0.5"),
    _m("step_size_momentum_0_9", "tm/distill.py", "[state.syn_lr], lr=cfg.lr_lr, momentum=0.5",
       "[state.syn_lr], lr=cfg.lr_lr, momentum=0.9", "learnable step size momentum 0.5 -> 0.9"),
    _m("no_final_eval", "tm/outputs.py", "points = {cfg.iterations}", "points = set()",
       "last iteration not evaluated when iterations % eval_every != 0"),
    _m("infer_flip_never_flips", "infer/transforms.py",
       "torch.where(flip[:, None, None, None], x.flip(3), x)",
       "torch.where(flip[:, None, None, None], x, x)", "INFER's random flip never flips"),
    _m("validate_ignores_overrides", "cli.py",
       "cfg = load_config(args.config, args.overrides)\n    print(f\"{args.config}: valid",
       "cfg = load_config(args.config, [])\n    print(f\"{args.config}: valid",
       "`datadistill validate` drops its overrides"),
    # ---- the distillation loop
    _m("checkpoint_every_off_by_one", "tm/distill.py", "elif it % cfg.checkpoint_every == 0:",
       "elif (it + 1) % cfg.checkpoint_every == 0:", "checkpoints one iteration early"),
    _m("eval_ignores_learned_lr", "tm/outputs.py", "lr=float(state.syn_lr.detach()), num_runs",
       "lr=cfg.lr_teacher, num_runs", "evaluation during distillation ignores the learned lr"),
    _m("eval_seed_constant", "tm/outputs.py", "seed=stage_seeds(cfg.seed + it, 1)[0]",
       "seed=stage_seeds(cfg.seed, 1)[0]", "every evaluation draws the same networks"),
    _m("eval_without_dsa", "tm/outputs.py", 'dsa_strategy=run.dsa_strategy or "none"',
       'dsa_strategy="none"', "evaluation during distillation drops DSA"),
    _m("soft_labels_not_updated", "tm/distill.py",
       "learnable = [state.images, state.syn_lr] + ([state.labels] if is_soft(state.labels) "
       "else [])",
       "learnable = [state.images, state.syn_lr]", "DATM's soft labels never receive a gradient"),
    _m("label_momentum_fixed", "tm/distill.py", "lr=labels.lr_y, momentum=labels.momentum_y",
       "lr=labels.lr_y, momentum=0.5", "soft-label SGD ignores momentum_y"),
    _m("image_momentum_0_9", "tm/distill.py", "[state.images], lr=cfg.lr_img, momentum=0.5",
       "[state.images], lr=cfg.lr_img, momentum=0.9", "image SGD momentum 0.5 -> 0.9"),
    _m("threshold_inverted", "tm/distill.py", "value > cfg.threshold", "value < cfg.threshold",
       "DATM's threshold skips the good iterations instead of the bad ones"),
    _m("ema_never_updated", "tm/distill.py", "loop.ema.update(state.images)", "pass",
       "FTD's EMA never follows the images"),
    _m("resume_ignores_generators", "tm/distill.py", "g.set_state(state.generators[name])",
       "pass", "a resumed run restarts its random generators"),
    _m("labels_optimizer_not_checkpointed", "tm/outputs.py",
       "state.optimizers = {k: o.state_dict() for k, o in loop.optimizers.items()}",
       "state.optimizers = {k: o.state_dict() for k, o in loop.optimizers.items()\n"
       '                    if k != "labels"}',
       "checkpoint drops the soft labels' optimiser (momentum lost on resume)"),
    _m("max_experts_ignored", "tm/distill.py",
       "num = len(store) if cfg.max_experts is None else min(len(store), cfg.max_experts)",
       "num = len(store)", "max_experts has no effect"),
    _m("reshuffle_repeats_order", "tm/distill.py",
       "state.expert_order = torch.randperm(run.num_experts, generator=gen)",
       "state.expert_order = state.expert_order", "the expert order is never reshuffled"),
    # ---- evaluation protocols, experts, INFER
    _m("classic_weight_decay_dropped", "evaluation/classic.py",
       "MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4",
       "MOMENTUM, WEIGHT_DECAY = 0.9, 0.0", "classic protocol without weight decay"),
    _m("challenge_lr_not_fixed", "evaluation/protocols.py",
       'lr, model_kwargs["depth"] = DEFAULT_LR, 3',
       'model_kwargs["depth"] = 3', "challenge protocol trains with the given lr, not 0.01"),
    _m("expert_momentum_0_9", "experts/train.py", "momentum: float = 0.0  # MTT",
       "momentum: float = 0.9  # MTT", "MTT experts trained with momentum"),
    _m("teacher_momentum_ignored", "infer/teachers_train.py",
       "lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay",
       "lr=cfg.lr, momentum=0.0, weight_decay=cfg.weight_decay",
       "INFER's teachers trained without their momentum"),
    _m("infer_student_no_cosine", "infer/student.py",
       "schedule=cosine_schedule(opt, epochs)[0]", "schedule=None",
       "INFER's student lr is never annealed"),
    # ---- the pipeline (datadistill run)
    _m("run_without_random_baseline", "tm/pipeline.py", "if ev.random_baseline:", "if False:",
       "eval.json written without the random-subset baseline"),
    _m("pipeline_hard_label_eval_uses_soft", "tm/pipeline.py",
       "best.images, best.hard_labels, data.test", "best.images, best.labels, data.test",
       "the hard-label evaluation trains on the soft labels"),
    _m("pipeline_eval_ignores_learned_lr", "tm/pipeline.py", "kw = dict(model=model, lr=best.lr,",
       "kw = dict(model=model, lr=None,", "eval.json's distilled accuracy ignores the learned lr"),
    # ---- the command line
    _m("eval_zca_flag_ignored", "evaluation/commands.py", "zca=zca, download=args.download",
       "zca=False, download=args.download", "`eval --zca` does not reach the data"),
    _m("eval_lr_option_ignored", "evaluation/commands.py",
       "        labels = hard_labels_for(ds.labels, data.info.num_classes, args.hard_labels)\n"
       "    lr = args.lr if args.lr is not None else ds.lr",
       "        labels = hard_labels_for(ds.labels, data.info.num_classes, args.hard_labels)\n"
       "    lr = ds.lr", "`eval --lr` is ignored"),
    _m("eval_hard_labels_ignored", "evaluation/commands.py",
       "    if args.hard_labels:  # \"argmax\" of soft labels",
       "    if False:  # \"argmax\" of soft labels", "`eval --hard-labels` is ignored"),
    _m("eval_models_ignored", "evaluation/commands.py", 'models = args.models or ["convnet"]',
       'models = ["convnet"]', "`eval --models` is ignored"),
    _m("eval_protocol_ignored", "evaluation/commands.py", "protocol=args.protocol, lr=lr",
       'protocol="classic", lr=lr', "`eval --protocol challenge` runs the classic protocol"),
    _m("baseline_wrong_ipc", "evaluation/commands.py", "baseline_random(data, args.ipc,",
       "baseline_random(data, 1,", "`baseline random --ipc N` always uses IPC 1"),
    _m("distill_restart_ignored", "tm/commands.py", "resume=not args.restart", "resume=True",
       "`distill --restart` resumes anyway"),
    _m("distill_experts_option_ignored", "tm/commands.py",
       "store_dir = store_location(cfg, out, args.experts)",
       "store_dir = store_location(cfg, out, None)", "`distill --experts` is ignored"),
    # ---- the student's Winograd convolution kernels
    _m("winograd_filter_not_rotated", "models/winograd.py",
       "return _winograd([(dy, w, True)], INPUT_GRAD)[0]",
       "return _winograd([(dy, w, False)], INPUT_GRAD)[0]",
       "Winograd input gradient uses the filter unrotated"),
    _m("winograd_chunks_overwrite", "models/winograd.py",
       "du = _products(dm, v, transpose_a=True, out=du)  # (36, Cout, Cin)",
       "du = _products(dm, v, transpose_a=True)  # (36, Cout, Cin)",
       "Winograd filter gradient keeps only the last chunk of images"),
    _m("winograd_fused_grad_chunks_overwrite", "models/winograd.py",
       "                du = _products(dm, v, transpose_a=True, out=du)\n",
       "                du = _products(dm, v, transpose_a=True)\n",
       "the double backward's filter gradient from lx's shared tiles keeps only the last chunk"),
    _m("winograd_fused_grad_second_pair", "models/winograd.py",
       "if dy is not None and j == 0:", "if dy is not None and j == 1:",
       "the double backward's filter gradient reads the second term's map instead of lx"),
    _m("kept_tiles_stale_version", "models/winograd.py",
       "if hit is not None and hit[1] == x._version:", "if hit is not None:",
       "a kept tile transform serves a map that was changed in place"),
    _m("rebuild_keeps_forward_tiles_only", "matching/adjoint_steps.py",
       "REBUILD_KEEPS = (FORWARD, INPUT_GRAD)", "REBUILD_KEEPS = (FORWARD,)",
       "the adjoint rebuild keeps no transform of the gradients its input gradients take"),
    _m("kept_tiles_not_counted", "tm/memory.py",
       "graph += m * fp.tiles_per_image * scale", "graph += 0",
       "the memory estimate ignores the tile transforms a rebuilt step keeps"),
    _m("winograd_double_backward_native_weight", "models/convnet_ops.py",
       "term = _conv(x, lw, pad)", "term = F.conv2d(x, lw.flip(2, 3), None, 1, pad)",
       "the conv double backward's weight-adjoint term uses the filter rotated"),
    # ---- the compiled C kernels (tile transforms, the norm block's passes)
    _m("c_input_transform_sign", "models/winograd_tiles.c",
       "O(3) = 2 * (I(3) - I(1))", "O(3) = 2 * (I(3) + I(1))",
       "one row of the C input transform B^T has a wrong sign"),
    _m("c_output_transform_sign", "models/winograd_tiles.c",
       "O(1) = d12 + 2 * d34;", "O(1) = d12 - 2 * d34;",
       "one row of the C output transform A^T has a wrong sign"),
    _m("c_grad_transform_row", "models/winograd_tiles.c",
       "O(3) = f02 + f13;", "O(3) = f02 - f13;",
       "one row of the C output-gradient transform A repeats its neighbour's"),
    _m("winograd_sum_keeps_last_pair", "models/winograd.py",
       "m = f.products(v, out=m)", "m = f.products(v, out=None)",
       "a sum of two convolutions keeps only the second one's products"),
    _m("winograd_output_a_view", "models/winograd.py",
       "            y[s] = tiles.reshape(k, 4 * th, 4 * tw, co)[:, :h, :wd]\n    return out",
       "            y[s] = tiles.reshape(k, 4 * th, 4 * tw, co)[:, :h, :wd]\n"
       "    return y.permute(0, 3, 1, 2)",
       "the convolution returns a permuted view (autograd then adds gradients out of place)"),
    _m("c_image_conv_taps_transposed", "models/image_conv.c",
       "off[t] = ((k / 3) * wp + k % 3) * c + ci;", "off[t] = ((k % 3) * wp + k / 3) * c + ci;",
       "the image convolution's C loops read the filter's taps transposed"),
    _m("c_image_conv_second_tap_vector", "models/image_conv.c",
       "acc[p][1] += s * w1;", "acc[p][1] += s * w0;",
       "the image gradient's second vector of taps multiplies the first one's weights"),
    _m("c_image_conv_wgrad_last_image", "models/image_conv.c",
       "st_SUFFIX(q, ld_SUFFIX(q) + acc[t][v]);", "st_SUFFIX(q, acc[t][v]);",
       "the image convolution's weight gradient keeps only the last image's sum"),
    _m("c_filter_products_first_tap_only", "models/winograd_tiles.c",
       "for (int q = 0; q < nt; q++) {", "for (int q = 0; q < (nt > 0); q++) {",
       "the products' filter transform sums only each point's first tap"),
    _m("c_filter_grad_taps_transposed", "models/winograd_tiles.c",
       "for (long j = 0; j < cb; j++) out[j * 9 + t] = r[t][j];",
       "for (long j = 0; j < cb; j++) out[j * 9 + (t % 3) * 3 + t / 3] = r[t][j];",
       "the filter gradient's taps are written transposed"),
    _m("filter_products_unrotated", "models/winograd.py",
       "self.g = _mats(w.dtype)[2 if flip else 1]", "self.g = _mats(w.dtype)[1]",
       "the input gradient's products make the transform of the unrotated filter"),
    _m("norm_coefficient_shape_unchecked", "models/norm_passes.py",
       "if k.dtype == dtype and k.shape == (n, c, 1, 1) and k.is_contiguous():",
       "if k.dtype == dtype and k.is_contiguous():",
       "a per-channel coefficient is handed to the C pass as if it were per instance"),
    _m("c_norm_sum_against_z", "models/norm_act_pool.c",
       "sd[k] += (double)v * dy;", "sd[k] += (double)v * z[i + k];",
       "the C pass sums v * z where it should sum v * dy"),
    _m("c_pool_keeps_last_pixel", "models/norm_act_pool.c",
       "REAL acc = first ? v : out[j + k] + v;", "REAL acc = v;",
       "the C pooled pass keeps only the last pixel of each 2x2 window"),
    _m("c_norm_mask_without_shift", "models/norm_act_pool.c",
       "#define ON_SUFFIX(i) (ks[k] * z[(i) + k] + kt[k] > 0)",
       "#define ON_SUFFIX(i) (ks[k] * z[(i) + k] > 0)",
       "the C passes remake the ReLU mask without the norm's shift"),
    _m("c_norm_forward_pool_drops_a_pixel", "models/norm_act_pool.c",
       "o[k] = ((y00 + y01) + (y10 + y11)) * (REAL)0.25;",
       "o[k] = ((y00 + y01) + (y10 + y10)) * (REAL)0.25;",
       "the C forward's pooled output counts one pixel of each window twice"),
    _m("c_kernels_fast_math", "runtime/ckernels.py",
       '"-fno-trapping-math", "-fPIC"', '"-fno-trapping-math", "-ffast-math", "-fPIC"',
       "the C kernels are built with fast-math, which fuses and reorders their arithmetic"),
    _m("c_kernels_trapping_math", "runtime/ckernels.py",
       '"-march=native", "-fno-trapping-math",', '"-march=native",',
       "the C kernels are built with trapping math: the norm passes' mask stays a branch"),
    _m("relu_of_without_shift", "models/norm_passes.py",
       "return (z * s.view(n, c, 1, 1)).add_(t.view(n, c, 1, 1)).relu_()",
       "return (z * s.view(n, c, 1, 1)).relu_()",
       "a backward that falls back to PyTorch ops remakes the ReLU output without its shift"),
    _m("c_products_overwrite", "models/winograd_tiles.c",
       "if (acc && r < mr) {", "if (0 && r < mr) {",
       "the C tile products overwrite where they should add (filter gradient's chunks)"),
    # ---- the adjoint mode's kept graphs
    _m("kept_graph_of_the_next_step", "matching/adjoint.py",
       "recorded, g = kept.pop(i, None), None", "recorded, g = kept.pop(i + 1, None), None",
       "the backward pass takes the graph kept for the step after the one it replays"),
    _m("kept_graphs_return_blocks", "matching/adjoint.py",
       'return images.device.type == "cpu" and options.kept_graphs == 1',
       'return images.device.type == "cpu"',
       "kept graphs fault their pages in anew every iteration (large blocks returned)"),
    _m("kept_graphs_not_counted", "tm/memory.py", "if m == b and it.kept_graphs > 1:",
       "if m == b and it.kept_graphs > 10**9:",
       "the memory estimate ignores the kept graphs"),
    # ---- the adjoint mode's graph-only rebuild
    _m("rebuilt_g_read_for_the_step_size", "matching/adjoint_steps.py",
       "gc = graph.g.detach() if g is None else g", "gc = graph.g.detach()",
       "the step size's gradient reads the graph-only rebuild's g (zero weight gradients)"),
    _m("graph_only_rebuild_computes_the_values", "models/convnet_ops.py",
       "if need_w and not _WEIGHT_GRAD_VALUES[0]:", "if need_w and _WEIGHT_GRAD_VALUES[0] is None:",
       "the graph-only rebuild still runs the weight-gradient kernels"),
    _m("every_build_graph_only", "matching/adjoint_steps.py",
       "torch.enable_grad(), weight_grad_values(values), norm_values(",
       "torch.enable_grad(), weight_grad_values(False), norm_values(",
       "the forward pass's kept step is built without its weight gradients too"),
    _m("recorded_grads_not_counted", "tm/memory.py", "* dtype_bytes * (2 if m == b else 1)",
       "* dtype_bytes * 1", "the memory estimate ignores the recorded step gradients"),
    _m("norm_values_first_item_replayed", "models/convnet_ops.py",
       "return values.items[values.used - 1][1]", "return values.items[0][1]",
       "the rebuild's norm blocks all read the first block's recorded values"),
    _m("norm_values_recorded_when_spilled", "matching/adjoint.py",
       'if len(parts) == 1 and options.snapshots == "memory"', "if len(parts) == 1",
       "spilled trajectories keep the norm values in memory anyway"),
    _m("norm_values_not_counted", "tm/memory.py",
       "* b * fp.norm_per_image * scale", "* 0 * fp.norm_per_image * scale",
       "the memory estimate ignores the recorded norm values"),
    _m("c_products_first_panel_only", "models/winograd_tiles.c",
       "memcpy(panel + 2 * k * NV_SUFFIX, B + k * N + j, 2 * VBYTES);",
       "memcpy(panel + 2 * k * NV_SUFFIX, B + k * N, 2 * VBYTES);",
       "the C tile products copy the right factor's first panel for every panel"),
    _m("c_products_transpose_ignored", "models/winograd_tiles.c",
       "REAL a = ta ? A[k * lda + r] : A[r * lda + k];", "REAL a = A[r * lda + k];",
       "the C tile products read a transposed left factor as if it were not"),
]


@dataclass
class Outcome:
    name: str
    file: str
    description: str
    status: str  # caught | missed | not applicable | timeout
    seconds: float
    detail: str  # the first failing test, or why the mutant does not apply


def applies(mutant: Mutant, root: Path = ROOT) -> tuple[bool, str]:
    """(True, "") when the snippet occurs exactly once in its file, else (False, why)."""
    path = root / mutant.file
    if not path.is_file():
        return False, f"{mutant.file} does not exist"
    count = path.read_text().count(mutant.old)
    if count != 1:
        return False, f"snippet found {count} times in {mutant.file} (needs exactly 1)"
    return True, ""


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "results")
    for name in ("src", "tests", "benchmarks"):  # some tests import benchmark scripts
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")  # markers, addopts


def _first_failure(output: str) -> str:
    """The first FAILED/ERROR line of pytest's summary, else the last non-empty line."""
    for line in output.splitlines():
        if re.match(r"^(FAILED|ERROR) ", line):
            return line.split(" - ")[0][:200]
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def run_suite(mutant: Mutant | None, timeout: float, pytest_args: list[str]) -> Outcome:
    """Copy the tree, apply ``mutant`` (None: the unmutated baseline) and run the suite."""
    name = mutant.name if mutant else "baseline"
    info = (mutant.file, mutant.description) if mutant else ("-", "the unmutated suite")
    if mutant is not None:
        ok, why = applies(mutant)
        if not ok:
            return Outcome(name, *info, "not applicable", 0.0, why)
    with tempfile.TemporaryDirectory(prefix="mutant_") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        if mutant is not None:
            path = work / mutant.file
            path.write_text(path.read_text().replace(mutant.old, mutant.new, 1))
        (work / f"{ORDER_PLUGIN}.py").write_text(ORDER_SOURCE)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work / "src"), str(work)]),
                   PYTHONDONTWRITEBYTECODE="1")
        start = time.perf_counter()
        try:
            proc = subprocess.run(PYTEST + pytest_args, cwd=work, env=env, text=True,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(name, *info, "timeout", round(time.perf_counter() - start, 1),
                           f"the suite ran past {timeout:.0f} s")
        seconds = round(time.perf_counter() - start, 1)
    output = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return Outcome(name, *info, "missed" if mutant else "passed", seconds,
                       _first_failure(output))
    status = "caught" if mutant else "failed"
    return Outcome(name, *info, status, seconds, _first_failure(output))


def table(outcomes: list[Outcome]) -> str:
    lines = ["| mutant | file | what it breaks | result | caught by | s |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        by = o.detail.replace("FAILED ", "").replace("ERROR ", "") if o.status == "caught" \
            else ("" if o.status == "missed" else o.detail)
        lines.append(f"| `{o.name}` | {o.file.replace(PKG, '')} | {o.description} | "
                     f"{o.status} | {by.replace('|', '/')} | {o.seconds:.0f} |")
    counts = {s: sum(o.status == s for o in outcomes) for s in
              ("caught", "missed", "not applicable", "timeout")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return "\n".join(lines) + f"\n\n{len(outcomes)} mutants: {summary}."


def _hardware() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def _select(only: list[str] | None) -> list[Mutant]:
    if not only:
        return list(MUTANTS)
    names = {m.name for m in MUTANTS}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"unknown mutant(s) {', '.join(unknown)}; see --list")
    return [m for m in MUTANTS if m.name in only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this mutant (repeatable)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per suite run")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not run the unmutated suite first")
    parser.add_argument("--alphabetical", action="store_true",
                        help="run the test files in name order, not the wiring tests first")
    parser.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                        help="extra pytest arguments (e.g. one test file, for a quick look)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mutation.json"))
    args = parser.parse_args(argv)
    mutants = _select(args.only)
    if not args.alphabetical:
        args.pytest_args = ["-p", ORDER_PLUGIN, *args.pytest_args]
    if args.list:
        for m in mutants:
            ok, why = applies(m)
            print(f"{m.name:<36} {m.file.replace(PKG, ''):<20} "
                  f"{'applies' if ok else 'NOT APPLICABLE: ' + why}  {m.description}")
        return 0
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    baseline = None
    if not args.skip_baseline:
        baseline = run_suite(None, args.timeout, args.pytest_args)
        print(f"baseline: {baseline.status} in {baseline.seconds:.0f} s {baseline.detail}",
              flush=True)
        if baseline.status != "passed":
            print("the unmutated suite fails; fix it before checking mutants", file=sys.stderr)
            return 1
    out, outcomes = Path(args.out), []
    for i, m in enumerate(mutants, 1):
        outcome = run_suite(m, args.timeout, args.pytest_args)
        outcomes.append(outcome)
        print(f"[{i}/{len(mutants)}] {m.name}: {outcome.status} ({outcome.seconds:.0f} s) "
              f"{outcome.detail}", flush=True)
        report = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "pytest": " ".join(["python", *PYTEST[1:], *args.pytest_args]),
                  "started": started, "hardware": _hardware(),
                  "complete": i == len(mutants),  # written after every mutant
                  "baseline": asdict(baseline) if baseline else None,
                  "mutants": [asdict(o) for o in outcomes]}
        _write_json(out, report)
    print()
    print(table(outcomes))
    print(f"\nwritten to {out}")
    return 0 if all(o.status == "caught" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
