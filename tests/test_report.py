"""Readable grids, curves and report.html: layout, valid PNGs, every section, no external
resource, escaping, never breaking a run, and a headless-browser render (when available)."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import logging
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from datadistill.artifacts import grids
from datadistill.artifacts.distilled import DistilledSet
from datadistill.cli import main
from datadistill.data import DatasetInfo
from datadistill.data.zca import ZCA
from datadistill.errors import ArtifactError
from datadistill.report import figures as report_figures
from datadistill.report import html as report_html
from datadistill.report import page as report
from datadistill.report.curves import accuracy_bars, distill_curves, expert_curves, save_figure
from datadistill.runtime import ckernels
from datadistill.tm.config import load_pipeline_config
from datadistill.tm.pipeline import run_pipeline

K, S = 10, 8  # classes, image side
GRAY = DatasetInfo("toy", K, 1, (S, S), (0.5,), (0.25,), tuple(f"c{i}" for i in range(K)))
RGB = DatasetInfo("toyrgb", K, 3, (S, S), (0.5,) * 3, (0.25,) * 3,
                  ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "a very long class name that cannot fit"))


def _colours(n: int) -> torch.Tensor:
    """(n, 3) distinct colours in [0, 1] on a 1/20 lattice (exact in 8 bits after rounding)."""
    i = torch.arange(n, dtype=torch.float32)
    return torch.stack([(i % 20) / 20, (i // 20 % 20) / 20 + 0.05, 1 - (i % 7) / 20], 1)


def _flat_set(ipc: int, info=RGB, order=None) -> tuple[DistilledSet, torch.Tensor]:
    """Raw-pixel set whose image of class c, index j is flat colour colours[c * ipc + j]."""
    colours = _colours(K * ipc)[:, : info.channels]  # (N, C)
    images = colours[:, :, None, None].expand(-1, -1, S, S).clone()
    labels = torch.arange(K).repeat_interleave(ipc)
    if order is not None:  # shuffled storage order: the grid must still be class-major
        images, labels = images[order], labels[order]
    return DistilledSet(images, labels, None, info, "raw", ipc, "mtt"), colours


def _rgb_at(img: Image.Image, x: int, y: int) -> np.ndarray:
    return np.asarray(img.convert("RGB"))[y, x].astype(int)


# ----------------------------------------------------------------------------- grids


def test_grid_ipc2_one_row_per_class_upsampled_to_128(tmp_path):
    order = torch.randperm(K * 2, generator=torch.Generator().manual_seed(0))
    ds, colours = _flat_set(2, order=order)
    img = Image.open(grids.save_class_grid(ds, tmp_path / "g.png"))
    scale = 128 // S  # 8 px images x16 -> 128 px cells
    cell = S * scale
    # label column + 2 cells + 3 paddings; 10 rows + 11 paddings
    assert img.size == (120 + 2 * cell + 3 * 4, 10 * cell + 11 * 4) == (388, 1324)
    for c in range(K):
        stored = [int(i) for i in order if i // 2 == c]  # class c's images in storage order
        for j in range(2):
            x = grids.LABEL_WIDTH + grids.PAD + j * (cell + grids.PAD) + cell // 2
            y = grids.PAD + c * (cell + grids.PAD) + cell // 2
            expect = np.round(colours[stored[j]].numpy() * 255)
            assert np.abs(_rgb_at(img, x, y) - expect).max() <= 1
        label = np.asarray(img.convert("L"))[grids.PAD + c * (cell + grids.PAD):
                                             grids.PAD + (c + 1) * cell, : grids.LABEL_WIDTH]
        assert label.min() < 128  # the class name is written in the label column
    # the cell edges are exact: nearest-neighbour upsampling, no blur into the padding
    x0 = grids.LABEL_WIDTH + grids.PAD
    assert _rgb_at(img, x0 - 1, grids.PAD + 5).tolist() == [255, 255, 255]
    first = colours[[int(i) for i in order if i // 2 == 0][0]]
    assert np.abs(_rgb_at(img, x0, grids.PAD + 5) - np.round(first.numpy() * 255)).max() <= 1


def test_grid_ipc1_is_one_row_of_named_classes(tmp_path):
    ds, colours = _flat_set(1, info=GRAY)
    img = grids.class_grid(ds)
    cell = 128
    assert img.size == (K * cell + (K + 1) * 4, grids.CAPTION_HEIGHT + cell + 2 * 4)
    top = grids.PAD + grids.CAPTION_HEIGHT
    for c in range(K):
        x = grids.PAD + c * (cell + grids.PAD) + cell // 2
        assert abs(_rgb_at(img, x, top + cell // 2)[0] - round(255 * float(colours[c, 0]))) <= 1
        caption = np.asarray(img.convert("L"))[grids.PAD:top, x - cell // 2: x + cell // 2]
        assert caption.min() < 128  # the class name above the image


def test_grid_of_a_zca_set_shows_pixels(tmp_path):
    raw = torch.rand(K * 2, 3, S, S, generator=torch.Generator().manual_seed(1))
    zca = ZCA.fit(torch.rand(200, 3, S, S, generator=torch.Generator().manual_seed(2)))
    labels = torch.arange(K).repeat_interleave(2)
    in_zca = DistilledSet(zca.apply(raw), labels, None, RGB, "zca", 2, "mtt", zca=zca)
    in_raw = DistilledSet(raw, labels, None, RGB, "raw", 2, "mtt")
    a = np.asarray(grids.class_grid(in_zca)).astype(int)
    b = np.asarray(grids.class_grid(in_raw)).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_initial_vs_final_side_by_side(tmp_path):
    before, c0 = _flat_set(2)
    after = DistilledSet(1 - before.images, before.labels, None, RGB, "raw", 2, "mtt")
    img = grids.before_after_grid(before, after)
    cell, pad, top = 128, grids.PAD, grids.PAD + grids.CAPTION_HEIGHT
    # per class: 2 initial cells, a blank cell, 2 final cells; a caption strip above row 0
    assert img.size == (grids.LABEL_WIDTH + 5 * cell + 6 * pad, top + 10 * cell + 10 * pad)
    y = top + 3 * (cell + pad) + cell // 2  # class 3
    xs = [grids.LABEL_WIDTH + pad + j * (cell + pad) + cell // 2 for j in range(5)]
    rgb = [_rgb_at(img, x, y) for x in xs]
    assert np.abs(rgb[1] - np.round(c0[7].numpy() * 255)).max() <= 1  # initial, image 2
    assert rgb[2].tolist() == [255, 255, 255]  # the blank separator
    assert np.abs(rgb[4] - np.round((1 - c0[7].numpy()) * 255)).max() <= 1  # final, image 2
    one = grids.before_after_grid(*(_flat_set(1)[0],) * 2)  # IPC 1: initial row over final row
    assert one.size == (grids.LABEL_WIDTH + K * cell + (K + 1) * pad,
                        pad + 2 * (cell + pad) + grids.CAPTION_HEIGHT)


def test_grid_limits_upsampling_and_long_names(monkeypatch):
    ds, _ = _flat_set(2)
    cap = 400 * 400
    monkeypatch.setattr(grids, "MAX_PIXELS", cap)
    rows = grids.class_rows(ds)
    w, h = grids.class_grid(ds).size
    scale = (h - 11 * grids.PAD) // (K * S)  # the factor it chose, read off the height
    assert 1 <= scale < 16 and (w, h) == grids.grid_size(rows, (S * scale, S * scale))
    assert w * h <= cap < np.prod(grids.grid_size(rows, (S * (scale + 1), S * (scale + 1))))
    font = grids._font()
    text = grids._fit(RGB.class_names[-1], font, grids.LABEL_WIDTH - 8)
    assert text.endswith("…") and font.getlength(text) <= grids.LABEL_WIDTH - 8
    monkeypatch.setattr(grids, "MAX_PIXELS", 16_000_000)
    # 3 classes, 1 image each: the one-row layout with captions
    assert grids.class_grid(ds, max_classes=3, max_per_class=1).size == (
        3 * 128 + 4 * grids.PAD, grids.CAPTION_HEIGHT + 128 + 2 * grids.PAD)
    with pytest.raises(ArtifactError, match="4-channel images cannot be drawn"):
        grids.render_rows([grids.GridRow([torch.zeros(4, S, S)])])


# ----------------------------------------------------------------------------- curves


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.verify()  # raises on a corrupt file
    return Image.open(io.BytesIO(data)).size


def test_curves_are_valid_pngs(tmp_path):
    rows = [{"iteration": i, "loss": 1 / (i + 1), "syn_lr": 0.01 + 1e-4 * i,
             "skipped": i == 3} for i in range(10)]
    rows += [{"iteration": i, "eval": True, "mean": 0.3 + i / 50, "std": 0.01}
             for i in (0, 5, 10)]
    data = save_figure(distill_curves(rows), tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes() == data and _png_size(data) == (800, 750)
    experts = [np.linspace(0.1, 0.9, 6), np.linspace(0.1, 0.8, 6)]
    assert _png_size(save_figure(expert_curves(experts), tmp_path / "e.png"))[0] == 800
    bars = accuracy_bars({"distilled": [0.8, 0.9], "random": [0.5, 0.6]})
    assert _png_size(save_figure(bars, tmp_path / "b.png"))[0] == 800
    # nothing to draw: no figure rather than an empty one
    assert distill_curves([]) is None and accuracy_bars({"x": []}) is None
    assert expert_curves([np.full(4, np.nan)]) is None  # imported buffers record no accuracy


# ----------------------------------------------------------------------------- report


TINY = ["experts.num_experts=2", "experts.epochs=3", "model_kwargs.width=8",
        "distill.syn_steps=3", "distill.max_start_epoch=1", "distill.iterations=4",
        "distill.eval_every=2", "distill.eval_runs=1", "distill.eval_epochs=2",
        "evaluation.runs=2", "evaluation.epochs=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_pipeline(load_pipeline_config("digits/mtt_ipc1", TINY), out, progress=False)
    return out


class _Page(html.parser.HTMLParser):
    """Headings, tables, images and every URL-bearing attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.h2, self.tags, self.imgs, self.urls, self._in_h2 = [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self._in_h2 = tag == "h2"
        if tag == "img":
            self.imgs.append(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "action") and v]

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_run_writes_a_report_with_every_section(run_dir):
    page = _parse(run_dir / "report.html")
    assert tuple(page.h2) == report_html.SECTIONS
    assert page.tags.count("table") == 3  # summary, accuracy, time and hardware
    names = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert names == ["accuracy.png", "distill_curves.png", "distilled.png",
                     "expert_accuracy.png", "initial_vs_best.png"]
    assert len(page.imgs) == len(names)
    embedded = {base64.b64decode(img["src"].split(",", 1)[1]) for img in page.imgs}
    assert embedded == {(run_dir / "figures" / n).read_bytes() for n in names}
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.imgs)


def test_report_is_self_contained_and_states_the_results(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    page = _parse(run_dir / "report.html")
    assert all(u.startswith("data:") for u in page.urls)  # nothing fetched from anywhere
    assert "script" not in page.tags and "link" not in page.tags and "url(" not in text
    ev = json.loads((run_dir / "eval.json").read_text())
    for key in ("distilled_convnet", "random_subset"):
        rep = ev[key]
        assert f"{100 * rep['mean']:.2f} ± {100 * rep['std']:.2f}" in text
    assert "Cazenavette et al." in text and "divergence guard" in text  # paper, deviations
    assert "lr_img: 100" in text  # the resolved config
    record = json.loads((run_dir / "run_record.json").read_text())
    hw = record["stages"]["run"]["hardware"]
    assert hw["torch"] == torch.__version__ and hw["cpu"] in text
    # the student's CPU kernels are stated: the digits student's norm blocks use the C loops
    # wherever a compiler is at hand
    if ckernels._compiler() is not None:
        assert "norm_act_pool" in hw["compiled_loops"]
    assert f"compiled loops: {', '.join(hw['compiled_loops']) or 'none'}" in text
    assert record["stages"]["run"]["seconds"] == pytest.approx(ev["seconds"]["total"], abs=0.1)


def test_text_is_escaped(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = json.loads((copy / "pipeline.json").read_text())
    cfg["data_root"] = "<script>alert('x')</script>&"
    (copy / "pipeline.json").write_text(json.dumps(cfg))
    text = report.build_report(copy).read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in text


def test_cli_rebuilds_the_page_and_reports_bad_folders(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert tuple(_parse(copy / "report.html").h2) == report_html.SECTIONS
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_failing_report_never_breaks_the_run(run_dir, tmp_path, monkeypatch, caplog):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = (copy / "report.html").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_html, "render_page", broken)
    with caplog.at_level(logging.WARNING, logger="datadistill.report.page"):
        assert report.write_report(copy, stage="eval", seconds=1.0) is None
        assert report.refresh_report(copy / "distill", force=True) is None
    assert "disk on fire" in caplog.text and "unaffected" in caplog.text
    assert (copy / "report.html").read_bytes() == before  # the last good page stays


def test_a_damaged_file_costs_its_picture_not_the_page(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "experts" / "expert_0000.pt").write_bytes(b"garbage")
    (copy / "distill" / "best" / "tensors.pt").write_bytes(b"garbage")
    text = report.build_report(copy).read_text(encoding="utf-8")
    # the expert curves, best/'s grid and the initial-vs-best/ grid
    assert text.count("could not be drawn (ArtifactError") == 3
    page = _parse(copy / "report.html")
    assert tuple(page.h2) == report_html.SECTIONS and len(page.imgs) == 2  # the other two


def test_refresh_while_distilling_is_throttled_but_the_last_is_forced(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    page, started = copy / "report.html", copy / "distill" / "config.json"
    page.write_text("old")
    os.utime(page, (1e9, 1e9))
    os.utime(started, (1e9, 1e9))  # an old page of a distillation started long ago...
    assert report.refresh_report(copy / "distill") == page and page.read_text() != "old"
    page.write_text("recent")  # ...is redrawn; a page younger than REFRESH_SECONDS is kept,
    report.refresh_report(copy / "distill")
    assert page.read_text() == "recent"
    page.unlink()  # and so is the absence of a page in a distillation started just now
    started.touch()
    assert report.refresh_report(copy / "distill") is None and not page.exists()
    report.refresh_report(copy / "distill", force=True)  # unless it is the last evaluation
    assert tuple(_parse(page).h2) == report_html.SECTIONS


def test_eval_of_a_set_folder_writes_its_page(run_dir, tmp_path):
    target = tmp_path / "best"
    shutil.copytree(run_dir / "distill" / "best", target)
    assert main(["eval", str(target), "--runs", "1", "--epochs", "2", "--quiet"]) == 0
    text = (target / "report.html").read_text(encoding="utf-8")
    page = _parse(target / "report.html")
    assert tuple(page.h2) == report_html.SECTIONS and len(page.imgs) == 2  # set, bars
    assert "evaluated set" in text and "eval" in json.loads(
        (target / "run_record.json").read_text())["stages"]


def test_distill_keeps_the_initial_images(run_dir):
    from datadistill.artifacts.distilled import load_distilled

    initial = load_distilled(run_dir / "distill" / "initial")
    assert initial.extra["iteration"] == 0
    grid0 = Image.open(run_dir / "distill" / "grids" / "iter_00000.png")
    assert np.array_equal(np.asarray(grid0), np.asarray(grids.class_grid(initial)))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH")
def test_page_renders_in_headless_chromium_without_console_errors(run_dir, tmp_path):
    # A copy of the page with a checker script: the page itself has none. The checker's own
    # console line proves that console output is captured.
    check = ("<script>window.addEventListener('load', () => { const i = [...document.images];"
             "console.log('datadistill-check ' + i.filter(x => x.complete && x.naturalWidth > 0)"
             ".length + '/' + i.length); });</script></body>")
    page = tmp_path / "page.html"
    page.write_text((run_dir / "report.html").read_text(encoding="utf-8")
                    .replace("</body>", check), encoding="utf-8")
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    n = len(_parse(run_dir / "report.html").imgs)
    assert any(f"datadistill-check {n}/{n}" in line for line in console), proc.stderr[-2000:]
    assert len(console) == 1, console  # nothing but the checker's line
    assert "Accuracy" in proc.stdout  # the DOM was rendered
    assert not re.search(r"Failed to load resource|net::ERR_", proc.stderr)


# ----------------------------------------------------------------------------- what the page says


def _iteration_of(folder) -> int:
    return json.loads((folder / "meta.json").read_text())["extra"]["iteration"]


def _set_iteration(folder, iteration: int) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["extra"]["iteration"] = iteration
    (folder / "meta.json").write_text(json.dumps(meta))


def _section_html(text: str, anchor: str) -> str:
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def test_the_headline_names_the_evaluated_set_and_its_iteration(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    _set_iteration(copy / "distill" / "best", 2)
    _set_iteration(copy / "distill" / "last", 4)  # the last iteration is not the set evaluated
    text = report.build_report(copy).read_text(encoding="utf-8")
    summary = _section_html(text, "summary")
    ev = json.loads((copy / "eval.json").read_text())["distilled_convnet"]
    assert (f"<td>accuracy: distilled set, best/, iteration 2 (convnet, classic)</td><td>"
            f"{100 * ev['mean']:.2f} ± {100 * ev['std']:.2f} %") in summary
    assert "the last iteration, 4, is in last/ and is not evaluated" in summary
    # the side-by-side grid shows the evaluated set (best/), named as such, not last/
    images = _section_html(text, "distilled-images")
    assert "Initial images (iteration 0) and the evaluated set (best/, iteration 2)" in images
    assert "final (iteration" not in text and "the last iteration, 4," in images
    initial, best = (report_figures.load_distilled(copy / "distill" / n) for n in ("initial",
                                                                                  "best"))
    expect = grids.png_bytes(grids.before_after_grid(
        initial, best, max_classes=report_figures.MAX_CLASSES,
        max_per_class=report_figures.PAIR_PER_CLASS, names=("initial", "best/")))
    assert (copy / "figures" / "initial_vs_best.png").read_bytes() == expect
    assert [r.label for r in grids.before_after_rows(initial, best, names=(
        "initial", "best/"))] == ["initial", "best/"]  # IPC 1: one row per side, named
    _set_iteration(copy / "distill" / "last", 2)  # best/ is the last iteration: nothing to say
    assert "is not evaluated" not in report.build_report(copy).read_text(encoding="utf-8")


def test_the_in_loop_check_is_marked_and_never_the_headline(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    accuracy = _section_html(text, "accuracy")
    table, after = accuracy.split("</table>", 1)
    evals = [r for r in report.metrics_rows(run_dir / "distill") if r.get("eval")]
    best = max(evals, key=lambda r: r["mean"])
    assert "while distilling" not in table  # not a row among the results...
    assert (f"In-loop check while distilling (not a final evaluation; it chose best/): "
            f"{100 * best['mean']:.2f} ± {100 * best['std']:.2f} %") in after  # ...below them
    assert f"at iteration {best['iteration']}; 1 network × 2 epochs each" in after
    (copy / "eval.json").unlink()  # a distillation not evaluated yet: no headline at all
    summary = _section_html(report.build_report(copy).read_text(encoding="utf-8"), "summary")
    assert "accuracy" not in summary


def test_curve_captions_give_values_not_config_keys(run_dir):
    curves = _section_html((run_dir / "report.html").read_text(encoding="utf-8"), "curves")
    assert "in-loop check of the distiller, 1 network × 2 epochs each" in curves
    assert "distill.eval" not in curves


def _train_and_evals(last: int, evals: list[int], mean=lambda i: 0.5) -> list[dict]:
    rows = [{"iteration": i, "loss": 1.0, "syn_lr": 0.01} for i in range(last)]
    return rows + [{"iteration": i, "eval": True, "mean": mean(i), "std": 0.05} for i in evals]


def test_accuracy_over_iterations_is_markers_within_0_100_ticks_ending_at_the_last():
    rows = _train_and_evals(100, [0, 50, 100], mean=lambda i: (0.01, 0.5, 0.99)[i // 50])
    ax = distill_curves(rows, "in-loop check: 2 networks × 300 epochs each").axes[2]
    (line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert line.get_linestyle() == "None"  # three evaluations: markers, not a joined line
    assert list(line.get_xdata()) == [0, 50, 100]
    bottom, top = ax.get_ylim()
    assert 0 <= bottom < 1 and 99 < top <= 100  # 99 + 5 and 1 - 5 % clipped to the axis
    ticks = ax.get_xticks()
    assert ticks[-1] == 100 and ax.get_xlim()[1] < 105 and list(ticks) == sorted(ticks)
    assert ax.get_title() == "in-loop check: 2 networks × 300 epochs each"
    many = distill_curves(_train_and_evals(33, list(range(0, 34, 3)))).axes[2]
    (line,) = [ln for ln in many.get_lines() if ln.get_marker() == "o"]
    assert line.get_linestyle() == "-"  # twelve evaluations: joined
    assert many.get_xticks()[-1] == 33 and 33 < many.get_xlim()[1] < 34
    experts = expert_curves([np.array([0.05, 0.9, 0.99, 1.0]), np.array([0.0, 0.8, 1.0, 1.0])])
    ax = experts.axes[0]
    assert ax.get_xticks()[-1] == 3 and 0 <= ax.get_ylim()[0] and ax.get_ylim()[1] <= 100
    bars = accuracy_bars({"distilled": [0.99, 1.0], "random": [0.5, 0.7]}).axes[0]
    assert bars.get_xlim() == (0, 100)
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert labels == ["distilled\n99.50 ± 0.50 %", "random\n60.00 ± 10.00 %"]


def test_infer_grid_names_base_and_compensated_columns(tmp_path):
    from datadistill.infer.pipeline import infer_instances
    from datadistill.infer.store import InferSet, save_infer_set

    g = torch.Generator().manual_seed(0)
    s = InferSet(torch.rand(2, K, 1, S, S, generator=g), 0.1 * torch.rand(2, 2, 1, S, S,
                 generator=g), None, GRAY, 10, ["resnet18_cifar", "shufflenet_g2"])
    save_infer_set(s, tmp_path / "set")
    ds = infer_instances(tmp_path / "set")
    columns = ["base", "base + u1", "base + u2"] * 2  # per group: base, then each teacher's
    assert ds.extra["grid_columns"] == columns
    rows = grids.class_rows(ds, column_captions=ds.extra["grid_columns"], max_per_class=4)
    assert rows[0].captions == columns[:4] and all(r.captions is None for r in rows[1:])
    page = report.build_report(tmp_path / "set").read_text(encoding="utf-8")
    assert "u1: resnet18_cifar, u2: shufflenet_g2" in page
    drawn = Image.open(tmp_path / "set" / "figures" / "infer_instances.png")
    plain = grids.class_grid(ds, max_per_class=report_figures.MAX_PER_CLASS)
    assert drawn.size == (plain.size[0], plain.size[1] + grids.CAPTION_HEIGHT)  # a caption row
    strip = np.asarray(drawn.convert("L"))[grids.PAD:grids.PAD + grids.CAPTION_HEIGHT,
                                           grids.LABEL_WIDTH:]
    assert strip.min() < 128  # the column names are written above the first row


def test_infer_grid_shows_whole_class_groups(tmp_path, monkeypatch):
    from datadistill.infer.store import InferSet, save_infer_set

    g = torch.Generator().manual_seed(0)
    s = InferSet(torch.rand(3, K, 1, S, S, generator=g), 0.1 * torch.rand(3, 2, 1, S, S,
                 generator=g), None, GRAY, 10, ["resnet18_cifar", "shufflenet_g2"])
    save_infer_set(s, tmp_path / "set")
    monkeypatch.setattr(report_figures, "MAX_PER_CLASS", 7)  # 9 per class, groups of 3
    page = report.build_report(tmp_path / "set").read_text(encoding="utf-8")
    drawn = Image.open(tmp_path / "set" / "figures" / "infer_instances.png")
    assert drawn.size[0] == grids.LABEL_WIDTH + 6 * 128 + 7 * grids.PAD  # two whole groups
    assert "Shown: 6 of 9 images per class." in page and "grids/" not in page  # none here
