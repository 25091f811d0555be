"""The HTML of ``report.html``: sections, tables and embedded images, every text escaped.

The page is static: inline CSS, images as ``data:image/png;base64`` URIs, no script, no
external resource. Its sections, in order: Summary, Accuracy, Distilled images, Curves,
Method, Configuration, Time and hardware (each present even when empty, with a sentence
saying why). :mod:`datadistill.report.page` gathers the content.

Example:
    >>> print(_table(["a"], [["<b>"]]))
    <table><tr><th>a</th></tr><tr><td>&lt;b&gt;</td></tr></table>
"""

from __future__ import annotations

import base64
import datetime
import html
from typing import Any

import yaml

from datadistill.recipes import describe_method
from datadistill.runtime.progress import plural

SECTIONS = ("Summary", "Accuracy", "Distilled images", "Curves", "Method", "Configuration",
            "Time and hardware")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0 2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.muted { color: #666; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str] | None, rows: list[list[Any]],
           num_cols: tuple[int, ...] = ()) -> str:
    """An HTML table; every cell escaped; columns in ``num_cols`` right-aligned."""
    body = [] if header is None else ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header)
                                      + "</tr>"]
    for row in rows:
        cells = "".join(f'<td class="num">{_e(v)}</td>' if i in num_cols else f"<td>{_e(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{''.join(body)}</table>"


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _section(title: str, body: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _none(text: str) -> str:
    return f'<p class="muted">{_e(text)}</p>'


# ----------------------------------------------------------------------------- sections


def _summary(c, rows, hw: dict, last_note: str) -> str:
    """Method, dataset, folder and the headline: the final evaluation of the evaluated set,
    named with its iteration (never the in-loop check); ``last_note`` says when the last
    iteration is another set."""
    final = [r for r in rows if not r.in_loop]
    main = next((r for r in final if r.what == "distilled set"), None) or \
        next((r for r in final if r.protocol != "teacher"), None)
    base = next((r for r in final if r.what == "random real subset"), None)
    facts = [["method", c.method or "unknown"], ["dataset", c.dataset or "unknown"],
             ["images per class (IPC)", c.ipc if c.ipc is not None else "unknown"],
             ["run folder", str(c.root)]]
    if main is not None:
        which = f"{main.what}, {main.source}" if main.source else main.what
        facts.append([f"accuracy: {which} ({main.model}, {main.protocol})",
                      f"{_pct(main.mean, main.std)} % over "
                      f"{plural(len(main.accuracies), 'network')}"])
    if base is not None:
        facts.append([f"accuracy: {base.what} ({base.model})",
                      f"{_pct(base.mean, base.std)} % over "
                      f"{plural(len(base.accuracies), 'network')}"])
    if main is not None and main.source.startswith("best/") and last_note:
        facts.append(["evaluated set", last_note])
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    facts.append(["page written", f"{now} by datadistill {hw['datadistill']}"])
    return _table(None, facts)


def _accuracy(rows) -> str:
    """The final evaluations as a table; the in-loop check below it, marked as such."""
    final, checks = [r for r in rows if not r.in_loop], [r for r in rows if r.in_loop]
    checks_text = "".join(
        f"<p>In-loop check while distilling (not a final evaluation; it chose best/): "
        f"{_e(_pct(r.mean, r.std))} % ({_e(r.model)}), {_e(r.note)}.</p>" for r in checks)
    if not final:
        return _none("No evaluation yet: eval.json appears when a run's evaluation "
                     "finishes.") + checks_text
    table = [[f"{r.what}, {r.source}" if r.source else r.what, r.model, r.protocol,
              len(r.accuracies), _pct(r.mean, r.std),
              ", ".join(f"{100 * a:.2f}" for a in r.accuracies), r.note] for r in final]
    return ("<p>Test accuracy in %, mean ± std (population std, as the official scripts) over "
            "independently trained networks, grouped by protocol.</p>"
            + _table(["set", "model", "protocol", "networks", "mean ± std (%)",
                      "each network (%)", "note"], table, num_cols=(3, 4)) + checks_text)


def _figure(fig) -> str:
    if not fig.png:  # could not be drawn: say so (the caption holds the reason)
        return f'<h3>{_e(fig.title)}</h3><p class="muted">{_e(fig.caption)}</p>'
    data = base64.b64encode(fig.png).decode("ascii")
    caption = f"{_e(fig.caption)} " if fig.caption else ""
    return (f"<figure><h3>{_e(fig.title)}</h3>"
            f'<img src="data:image/png;base64,{data}" alt="{_e(fig.title)}">'
            f"<figcaption>{caption}File: <code>{_e(fig.path)}</code></figcaption></figure>")


def _figures(figures, empty: str) -> str:
    return "\n".join(_figure(f) for f in figures) if figures else _none(empty)


def _method(c) -> str:
    preset = describe_method(c.method or "")  # registered by the recipes, never imported here
    if preset is None:
        return _none(f"Method {c.method or 'unknown'!r} is not a preset of datadistill "
                     "(e.g. an imported or baseline set); `datadistill presets` lists them.")
    devs = "".join(f"<li>{_e(d)}</li>" for d in preset.deviations)
    return (f"<p><strong>{_e(preset.name)}</strong>: {_e(preset.paper)}.</p>"
            f"<p>What it changes vs MTT: {_e(preset.changes)}.</p>"
            f"<p>Deviations from the official code:</p><ul>{devs}</ul>")


def _config(c) -> str:
    if c.config is None:
        return _none("No config found in this folder.")
    text = yaml.safe_dump(c.config, sort_keys=False, default_flow_style=False)
    return (_teachers(c) + f"<p>Resolved config, from <code>{_e(c.config_file)}</code>:</p>"
            f"<pre>{_e(text)}</pre>")


TEACHER_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "width_mult", "seed")


def teacher_config_differences(c) -> list[str]:
    """``teachers.<key>: config X, store Y`` for every setting the stored teachers were not
    trained with (the config's values apply only to teachers still to train)."""
    cfg = (c.config or {}).get("teachers") or {}
    out = []
    for key in TEACHER_KEYS:
        stored = sorted({str(m.get(key)) for m in c.teachers.values() if key in m})
        if key in cfg and stored and stored != [str(cfg[key])]:
            out.append(f"teachers.{key}: config {cfg[key]}, store {', '.join(stored)}")
    return out


def _teachers(c) -> str:
    """INFER: the teachers used, with the settings their store recorded."""
    if not c.teachers:
        return ""
    rows = [[arch, *(m.get(k, "") for k in TEACHER_KEYS)] for arch, m in c.teachers.items()]
    diff = teacher_config_differences(c)
    note = ("" if not diff else _none(
        "The teachers used were trained with other settings than the config's teachers: "
        "section (which applies only to teachers still to train): " + "; ".join(diff) + "."))
    return ("<p>Teachers used, as their store records them:</p>"
            + _table(["teacher", *TEACHER_KEYS], rows) + note)


def _seconds(value) -> str:
    if value is None:
        return "not recorded"
    minutes, sec = divmod(float(value), 60)
    return f"{int(minutes)} min {sec:.0f} s" if minutes else f"{sec:.1f} s"


def _hardware_text(hw: dict) -> str:
    text = (f"CPU {hw.get('cpu')} ({hw.get('cpu_count')} logical cores), GPU {hw.get('gpu')}, "
            f"torch {hw.get('torch')} with {hw.get('torch_threads')} threads, "
            f"Python {hw.get('python')}, {hw.get('platform')}")
    if "compiled_loops" in hw:  # records written before these keys existed have neither
        loops = ", ".join(hw["compiled_loops"]) or "none"
        text += (f"; student CPU kernels: Winograd {'on' if hw.get('winograd') else 'off'}, "
                 f"compiled loops: {loops}")
    return text


def _time_hardware(c, hw: dict) -> str:
    stages = (c.record or {}).get("stages") or {}
    rows = [[name, _seconds(s.get("seconds")), s.get("finished", ""),
             _hardware_text(s.get("hardware") or {})] for name, s in stages.items()]
    parts = []
    timing = (c.eval_files.get("eval.json") or {}).get("seconds")
    if isinstance(timing, dict):
        parts.append("<p>Wall time of the run's stages (eval.json): "
                     + _e(", ".join(f"{k} {_seconds(v)}" for k, v in timing.items())) + ".</p>")
    device = (c.config or {}).get("device")
    if device:
        parts.append(f"<p>Device in the config: <code>{_e(device)}</code>.</p>")
    if rows:
        parts.append(_table(["stage", "wall time", "finished (UTC)", "hardware"], rows))
    else:
        parts.append(_none("No stage recorded its time here (run_record.json is written when "
                           "run, distill, infer or eval ends). This page was built on: "
                           + _hardware_text(hw)))
    return "\n".join(parts)


def render_page(c, rows, images, curves, hw: dict, last_note: str = "") -> str:
    """The whole page as a string (see the module docstring for the sections); ``last_note``
    says when the last iteration is not the evaluated set."""
    title = f"datadistill report: {c.method or 'run'} on {c.dataset or '?'}, IPC {c.ipc or '?'}"
    bodies = {
        "Summary": _summary(c, rows, hw, last_note),
        "Accuracy": _accuracy(rows),
        "Distilled images": _figures(images, "No distilled set in this folder yet."),
        "Curves": _figures(curves, "Nothing to plot yet (no metrics.jsonl, expert store or "
                                   "evaluation in this folder)."),
        "Method": _method(c),
        "Configuration": _config(c),
        "Time and hardware": _time_hardware(c, hw),
    }
    sections = "\n".join(_section(name, bodies[name]) for name in SECTIONS)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"<h1>{_e(title)}</h1>\n{sections}\n</body></html>\n")
