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
        DistillConfig.of(**base, label_mode="both")
    with pytest.raises(ConfigError, match="distill.param_mask='width'"):
        DistillConfig.of(**base, param_mask="width")
    with pytest.raises(ConfigError, match="needs distill.grad_mode=adjoint"):
        DistillConfig.of(**base, micro_batch=2)
    with pytest.raises(ConfigError, match="expanding needs current_max_start_epoch"):
        DistillConfig.of(**base, window="expanding")
    with pytest.raises(ConfigError, match="ema_decay must be in"):  # at config time now
        DistillConfig.of(**base, ema_decay=1.5)


def test_each_axis_is_a_nested_section_whose_keys_are_spelt_flat():
    import dataclasses

    from datadistill.config import key_aliases
    from datadistill.matching.axes import GradAxis, WindowAxis
    from datadistill.tm.distill import DistillSection

    aliases = key_aliases(DistillSection)  # the one table: flat key -> nested path
    sections = [f.name for f in dataclasses.fields(DistillSection)][:5]
    assert sections == ["window", "labels", "mask", "ema", "grad"]
    assert {aliases[k] for k in ("window", "label_mode", "param_mask", "ema_decay",
                                 "grad_mode")} == {"window.window", "labels.label_mode",
                                                   "mask.param_mask", "ema.ema_decay",
                                                   "grad.grad_mode"}
    assert all(path.split(".")[0] in sections for path in aliases.values())
    section = DistillSection.of(grad_mode="adjoint", window="expanding",
                                current_max_start_epoch=2, expansion_end=5)
    assert isinstance(section.grad, GradAxis) and section.grad.grad_mode == "adjoint"
    assert (section.window.window, section.window.expansion_end) == ("expanding", 5)
    with pytest.raises(ConfigError, match="expanding needs current_max_start_epoch"):
        WindowAxis(window="expanding")
    with pytest.raises(ConfigError, match=r"distill.snapshots='disk'; choose one of memory"):
        GradAxis(snapshots="disk")
    with pytest.raises(ConfigError, match="distill.max_start_epoch must be >= 1, got 0"):
        DistillConfig.of(dataset="digits", max_start_epoch=0, min_start_epoch=-1)


def test_distill_section_keys_stay_flat_in_yaml_overrides_and_saved_configs():
    from datadistill.config import config_to_dict
    from datadistill.tm.config import distill_config, load_pipeline_config

    cfg = load_pipeline_config("digits/mtt_ipc1", ["distill.grad_mode=adjoint", "ipc=2",
                                                   "distill.micro_batch=5", "zca=true"])
    dcfg = distill_config(cfg, expert_dir="somewhere")
    assert (cfg.distill.grad.grad_mode, dcfg.grad.grad_mode) == ("adjoint",) * 2
    assert dcfg.grad.micro_batch == 5
    assert (dcfg.ipc, dcfg.zca, dcfg.expert_dir) == (2, True, "somewhere")
    saved = config_to_dict(dcfg)
    assert saved["grad_mode"] == "adjoint" and saved["zca"] is True  # flat, as checkpoints hold
    assert config_to_dict(cfg)["distill"]["micro_batch"] == 5 and config_to_dict(cfg)["zca"]


@pytest.mark.parametrize("key", ["zca", "dataset", "seed", "ipc"])
def test_a_shared_key_inside_a_stage_section_names_where_it_belongs(key):
    from datadistill.tm.config import load_pipeline_config

    message = rf"experts.{key}: {key} is shared by every stage of a run; set it once at the top"
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config("digits/mtt_ipc1", [f"experts.{key}=1"])


def test_the_alias_table_reads_and_writes_the_flat_layout_of_saved_configs():
    import dataclasses

    from datadistill.config import config_asdict, config_from_dict
    from datadistill.tm.distill import DistillSection

    flat = {"window": "expanding", "current_max_start_epoch": 2, "expansion_end": 9,
            "label_mode": "soft", "grad_mode": "adjoint", "micro_batch": 4, "syn_steps": 7}
    section = config_from_dict(DistillSection, flat, prefix="distill.")
    assert (section.window.window, section.labels.label_mode, section.grad.micro_batch,
            section.syn_steps) == ("expanding", "soft", 4, 7)
    saved = config_asdict(section)  # what config.json and checkpoints hold: flat, every key
    assert {k: saved[k] for k in flat} == flat
    assert not any(dataclasses.is_dataclass(v) or isinstance(v, dict) for v in saved.values())
    assert config_from_dict(DistillSection, saved) == section  # a saved config reads back
    # The layout of config.json: the axes' keys in their place, before the loop's own keys
    # (the order the flat config of earlier versions had).
    assert list(saved)[:19] == [
        "expert_epochs", "max_start_epoch", "min_start_epoch", "window",
        "current_max_start_epoch", "expansion_end", "label_mode", "lr_y", "momentum_y",
        "param_mask", "param_mask_ratio", "ema_decay", "grad_mode", "micro_batch", "snapshots",
        "kept_graphs", "fast_student", "memory_check", "syn_steps"]
    # A section's own name is not a key of a file: only the flat spellings are.
    with pytest.raises(ConfigError, match=r"unknown config key 'distill.grad'.*Valid keys: "
                                          r"expert_epochs, max_start_epoch"):
        config_from_dict(DistillSection, {"grad": {"grad_mode": "adjoint"}}, prefix="distill.")
    with pytest.raises(ConfigError, match=r"distill.micro_batch: expected an integer"):
        config_from_dict(DistillSection, {"micro_batch": "four"}, prefix="distill.")
