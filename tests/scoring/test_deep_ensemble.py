"""Deep ensembles of saved checkpoints (`vrm.scoring.deep_ensemble`): the mixture of the members' rewards, and
the models that cannot be ensembled."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import PAIRS

from vrm.scoring.deep_ensemble import ensemble_paths
from vrm.scoring.pipeline import RewardPipeline

PROMPTS = [p for p, _, _ in PAIRS]


CHOSEN = [c for _, c, _ in PAIRS]


@pytest.fixture(scope="module")
def member_dirs(tmp_path_factory, tiny_model):
    """Three saved single-head pipelines on the same tokenizer (different seeds, one normalized)."""
    root = tmp_path_factory.mktemp("deep")
    paths = []
    for seed, head_type in ((0, "vrm"), (1, "vrm"), (2, "bt")):
        model, tokenizer, _ = tiny_model(
            "llama_chat", head_type, seed=seed, num_objectives=4 if head_type == "vrm" else None
        )
        pipeline = RewardPipeline(model, tokenizer)
        if seed == 1:
            pipeline.fit_normalization(PROMPTS, CHOSEN)
        path = str(root / f"m{seed}")
        pipeline.save_pretrained(path)
        paths.append(path)
    return paths


def test_deep_ensemble_is_the_mixture_of_its_models(member_dirs):
    paths = member_dirs[:2]
    singles = [RewardPipeline.from_pretrained(path, device="cpu").score(PROMPTS, CHOSEN) for path in paths]
    ensemble = RewardPipeline.from_pretrained(paths, device="cpu")
    scores = ensemble.score(PROMPTS, CHOSEN)
    rewards = np.stack([s.reward.numpy() for s in singles], -1)
    stds = np.stack([s.reward_std.numpy() for s in singles], -1)
    np.testing.assert_allclose(scores.reward.numpy(), rewards.mean(-1), atol=1e-5)
    np.testing.assert_allclose(scores.epistemic_std.numpy(), rewards.std(-1), atol=1e-5)
    np.testing.assert_allclose(scores.aleatoric_std.numpy(), np.sqrt((stds**2).mean(-1)), atol=1e-5)
    np.testing.assert_allclose(
        scores.reward_std.numpy(), np.sqrt((stds**2).mean(-1) + rewards.var(-1)), atol=1e-5
    )
    np.testing.assert_allclose(scores.member_rewards.numpy(), rewards, atol=1e-5)
    weights = np.mean([s.objective_weights.numpy() for s in singles], 0)
    np.testing.assert_allclose(scores.objective_weights.numpy(), weights, atol=1e-5)
    row = ensemble(PROMPTS[0], CHOSEN[0])
    assert row["member_rewards"] == pytest.approx(rewards[0].tolist(), abs=1e-5)
    assert row["reward_std"] ** 2 == pytest.approx(
        row["aleatoric_std"] ** 2 + row["epistemic_std"] ** 2, rel=1e-4
    )


def test_deep_ensemble_refuses_models_that_read_different_inputs(tmp_path, member_dirs, tiny_model):
    with pytest.raises(ValueError, match=r"m2: 1 objectives, but .*m0 has 4"):
        RewardPipeline.from_pretrained([member_dirs[0], member_dirs[2]], device="cpu")
    model, tokenizer, _ = tiny_model("bert_pair", "vrm")
    RewardPipeline(model, tokenizer).save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match=r"bert: its vocabulary, special tokens, .* differ from .*m0's"):
        RewardPipeline.from_pretrained([member_dirs[0], str(tmp_path / "bert")], device="cpu")
    with pytest.raises(ValueError, match="cannot use an embedding cache"):
        RewardPipeline.from_pretrained(member_dirs[:2], device="cpu", embedding_cache=str(tmp_path / "cache"))


def test_several_models_need_the_ensemble_flag():
    assert ensemble_paths(["a"], False) == "a"
    assert ensemble_paths(["a", "b"], True) == ["a", "b"]
    with pytest.raises(ValueError, match="2 --model given: pass --ensemble"):
        ensemble_paths(["a", "b"], False)
    with pytest.raises(ValueError, match="--ensemble needs at least two --model"):
        ensemble_paths(["a"], True)
