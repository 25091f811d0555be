"""Every check once: the resume rule, lr_teacher and the required-epochs rule each have one
implementation and one message, used by every stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from datadistill.config import check_saved_config
from datadistill.errors import CompatibilityError, ConfigError
from datadistill.tm.distill import DistillConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "datadistill"


def _sources_with(text: str) -> list[str]:
    return sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if text in p.read_text())


def test_the_saved_config_check_lists_every_changed_key_and_ignores_free_ones():
    saved = {"lr": 0.1, "epochs": 10, "num_experts": 5}
    check_saved_config(saved, {"lr": 0.1, "epochs": 10, "num_experts": 9}, "d", what="x",
                       fix="", free=("num_experts",))
    with pytest.raises(CompatibilityError, match=r"^runs/e was written with another expert "
                       r"config \(epochs: 10 -> 20, lr: 0.1 -> 0.2\); use the original$"):
        check_saved_config(saved, {"lr": 0.2, "epochs": 20}, "runs/e", what="expert config",
                           fix="use the original")


def test_every_stage_uses_the_one_resume_check():
    assert _sources_with("was written with another") == ["config/sections.py"]
    assert {"tm/config.py", "experts/train.py", "infer/teachers_train.py"} <= set(
        _sources_with("check_saved_config("))


def test_lr_teacher_is_checked_where_the_config_is_built():
    with pytest.raises(ConfigError, match=r"lr_teacher \(initial step size\) must be > 0"):
        DistillConfig.of(lr_teacher=float("nan"))
    assert _sources_with('"distill.lr_teacher') == ["tm/config.py"]


def test_the_required_epochs_rule_has_one_message():
    assert _sources_with("expert epochs are needed") == ["checks.py"]
    assert _sources_with("required_epochs(max_start_epoch, expert_epochs)") == ["checks.py"]
