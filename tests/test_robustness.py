"""Issue 17: bad input is a one-line error naming file:line:field (never a traceback, never a silent result);
non-finite numbers never reach a model, a saved model or an output; resume picks a complete checkpoint."""

import gzip
import json
import math
import os
import shutil

import pytest
import torch
from conftest import PAIRS, write_pairs
from test_cli import train_argv
from test_modeling import build
from transformers import PreTrainedModel

from vrm.cli.main import main
from vrm.data.files import DataFormatError, finite_number
from vrm.data.rows import load_preferences, parse_row
from vrm.evaluation.benchmark_rules import detect_format
from vrm.evaluation.best_of_n import read_pool
from vrm.models.integrity import ModelLoadError, NonFiniteError
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.score_file import score_file
from vrm.training.checkpoints import resolve_resume, save_final_model

ROW = {"prompt": "p", "chosen": "a good answer", "rejected": "a bad answer"}


@pytest.fixture
def pipeline():
    model, tokenizer, _ = build("llama_chat")
    return RewardPipeline(model, tokenizer, batch_size=4)


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"vrm {command}: error: "), errors
    return errors[0]


# ----- 1. non-finite numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_margin_is_an_error_naming_the_row(tmp_path, value):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW)[:-1] + f', "margin": {value}}}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: 'margin' must be a number \(not NaN"):
        load_preferences(str(path))


def test_non_finite_margin_in_csv_and_blank_margin(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen,rejected,margin\np,a,b,1.5\np,a,b,\np,a,b,inf\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv:4: 'margin' must be a number"):
        load_preferences(str(path))
    path.write_text("prompt,chosen,rejected,margin\np,a,b,1.5\np,a,b,\n")
    assert [e.margin for e in load_preferences(str(path))] == [1.5, None]


def test_finite_number_helper_for_ratings():
    assert finite_number("3", "f:1", "help_chosen") == 3.0
    assert math.isnan(finite_number(None, "f:1", "help_chosen", missing=math.nan))  # not rated
    assert finite_number(" ", "f:1", "help_chosen") is None  # a blank CSV cell
    for bad in (float("nan"), float("inf"), "inf", True, "good", [1], 10**400):
        with pytest.raises(DataFormatError, match=r"^f:1: 'help_chosen' must be a number"):
            finite_number(bad, "f:1", "help_chosen")


def test_train_with_a_nan_margin_exits_with_one_line(tmp_path, capsys, llama_backbone_dir):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    rows[3]["margin"] = float("nan")
    data = write_pairs(str(tmp_path / "nan.jsonl"), rows)
    assert main(["train", *train_argv(llama_backbone_dir, data, str(tmp_path / "out"))]) == 1
    assert "nan.jsonl:4: 'margin' must be a number" in one_line_error(capsys, "train")
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_a_non_finite_training_loss_stops_the_run_and_keeps_the_last_checkpoint(
    tmp_path, pairs_file, llama_backbone_dir, capsys, monkeypatch
):
    import vrm.training.trainer

    original, calls = vrm.training.trainer.preference_loss, []

    def diverging(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 3:  # the third step's loss
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(vrm.training.trainer, "preference_loss", diverging)
    output = tmp_path / "run"
    argv = train_argv(
        llama_backbone_dir,
        pairs_file,
        str(output),
        save_strategy="steps",
        save_steps=2,
        head_type="bt",
        num_objectives=1,
    )
    assert main(["train", *argv]) == 1  # (before: exit 0, a NaN model saved)
    assert "the training loss became nan at step 3" in one_line_error(capsys, "train")
    assert (output / "checkpoint-2" / "trainer_state.json").exists()
    assert not (output / "checkpoint-4").exists() and not (output / "model.safetensors").exists()


def test_non_finite_gradients_stop_the_run_with_a_clear_error(
    tmp_path, pairs_file, llama_backbone_dir, capsys
):
    """A finite loss whose gradients are not (as `--learning_rate 1e30` gives from the second step) stops before
    the optimizer writes NaN into the weights; before, the next step failed inside the Dirichlet with
    "Expected parameter concentration ... nan"."""
    import vrm.training.trainer

    class InfiniteGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    original = vrm.training.trainer.preference_loss

    def exploding(*args, **kwargs):
        out = original(*args, **kwargs)
        out.loss = InfiniteGradient.apply(out.loss)
        return out

    output = tmp_path / "run"
    argv = train_argv(llama_backbone_dir, pairs_file, str(output))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vrm.training.trainer, "preference_loss", exploding)
        assert main(["train", *argv]) == 1
    assert "the gradients became NaN or infinite at step 1" in one_line_error(capsys, "train")
    assert not (output / "model.safetensors").exists()


def test_nan_weights_are_never_saved(tmp_path, pipeline):
    with torch.no_grad():
        pipeline.model.head.decoder.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"not saved: the weights hold NaN or infinite values"):
        pipeline.save_pretrained(str(tmp_path / "m"))
    assert not (tmp_path / "m" / "model.safetensors").exists()
    with pytest.raises(NonFiniteError, match=r"final model not saved"):
        save_final_model(pipeline.model, pipeline.tokenizer, str(tmp_path / "final"))
    assert not (tmp_path / "final" / "model.safetensors").exists()


# ----- 2. unreadable files: one line naming file and line -----------------------------------------------------
def _truncated_gz(path):
    data = gzip.compress((json.dumps(ROW) + "\n").encode() * 3000)
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("x.csv", lambda p: p.write_text("prompt,chosen,rejected\np,a,b,extra\n"), r"x\.csv:2: 1 more field"),
        ("x.csv", lambda p: p.write_text('prompt,chosen,rejected\np,"a,b\n'), r"x\.csv:2: invalid CSV"),
        ("x.csv", lambda p: p.write_text('prompt,chosen,rejected\np,"a"b,c\n'), r"x\.csv:2: invalid CSV"),
        ("x.jsonl.gz", _truncated_gz, r"x\.jsonl\.gz:\d+: the compressed file is truncated"),
        ("x.jsonl.gz", lambda p: p.write_text(json.dumps(ROW) + "\n"), r"x\.jsonl\.gz: not a gzip file"),
        (
            "x.jsonl",
            lambda p: p.write_bytes(json.dumps(ROW).encode() + b'\n{"prompt": "\xff"}\n'),
            r"x\.jsonl:2: not UTF-8 text \(byte 0xff",
        ),
        ("x.json", lambda p: p.write_bytes(b'[{"prompt": "\xfe"}]'), r"x\.json:1: not UTF-8"),
        ("x.jsonl", lambda p: p.write_text("[" * 100_000 + "]" * 100_000 + "\n"), r"x\.jsonl:1: JSON nested"),
        ("x.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), r"x\.json: JSON nested too deeply"),
        (
            "x.csv",
            lambda p: p.write_text("prompt,chosen,rejected\n" + "[" * 100_000 + ",a,b\n"),
            r"x\.csv:2: 'prompt' holds JSON nested too deeply",
        ),
        ("x.parquet", lambda p: p.write_text("not parquet"), r"x\.parquet: not a readable parquet file"),
    ],
    ids=[
        "csv-extra-field",
        "csv-unterminated-quote",
        "csv-bad-quote",
        "gz-truncated",
        "gz-not-gzip",
        "jsonl-not-utf8",
        "json-not-utf8",
        "jsonl-deep",
        "json-deep",
        "csv-deep-cell",
        "parquet-garbage",
    ],
)
def test_unreadable_files_raise_one_line_errors(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(DataFormatError, match=message) as caught:
        load_preferences(str(path))
    assert "\n" not in str(caught.value)


def test_cli_prints_a_bad_csv_as_one_line(tmp_path, capsys, llama_backbone_dir):
    path = tmp_path / "x.csv"
    path.write_text("prompt,chosen,rejected\np,a,b,extra\n")
    assert main(["train", *train_argv(llama_backbone_dir, str(path), str(tmp_path / "out"))]) == 1
    assert "x.csv:2: 1 more field(s) than the 3 columns" in one_line_error(capsys, "train")


@pytest.mark.parametrize(
    "row, field",
    [
        ({**ROW, "chosen": "good \ud800 answer"}, "'chosen' is not valid Unicode"),
        ({**ROW, "prompt": "p\udfff"}, "'prompt' is not valid Unicode"),
        ({**ROW, "prompt": [{"role": "user", "content": "\ud800"}]}, r"'prompt\[0\]\.content' is not valid"),
    ],
)
def test_lone_surrogates_are_rejected_when_parsed(row, field):
    with pytest.raises(DataFormatError, match=rf"^f:3: {field}"):
        parse_row(row, "f:3")


def test_subset_must_be_a_name():
    with pytest.raises(DataFormatError, match=r"^f:1: 'subset' must be a name"):
        parse_row({**ROW, "subset": {"a": 1}}, "f:1")
    assert parse_row({**ROW, "subset": 3}, "f:1").subset == "3"
    assert detect_format([{**ROW, "subset": {"a": 1}}]) == "pairwise"  # no TypeError (unhashable)


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


# ----- 3. silent wrong results --------------------------------------------------------------------------------
def rows_file(tmp_path, name="rows.jsonl", count=6, offset=0):
    rows = [
        {"id": i, "prompt": PAIRS[i % 6][0], "response": PAIRS[(i + offset) % 6][1]} for i in range(count)
    ]
    return jsonl(tmp_path / name, rows)


def test_score_output_from_another_input_model_or_settings_is_refused(tmp_path, pipeline):
    first, other = rows_file(tmp_path), rows_file(tmp_path, "other.jsonl", offset=1)
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


def test_score_cli_refuses_another_input_unless_overwrite(tmp_path, pipeline, capsys):
    model_dir = str(tmp_path / "model")
    pipeline.save_pretrained(model_dir)
    first, other = rows_file(tmp_path), rows_file(tmp_path, "other.jsonl", offset=1)
    argv = ["score", "--model", model_dir, "--output", str(tmp_path / "out.jsonl"), "--no_progress"]
    assert main([*argv, "--input", first]) == 0
    capsys.readouterr()
    assert main([*argv, "--input", other]) == 1
    assert "was scored from another input" in one_line_error(capsys, "score")
    assert main([*argv, "--input", other, "--overwrite"]) == 0
    assert "6 scored, 0 already" in capsys.readouterr().out


def test_nan_rewards_are_never_written(tmp_path, pipeline):
    path = rows_file(tmp_path)
    with torch.no_grad():
        pipeline.model.head.decoder.weight.fill_(float("nan"))
    output = tmp_path / "out.jsonl"
    with pytest.raises(NonFiniteError, match=r"rows\.jsonl:1: the model gave a NaN or infinite score"):
        score_file(pipeline, path, str(output), progress=False)
    assert output.read_text() == ""


def score_argv(tmp_path, model_dir: str) -> list[str]:
    """`vrm score` of the standard rows file with `model_dir` into `o.jsonl`."""
    return [
        "score",
        "--model",
        model_dir,
        "--input",
        rows_file(tmp_path),
        "--output",
        str(tmp_path / "o.jsonl"),
    ]


def _saved(tmp_path, pipeline, name="model") -> str:
    model_dir = str(tmp_path / name)
    pipeline.save_pretrained(model_dir)
    return model_dir


def test_a_model_with_nan_weights_is_not_loaded(tmp_path, pipeline, capsys):
    with torch.no_grad():
        pipeline.model.head.decoder.weight.fill_(float("nan"))
    model_dir = str(tmp_path / "nan")
    PreTrainedModel.save_pretrained(pipeline.model, model_dir)  # past the refusal to save: a corrupt model
    pipeline.tokenizer.save_pretrained(model_dir)
    assert main(score_argv(tmp_path, model_dir)) == 1
    assert "nan: not loaded: the weights hold NaN or infinite values" in one_line_error(capsys, "score")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("reward_scale", float("nan"), "reward_scale must be a finite number"),
        ("reward_scale", 1e-45, "reward_scale must be >= 1e-06"),
        ("reward_mean", float("inf"), "reward_mean must be a finite number"),
    ],
)
def test_invalid_reward_normalization_in_config_is_refused_at_load(
    tmp_path, pipeline, capsys, key, value, message
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
    assert "config.json" in one_line_error(capsys, "score")
    assert not os.path.exists(tmp_path / "o.jsonl")


@pytest.mark.parametrize("cut", ["half", "header"])
def test_a_corrupt_safetensors_file_is_a_one_line_error(tmp_path, pipeline, capsys, cut):
    model_dir = _saved(tmp_path, pipeline)
    weights = os.path.join(model_dir, "model.safetensors")
    data = open(weights, "rb").read()
    with open(weights, "wb") as handle:
        handle.write(data[: len(data) // 2] if cut == "half" else b"garbage" * 5)
    assert main(score_argv(tmp_path, model_dir)) == 1
    assert "model.safetensors: corrupt or truncated weights file" in one_line_error(capsys, "score")
    assert main(["eval", "--model", model_dir, "--dataset", write_pairs(str(tmp_path / "p.jsonl"))]) == 1
    assert "model.safetensors: corrupt" in one_line_error(capsys, "eval")


def test_fit_normalization_refuses_degenerate_rewards(pipeline):
    prompt, response = PAIRS[0][0], PAIRS[0][1]
    with pytest.raises(ValueError, match=r"reference rewards are \(nearly\) all equal"):
        pipeline.fit_normalization([prompt] * 4, [response] * 4)
    assert pipeline.model.config.reward_scale == 1.0  # unchanged
    mean, std = pipeline.fit_normalization([p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS])
    assert std > 1e-6 and pipeline.model.config.reward_scale == std


def test_bon_refuses_a_nan_gold_score(tmp_path, capsys):
    pool = jsonl(
        tmp_path / "pool.jsonl",
        [
            {"prompt": "q", "responses": ["a", "b"], "gold": [0.1, 0.2]},
            {"prompt": "q2", "responses": ["a", "b", "c"], "gold": [0.1, float("nan"), 0.3]},
        ],
    )
    with pytest.raises(DataFormatError, match=r"pool\.jsonl:2: 'gold\[1\]' must be a number"):
        read_pool(pool, "gold")
    argv = ["bench", "bon", "--pool", pool, "--proxy", "unused", "--gold_column", "gold", "--output"]
    assert main([*argv, str(tmp_path / "bon.json")]) == 1
    assert "pool.jsonl:2: 'gold[1]'" in one_line_error(capsys, "bench")
    assert not os.path.exists(tmp_path / "bon.json")


# ----- 6. resume from the newest complete checkpoint ----------------------------------------------------------
def _checkpoint(root, step, state: str | None):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return str(path)


def test_resume_skips_checkpoints_cut_off_mid_write(tmp_path):
    good = _checkpoint(tmp_path, 2, json.dumps({"global_step": 2}))
    _checkpoint(tmp_path, 10, '{"global_step": 1')  # killed while writing the state
    _checkpoint(tmp_path, 12, None)  # killed before it
    assert resolve_resume(str(tmp_path), "true") == good
    with pytest.raises(ValueError, match=r"checkpoint-12: incomplete checkpoint"):
        resolve_resume(str(tmp_path), str(tmp_path / "checkpoint-12"))
    shutil.rmtree(good)
    assert resolve_resume(str(tmp_path), "auto") is None  # nothing complete: start fresh


def test_resume_after_a_crash_mid_checkpoint(tmp_path, pairs_file, llama_backbone_dir, capsys):
    output = tmp_path / "run"
    argv = train_argv(llama_backbone_dir, pairs_file, str(output), save_strategy="steps", save_steps=2)
    assert main(["train", *argv]) == 0
    os.remove(output / "checkpoint-4" / "trainer_state.json")  # as if killed while writing checkpoint-4
    argv = train_argv(
        llama_backbone_dir,
        pairs_file,
        str(output),
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        resume_from_checkpoint="true",
    )
    assert main(["train", *argv]) == 0
    assert "skipping" in capsys.readouterr().out
    with open(output / "checkpoint-6" / "trainer_state.json") as handle:
        state = json.load(handle)
    assert state["global_step"] == 6
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [2, 4, 6]


# ----- 7. templated texts and message lists with nothing to score ----------------------------------------------
@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
def test_score_texts_refuses_padding_only_texts_and_texts_without_a_response(setup):
    """Issue 17 leftovers: these were IndexErrors (argmax over an empty row) or silently scored prompts."""
    model, tokenizer, _ = build(setup)
    pipeline = RewardPipeline(model, tokenizer)
    pad = tokenizer.pad_token
    with pytest.raises(ValueError, match=r"^text 0 has no tokens other than padding"):
        pipeline.score_texts([pad * 3])
    with pytest.raises(ValueError, match=r"^text 1 has no tokens other than padding"):
        pipeline.score_texts(["some text", pad * 2], ["some", pad])
    with pytest.raises(ValueError, match=r"^text 0 has no tokens other than padding"):
        pipeline.score_texts([""])
    with pytest.raises(ValueError, match=r"^text 0 has no response"):
        pipeline.score_texts(["a question"], ["a question"])
    with pytest.raises(ValueError, match=r"^prompt 0 has no tokens"):
        pipeline.score_texts(["a question"], [""])
    prompt = [{"role": "user", "content": "q"}]
    if tokenizer.chat_template:
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        with pytest.raises(ValueError, match=r"^text 0 has no response"):
            pipeline.score_texts([prompt_text], [prompt_text])
    assert torch.isfinite(pipeline.score_texts(["a question and an answer"], ["a question"]).reward).all()


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": [], "response": "a"},
        {"prompt": [], "response": [{"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "assistant", "content": "a"}]},
    ],
    ids=["empty-prompt-list", "empty-prompt-list-messages", "conversation-without-prompt"],
)
def test_score_names_the_row_a_chat_template_refuses(tmp_path, pipeline, capsys, row):
    """Issue 17 leftover: an empty prompt message list made the chat template raise a ValueError naming no row."""
    path = jsonl(tmp_path / "in.jsonl", [{"prompt": "q", "response": "fine"}, row])
    message = r"in\.jsonl:2: cannot be templated for this model \(ValueError: "
    with pytest.raises(DataFormatError, match=message):
        score_file(pipeline, path, str(tmp_path / "out.jsonl"), progress=False)
    model_dir = _saved(tmp_path, pipeline)
    argv = ["score", "--model", model_dir, "--input", path, "--output", str(tmp_path / "o.jsonl")]
    assert main([*argv, "--no_progress"]) == 1
    assert "in.jsonl:2: cannot be templated" in one_line_error(capsys, "score")


def test_the_benchmark_corpus_is_refused_with_the_messages_it_expects(tmp_path):
    """`benchmarks/robustness.py` replays this corpus against the commands; in-process, each file and row must
    already give the error its pattern names (keeps the corpus and the messages in step)."""
    from fixtures.bad_inputs import pool_files, preference_files, score_files

    for item in preference_files():
        attributes = item.args[1:] if item.args[:1] == ("--attribute_names",) else ()
        if item.also_accepted:
            continue
        with pytest.raises(DataFormatError, match=item.message):
            load_preferences(item.write(str(tmp_path)), attribute_names=attributes)
    for item in pool_files():
        with pytest.raises(DataFormatError, match=item.message):
            read_pool(item.write(str(tmp_path)), "gold")
    model, tokenizer, _ = build("llama_chat")
    pipeline = RewardPipeline(model, tokenizer)
    for item in score_files():
        with pytest.raises(DataFormatError, match=item.message):
            output = str(tmp_path / f"{item.case}.out")
            score_file(pipeline, item.write(str(tmp_path)), output, progress=False)


def test_a_zero_batch_or_chunk_size_is_a_one_line_error(tmp_path, pipeline, capsys):
    """Found by benchmarks/robustness.py: `--batch_size 0` was a ZeroDivisionError traceback (score, eval)."""
    model_dir = _saved(tmp_path, pipeline)
    output = str(tmp_path / "o.jsonl")
    argv = ["score", "--model", model_dir, "--input", rows_file(tmp_path), "--output", output]
    for flag in ("--batch_size", "--chunk_size"):
        assert main([*argv, flag, "0", "--no_progress"]) == 1
        assert f"{flag[2:]} must be >= 1, got 0" in one_line_error(capsys, "score")
    assert not os.path.exists(tmp_path / "o.jsonl")
    data = write_pairs(str(tmp_path / "p.jsonl"))
    assert main(["eval", "--model", model_dir, "--dataset", data, "--batch_size", "0", "--no_progress"]) == 1
    assert "batch_size must be >= 1, got 0" in one_line_error(capsys, "eval")


def test_score_resume_tolerates_checksum_rounding_but_not_other_weights(tmp_path, pipeline):
    """The weight checksum is float reductions: another device may round its last digits differently."""
    first, output = rows_file(tmp_path), str(tmp_path / "out.jsonl")
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


def test_a_learning_rate_that_breaks_the_weights_is_named(tmp_path, pairs_file, llama_backbone_dir, capsys):
    """`--learning_rate 1e30`: step 1's update makes the weights non-finite and step 2's Dirichlet refuses them;
    the error says so in vrm's words (it was torch's "Expected parameter concentration ... nan")."""
    output = tmp_path / "run"
    argv = train_argv(llama_backbone_dir, pairs_file, str(output), learning_rate=1e30, max_grad_norm=0)
    assert main(["train", *argv]) == 1
    message = one_line_error(capsys, "train")
    assert "became NaN or infinite" in message or "training loss became" in message
    assert "Expected parameter" not in message and not (output / "model.safetensors").exists()
