"""N heads on one backbone (`vrm.models.head_ensemble`): the mixture's mean and std, member diversity under
the bootstrap, the members' loss, and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import PAIRS
from transformers import AutoModelForSequenceClassification

from vrm.data.collate import pad_sequences
from vrm.models.head_ensemble import EnsembleHead, combine_members
from vrm.models.modeling import VRMForSequenceClassification
from vrm.training.losses import bootstrap_weights, preference_loss


def inputs(model, tokenizer, pref):
    """The chosen then the rejected responses of the PAIRS, tokenized one by one and padded."""
    encoded = [pref.tokenize_single(p, r) for p, r, _ in PAIRS] + [
        pref.tokenize_single(p, r) for p, _, r in PAIRS
    ]
    return pad_sequences([ids for ids, _ in encoded], tokenizer.pad_token_id)


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
def test_identical_members_have_zero_epistemic_std(head_type, tiny_model):
    model, tokenizer, pref = tiny_model("llama_chat", head_type, ensemble_members=3)
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


@pytest.mark.slow
def test_bootstrap_makes_identical_members_disagree(tiny_model):
    """bt members start identical: with Poisson(1) weights they drift apart; without, they stay equal."""
    results = {}
    for bootstrap in (False, True):
        model, tokenizer, pref = tiny_model("llama_chat", "bt", ensemble_members=2)
        copy_first_member(model)
        train_steps(model, pair_batch(tokenizer, pref), steps=4, bootstrap=bootstrap)
        ids, mask = inputs(model, tokenizer, pref)
        with torch.no_grad():
            results[bootstrap] = model(input_ids=ids, attention_mask=mask)
    assert float(results[False].epistemic_std.abs().max()) == 0.0
    members = results[True].member_rewards
    assert not torch.allclose(members[:, 0], members[:, 1], atol=1e-4)
    assert float(results[True].epistemic_std.min()) > 0


def test_ensemble_loss_is_the_members_mean_loss(tiny_model):
    model, tokenizer, pref = tiny_model("llama_chat", "vrm", ensemble_members=3)
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


def test_one_member_is_the_single_head_model(tiny_model):
    single, tokenizer, pref = tiny_model("llama_chat", "vrm", seed=3)
    one, _, _ = tiny_model("llama_chat", "vrm", seed=3, ensemble_members=1)
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


def test_bad_member_count_is_refused(tiny_model):
    with pytest.raises(ValueError, match="ensemble_members must be an integer from 1 to 64"):
        tiny_model("llama_chat", "bt", ensemble_members=0)


@pytest.mark.parametrize("head_type", ["bt", "vrm"])
def test_ensemble_checkpoint_round_trip(tmp_path, head_type, tiny_model):
    model, tokenizer, pref = tiny_model("llama_chat", head_type, ensemble_members=3)
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
