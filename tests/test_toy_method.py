"""A method added from outside the package (``tests/toy_method``: one package, its configs and
one ``register_preset`` line) runs through ``datadistill run``, the report and ``score`` as a
shipped one does, and nothing under ``src/`` names it."""

from __future__ import annotations

import html
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datadistill.cli import main
from datadistill.config import config_roots, list_configs, method_values
from datadistill.errors import ConfigError
from datadistill.evaluation.ddranking import preset_for
from datadistill.recipes import describe_method
from datadistill.tm.presets import Preset, list_presets, register_preset, unregister_preset

PACKAGE = Path(__file__).parent / "toy_method"
SRC = Path(__file__).parents[1] / "src"
SHIPPED = ["mtt", "ftd", "datm", "mdatm", "pad"]


@pytest.fixture
def toy():
    """The toy package freshly imported (which registers ``toy_ftd``), unregistered after."""
    sys.modules.pop("toy_method", None)
    module = importlib.import_module("toy_method")
    yield module
    if module.PRESET.name in list_presets():
        unregister_preset(module.PRESET.name)
    sys.modules.pop("toy_method", None)


def test_toy_method_runs_through_the_cli_the_report_and_score(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "digits/toy_ftd_ipc1", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "eval.json").read_text())
    config = report["config"]
    assert config["method"] == "toy_ftd"
    # its fragment's one value, over FTD's (extends: ftd, a shipped fragment) ...
    assert config["experts"]["gsam_rho"] == 0.05 != method_values("ftd")["experts"]["gsam_rho"]
    assert config["experts"]["optimizer"] == "gsam" and config["distill"]["ema_decay"] == 0.9995
    assert {"distilled_convnet", "ema_convnet", "random_subset"} <= set(report)  # FTD's outputs
    page = (out / "report.html").read_text()
    for text in (toy.PRESET.paper, toy.PRESET.changes, *toy.PRESET.deviations):
        assert html.escape(text) in page
    capsys.readouterr()

    best = out / "distill" / "best"
    assert main(["score", str(best), "--epochs", "1", "--runs", "1", "--full-epochs", "1",
                 "--no-ars", "--quiet"]) == 0
    scored = json.loads((best / "ddranking.json").read_text())
    assert scored["protocol"] == "ddranking" and len(scored["rounds"]) == 1
    # scored with the preset the toy names (DC's, no augmentation), not FTD's (DSA)
    assert scored["settings"]["config"]["train"]["augment"] == "none"
    assert preset_for("ftd").train.augment == "dsa"
    assert "LRS" in capsys.readouterr().out


def test_the_toy_is_one_package_and_nothing_under_src_names_it():
    files = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    assert files == ["__init__.py", "configs/_methods/toy_ftd.yaml",
                     "configs/digits/toy_ftd_ipc1.yaml"]
    registry_lines = [line for line in (PACKAGE / "__init__.py").read_text().splitlines()
                      if "register_preset(" in line and not line.startswith("from")]
    assert len(registry_lines) == 1
    # the package's own files (not what an install writes beside it, e.g. *.egg-info)
    naming = [str(p) for p in (SRC / "datadistill").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts
              and any(name in p.read_bytes() for name in (b"toy_ftd", b"toy_method"))]
    assert naming == []


def test_registering_is_checked_and_undone(toy, tmp_path, capsys):
    name = toy.PRESET.name
    assert list_presets() == [*SHIPPED, name]
    assert "digits/toy_ftd_ipc1" in list_configs() and describe_method(name) is toy.PRESET
    assert main(["presets"]) == 0 and name in capsys.readouterr().out
    assert main(["configs", "show", "digits/toy_ftd_ipc1"]) == 0
    shown = capsys.readouterr().out
    assert "gsam_rho: 0.05" in shown and "optimizer: gsam" in shown  # fragments written in
    assert "configs/_methods/ftd.yaml < " in shown  # the shipped fragment, then the toy's file
    assert "toy_method/configs/_methods/toy_ftd.yaml < this setting's own values" in shown

    roots = config_roots()
    with pytest.raises(ConfigError, match="'mtt' is already registered"):
        register_preset(Preset(name="mtt", paper="", changes=""))
    with pytest.raises(ConfigError, match="ddranking='hard_dsb' is no DD-Ranking preset"):
        register_preset(Preset(name="toy2", paper="", changes="", ddranking="hard_dsb"))
    with pytest.raises(ConfigError, match="config folder .*nowhere does not exist"):
        register_preset(Preset(name="toy3", paper="", changes=""), configs=tmp_path / "nowhere")
    (tmp_path / "_methods").mkdir()
    (tmp_path / "_methods" / "toy3.yaml").write_text("extends: fdt\n")
    with pytest.raises(ConfigError, match="`extends: fdt` names no method fragment"):
        register_preset(Preset(name="toy3", paper="", changes=""), configs=tmp_path)
    assert list_presets() == [*SHIPPED, name] and config_roots() == roots

    unregister_preset(name)
    assert list_presets() == SHIPPED and describe_method(name) is None
    assert config_roots() == roots[:1] and "digits/toy_ftd_ipc1" not in list_configs()
    with pytest.raises(ConfigError, match="no DD-Ranking config for 'toy_ftd'"):
        preset_for(name)
    with pytest.raises(ConfigError, match="'mtt' is not a method added"):
        unregister_preset("mtt")


def _install(site: Path, value: str) -> None:
    """A dist-info in ``site`` declaring one datadistill plugin entry point, as `pip install`
    of a package with `[project.entry-points."datadistill.plugins"]` would write it."""
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[datadistill.plugins]\ntoy = {value}\n")


def _cli(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PACKAGE.parent),
                                                        str(SRC)])}
    return subprocess.run([sys.executable, "-m", "datadistill", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_installed_plugin_is_found_by_a_fresh_datadistill_process(tmp_path):
    _install(tmp_path / "site", "toy_method")
    done = _cli(["presets"], tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert "toy_ftd" in done.stdout
    done = _cli(["validate", "digits/toy_ftd_ipc1"], tmp_path / "site")
    assert done.returncode == 0 and "toy_ftd, digits, IPC 1" in done.stdout, done.stderr
    # without the entry point the same process knows no such method
    done = _cli(["validate", "digits/toy_ftd_ipc1"], tmp_path / "bare")
    assert done.returncode == 2 and "toy_ftd" in done.stderr


def test_a_plugin_that_fails_to_load_is_one_error_line_naming_it(tmp_path):
    _install(tmp_path / "site", "no_such_plugin_module")
    done = _cli(["presets"], tmp_path / "site")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "plugin 'toy' (no_such_plugin_module) failed to load" in done.stderr
