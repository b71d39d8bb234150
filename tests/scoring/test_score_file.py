"""Offline scoring of files (`vrm.scoring.score_file`, `vrm score`): written rows, resumption, the manifest that
refuses output from another input, model or settings, and rows that cannot be scored."""

import json
import os

import pytest
import torch
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.data.files import DataFormatError
from vrm.models.integrity import NonFiniteError
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.score_file import score_file


@pytest.fixture
def pipeline(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
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


def test_a_full_disk_is_an_error_naming_the_output_and_the_rows_written(tmp_path, pipeline, monkeypatch):
    path, _ = rows_file(tmp_path)
    output = str(tmp_path / "out.jsonl")
    syncs = []
    real_fsync = os.fsync

    def full_disk(descriptor):
        syncs.append(descriptor)
        if len(syncs) == 2:
            raise OSError(27, "File too large")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(
        OSError, match=r"out\.jsonl: writing rows 4-6 failed \(File too large\); a rerun resumes"
    ):
        score_file(pipeline, path, output, chunk_size=3, progress=False)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert score_file(pipeline, path, output, chunk_size=3, progress=False)["rows"] == 10
    assert [w["id"] for w in read_jsonl(output)] == list(range(10))


def test_score_command_scores_a_file_and_names_a_bad_row(tmp_path, pipeline, capsys):
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


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def score_rows(tmp_path, name="rows.jsonl", count=6, offset=0):
    rows = [
        {"id": i, "prompt": PAIRS[i % 6][0], "response": PAIRS[(i + offset) % 6][1]} for i in range(count)
    ]
    return jsonl(tmp_path / name, rows)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "response": 5}, r"'response' must be text or a list of messages"),
        ({"prompt": "p", "response": True}, r"'response' must be text or a list of messages"),
        ({"prompt": "p", "response": {"a": 1}}, r"'response' must be text or a list of messages"),
        ({"prompt": "p", "response": ["x"]}, r"'response'\[0\] must be a message"),
        ({"prompt": 7, "response": "r"}, r"'prompt' must be text or a list of messages"),
        ({"prompt": "p", "completion": 5}, r"'completion' must be text"),
        ({"prompt": "p", "response": "r\ud800"}, r"'response' is not valid Unicode"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}, r"'messages'\[1\] must be"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]},
            r"'messages'\[1\]\['content'\] must be text",
        ),
        ({"messages": "user: hi"}, r"'messages' must be a list of messages"),
    ],
)
def test_score_rejects_rows_that_are_not_text_or_messages(tmp_path, pipeline, row, message):
    path = jsonl(tmp_path / "in.jsonl", [{"prompt": "q", "response": "fine"}, row])
    with pytest.raises(DataFormatError, match=rf"in\.jsonl:2: {message}"):
        score_file(pipeline, path, str(tmp_path / "out.jsonl"), progress=False)
    assert not os.path.exists(tmp_path / "out.jsonl")  # nothing was scored


def test_score_output_from_another_input_model_or_settings_is_refused(tmp_path, pipeline):
    first, other = score_rows(tmp_path), score_rows(tmp_path, "other.jsonl", offset=1)
    output = str(tmp_path / "out.jsonl")
    assert score_file(pipeline, first, output, progress=False)["scored"] == 6
    assert os.path.exists(output + ".manifest.json")
    assert score_file(pipeline, first, output, progress=False) == {"rows": 6, "skipped": 6, "scored": 0}
    with pytest.raises(ValueError, match=r"out\.jsonl was scored from another input .*--overwrite"):
        score_file(pipeline, other, output, progress=False)
    pipeline.conservative_lambda = 1.0
    with pytest.raises(ValueError, match=r"conservative_lambda=0\.0 \(now 1\.0\)"):
        score_file(pipeline, first, output, progress=False)
    pipeline.conservative_lambda = 0.0
    with torch.no_grad():
        pipeline.model.head.decoder.weight.mul_(2)  # retrained
    with pytest.raises(ValueError, match=r"another model"):
        score_file(pipeline, first, output, progress=False)
    assert score_file(pipeline, other, output, progress=False, overwrite=True)["scored"] == 6
    with open(output) as handle:
        written = [json.loads(line) for line in handle]
    expected = pipeline.score([r["prompt"] for r in written], [r["response"] for r in written]).reward
    assert [r["reward"] for r in written] == pytest.approx(expected.tolist(), abs=1e-5)
    os.remove(output + ".manifest.json")
    with pytest.raises(ValueError, match=r"no .*manifest\.json to say what from"):
        score_file(pipeline, other, output, progress=False)


def test_score_cli_refuses_another_input_unless_overwrite(tmp_path, pipeline, capsys, one_line_error):
    model_dir = str(tmp_path / "model")
    pipeline.save_pretrained(model_dir)
    first, other = score_rows(tmp_path), score_rows(tmp_path, "other.jsonl", offset=1)
    argv = ["score", "--model", model_dir, "--output", str(tmp_path / "out.jsonl"), "--no_progress"]
    assert main([*argv, "--input", first]) == 0
    capsys.readouterr()
    assert main([*argv, "--input", other]) == 1
    assert "was scored from another input" in one_line_error("score")
    assert main([*argv, "--input", other, "--overwrite"]) == 0
    assert "6 scored, 0 already" in capsys.readouterr().out


def test_nan_rewards_are_never_written(tmp_path, pipeline):
    path = score_rows(tmp_path)
    with torch.no_grad():
        pipeline.model.head.decoder.weight.fill_(float("nan"))
    output = tmp_path / "out.jsonl"
    with pytest.raises(NonFiniteError, match=r"rows\.jsonl:1: the model gave a NaN or infinite score"):
        score_file(pipeline, path, str(output), progress=False)
    assert output.read_text() == ""


def _saved(tmp_path, pipeline, name="model") -> str:
    model_dir = str(tmp_path / name)
    pipeline.save_pretrained(model_dir)
    return model_dir


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": [], "response": "a"},
        {"prompt": [], "response": [{"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "assistant", "content": "a"}]},
    ],
    ids=["empty-prompt-list", "empty-prompt-list-messages", "conversation-without-prompt"],
)
def test_score_names_the_row_a_chat_template_refuses(tmp_path, pipeline, capsys, row, one_line_error):
    """A row the chat template refuses (an empty prompt message list, no prompt) is named by file and line."""
    path = jsonl(tmp_path / "in.jsonl", [{"prompt": "q", "response": "fine"}, row])
    message = r"in\.jsonl:2: cannot be templated for this model \(ValueError: "
    with pytest.raises(DataFormatError, match=message):
        score_file(pipeline, path, str(tmp_path / "out.jsonl"), progress=False)
    model_dir = _saved(tmp_path, pipeline)
    argv = ["score", "--model", model_dir, "--input", path, "--output", str(tmp_path / "o.jsonl")]
    assert main([*argv, "--no_progress"]) == 1
    assert "in.jsonl:2: cannot be templated" in one_line_error("score")


def test_score_resume_tolerates_checksum_rounding_but_not_other_weights(tmp_path, pipeline):
    """The weight checksum is float reductions: another device may round its last digits differently."""
    first, output = score_rows(tmp_path), str(tmp_path / "out.jsonl")
    assert score_file(pipeline, first, output, progress=False)["scored"] == 6
    manifest_path = output + ".manifest.json"
    saved = json.loads(open(manifest_path).read())

    def rewrite(factor):
        changed = json.loads(json.dumps(saved))
        changed["model"]["weights_checksum"] = [v * factor for v in saved["model"]["weights_checksum"]]
        with open(manifest_path, "w") as handle:
            json.dump(changed, handle)

    rewrite(1 + 1e-6)  # the same weights summed elsewhere
    assert score_file(pipeline, first, output, progress=False) == {"rows": 6, "skipped": 6, "scored": 0}
    rewrite(1.01)  # other weights
    with pytest.raises(ValueError, match=r"another model"):
        score_file(pipeline, first, output, progress=False)
