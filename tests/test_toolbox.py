"""A reward-model user's toolbox (issue 18): the training output as a Hub-style model, clear errors for options
vrm does not support, `--device` / `--dtype` and `--trust_remote_code` for the scoring commands."""

import importlib.util
import json
import os

import pytest
import torch
from test_classifier import save_classifier
from test_cli import train_argv

import vrm.scoring.classifier
from vrm.cli.main import main
from vrm.scoring.device import resolve
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama_backbone_dir):
    """A tiny model trained by `vrm train` with named objectives and an eval set (`--save_strategy no`)."""
    root = tmp_path_factory.mktemp("toolbox")
    from conftest import write_pairs

    data = write_pairs(str(root / "pairs.jsonl"))
    output = str(root / "model")
    argv = train_argv(llama_backbone_dir, data, output, eval_dataset_name=data)
    assert main(["train", *argv, "--objective_names", "helpful", "safe"]) == 0
    return output, data


def test_training_output_is_a_complete_model_directory(trained, llama_backbone_dir):
    output, _ = trained
    with open(os.path.join(output, "README.md"), encoding="utf-8") as handle:
        card = handle.read()
    assert card.startswith("---\n") and "library_name: transformers" in card
    for expected in (
        llama_backbone_dir,  # base model
        "head `vrm`",
        "`helpful`, `safe`",  # objective names
        "train pairs | 6",  # data summary: pair and truncation counts
        "train prompt truncated",
        "eval_accuracy",  # final metrics
        "train_loss",
        "## Intended use",
        "trust_remote_code=True",
        "AutoModelForSequenceClassification.from_pretrained",
        "RewardPipeline.from_pretrained",
    ):
        assert expected in card, expected
    with open(os.path.join(output, "train_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    assert "train_loss" in results and "eval_accuracy" in results
    with open(os.path.join(output, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    assert state["global_step"] == 4 and any("loss" in entry for entry in state["log_history"])
    assert not [name for name in os.listdir(output) if name.startswith("checkpoint-")]  # --save_strategy no


def test_objective_weights_are_also_keyed_by_name(trained):
    output, _ = trained
    pipeline = RewardPipeline.from_pretrained(output, device="cpu", dtype="float32")
    assert pipeline.model.config.objective_names == ["helpful", "safe"]
    result = pipeline("How do I sort a list?", "Use sorted(xs).")
    assert len(result["objective_weights"]) == 2  # the list stays
    assert list(result["objective_weights_by_name"]) == ["helpful", "safe"]
    assert result["objective_weights_by_name"]["safe"] == result["objective_weights"][1]
    assert list(result["objective_scores_by_name"]) == ["helpful", "safe"]


def test_unsupported_train_options_are_one_line_errors(tmp_path, pairs_file, llama_backbone_dir, capsys):
    argv = train_argv(llama_backbone_dir, pairs_file, str(tmp_path / "out"))
    assert main(["train", *argv, "--push_to_hub", "true"]) == 1
    assert "not supported: push the output directory with `huggingface-cli upload" in capsys.readouterr().err
    assert main(["train", *argv, "--objective_column", "label"]) == 1
    assert "--objective_column label needs --attribute_names" in capsys.readouterr().err
    for integration, package in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("trackio", "trackio")):
        if importlib.util.find_spec(package) or (
            integration == "tensorboard" and importlib.util.find_spec("tensorboardX")
        ):
            continue
        assert main(["train", *argv, "--report_to", integration]) == 1
        err = capsys.readouterr().err
        assert f"--report_to {integration} needs the {package} package" in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "config.json")


def test_device_and_dtype_resolution():
    cuda = torch.cuda.is_available()
    assert resolve(None, None)[0] == ("cuda" if cuda else "cpu")
    assert resolve("auto", "auto") == (("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32))
    assert resolve("cpu", "bf16") == ("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="dtype 'int8' is not one of: auto, float32, bfloat16, float16"):
        resolve("cpu", "int8")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve("toaster", None)


def test_device_and_dtype_flags_reach_the_model(trained, tmp_path, monkeypatch, capsys):
    output, data = trained
    loaded = []
    original = RewardPipeline.from_pretrained.__func__

    def recording(cls, path, **kwargs):
        pipeline = original(cls, path, **kwargs)
        loaded.append((str(next(pipeline.model.parameters()).device), pipeline.model.dtype))
        return pipeline

    monkeypatch.setattr(RewardPipeline, "from_pretrained", classmethod(recording))
    flags = ["--device", "cpu", "--dtype", "bfloat16"]
    assert main(["eval", "--model", output, "--dataset", data, "--no_progress", *flags]) == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Tell me a joke.", "response": "No."}) + "\n")
    scores = str(tmp_path / "scores.jsonl")
    argv = ["score", "--model", output, "--input", str(rows), "--output", scores, "--no_progress"]
    assert main([*argv, "--device", "cpu", "--dtype", "float32"]) == 0
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "Hi", "responses": ["Hello.", "No."], "gold": [1.0, 0.0]}) + "\n")
    bench = ["bench", "bon", "--pool", str(pool), "--proxy", output, "--gold_column", "gold", "--n", "1", "2"]
    assert main([*bench, "--output", str(tmp_path / "bon.json"), "--no_progress", *flags]) == 0
    assert loaded == [("cpu", torch.bfloat16), ("cpu", torch.float32), ("cpu", torch.bfloat16)]
    with open(scores, encoding="utf-8") as handle:
        assert set(json.loads(handle.readline())["objective_weights_by_name"]) == {"helpful", "safe"}
    # bad values: one line, before any model loads
    capsys.readouterr()
    assert main(["eval", "--model", output, "--dataset", data, "--dtype", "int8"]) == 1
    assert (
        "vrm eval: error: dtype 'int8' is not one of: auto, float32, bfloat16, float16"
        in capsys.readouterr().err
    )
    assert main([*argv, "--overwrite", "--dtype", "half-ish"]) == 1
    assert "dtype 'half-ish' is not one of" in capsys.readouterr().err
    assert main([*bench, "--output", str(tmp_path / "b.json"), "--device", "toaster"]) == 1
    assert "device 'toaster' is not a torch device" in capsys.readouterr().err
    assert len(loaded) == 3


def test_reward_function_takes_device_and_dtype(trained):
    output, _ = trained
    reward = VRMRewardFunction(output, device="cpu", dtype="bfloat16")
    assert reward.pipeline.model.dtype == torch.bfloat16
    assert len(reward(prompts=["Hi"], completions=["Hello."])) == 1
    with pytest.raises(ValueError, match="dtype 'float8' is not one of"):
        VRMRewardFunction(output, dtype="float8")


def test_trust_remote_code_reaches_non_vrm_models(tmp_path, pairs_file, monkeypatch):
    path = save_classifier(tmp_path / "classifier", "bert")
    seen = []
    original = vrm.scoring.classifier.SequenceClassifierPipeline.from_pretrained.__func__

    def recording(cls, model_path, **kwargs):
        seen.append((kwargs["trust_remote_code"], kwargs["device"], kwargs["dtype"]))
        return original(cls, model_path, **kwargs)

    monkeypatch.setattr(vrm.scoring.classifier.SequenceClassifierPipeline, "from_pretrained", classmethod(recording))
    argv = ["eval", "--model", path, "--dataset", pairs_file, "--no_progress", "--device", "cpu"]
    assert main([*argv, "--trust_remote_code"]) == 0
    assert main(argv) == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Tell me a joke.", "response": "No."}) + "\n")
    scores = str(tmp_path / "scores.jsonl")
    assert (
        main(["score", "--model", path, "--input", str(rows), "--output", scores, "--trust_remote_code"]) == 0
    )
    assert seen == [(True, "cpu", torch.float32), (False, "cpu", torch.float32), (True, "cpu", torch.float32)]
    with open(scores, encoding="utf-8") as handle:
        row = json.loads(handle.readline())
    assert row["reward_std"] == 0.0 and row["objective_weights"] == [1.0]
