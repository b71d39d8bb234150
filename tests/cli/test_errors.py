"""Command-line errors are one line naming what is wrong (file:line:field, flag or path), before anything
loads where possible."""

import importlib.util
import json
import os

import pytest
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.scoring.pipeline import RewardPipeline


def test_eval_train_and_unknown_command_errors_are_clear(
    tmp_path, capsys, pairs_file, llama_backbone_dir, train_argv
):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--dataset", pairs_file]) == 1
    assert "nope: not a saved model directory" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n')
    argv = train_argv(llama_backbone_dir, str(bad), str(tmp_path / "out"))
    assert main(["train", *argv]) == 1
    assert "bad.jsonl:1: missing field 'rejected'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage_error:
        main(["frobnicate"])
    assert usage_error.value.code == 2


def test_a_missing_backbone_path_is_named(tmp_path, pairs_file, capsys, train_argv):
    argv = train_argv(str(tmp_path / "no_such_model"), pairs_file, str(tmp_path / "out"))
    assert main(["train", *argv]) == 1
    assert "no_such_model: no such directory" in capsys.readouterr().err


def test_unsupported_train_options_are_one_line_errors(
    tmp_path, pairs_file, llama_backbone_dir, capsys, train_argv
):
    argv = train_argv(llama_backbone_dir, pairs_file, str(tmp_path / "out"))
    assert main(["train", *argv, "--push_to_hub", "true"]) == 1
    assert "not supported: push the output directory with `huggingface-cli upload" in capsys.readouterr().err
    assert main(["train", *argv, "--objective_column", "label"]) == 1
    assert "--objective_column label names objectives: pass --objective_names" in capsys.readouterr().err
    for integration, package in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("trackio", "trackio")):
        if importlib.util.find_spec(package) or (
            integration == "tensorboard" and importlib.util.find_spec("tensorboardX")
        ):
            continue
        assert main(["train", *argv, "--report_to", integration]) == 1
        err = capsys.readouterr().err
        assert f"--report_to {integration} needs the {package} package" in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "config.json")


def test_train_with_a_nan_margin_exits_with_one_line(
    tmp_path, capsys, llama_backbone_dir, train_argv, write_pairs, one_line_error
):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    rows[3]["margin"] = float("nan")
    data = write_pairs(str(tmp_path / "nan.jsonl"), rows)
    assert main(["train", *train_argv(llama_backbone_dir, data, str(tmp_path / "out"))]) == 1
    assert "nan.jsonl:4: 'margin' must be a number" in one_line_error("train")
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_cli_prints_a_bad_csv_as_one_line(tmp_path, capsys, llama_backbone_dir, train_argv, one_line_error):
    path = tmp_path / "x.csv"
    path.write_text("prompt,chosen,rejected\np,a,b,extra\n")
    assert main(["train", *train_argv(llama_backbone_dir, str(path), str(tmp_path / "out"))]) == 1
    assert "x.csv:2: 1 more field(s) than the 3 columns" in one_line_error("train")


def score_rows(tmp_path, name="rows.jsonl", count=6, offset=0):
    rows = [
        {"id": i, "prompt": PAIRS[i % 6][0], "response": PAIRS[(i + offset) % 6][1]} for i in range(count)
    ]
    return jsonl(tmp_path / name, rows)


def test_a_zero_batch_or_chunk_size_is_a_one_line_error(
    tmp_path, pipeline, capsys, write_pairs, one_line_error
):
    """Found by benchmarks/robustness/: `--batch_size 0` was a ZeroDivisionError traceback (score, eval)."""
    model_dir = _saved(tmp_path, pipeline)
    output = str(tmp_path / "o.jsonl")
    argv = ["score", "--model", model_dir, "--input", score_rows(tmp_path), "--output", output]
    for flag in ("--batch_size", "--chunk_size"):
        assert main([*argv, flag, "0", "--no_progress"]) == 1
        assert f"{flag[2:]} must be >= 1, got 0" in one_line_error("score")
    assert not os.path.exists(tmp_path / "o.jsonl")
    data = write_pairs(str(tmp_path / "p.jsonl"))
    assert main(["eval", "--model", model_dir, "--dataset", data, "--batch_size", "0", "--no_progress"]) == 1
    assert "batch_size must be >= 1, got 0" in one_line_error("eval")


def _saved(tmp_path, pipeline, name="model") -> str:
    model_dir = str(tmp_path / name)
    pipeline.save_pretrained(model_dir)
    return model_dir


@pytest.fixture
def pipeline(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    return RewardPipeline(model, tokenizer, batch_size=4)


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)
