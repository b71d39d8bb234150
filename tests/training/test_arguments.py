"""Training arguments: choices with one source, head options that reach the model, flags that would do nothing."""

import math

import pytest

from vrm.training.arguments import VRMTrainingArguments


def test_each_choice_list_has_one_source():
    """The arguments' choices are the lists of the modules that implement them, not copies."""
    import dataclasses

    from vrm.data.tokenization import INPUT_FORMATS, TRUNCATION_POLICIES
    from vrm.models.config import HEAD_TYPES, HeadConfig
    from vrm.training.arguments import ModelArguments, VRMTrainingArguments
    from vrm.training.losses import ATTRIBUTE_TARGETS, BETA_SCHEDULES

    training = {item.name: item.metadata.get("choices") for item in dataclasses.fields(VRMTrainingArguments)}
    assert training["attribute_target"] is ATTRIBUTE_TARGETS and training["beta_schedule"] is BETA_SCHEDULES
    assert training["truncation"] is TRUNCATION_POLICIES and training["input_format"] is INPUT_FORMATS
    model = {item.name: item for item in dataclasses.fields(ModelArguments)}
    head = {item.name: item for item in dataclasses.fields(HeadConfig)}
    assert model["head_type"].metadata["choices"] is HEAD_TYPES
    assert all(model[name] is head[name] or model[name].metadata == head[name].metadata for name in head)


def test_head_posterior_overrides_reach_the_model(llama_backbone_dir):
    """`--weight_posterior softmax` on a vrm head: deterministic gate, Gaussian features kept (an ablation)."""
    from vrm.training.arguments import ModelArguments
    from vrm.training.backbone import build_model

    model = build_model(
        ModelArguments(model_name_or_path=llama_backbone_dir, head_type="vrm", weight_posterior="softmax")
    )
    assert (model.config.weight_posterior, model.config.feature_posterior) == ("softmax", "gaussian")
    default = build_model(ModelArguments(model_name_or_path=llama_backbone_dir, head_type="vrm"))
    assert default.config.weight_posterior == "dirichlet"
    with pytest.raises(ValueError, match="weight_posterior must be one of"):
        build_model(ModelArguments(model_name_or_path=llama_backbone_dir, weight_posterior="gumbel"))


@pytest.mark.parametrize(
    "flags, names, message",
    [
        ({"attribute_target": "graded"}, [], "--attribute_target graded needs --attribute_names"),
        ({"rating_weight_coef": -1.0}, ["a", "b"], "--rating_weight_coef must be >= 0"),
        ({"rating_weight_coef": math.nan}, ["a", "b"], "--rating_weight_coef must be >= 0"),
        ({"rating_weight_coef": 1.0}, ["a"], "at least two rated objectives"),
        ({"rating_temperature": math.nan}, ["a", "b"], "--rating_temperature must be a positive number"),
        ({"rating_temperature": 0.0}, ["a", "b"], "--rating_temperature must be a positive number"),
    ],
)
def test_rating_flags_that_would_do_nothing_are_errors(tmp_path, flags, names, message):
    with pytest.raises(
        ValueError, match=message
    ):  # refused when the arguments are made, before anything loads
        VRMTrainingArguments(
            output_dir=str(tmp_path), report_to="none", attribute_names=names or None, **flags
        )
    VRMTrainingArguments(output_dir=str(tmp_path), report_to="none", attribute_names=names or None)
