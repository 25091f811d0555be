"""The protocol registry: one object per protocol with the same interface, looked up by name;
a new protocol is one entry; options objects and keywords are the same evaluation."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest

import datadistill.evaluation.protocols as ev
from datadistill.evaluation.baselines import BaselineOptions, baseline_random
from datadistill.evaluation.ddranking import DDRankingConfig, preset_for
from datadistill.evaluation.protocols import (
    PROTOCOLS,
    RUN_PROTOCOLS,
    ClassicProtocol,
    EvalOptions,
    evaluate,
)
from datadistill.tm.config import EvaluationConfig
from test_evaluate import SMALL, quadrants, toy_test


def test_every_protocol_is_one_registry_entry_with_the_same_interface():
    assert RUN_PROTOCOLS == tuple(PROTOCOLS) == ("classic", "challenge", "ddranking")
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name and protocol.summary
        assert callable(protocol.evaluate)
    assert isinstance(PROTOCOLS["classic"].settings(epochs=3), PROTOCOLS["classic"].section)
    assert PROTOCOLS["challenge"].settings().protocol == "challenge"
    assert PROTOCOLS["ddranking"].section is DDRankingConfig
    # DD-Ranking's section is the method's preset from configs/_evaluation/ddranking.yaml
    assert PROTOCOLS["ddranking"].settings("datm", rounds=2) == preset_for("datm", rounds=2)
    EvaluationConfig(protocols=list(RUN_PROTOCOLS))  # a run may name every one


def _same(a, b) -> bool:
    """Equal accuracies and settings (the seconds each run took aside)."""
    timing = ("seconds_per_run",)
    return a.accuracies == b.accuracies and {k: v for k, v in a.settings.items()
                                             if k not in timing} == {
        k: v for k, v in b.settings.items() if k not in timing}


def test_the_registry_object_equals_the_function_and_options_equal_keywords():
    x, y = quadrants(2, seed=1)
    test = toy_test(25)
    kw = dict(lr=0.002, epochs=1, batch_size=4, num_runs=2, model_kwargs=SMALL, seed=3)
    direct = evaluate(x, y, test, **kw)
    via_registry = PROTOCOLS["classic"].evaluate(x, y, SimpleNamespace(test=test), **kw)
    via_options = evaluate(x, y, test, EvalOptions(**kw))
    other_seed = EvalOptions(**{**kw, "seed": 9})
    assert evaluate(x, y, test, other_seed).accuracies != direct.accuracies  # seed matters
    overridden = evaluate(x, y, test, other_seed, seed=3)  # a keyword replaces the field
    for rep in (via_registry, via_options, overridden):
        assert _same(rep, direct)


def test_a_new_protocol_is_one_registry_entry(monkeypatch):
    runs: list[int] = []
    monkeypatch.setattr(ev, "train_and_test", lambda x, y, test, **kw: runs.append(kw["run"])
                        or 0.5)
    two = ClassicProtocol(name="classic_two_runs", summary="the classic loop, 2 runs",
                          default_runs=2)
    monkeypatch.setitem(PROTOCOLS, two.name, two)
    x, y = quadrants(1, seed=0)
    rep = evaluate(x, y, toy_test(1), protocol="classic_two_runs", epochs=1)
    assert runs == [0, 1] and rep.protocol == "classic_two_runs" and rep.mean == 0.5


def test_ddranking_is_not_run_on_one_set_and_unknown_keywords_are_named():
    x, y = quadrants(1, seed=0)
    with pytest.raises(Exception, match=r"unknown protocol 'ddranking'.*'classic', 'challenge'"):
        evaluate(x, y, toy_test(1), protocol="ddranking")
    with pytest.raises(TypeError, match="evaluate.*'num_run'"):
        evaluate(x, y, toy_test(1), num_run=2)
    with pytest.raises(TypeError, match="baseline_random.*'ipcs'"):
        baseline_random(SimpleNamespace(train=None, test=None), 1, ipcs=2)


def test_baseline_options_hold_every_keyword_of_the_baselines():
    names = {f.name for f in fields(BaselineOptions)}
    assert {"model", "num_runs", "epochs", "batch_size", "lr", "seed", "device", "dsa_strategy",
            "progress", "model_kwargs", "root", "zca", "cache"} == names
