"""Progress display: bars on a terminal, one line per stage elsewhere, nothing when quiet."""

import io

from tqdm.auto import tqdm

from datadistill.cli import main
from datadistill.runtime.progress import StageLine, progress_bar

TINY = [  # the main job at toy scale (as tests/test_main_job.py)
    "experts.num_experts=2", "experts.epochs=3", "distill.max_start_epoch=1",
    "distill.iterations=4", "distill.eval_every=2", "distill.eval_runs=1",
    "distill.eval_epochs=3", "evaluation.runs=2", "evaluation.epochs=3",
]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stage_line_counts_and_prints_once(capsys):
    bar = progress_bar(range(3), desc="experts", stage=True)
    assert isinstance(bar, StageLine)  # capsys' stderr is not a terminal
    for _ in bar:
        bar.set_postfix(acc="0.5")
    bar.close()  # closing again prints nothing more
    with progress_bar(total=4, desc="inner") as inner:  # not a stage: silent
        inner.update(4)
    assert capsys.readouterr().err.splitlines() == ["experts: 3/3 in 0 s (acc=0.5)"]


def test_terminal_gets_a_tqdm_bar_and_quiet_gets_nothing(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert isinstance(progress_bar(range(2), desc="x", stage=True), tqdm)
    assert progress_bar(range(2), desc="x", stage=True, enabled=False).disable
    monkeypatch.undo()
    quiet = progress_bar(range(2), desc="x", stage=True, enabled=False)
    assert list(quiet) == [0, 1] and capsys.readouterr().err == ""


def test_main_job_log_without_a_terminal_has_stage_lines_and_no_frames(tmp_path, capsys):
    assert main(["run", *TINY, "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    log = captured.out + captured.err
    assert "\r" not in log
    err = captured.err.splitlines()
    for stage in ("experts: 2/2", "distill: 4/4", "evaluate convnet: 2/2",
                  "random subset convnet: 2/2"):
        assert any(line.startswith(stage) for line in err), (stage, err)
    assert len(err) < 20  # a line per stage (and per periodic evaluation), not per frame
    assert "distilled_convnet" in captured.out and "random_subset" in captured.out


def test_a_resumed_stage_with_nothing_left_says_so(capsys):
    bar = progress_bar([], desc="experts", stage=True, initial=3, total=3)
    list(bar)
    assert capsys.readouterr().err.splitlines() == [
        "experts: 3/3 already done, nothing left (resumed)"]


def test_teacher_labels_leave_no_frames_in_a_non_terminal_log(capsys):
    import torch
    from torch import nn

    from datadistill.infer.labels import ensemble_logits

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    out = ensemble_logits([teacher], torch.randn(10, 1, 2, 2), batch_size=3, progress=True)
    assert out.shape == (10, 3)
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[0].startswith("teacher labels: 4/4 in ")
    assert len(err.splitlines()) == 1
