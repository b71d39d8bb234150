"""`vrm score`: offline scoring of files, resumable after an interruption."""

import json

import pytest
from conftest import PAIRS
from test_modeling import build

from vrm.cli.main import main
from vrm.data.files import DataFormatError
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.score_file import score_file


@pytest.fixture
def pipeline():
    model, tokenizer, _ = build("llama_chat")
    return RewardPipeline(model, tokenizer, batch_size=4)


def rows_file(tmp_path, count=10):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": i, "prompt": PAIRS[i % 6][0], "response": PAIRS[i % 6][1 + i % 2]} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), rows


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_score_file_writes_rows_with_scores(tmp_path, pipeline):
    path, rows = rows_file(tmp_path)
    output = str(tmp_path / "out.jsonl")
    assert score_file(pipeline, path, output, chunk_size=3, progress=False) == {
        "rows": 10,
        "skipped": 0,
        "scored": 10,
    }
    written = read_jsonl(output)
    expected = pipeline.score([r["prompt"] for r in rows], [r["response"] for r in rows]).reward
    assert [w["id"] for w in written] == list(range(10))
    assert [w["reward"] for w in written] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(len(w["objective_weights"]) == pipeline.model.config.num_objectives for w in written)


def test_interrupted_scoring_resumes_without_redoing_rows(tmp_path, pipeline, monkeypatch):
    path, _ = rows_file(tmp_path)
    output = str(tmp_path / "out.jsonl")
    calls = []
    original = pipeline.score

    def flaky(prompts, responses, progress=False):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(prompts, responses)

    monkeypatch.setattr(pipeline, "score", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        score_file(pipeline, path, output, chunk_size=3, progress=False)
    assert len(read_jsonl(output)) == 6  # two chunks survived
    with open(output, "a") as handle:
        handle.write('{"id": 6, "rew')  # and a torn line, as a crash mid-write leaves
    calls.clear()
    stats = score_file(pipeline, path, output, chunk_size=3, progress=False)
    assert stats == {"rows": 10, "skipped": 6, "scored": 4} and calls == [3, 1]
    assert [w["id"] for w in read_jsonl(output)] == list(range(10))


def test_score_cli_and_bad_rows(tmp_path, pipeline, capsys):
    model_dir = str(tmp_path / "model")
    pipeline.save_pretrained(model_dir)
    path, _ = rows_file(tmp_path, count=4)
    output = str(tmp_path / "out.jsonl")
    argv = ["score", "--model", model_dir, "--input", path, "--output", output, "--no_progress"]
    assert main([*argv, "--conservative_lambda", "1"]) == 0
    assert "4 rows: 4 scored, 0 already" in capsys.readouterr().out
    assert "conservative_reward" in read_jsonl(output)[0]
    assert main([*argv, "--conservative_lambda", "1"]) == 0
    assert "0 scored, 4 already" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: needs 'prompt' and 'response'"):
        score_file(pipeline, str(bad), str(tmp_path / "o.jsonl"), progress=False)
    conversation = tmp_path / "conv.jsonl"
    conversation.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        )
        + "\n"
    )
    assert score_file(pipeline, str(conversation), str(tmp_path / "c.jsonl"), progress=False)["scored"] == 1
