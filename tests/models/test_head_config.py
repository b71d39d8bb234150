"""One definition of the head's options (`HeadConfig`): the `vrm train` flags, a YAML config and the saved
`config.json` all see every field, with the same value."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from vrm.cli.train import parse_train_args
from vrm.models import HeadConfig, VRMConfig
from vrm.training import ModelArguments, build_model

# a value other than the default for every head option (a new HeadConfig field needs one here too)
NON_DEFAULT = {
    "head_type": "vrm",
    "num_objectives": 3,
    "objective_names": ["helpful", "honest", "harmless"],
    "weight_posterior": "logistic_normal",
    "feature_posterior": "gaussian",
    "feature_dim": 5,
    "decoder_hidden_size": 6,
    "prior_concentration": 2.5,
    "concentration_min": 0.1,
    "concentration_max": 50.0,
    "feature_logvar_min": -8.0,
    "feature_logvar_max": 2.0,
    "num_samples": 3,
    "num_eval_samples": 7,
    "pooling": "mean",
    "prompt_state_gradient": False,
    "ensemble_members": 2,
}


def flags(values: dict) -> list[str]:
    argv = []
    for name, value in values.items():
        if isinstance(value, bool):
            argv += [f"--{name}", str(value).lower()]
        elif isinstance(value, list):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def test_every_head_option_is_a_model_argument_and_a_config_field():
    names = [item.name for item in dataclasses.fields(HeadConfig)]
    assert sorted(NON_DEFAULT) == sorted(names)
    assert set(names) <= {item.name for item in dataclasses.fields(ModelArguments)}
    assert set(names) <= set(VRMConfig().to_dict())


def test_flags_yaml_and_config_json_see_every_head_option(tmp_path, llama_backbone_dir):
    base = [
        "--model_name_or_path",
        llama_backbone_dir,
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
    ]
    from_flags, _, _ = parse_train_args([*base, *flags(NON_DEFAULT)])
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(NON_DEFAULT))
    from_yaml, _, _ = parse_train_args([*base, "--config", str(config_file)])
    for name, value in NON_DEFAULT.items():
        assert getattr(from_flags, name) == value, f"--{name}"
        assert getattr(from_yaml, name) == value, f"YAML {name}"
    model = build_model(from_flags)
    model.save_pretrained(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    for name, value in NON_DEFAULT.items():
        assert saved[name] == value, f"config.json {name}"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"concentration_min": 0.0}, "concentration_min must be a finite number > 0"),
        (
            {"concentration_min": 5.0, "concentration_max": 1.0},
            "concentration_min must be below concentration_max",
        ),
        ({"feature_logvar_max": float("nan")}, "feature_logvar_max must be a finite number"),
        ({"num_eval_samples": 0}, "num_eval_samples must be an integer from 1 to 65536"),
        ({"num_samples": 2.5}, "num_samples must be an integer from 1 to 1024"),
        ({"decoder_hidden_size": -1}, "decoder_hidden_size must be an integer from 0 to 65536"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"ensemble_members": 1_000_000}, "ensemble_members must be an integer from 1 to 64"),
        ({"num_objectives": 2, "objective_names": ["a", "b", "c"]}, "objective_names has 3 names"),
    ],
)
def test_a_head_option_out_of_range_is_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        ModelArguments(model_name_or_path="backbone", **values)
    with pytest.raises(ValueError, match=message):
        VRMConfig(**values)


def test_a_saved_config_asking_for_a_million_members_is_refused_when_scored(tmp_path, tiny_model):
    """A config.json edited by hand fails in one line when loaded, instead of allocating heads until memory runs out."""
    import json as json_module

    from vrm.scoring import load_scorer

    model, tokenizer, _ = tiny_model("llama_chat", head_type="bt")
    directory = str(tmp_path / "model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config_path = tmp_path / "model" / "config.json"
    config = json_module.loads(config_path.read_text())
    config["ensemble_members"] = 1_000_000
    config_path.write_text(json_module.dumps(config))
    with pytest.raises(ValueError, match="ensemble_members must be an integer from 1 to 64"):
        load_scorer(directory, device="cpu")
