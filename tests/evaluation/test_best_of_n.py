"""Best-of-n (`vrm.evaluation.best_of_n`, `vrm bench bon`): curves, pools, the conservative reward as the
proxy, and bad gold scores."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tiny_models import PAIRS

from vrm.cli.main import main
from vrm.data.files import DataFormatError
from vrm.evaluation.best_of_n import bon_curve, build_pool, read_pool, score_pool
from vrm.evaluation.metrics import kl_bon
from vrm.scoring.pipeline import RewardPipeline

POOL = [
    {
        "prompt": "How do I fix a slow query?",
        "responses": ["Add an index.", "No.", "Measure first.", "Maybe."],
        "gold": [1.0, -1.0, 0.5, 0.0],
    },
    {
        "prompt": "Tell me a joke.",
        "responses": ["Why did the chicken cross the road?", "No.", "Later."],
        "gold": [1.0, -1.0, -0.5],
    },
]


def write_pool(tmp_path, rows=POOL):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bon_curve_by_hand():
    proxy = [np.array([3.0, 1.0, 2.0]), np.array([0.0, 5.0])]
    gold = [np.array([0.0, 1.0, 2.0]), np.array([4.0, 6.0])]
    curve = bon_curve(proxy, gold, [1, 2, 3])
    assert [p["prompts"] for p in curve] == [2, 2, 1]
    assert curve[0]["gold"] == pytest.approx((1.0 + 5.0) / 2)  # n = 1: the mean candidate
    # n = 2, prompt 1: subsets {3,1}->0, {3,2}->0, {1,2}->2 => 2/3; prompt 2: always the 5.0 -> gold 6
    assert curve[1]["gold"] == pytest.approx((2 / 3 + 6.0) / 2)
    assert curve[2]["gold"] == pytest.approx(0.0) and curve[2]["kl_bon"] == pytest.approx(kl_bon(3))


def test_pool_reading_building_and_scoring(tmp_path, tiny_model):
    path = write_pool(tmp_path)
    pool = read_pool(path, "gold")
    model, tokenizer, _ = tiny_model("llama_chat")
    pipeline = RewardPipeline(model, tokenizer)
    scores = score_pool(pipeline, pool, progress=False)
    assert [len(s) for s in scores] == [4, 3]
    expected = pipeline.score([POOL[1]["prompt"]] * 3, POOL[1]["responses"]).reward.numpy()
    assert np.allclose(scores[1], expected, atol=1e-5)
    with pytest.raises(DataFormatError, match="'gold' must list one gold score per response"):
        read_pool(write_pool(tmp_path, [dict(POOL[0], gold=[1.0])]), "gold")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
            for p, c, r in [("q", "a", "b"), ("q", "c", "a"), ("lonely", "x", "x")]
        )
    )
    assert build_pool(str(pairs), str(tmp_path / "built.jsonl")) == 1
    (row,) = read_pool(str(tmp_path / "built.jsonl"))
    assert row == {"prompt": "q", "responses": ["a", "b", "c"]}


def test_bench_bon_command_writes_the_curves(tmp_path, capsys, tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    proxy_dir = str(tmp_path / "proxy")
    RewardPipeline(model, tokenizer).save_pretrained(proxy_dir)
    output, plot = str(tmp_path / "bon.json"), str(tmp_path / "bon.png")
    common = ["bench", "bon", "--pool", write_pool(tmp_path), "--proxy", proxy_dir, "--no_progress"]
    argv = [*common, "--gold_column", "gold", "--n", "1", "2", "3", "--output", output, "--plot", plot]
    assert main(argv) == 0
    with open(output) as handle:
        report = json.load(handle)
    curve = report["curves"][proxy_dir]
    assert [p["n"] for p in curve] == [1, 2, 3] and report["candidates"] == 7
    assert curve[0]["gold"] == pytest.approx((0.125 + (-0.5 / 3)) / 2)
    with open(plot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # the gold model path: the proxy judged by itself climbs with n
    argv = [*common, "--gold_model", proxy_dir, "--n", "1", "3", "--output", output]
    assert main(argv) == 0
    with open(output) as handle:
        curve = json.load(handle)["curves"][proxy_dir]
    assert curve[1]["gold"] >= curve[0]["gold"]
    with pytest.raises(SystemExit) as usage_error:
        main(["bench", "nope"])
    assert usage_error.value.code == 2


def test_plot_curves_leaves_the_matplotlib_backend_alone(tmp_path, monkeypatch):
    """Library code never switches the application's backend: no `matplotlib.use`, no pyplot."""
    import matplotlib

    from vrm.evaluation.best_of_n import plot_curves

    def refuse(*args, **kwargs):
        raise AssertionError("library code called matplotlib.use")

    monkeypatch.setattr(matplotlib, "use", refuse)
    curve = bon_curve([np.array([3.0, 1.0, 2.0])], [np.array([0.0, 1.0, 2.0])], [1, 2])
    path = plot_curves({"proxy": curve}, str(tmp_path / "bon.png"))
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_bon_refuses_a_nan_gold_score(tmp_path, capsys, one_line_error):
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
    assert "pool.jsonl:2: 'gold[1]'" in one_line_error("bench")
    assert not os.path.exists(tmp_path / "bon.json")


PROMPTS = [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS]


def test_bench_bon_ranks_by_the_conservative_reward(stochastic_pipeline, stochastic_scores, tmp_path, capsys):
    pool = [{"prompt": PROMPTS[0], "responses": RESPONSES}]  # six candidates for one prompt
    plain = score_pool(stochastic_pipeline, pool, progress=False)[0]
    conservative = score_pool(stochastic_pipeline, pool, progress=False, conservative_lambda=2.0)[0]
    assert np.allclose(
        conservative, plain - 2.0 * stochastic_pipeline.score([PROMPTS[0]] * 6, RESPONSES).reward_std.numpy()
    )
    argv = ["bench", "bon", "--pool", "p.jsonl", "--proxy", "m", "--gold_column", "g"]
    with pytest.raises(SystemExit) as exited:  # argparse's usage error, before any model loads
        main([*argv, "--conservative_lambda", "-1"])
    assert exited.value.code == 2
    assert "--conservative_lambda must be a finite number >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--n", "--best_of"])
def test_a_best_of_n_size_below_one_is_a_usage_error_before_any_model_loads(tmp_path, capsys, flag):
    pool = jsonl(tmp_path / "pool.jsonl", [{"prompt": "q", "responses": ["a", "b"], "gold": [0.1, 0.2]}])
    argv = ["bench", "bon", "--pool", pool, "--proxy", "no-model", "--gold_column", "gold", flag, "1", "0"]
    with pytest.raises(SystemExit) as usage_error:
        main([*argv, "--output", str(tmp_path / "bon.json")])
    assert usage_error.value.code == 2
    assert "every n of best-of-n must be >= 1, got [1, 0]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bon.json")
