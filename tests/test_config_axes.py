"""Each strategy axis of DistillConfig is validated beside its math, with the same messages."""

from __future__ import annotations

import pytest

from datadistill.errors import ConfigError
from datadistill.matching.adjoint import check_grad_config
from datadistill.matching.ema import check_ema_config
from datadistill.matching.masks import check_mask_config
from datadistill.matching.soft_labels import check_labels_config
from datadistill.matching.window import check_window_config
from datadistill.tm.distill import DistillConfig

WINDOW = dict(min_start=0, max_start=4, current_max_start=2, expansion_end=10)


def test_axis_checks_name_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"distill.label_mode='both'; choose one of hard, soft"):
        check_labels_config("both")
    with pytest.raises(ConfigError, match=r"distill.param_mask='width'; choose one of none"):
        check_mask_config("width")
    with pytest.raises(ConfigError, match=r"distill.grad_mode='fd'; choose one of unrolled"):
        check_grad_config("fd", None)
    with pytest.raises(ConfigError, match="micro_batch=4 needs distill.grad_mode=adjoint"):
        check_grad_config("unrolled", 4)
    with pytest.raises(ConfigError, match=r"distill.window='linear'; choose one of fixed"):
        check_window_config("linear", **WINDOW)
    with pytest.raises(ConfigError, match=r"min_start_epoch \(4\) must be below"):
        check_window_config("fixed", **(WINDOW | {"min_start": 4}))
    with pytest.raises(ConfigError, match="expanding needs current_max_start_epoch"):
        check_window_config("expanding", **(WINDOW | {"expansion_end": None}))
    with pytest.raises(ConfigError, match=r"empty window .* = \[2, 2\)"):
        check_window_config("expanding", **(WINDOW | {"min_start": 2}))
    check_window_config("expanding", **WINDOW)  # a valid window passes
    with pytest.raises(ConfigError, match=r"ema_decay must be in \[0, 1\), got 1.0"):
        check_ema_config(1.0)
    check_ema_config(None)  # no EMA


def test_distill_config_runs_every_axis_check():
    base = dict(dataset="digits", max_start_epoch=4)
    with pytest.raises(ConfigError, match="distill.label_mode='both'"):
        DistillConfig(**base, label_mode="both")
    with pytest.raises(ConfigError, match="distill.param_mask='width'"):
        DistillConfig(**base, param_mask="width")
    with pytest.raises(ConfigError, match="needs distill.grad_mode=adjoint"):
        DistillConfig(**base, micro_batch=2)
    with pytest.raises(ConfigError, match="expanding needs current_max_start_epoch"):
        DistillConfig(**base, window="expanding")
    with pytest.raises(ConfigError, match="ema_decay must be in"):  # at config time now
        DistillConfig(**base, ema_decay=1.5)


def test_each_axis_is_a_group_of_distill_keys_checked_on_its_own():
    import dataclasses

    from datadistill.matching.axes import AXES, GradAxis, WindowAxis
    from datadistill.tm.distill import DistillSection

    section = {f.name for f in dataclasses.fields(DistillSection)}
    keys = [f.name for axis in AXES for f in dataclasses.fields(axis)]
    assert len(keys) == len(set(keys)) and set(keys) <= section  # each key in one axis
    assert {"window", "label_mode", "param_mask", "ema_decay", "grad_mode"} <= set(keys)
    with pytest.raises(ConfigError, match="expanding needs current_max_start_epoch"):
        WindowAxis(window="expanding")
    with pytest.raises(ConfigError, match=r"distill.snapshots='disk'; choose one of memory"):
        GradAxis(snapshots="disk")
    with pytest.raises(ConfigError, match="distill.max_start_epoch must be >= 1, got 0"):
        DistillConfig(dataset="digits", max_start_epoch=0, min_start_epoch=-1)


def test_distill_section_keys_stay_flat_in_yaml_overrides_and_saved_configs():
    from datadistill.config import config_to_dict
    from datadistill.tm.pipeline import distill_config, load_pipeline_config

    cfg = load_pipeline_config("digits/mtt_ipc1", ["distill.grad_mode=adjoint", "ipc=2",
                                                   "distill.micro_batch=5", "zca=true"])
    dcfg = distill_config(cfg, expert_dir="somewhere")
    assert (cfg.distill.grad_mode, dcfg.grad_mode, dcfg.micro_batch) == ("adjoint",) * 2 + (5,)
    assert (dcfg.ipc, dcfg.zca, dcfg.expert_dir) == (2, True, "somewhere")
    saved = config_to_dict(dcfg)
    assert saved["grad_mode"] == "adjoint" and saved["zca"] is True  # flat, as checkpoints hold
    assert config_to_dict(cfg)["distill"]["micro_batch"] == 5 and config_to_dict(cfg)["zca"]


@pytest.mark.parametrize("key", ["zca", "dataset", "seed", "ipc"])
def test_a_shared_key_inside_a_stage_section_names_where_it_belongs(key):
    from datadistill.tm.pipeline import load_pipeline_config

    message = rf"experts.{key}: {key} is shared by every stage of a run; set it once at the top"
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config("digits/mtt_ipc1", [f"experts.{key}=1"])
