"""Non-finite weights and broken model files: never saved, never loaded, one-line errors naming the file."""

import json
import os

import pytest
import torch
from tiny_models import PAIRS
from transformers import PreTrainedModel

from vrm.cli.main import main
from vrm.models.integrity import ModelLoadError, NonFiniteError
from vrm.scoring.pipeline import RewardPipeline
from vrm.training.checkpoints import save_final_model


@pytest.fixture
def pipeline(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    return RewardPipeline(model, tokenizer, batch_size=4)


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def score_rows(tmp_path, name="rows.jsonl", count=6, offset=0):
    rows = [
        {"id": i, "prompt": PAIRS[i % 6][0], "response": PAIRS[(i + offset) % 6][1]} for i in range(count)
    ]
    return jsonl(tmp_path / name, rows)


def score_argv(tmp_path, model_dir: str) -> list[str]:
    """`vrm score` of the standard rows file with `model_dir` into `o.jsonl`."""
    return [
        "score",
        "--model",
        model_dir,
        "--input",
        score_rows(tmp_path),
        "--output",
        str(tmp_path / "o.jsonl"),
    ]


def _saved(tmp_path, pipeline, name="model") -> str:
    model_dir = str(tmp_path / name)
    pipeline.save_pretrained(model_dir)
    return model_dir


def test_nan_weights_are_never_saved(tmp_path, pipeline):
    with torch.no_grad():
        pipeline.model.head.decoder.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"not saved: the weights hold NaN or infinite values"):
        pipeline.save_pretrained(str(tmp_path / "m"))
    assert not (tmp_path / "m" / "model.safetensors").exists()
    with pytest.raises(NonFiniteError, match=r"final model not saved"):
        save_final_model(pipeline.model, pipeline.tokenizer, str(tmp_path / "final"))
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_a_model_with_nan_weights_is_not_loaded(tmp_path, pipeline, capsys, one_line_error):
    with torch.no_grad():
        pipeline.model.head.decoder.weight.fill_(float("nan"))
    model_dir = str(tmp_path / "nan")
    PreTrainedModel.save_pretrained(pipeline.model, model_dir)  # past the refusal to save: a corrupt model
    pipeline.tokenizer.save_pretrained(model_dir)
    assert main(score_argv(tmp_path, model_dir)) == 1
    assert "nan: not loaded: the weights hold NaN or infinite values" in one_line_error("score")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("reward_scale", float("nan"), "reward_scale must be a finite number"),
        ("reward_scale", 1e-45, "reward_scale must be >= 1e-06"),
        ("reward_mean", float("inf"), "reward_mean must be a finite number"),
    ],
)
def test_invalid_reward_normalization_in_config_is_refused_at_load(
    tmp_path, pipeline, capsys, key, value, message, one_line_error
):
    model_dir = _saved(tmp_path, pipeline)
    config_path = os.path.join(model_dir, "config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    config[key] = value
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    with pytest.raises(ModelLoadError, match=rf"config\.json: {message}"):
        RewardPipeline.from_pretrained(model_dir)
    assert main(score_argv(tmp_path, model_dir)) == 1
    assert "config.json" in one_line_error("score")
    assert not os.path.exists(tmp_path / "o.jsonl")


@pytest.mark.parametrize("cut", ["half", "header"])
def test_a_corrupt_safetensors_file_is_a_one_line_error(
    tmp_path, pipeline, capsys, cut, write_pairs, one_line_error
):
    model_dir = _saved(tmp_path, pipeline)
    weights = os.path.join(model_dir, "model.safetensors")
    data = open(weights, "rb").read()
    with open(weights, "wb") as handle:
        handle.write(data[: len(data) // 2] if cut == "half" else b"garbage" * 5)
    assert main(score_argv(tmp_path, model_dir)) == 1
    assert "model.safetensors: corrupt or truncated weights file" in one_line_error("score")
    assert main(["eval", "--model", model_dir, "--dataset", write_pairs(str(tmp_path / "p.jsonl"))]) == 1
    assert "model.safetensors: corrupt" in one_line_error("eval")
