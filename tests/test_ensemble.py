"""Ensembles (issue 16): N heads on one backbone (`vrm.ensemble`) and deep ensembles of checkpoints
(`vrm.deep_ensemble`) — the mixture's mean and std, member diversity under the bootstrap, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import PAIRS
from test_integrations import BLOCK_VRM
from test_modeling import build, single_inputs
from transformers import AutoModelForSequenceClassification

from vrm.data.collate import pad_sequences
from vrm.evaluation.metrics import error_detection
from vrm.models.head_ensemble import EnsembleHead, combine_members
from vrm.models.modeling import VRMForSequenceClassification
from vrm.scoring.deep_ensemble import ensemble_paths
from vrm.scoring.pipeline import RewardPipeline
from vrm.training.losses import bootstrap_weights, preference_loss
from vrm.training.trainer import VRMTrainer

PROMPTS = [p for p, _, _ in PAIRS]
CHOSEN = [c for _, c, _ in PAIRS]


def inputs(model, tokenizer, pref):
    sequences, _ = single_inputs(pref)
    return pad_sequences(sequences, tokenizer.pad_token_id)


def pair_batch(tokenizer, pref):
    """The test pairs as (chosen ids, chosen mask, rejected ids, rejected mask)."""
    encoded = (
        [pref.tokenize_single(p, c) for p, c, _ in PAIRS],
        [pref.tokenize_single(p, r) for p, _, r in PAIRS],
    )
    chosen = pad_sequences([ids for ids, _ in encoded[0]], tokenizer.pad_token_id)
    rejected = pad_sequences([ids for ids, _ in encoded[1]], tokenizer.pad_token_id)
    return (*chosen, *rejected)


def copy_first_member(model) -> None:
    with torch.no_grad():
        first = model.head.members[0].state_dict()
        for member in model.head.members[1:]:
            member.load_state_dict(first)


def train_steps(model, batch, steps: int, bootstrap: bool, seed: int = 0) -> None:
    optimizer = torch.optim.Adam(model.head.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        samples = model(
            chosen_input_ids=batch[0],
            chosen_attention_mask=batch[1],
            rejected_input_ids=batch[2],
            rejected_attention_mask=batch[3],
        )
        weights = (
            bootstrap_weights(model.head.num_members, batch[0].shape[0], generator) if bootstrap else None
        )
        optimizer.zero_grad()
        preference_loss(samples, beta_w=0.01, beta_z=0.01, pair_weights=weights).loss.backward()
        optimizer.step()
    model.eval()


def test_mixture_std_is_aleatoric_plus_epistemic():
    rewards = torch.tensor([[1.0, 2.0, 4.0], [0.5, 0.5, 0.5]])
    stds = torch.tensor([[0.3, 0.0, 0.4], [0.2, 0.2, 0.2]])
    mean, total, aleatoric, epistemic = combine_members(rewards, stds)
    assert mean.tolist() == pytest.approx(rewards.mean(-1).tolist())
    assert epistemic.tolist() == pytest.approx(np.std(rewards.numpy(), axis=-1).tolist(), abs=1e-6)
    assert aleatoric.tolist() == pytest.approx(np.sqrt((stds.numpy() ** 2).mean(-1)).tolist(), abs=1e-6)
    assert (total**2).tolist() == pytest.approx((aleatoric**2 + epistemic**2).tolist(), abs=1e-6)
    assert epistemic[1] == 0 and total[1] == pytest.approx(0.2)


@pytest.mark.parametrize("head_type", ["bt", "vrm", "moe"])
def test_identical_members_have_zero_epistemic_std(head_type):
    model, tokenizer, pref = build("llama_chat", head_type, ensemble_members=3)
    assert isinstance(model.head, EnsembleHead) and model.head.num_members == 3
    ids, mask = inputs(model, tokenizer, pref)
    with torch.no_grad():
        differing = model(input_ids=ids, attention_mask=mask)
        copy_first_member(model)
        same = model(input_ids=ids, attention_mask=mask)
        single = VRMForSequenceClassification.from_backbone_config(
            model.config.text_config, head_type=head_type
        ).eval()
        single.backbone.load_state_dict(model.backbone.state_dict())
        single.head.load_state_dict(model.head.members[0].state_dict())
        config = single.config
        config.response_marker_ids, config.input_format = (
            model.config.response_marker_ids,
            model.config.input_format,
        )
        alone = single(input_ids=ids, attention_mask=mask)
    assert float(differing.epistemic_std.max()) > 1e-4  # independently initialized members disagree
    assert float(same.epistemic_std.abs().max()) < 1e-6
    assert same.member_rewards.shape == (ids.shape[0], 3)
    torch.testing.assert_close(same.logits, alone.logits)
    torch.testing.assert_close(same.reward_std, alone.reward_std)
    torch.testing.assert_close(same.aleatoric_std, alone.reward_std)
    if head_type == "bt":
        assert float(same.reward_std.abs().max()) == 0.0
    if head_type == "vrm":
        assert float(same.aleatoric_std.min()) > 0


def test_bootstrap_makes_identical_members_disagree():
    """bt members start identical: with Poisson(1) weights they drift apart; without, they stay equal."""
    results = {}
    for bootstrap in (False, True):
        model, tokenizer, pref = build("llama_chat", "bt", ensemble_members=2)
        copy_first_member(model)
        train_steps(model, pair_batch(tokenizer, pref), steps=4, bootstrap=bootstrap)
        ids, mask = inputs(model, tokenizer, pref)
        with torch.no_grad():
            results[bootstrap] = model(input_ids=ids, attention_mask=mask)
    assert float(results[False].epistemic_std.abs().max()) == 0.0
    members = results[True].member_rewards
    assert not torch.allclose(members[:, 0], members[:, 1], atol=1e-4)
    assert float(results[True].epistemic_std.min()) > 0


def test_bootstrap_weights_are_seeded_per_step_and_micro_batch():
    """`VRMTrainer.ensemble_pair_weights`: the same (seed, step, micro-batch) draws the same; others differ."""
    samples = SimpleNamespace(members=(None, None, None), reward_chosen=torch.zeros(4, 64))

    def trainer(seed: int, bootstrap: bool = True):
        args = SimpleNamespace(seed=seed, ensemble_bootstrap=bootstrap, process_index=0)
        return SimpleNamespace(args=args, state=SimpleNamespace(global_step=0), _bootstrap_position=(-1, 0))

    def draw(fake):
        return VRMTrainer.ensemble_pair_weights(fake, samples, True)

    first, again = trainer(0), trainer(0)
    a, b = draw(first), draw(first)  # two micro-batches of step 0
    assert a.shape == (3, 64) and torch.equal(a, draw(again)) and not torch.equal(a, b)
    assert torch.equal(b, draw(again))
    first.state.global_step = 1
    assert not torch.equal(draw(first), a)
    assert not torch.equal(draw(trainer(1)), a)
    assert set(a.unique().tolist()) <= set(range(20)) and 0.6 < float(a.mean()) < 1.4  # Poisson(1)
    assert VRMTrainer.ensemble_pair_weights(trainer(0, bootstrap=False), samples, True) is None
    assert VRMTrainer.ensemble_pair_weights(trainer(0), samples, False) is None  # evaluation


def test_ensemble_loss_is_the_members_mean_loss():
    model, tokenizer, pref = build("llama_chat", "vrm", ensemble_members=3)
    batch = pair_batch(tokenizer, pref)
    torch.manual_seed(0)
    samples = model(
        chosen_input_ids=batch[0],
        chosen_attention_mask=batch[1],
        rejected_input_ids=batch[2],
        rejected_attention_mask=batch[3],
    )
    weights = bootstrap_weights(3, batch[0].shape[0], torch.Generator().manual_seed(3))
    out = preference_loss(samples, beta_w=0.1, beta_z=0.1, pair_weights=weights)
    per_member = []
    for n, member in enumerate(samples.members):
        nll = (
            -torch.nn.functional.logsigmoid(member.reward_chosen - member.reward_rejected) * weights[n]
        ).mean()
        kl = 0.1 * (member.kl_weights * weights[n]).mean() + 0.1 * (member.kl_features * weights[n]).mean()
        per_member.append(nll + kl)
    assert float(out.loss.detach()) == pytest.approx(float(torch.stack(per_member).detach().mean()), rel=1e-5)
    with pytest.raises(ValueError, match="2 rows for 3 ensemble members"):
        preference_loss(samples, pair_weights=weights[:2])


def test_one_member_is_the_single_head_model():
    single, tokenizer, pref = build("llama_chat", "vrm", seed=3)
    one, _, _ = build("llama_chat", "vrm", seed=3, ensemble_members=1)
    assert type(one.head) is type(single.head)
    assert list(one.state_dict()) == list(single.state_dict())
    for name, value in single.state_dict().items():
        assert torch.equal(value, one.state_dict()[name]), name
    ids, mask = inputs(single, tokenizer, pref)
    with torch.no_grad():
        a, b = single(input_ids=ids, attention_mask=mask), one(input_ids=ids, attention_mask=mask)
    assert (
        torch.equal(a.logits, b.logits)
        and b.member_rewards is None
        and len(a.to_tuple()) == len(b.to_tuple())
    )


def test_bad_member_count_is_refused():
    with pytest.raises(ValueError, match="ensemble_members must be >= 1"):
        build("llama_chat", "bt", ensemble_members=0)


@pytest.mark.parametrize("head_type", ["bt", "vrm"])
def test_ensemble_checkpoint_round_trip(tmp_path, head_type):
    model, tokenizer, pref = build("llama_chat", head_type, ensemble_members=3)
    ids, mask = inputs(model, tokenizer, pref)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "head_ensemble.py").exists()  # the remote code ships the ensemble head
    loaded = VRMForSequenceClassification.from_pretrained(tmp_path).eval()
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.ensemble_members == 3
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask)
        for other in (loaded, auto):
            after = other(input_ids=ids, attention_mask=mask)
            for name in ("logits", "reward_std", "aleatoric_std", "epistemic_std", "member_rewards"):
                assert torch.equal(getattr(before, name), getattr(after, name)), name


def test_ensemble_checkpoint_loads_with_remote_code_where_vrm_is_not_installed(tmp_path):
    model, tokenizer, pref = build("llama_chat", "vrm", ensemble_members=2)
    ids, mask = inputs(model, tokenizer, pref)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    payload = json.dumps({"ids": ids.tolist(), "mask": mask.tolist()})
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_VRM, str(tmp_path), payload], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules.")
    assert loaded["rewards"] == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def member_dirs(tmp_path_factory):
    """Three saved single-head pipelines on the same tokenizer (different seeds, one normalized)."""
    root = tmp_path_factory.mktemp("deep")
    paths = []
    for seed, head_type in ((0, "vrm"), (1, "vrm"), (2, "bt")):
        model, tokenizer, _ = build(
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


def test_deep_ensemble_refuses_models_that_read_different_inputs(tmp_path, member_dirs):
    with pytest.raises(ValueError, match=r"m2: 1 objectives, but .*m0 has 4"):
        RewardPipeline.from_pretrained([member_dirs[0], member_dirs[2]], device="cpu")
    model, tokenizer, _ = build("bert_pair", "vrm")
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


def test_error_detection_reports_the_epistemic_std():
    chosen, rejected = np.array([1.0, 0.2, -0.3, 2.0]), np.array([0.0, 0.4, 0.0, 1.0])
    std = np.array([0.1, 0.5, 0.6, 0.1])
    epistemic = np.array([0.0, 0.9, 0.8, 0.1])  # high on the two wrong pairs
    members = np.array([[1.0, 1.0], [-0.5, 0.1], [0.3, -0.9], [1.0, 1.2]])  # per-member margins
    out = error_detection(chosen, rejected, std, std, epistemic, epistemic, members)
    assert set(out) == {"margin", "std", "flip", "epistemic_std", "member_margin_std"}
    assert out["epistemic_std"] == 1.0 and out["member_margin_std"] == 1.0
    assert "epistemic_std" not in error_detection(chosen, rejected, std, std)
