"""Every shipped config resolves to the values recorded in ``tests/data/resolved_configs.json``.

The snapshot was taken before the config machinery was restructured; a config refactor that
changes any resolved value of any shipped config fails here. Stage configs (experts, distill)
are compared as resolved by the pipeline, so values moved between presets and YAML files are
covered too. ``device`` is left out: it resolves to the machine's accelerator.

Regenerate (only when a value is meant to change, and say so in the commit):
    PYTHONPATH=src python tests/test_resolved_configs.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datadistill.config import config_to_dict, list_configs

SNAPSHOT = Path(__file__).parent / "data" / "resolved_configs.json"


def _no_device(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "device"}


def resolve(name: str) -> dict:
    """The resolved values of shipped config ``name``, in the snapshot's layout."""
    from datadistill.recipes import load_config
    from datadistill.tm.config import distill_config, expert_config

    recipe, cfg = load_config(name)
    if recipe.name == "infer":
        return {"infer": _no_device(config_to_dict(cfg))}
    return {"pipeline": config_to_dict(cfg),
            "experts": _no_device(config_to_dict(expert_config(cfg))),
            "distill": _no_device(config_to_dict(distill_config(cfg)))}


def test_snapshot_lists_every_shipped_config():
    assert sorted(json.loads(SNAPSHOT.read_text())) == list_configs()


def _typed(value, like):
    """A written value as its typed section holds it: YAML 1.1 reads ``1e-7`` as a string,
    which the untyped section kept and the typed one holds as the number."""
    number = isinstance(like, (int, float)) and not isinstance(like, bool)
    return type(like)(value) if number and isinstance(value, str) else value


def _typed_sections(got: dict, expected: dict) -> None:
    """Map the snapshot's stage sections to the typed layout, comparing every value.

    The snapshot holds, under ``pipeline``, only the ``experts``/``distill`` keys that the YAML
    and the preset set (the sections were untyped dicts then); a typed section holds every key
    of the section. Its written keys must keep their values, and every key must equal the
    resolved stage value (``experts``/``distill`` of the snapshot); then the full section
    stands in for the partial one.
    """
    for section in ("experts", "distill"):
        written, full = expected["pipeline"][section], got["pipeline"][section]
        assert {k: full[k] for k in written} == {k: _typed(v, full[k]) for k, v in
                                                  written.items()}, section
        assert full == {k: expected[section][k] for k in full}, section
        expected["pipeline"][section] = full


@pytest.mark.parametrize("name", list_configs())
def test_shipped_config_resolves_to_snapshot(name):
    expected = json.loads(SNAPSHOT.read_text())[name]
    got = json.loads(json.dumps(resolve(name)))
    if "pipeline" in got:
        _typed_sections(got, expected)
    assert got == expected


if __name__ == "__main__":
    snapshot = {name: resolve(name) for name in list_configs()}
    SNAPSHOT.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"{len(snapshot)} configs written to {SNAPSHOT}")
