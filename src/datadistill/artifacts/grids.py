"""Readable image grids of a distilled set: upsampled cells, class names, initial vs final.

A distilled set is small (8 to 64 px images), so every image is upsampled with nearest
neighbour by an integer factor until its shorter side is at least ``MIN_CELL`` pixels (8 px
digits x16, 28 px MNIST x5, 32 px CIFAR x4, 64 px Tiny ImageNet x2), unless the whole grid
would exceed ``MAX_PIXELS``, in which case the factor shrinks (never below 1).

Layouts, on a white ground with ``PAD`` pixels between cells:

- several images per class: one row per class, the class name in a ``LABEL_WIDTH`` column on
  the left;
- one image per class: the classes side by side, at most ``IPC1_COLUMNS`` per row, each with
  its name in a ``CAPTION_HEIGHT`` strip above it;
- initial vs final (:func:`before_after_grid`): per class, the initial images, a blank cell,
  then the final ones (at IPC 1: a row "initial" above a row "final").

Sets in ZCA space are shown in pixel space (inverse ZCA), normalised sets are denormalised
(:func:`save_grid` does the same at the stored resolution).

Example:
    >>> image = class_grid(ds)                                             # doctest: +SKIP
    >>> save_class_grid(ds, "runs/digits/distill/grids/iter_00100.png")    # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from datadistill.artifacts.distilled import DistilledSet, class_major
from datadistill.data import DatasetInfo, denormalize
from datadistill.data.zca import ZCA
from datadistill.errors import ArtifactError
from datadistill.io import atomic_write

logger = logging.getLogger(__name__)

MIN_CELL = 128  # shortest side of an upsampled image, pixels
MAX_PIXELS = 16_000_000  # the upsampling factor shrinks until the grid fits (16 MP, ~48 MB RGB)
PAD = 4  # pixels between cells and around the grid
LABEL_WIDTH = 120  # left column holding the class name of a row
CAPTION_HEIGHT = 24  # strip above a cell holding its caption
IPC1_COLUMNS = 10  # at IPC 1, classes per row
FONT_SIZE = 17
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)


@dataclass
class GridRow:
    """One row of a grid: its cells, an optional label on the left, optional captions above.

    ``cells`` hold (C, H, W) pixels in [0, 1], C in {1, 3}; None is a blank cell.
    """

    cells: list[torch.Tensor | None]
    label: str | None = None
    captions: list[str] | None = None


# ----------------------------------------------------------------------------- layout


def upscale_factor(height: int, width: int, min_cell: int = MIN_CELL) -> int:
    """Smallest integer factor that brings the shorter side to at least ``min_cell`` pixels.

    >>> [upscale_factor(side, side) for side in (8, 28, 32, 64, 256)]
    [16, 5, 4, 2, 1]
    """
    return max(1, math.ceil(min_cell / min(height, width)))


def grid_size(rows: list[GridRow], cell: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels of ``rows`` drawn with (h, w) cells.

    >>> grid_size([GridRow([None, None], label="a")] * 10, (128, 128))
    (388, 1324)
    """
    h, w = cell
    cols = max((len(r.cells) for r in rows), default=0)
    label = LABEL_WIDTH if any(r.label is not None for r in rows) else 0
    width = label + cols * w + (cols + 1) * PAD
    height = PAD + sum(h + PAD + (CAPTION_HEIGHT if r.captions else 0) for r in rows)
    return width, height


def _scale_for(rows: list[GridRow], height: int, width: int) -> int:
    """The upsampling factor, reduced while the grid would exceed MAX_PIXELS."""
    scale = upscale_factor(height, width)
    while scale > 1:
        gw, gh = grid_size(rows, (height * scale, width * scale))
        if gw * gh <= MAX_PIXELS:
            break
        scale -= 1
    return scale


# ----------------------------------------------------------------------------- drawing


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font (Pillow >= 10.1 + FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits in ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _cell_image(pixels: torch.Tensor, scale: int) -> Image.Image:
    """(C, H, W) in [0, 1] -> RGB PIL image upsampled by ``scale`` (nearest neighbour)."""
    array = (pixels.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)  # (H, W, C)
    mode_image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    h, w = array.shape[:2]
    return mode_image.convert("RGB").resize((w * scale, h * scale), Image.NEAREST)


def render_rows(rows: list[GridRow], scale: int | None = None) -> Image.Image:
    """Draw ``rows`` (every cell the same (C, H, W) shape) as one RGB image.

    ``scale`` defaults to :func:`upscale_factor`, reduced to fit MAX_PIXELS.

    Example:
        >>> img = render_rows([GridRow([torch.rand(1, 8, 8)], label="zero")])
        >>> img.size
        (256, 136)
    """
    shape = next((c.shape for r in rows for c in r.cells if c is not None), None)
    if shape is None:
        raise ArtifactError("render_rows: no image to draw; pass at least one cell")
    if shape[0] not in (1, 3):
        raise ArtifactError(f"render_rows: {shape[0]}-channel images cannot be drawn; pass 1- "
                            "or 3-channel images")
    scale = scale or _scale_for(rows, shape[1], shape[2])
    ch, cw = shape[1] * scale, shape[2] * scale
    canvas = Image.new("RGB", grid_size(rows, (ch, cw)), BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font()
    left = LABEL_WIDTH if any(r.label is not None for r in rows) else 0
    top = PAD
    for row in rows:
        if row.captions:
            _draw_captions(draw, font, row.captions, left, top, cw)
            top += CAPTION_HEIGHT
        if row.label is not None:
            text = _fit(row.label, font, LABEL_WIDTH - 2 * PAD)
            draw.text((PAD, top + ch // 2), text, fill=INK, font=font, anchor="lm")
        for j, cell in enumerate(row.cells):
            if cell is not None:
                canvas.paste(_cell_image(cell, scale), (left + PAD + j * (cw + PAD), top))
        top += ch + PAD
    return canvas


def _draw_captions(draw, font, captions: list[str], left: int, top: int, cw: int) -> None:
    for j, caption in enumerate(captions):
        if caption:
            x = left + PAD + j * (cw + PAD) + cw // 2
            draw.text((x, top + CAPTION_HEIGHT // 2), _fit(caption, font, cw), fill=INK,
                      font=font, anchor="mm")


# ----------------------------------------------------------------------------- sets -> rows


def _per_class(ds: DistilledSet, max_classes: int | None,
               max_per_class: int | None) -> list[list[torch.Tensor]]:
    """Viewable pixels grouped by (argmax) class: entry c holds class c's (C, H, W) images."""
    labels = ds.hard_labels.cpu()
    classes = range(ds.info.num_classes if max_classes is None
                    else min(max_classes, ds.info.num_classes))
    picks = [torch.nonzero(labels == c).flatten()[:max_per_class] for c in classes]
    rows = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    # Only the drawn rows are converted: ImageNet-1K's whole set would be copied 2-3 times.
    pixels = to_pixels(ds.images.detach().cpu()[rows], ds.space, ds.info, ds.zca)
    groups, start = [], 0  # pixels: (len(rows), C, H, W) in [0, 1]
    for idx in picks:
        groups.append([pixels[start + j] for j in range(len(idx))])
        start += len(idx)
    return groups


def _names(ds: DistilledSet) -> list[str]:
    return [str(name) for name in ds.info.class_names]


def class_rows(ds: DistilledSet, *, max_classes: int | None = None,
               max_per_class: int | None = None,
               column_captions: list[str] | None = None) -> list[GridRow]:
    """One row per class, named; or, with one image per class, classes side by side.

    ``column_captions`` name the columns of the one-row-per-class layout (written above the
    first row, e.g. INFER's base image vs base + compensator); the side-by-side layout of
    one image per class names its columns by class and ignores them.
    """
    groups, names = _per_class(ds, max_classes, max_per_class), _names(ds)
    if max((len(g) for g in groups), default=0) > 1:
        rows = [GridRow(list(g), label=names[c]) for c, g in enumerate(groups)]
        if column_captions:
            width = max(len(r.cells) for r in rows)
            rows[0].captions = [*column_captions[:width], *[""] * (width - len(column_captions))]
        return rows
    rows = []
    for start in range(0, len(groups), IPC1_COLUMNS):
        chunk = groups[start:start + IPC1_COLUMNS]
        rows.append(GridRow([g[0] if g else None for g in chunk],
                            captions=names[start:start + len(chunk)]))
    return rows


def before_after_rows(initial: DistilledSet, final: DistilledSet, *,
                      max_classes: int | None = None, max_per_class: int | None = None,
                      names: tuple[str, str] = ("initial", "final")) -> list[GridRow]:
    """Initial and final images of every class next to each other (IPC 1: one above the
    other), the two sides labelled ``names`` (e.g. ``("initial", "best/")``)."""
    before = _per_class(initial, max_classes, max_per_class)
    after = _per_class(final, max_classes, max_per_class)
    side, names = names, _names(final)
    width = max((len(g) for g in before + after), default=0)
    if width <= 1:
        rows = []
        for start in range(0, len(after), IPC1_COLUMNS):
            stop = min(start + IPC1_COLUMNS, len(after))
            rows.append(GridRow([g[0] if g else None for g in before[start:stop]],
                                label=side[0], captions=names[start:stop]))
            rows.append(GridRow([g[0] if g else None for g in after[start:stop]], label=side[1]))
        return rows
    rows = []
    for c, (b, a) in enumerate(zip(before, after, strict=True)):
        cells = list(b) + [None] * (width - len(b) + 1) + list(a)  # a blank cell between
        rows.append(GridRow(cells, label=names[c]))
    rows[0].captions = [side[0]] + [""] * width + [side[1]] + [""] * (width - 1)
    return rows


def class_grid(ds: DistilledSet, *, max_classes: int | None = None,
               max_per_class: int | None = None,
               column_captions: list[str] | None = None) -> Image.Image:
    """The readable grid of ``ds`` (layouts in the module docstring; ``column_captions`` as
    in :func:`class_rows`).

    Example:
        >>> class_grid(ds).size                       # 10 classes, IPC 2, 8 px  # doctest: +SKIP
        (388, 1324)
    """
    return render_rows(class_rows(ds, max_classes=max_classes, max_per_class=max_per_class,
                                  column_captions=column_captions))


def before_after_grid(initial: DistilledSet, final: DistilledSet, **options) -> Image.Image:
    """Initial and final images side by side (``max_classes`` / ``max_per_class`` limits,
    ``names`` of the two sides)."""
    return render_rows(before_after_rows(initial, final, **options))


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG atomically; returns the path."""
    out = Path(path)
    data = png_bytes(image)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    return out


GRID_MAX_CLASSES = 200  # the distiller's periodic grids: every class up to Tiny ImageNet's 200


def save_class_grid(ds: DistilledSet, path: str | Path) -> Path | None:
    """Write the readable grid of ``ds`` to ``path`` (the distiller's ``grids/iter_XXXXX.png``).

    At most the first GRID_MAX_CLASSES classes: ImageNet-1K's 1,000 would make a 16 MP PNG
    at every evaluation (over a minute to encode on a CPU) that no one can read. None (and a
    warning) when no image's label falls in those classes.

    Example:
        >>> save_class_grid(ds, "runs/digits/distill/grids/iter_00000.png")  # doctest: +SKIP
    """
    if ds.info.num_classes <= GRID_MAX_CLASSES:
        return save_png(class_grid(ds), path)
    try:
        return save_png(class_grid(ds, max_classes=GRID_MAX_CLASSES), path)
    except ArtifactError as err:
        logger.warning("no grid at %s: %s", path, err)
        return None


def to_pixels(
    images: torch.Tensor, space: str, info: DatasetInfo | None, zca: ZCA | None
) -> torch.Tensor:
    """(N, C, H, W) in `space` -> (N, C, H, W) viewable pixels in [0, 1]."""
    x = images.detach().cpu().float()
    if space == "zca":
        if zca is not None:
            x = zca.invert(x)  # back to raw [0,1] pixels
        else:  # no way back to pixels: stretch each image to its own range
            logger.warning("save_grid: ZCA-space images without ZCA state; min-max scaling each")
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-8)
    elif space == "normalized":
        if info is None:
            raise ArtifactError("save_grid: normalised images need info= to be denormalised")
        x = denormalize(x, info)
    return x.clamp(0.0, 1.0)


def save_grid(
    images_or_ds: torch.Tensor | DistilledSet,
    path: str | Path,
    *,
    nrow: int | None = None,
    info: DatasetInfo | None = None,
    space: str | None = None,
    zca: ZCA | None = None,
    padding: int = 2,
) -> Path:
    """Write a PNG grid; for a DistilledSet one row per class (nrow = ipc images per row).

    A tensor is taken as normalised when `info` is given, else as raw pixels; pass `space`
    to override. The grid is (rows*H + (rows+1)*padding) x (nrow*W + (nrow+1)*padding).

    Example:
        >>> save_grid(ds, "runs/mtt/grid.png")                             # doctest: +SKIP
    """
    if isinstance(images_or_ds, DistilledSet):
        ds = images_or_ds
        images, _ = class_major(ds)
        info, space, zca = ds.info, ds.space, ds.zca or zca
        nrow = nrow or ds.ipc
    else:
        images = images_or_ds
        space = space or ("normalized" if info is not None else "raw")
        nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    pixels = to_pixels(images, space, info, zca)  # (N, C, H, W) in [0, 1]
    grid = _tile(pixels, nrow, padding)  # (C, GH, GW)
    array = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: img.save(tmp, format="PNG"))
    return out


def _tile(pixels: torch.Tensor, nrow: int, padding: int) -> torch.Tensor:
    """(N, C, H, W) -> (C, rows*H + (rows+1)*pad, nrow*W + (nrow+1)*pad) on a black ground."""
    n, c, h, w = pixels.shape
    if c not in (1, 3):
        raise ArtifactError(
            f"save_grid: {c}-channel images cannot be written as PNG; pass 1- or 3-channel images"
        )
    rows = max(1, math.ceil(n / nrow))
    grid = torch.zeros(c, rows * h + (rows + 1) * padding, nrow * w + (nrow + 1) * padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = pixels[i]
    return grid
