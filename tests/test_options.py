"""RankOptions: keyword-only, validated, one name per option, and what each option reaches (model-free)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bioimage_cte.cte.estimators import CTEDropout, CTEInput, MCDropoutAgreement, TTAAgreement
from bioimage_cte.cte.perturbations import DEFAULT_DROPOUT, DEFAULT_INPUT_STRENGTH
from bioimage_cte.run.options import RankOptions
from bioimage_cte.zoo.trust import DEFAULT_TRUSTED_LIBRARIES


def test_defaults():
    options = RankOptions()
    assert (options.estimator, options.task, options.consistency_kind, options.repeats, options.seed) == (
        "tta+consensus", "semantic", "soft", 1, 0)
    assert options.device == "cpu" and options.strength is None and options.trusted_libraries == ()


@pytest.mark.parametrize("name", ["p", "estimator_options", "dropout", "strenght"])
def test_unknown_keyword_is_a_type_error(name):
    with pytest.raises(TypeError, match=name):
        RankOptions(**{name: 0.2})


def test_construction_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        RankOptions("cte-input")  # type: ignore[misc]
    options = RankOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 3  # type: ignore[misc]
    assert hash(options) == hash(RankOptions())


@pytest.mark.parametrize(("changes", "message"), [
    ({"estimator": "oracle"}, "unknown estimator 'oracle'"),
    ({"task": "detection"}, "unknown task 'detection'"),
    ({"perturbation": "blur"}, "unknown perturbation 'blur'"),
    ({"consistency": "dice"}, "unknown consistency 'dice'"),
    ({"repeats": 0}, "repeats=0"),
    ({"seed": -1}, "seed=-1"),
    ({"time_limit": -1}, "time_limit=-1"),
    ({"time_limit": float("nan")}, "time_limit=nan"),
    ({"estimator": "cte-dropout", "strength": 1.0}, "0 <= p < 1"),  # a dropout rate of 1 drops every channel
    ({"estimator": "cte-dropout", "strength": -0.1}, "0 <= p < 1"),
    ({"estimator": "cte-input", "strength": -0.1}, "gaussian strength -0.1 is invalid"),
    ({"estimator": "cte-input", "perturbation": "gamma", "strength": -1.0}, "must be > -1"),
])
def test_validation_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        RankOptions(**changes)


def test_replace_validates_again():
    options = RankOptions(strength=0.3)
    assert options.replace(seed=4) == RankOptions(strength=0.3, seed=4)
    with pytest.raises(ValueError, match="repeats"):
        options.replace(repeats=0)
    with pytest.raises(TypeError):
        options.replace(p=0.2)


def test_estimator_built_from_options_uses_strength_consistency_and_repeats():
    dropout = RankOptions(estimator="cte-dropout", strength=0.35, consistency="hard", repeats=3).make_estimator()
    assert dropout == CTEDropout(strength=0.35, consistency="hard", repeats=3)
    assert dropout.settings() == {"strength": 0.35, "consistency": "hard", "repeats": 3, "threshold": 0.5}
    assert RankOptions(estimator="cte-dropout").make_estimator() == CTEDropout(strength=DEFAULT_DROPOUT)
    # the default, chosen on development targets with a published model among the candidates (README, issue #25)
    assert RankOptions().estimator == "tta+consensus"
    assert RankOptions(estimator="cte-dropout", task="instance").make_estimator().consistency == "instance"
    soft = RankOptions(estimator="cte-dropout", task="instance", consistency="soft").make_estimator()
    assert soft.consistency == "soft"
    noise = RankOptions(estimator="cte-input", perturbation="gamma", strength=0.2, repeats=2).make_estimator()
    assert noise == CTEInput(kind="gamma", strength=0.2, consistency="soft", repeats=2)
    assert RankOptions(estimator="cte-input").make_estimator().strength == DEFAULT_INPUT_STRENGTH
    # one name for the dropout rate, whichever estimator uses it
    options = RankOptions(estimator="cte-dropout", strength=0.4)
    assert options.make_estimator("mc-dropout") == MCDropoutAgreement(strength=0.4)
    assert options.make_estimator("mc-dropout").settings()["strength"] == 0.4
    assert options.make_estimator("tta") == TTAAgreement()


def test_score_settings_are_the_estimators_plus_what_changes_a_score():
    options = RankOptions(estimator="cte-dropout", strength=0.3, seed=2, axes="yx", layer="encoders.2",
                          weight_format="torchscript")
    assert options.score_settings() == {"strength": 0.3, "consistency": "soft", "repeats": 1, "threshold": 0.5,
                                        "seed": 2, "axes": "yx", "layer": "encoders.2",
                                        "weight_format": "torchscript"}
    assert options.score_settings("tta") == {"transforms": [1, 2, 4], "seed": 2, "axes": "yx",
                                             "layer": "encoders.2", "weight_format": "torchscript"}


def test_score_settings_exclude_device_and_tag_and_name_trust_only_when_set():
    base = RankOptions().score_settings()
    # a tag chooses the default estimator (nuclei: tta+consensus+boundary), never an estimator's scores
    assert RankOptions(device="cuda:0", tag="nuclei", estimator=RankOptions().estimator).score_settings() == base
    assert "device" not in base and "tag" not in base
    assert "trust_code" not in base and "trusted_libraries" not in base  # keys of earlier runs stay valid
    trusted = RankOptions(trust_code=True, trusted_libraries=("zlab", "mylab")).score_settings()
    assert trusted == {**base, "trust_code": True, "trusted_libraries": ["mylab", "zlab"]}


def test_run_settings_record_every_run_option():
    options = RankOptions(seed=5, task="instance", device="cuda", tag="cells", trusted_libraries=["mylab"])
    assert options.trusted_libraries == ("mylab",)  # a list becomes a tuple: the options stay hashable
    assert options.run_settings() == {"seed": 5, "task": "instance", "axes": None, "device": "cuda", "layer": None,
                                      "channels": None, "output_channel": None, "inputs": None,
                                      "weight_format": None, "tag": "cells", "trust_code": False,
                                      "trusted_libraries": ["mylab"], "budget": "all", "max_pixels": 2**30,
                                      "max_entry_bytes": 2 * 1024**3, "skip_bad_images": False, "time_limit": 3600.0}


def test_inputs_are_parsed_checked_and_recorded():
    options = RankOptions(inputs="input0=1, input1=0+2")
    assert options.inputs == (("input0", (1,)), ("input1", (0, 2)))
    assert options.run_settings()["inputs"] == "input0=1,input1=0+2"
    assert options.score_settings()["inputs"] == "input0=1,input1=0+2"
    assert "inputs" not in RankOptions().score_settings()  # stored results keep their key when it is not given
    assert RankOptions(**{"inputs": options.run_settings()["inputs"]}).inputs == options.inputs  # JSON round trip
    for bad in ("input0", "input0=a", "input0=-1", "a=0,a=1", ""):
        with pytest.raises(ValueError, match="inputs="):
            RankOptions(inputs=bad)


def test_channels_are_parsed_and_checked_and_change_the_score_key_only_when_set():
    assert RankOptions(channels="0, 2").channels == (0, 2)
    assert RankOptions(channels=[1]).channels == (1,)
    for bad in ("0,x", "", "1,1", "-1"):
        with pytest.raises(ValueError, match="channel indices"):
            RankOptions(channels=bad)
    base = RankOptions().score_settings()
    assert "channels" not in base and "output_channel" not in base  # keys of earlier runs stay valid
    chosen = RankOptions(channels=(2, 0), output_channel="nuclei").score_settings()
    assert chosen == {**base, "channels": [2, 0], "output_channel": "nuclei"}
    assert RankOptions.from_json_dict(RankOptions(channels=(2, 0)).to_json_dict()).channels == (2, 0)


@pytest.mark.parametrize("name", ["max_pixels", "max_entry_bytes"])
def test_limits_must_be_positive(name):
    with pytest.raises(ValueError, match=f"^{name}=0: use a positive limit"):
        RankOptions(**{name: 0})


def test_json_round_trip():
    options = RankOptions(estimator="cte-input", task="instance", consistency="hard", perturbation="contrast",
                          strength=0.25, repeats=2, seed=9, axes="zyx", layer="bottleneck",
                          weight_format="onnx", device="cuda:1", tag="nuclei", trust_code=True,
                          trusted_libraries=("mylab", "otherlab"))
    data = options.to_json_dict()
    assert data["trusted_libraries"] == ["mylab", "otherlab"]
    text = json.dumps(data)
    assert RankOptions.from_json_dict(json.loads(text)) == options
    assert RankOptions.from_json_dict(RankOptions().to_json_dict()) == RankOptions()
    with pytest.raises(TypeError, match="'p'"):
        RankOptions.from_json_dict({**data, "p": 0.2})


def test_code_policy_of_options():
    policy = RankOptions(trust_code=True, trusted_libraries=("mylab",)).code_policy()
    assert policy.trust_code and policy.allows_module("mylab.nets") and policy.allows_module("monai")
    default = RankOptions().code_policy()
    assert not default.trust_code and default.trusted_libraries == DEFAULT_TRUSTED_LIBRARIES
    assert not default.allows_module("mylab.nets")


def test_mc_dropout_rate_is_validated_up_front():
    with pytest.raises(ValueError, match="0 <= p < 1"):
        RankOptions(estimator="mc-dropout", strength=1.5)
