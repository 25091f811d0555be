"""Recipes by registry: shipped configs name their recipe, `run`/`validate` dispatch on it."""

from __future__ import annotations

import pytest

from datadistill.cli import main
from datadistill.config import list_configs, read_config
from datadistill.errors import ConfigError
from datadistill.infer import InferConfig, load_infer_config
from datadistill.recipes import RECIPES, get_recipe, load_config
from datadistill.tm.config import PipelineConfig, load_pipeline_config


def test_every_shipped_config_names_a_registered_recipe():
    for name in list_configs():
        raw = read_config(name)
        assert raw.named and raw.recipe in RECIPES, name
        assert "recipe" not in raw.values, name
        recipe, cfg = load_config(name)
        assert recipe.name == raw.recipe
        assert isinstance(cfg, InferConfig if recipe.name == "infer" else PipelineConfig), name


def test_unknown_recipe_names_the_choices(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text("recipe: dm\ndataset: digits\n")
    with pytest.raises(ConfigError, match="unknown recipe 'dm'.*tm: trajectory.*infer: INFER"):
        load_config(path)
    assert main(["validate", str(path)]) == 2
    assert "unknown recipe 'dm'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        get_recipe("nope")


def test_a_file_without_recipe_is_trajectory_matching_and_its_errors_say_so(tmp_path):
    tm = tmp_path / "tm.yaml"
    tm.write_text("method: ftd\ndataset: digits\nipc: 2\n")
    recipe, cfg = load_config(tm)
    assert recipe.name == "tm" and (cfg.method, cfg.ipc) == ("ftd", 2)
    infer = tmp_path / "infer.yaml"
    infer.write_text("dataset: digits\nteachers: {epochs: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'teachers'.*names no `recipe`.*"
                                          r"read as 'tm'.*infer: INFER"):
        load_config(infer)
    # The INFER commands read a file without `recipe` as INFER.
    assert load_infer_config(infer, ["device=cpu"]).teachers.epochs == 1


def test_recipe_loaders_refuse_the_other_recipe():
    with pytest.raises(ConfigError, match="'infer' config.*not 'tm'.*datadistill run"):
        load_pipeline_config("digits/infer_ipc10")
    with pytest.raises(ConfigError, match="'tm' config.*not 'infer'"):
        load_infer_config("digits/mtt_ipc1", [])
    assert load_config("digits/mtt_ipc1", ["recipe=tm"])[0].name == "tm"


def test_run_dispatches_an_infer_config_to_infer(tmp_path, capsys):
    # INFER needs a teacher store: reaching that check proves the INFER recipe ran it
    # (the trajectory-matching loader would reject the `teachers` section instead).
    assert main(["run", "digits/infer_ipc10", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr()
    assert "datadistill run: infer on digits, IPC 10" in err.out
    assert "no teacher store given" in err.err


def test_validate_labels_each_recipe(capsys):
    assert main(["validate", "digits/infer_ipc10"]) == 0
    assert "valid (infer, digits, IPC 10)" in capsys.readouterr().out
    assert main(["validate", "cifar10/datm_ipc10"]) == 0
    assert "valid (datm, cifar10, IPC 10)" in capsys.readouterr().out
