"""`--device`, `--dtype` and `--trust_remote_code` of the scoring commands reach the model they load."""

import json

import pytest
import torch

import vrm.scoring.classifier
from vrm.cli.main import main
from vrm.scoring.pipeline import RewardPipeline


@pytest.mark.slow
def test_device_and_dtype_flags_reach_the_model(trained_model_dir, tmp_path, monkeypatch, capsys):
    output, data = trained_model_dir
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


def test_trust_remote_code_reaches_non_vrm_models(tmp_path, pairs_file, monkeypatch, save_classifier):
    path = save_classifier(tmp_path / "classifier", "bert")
    seen = []
    original = vrm.scoring.classifier.SequenceClassifierPipeline.from_pretrained.__func__

    def recording(cls, model_path, **kwargs):
        seen.append((kwargs["trust_remote_code"], kwargs["device"], kwargs["dtype"]))
        return original(cls, model_path, **kwargs)

    monkeypatch.setattr(
        vrm.scoring.classifier.SequenceClassifierPipeline, "from_pretrained", classmethod(recording)
    )
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
