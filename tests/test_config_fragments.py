"""Every value once: method fragments ``extends:`` one another, per-setting YAMLs hold only what
differs from their method, and ``configs show``/``cp`` write the values back in."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from datadistill.cli import main
from datadistill.config import (
    EXTENDS_KEY,
    METHODS_DIR,
    config_roots,
    fragment_chain,
    list_configs,
    load_yaml,
    merge,
    method_values,
    resolve_config_path,
)
from datadistill.errors import ConfigError
from test_resolved_configs import resolve

FRAGMENTS = sorted(p.stem for p in (config_roots()[0] / METHODS_DIR).glob("*.yaml"))


def _leaves(d: dict, prefix: str = "") -> dict:
    """``{"distill.lr_img": 100, ...}``: every leaf of a nested mapping by its dotted key."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def restated(values: dict, beneath: dict) -> list[str]:
    """The keys of ``values`` whose value ``beneath`` already gives."""
    below = _leaves(beneath)
    return sorted(k for k, v in _leaves(values).items() if k in below and below[k] == v)


def test_restated_finds_a_value_equal_to_the_fragment():
    assert restated({"distill": {"lr_y": 2.0, "lr_img": 100}, "ipc": 1},
                    {"distill": {"lr_y": 2.0, "lr_img": 1000}}) == ["distill.lr_y"]


@pytest.mark.parametrize("name", list_configs())
def test_per_setting_config_restates_no_method_value(name):
    values = load_yaml(resolve_config_path(name))
    assert restated(values, method_values(str(values.get("method", "mtt")))) == []


@pytest.mark.parametrize("name", FRAGMENTS)
def test_fragment_restates_nothing_it_extends(name):
    own = load_yaml(config_roots()[0] / METHODS_DIR / f"{name}.yaml")
    parent = own.pop(EXTENDS_KEY, None)
    assert restated(own, method_values(parent) if parent else {}) == []


def test_pad_and_mdatm_extend_datm():
    assert [p.stem for p in fragment_chain("pad")] == ["datm", "pad"]
    assert [p.stem for p in fragment_chain("mdatm")] == ["datm", "mdatm"]
    assert fragment_chain("mtt") == []  # MTT is the dataclass defaults
    assert method_values("pad")["distill"]["threshold"] == 1.0  # from datm.yaml
    assert method_values("mdatm")["distill"]["label_mode"] == "hard"  # its own wins


def _fragments(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_extends_cycle_is_an_error(tmp_path):
    root = _fragments(tmp_path, a="extends: b\nx: 1\n", b="extends: c\n", c="extends: a\n")
    with pytest.raises(ConfigError, match=r"cycle \(a -> b -> c -> a\)"):
        method_values("a", root)
    root = _fragments(tmp_path, d="extends: d\n")
    with pytest.raises(ConfigError, match=r"cycle \(d -> d\)"):
        method_values("d", root)


def test_extends_unknown_parent_is_an_error(tmp_path):
    root = _fragments(tmp_path, a="extends: datn\nx: 1\n", datm="y: 2\n")
    with pytest.raises(ConfigError, match=r"method fragment 'a': `extends: datn` names no "
                                          r"method fragment; extend one of: a, datm"):
        method_values("a", root)


def test_child_values_win_over_the_parent(tmp_path):
    root = _fragments(tmp_path, a="s: {x: 1, y: 2}\nz: 3\n", b="extends: a\ns: {y: 5}\n")
    assert method_values("b", root) == {"s": {"x": 1, "y": 5}, "z": 3}


@pytest.mark.parametrize("name", list_configs())
def test_configs_cp_writes_every_value_and_resolves_the_same(name, tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    assert main(["configs", "cp", name, str(dest)]) == 0
    values = load_yaml(dest)
    method = values.get("method")
    if method in FRAGMENTS:  # every fragment value written in
        assert merge(method_values(method), values) == values
    assert resolve(str(dest)) == resolve(name)
    assert main(["configs", "show", name]) == 0
    assert capsys.readouterr().out.endswith(dest.read_text())


def test_configs_show_keeps_the_header_and_names_the_fragments(capsys):
    assert main(["configs", "show", "cifar10/pad_ipc10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# PAD on CIFAR-10, IPC 10")
    assert "configs/_methods/datm.yaml < configs/_methods/pad.yaml" in out
    assert yaml.safe_load(out)["distill"]["param_mask"] == "depth"
