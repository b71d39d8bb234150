"""`VRMForSequenceClassification`: the prompt boundary, padding, the pair and single forwards, save and load,
reward normalization, dtypes, the detached prompt state and the shared prompt pass of encoders."""

import copy

import pytest
import torch
from tiny_models import PAIRS
from transformers import AutoModelForSequenceClassification

from vrm.data.collate import PreferenceCollator, pad_sequences
from vrm.data.examples import PreferenceExample
from vrm.models.modeling import VRMForSequenceClassification
from vrm.models.pooling import PromptBoundaryError, find_prompt_end

SETUPS = ["llama_chat", "llama_plain", "bert_pair"]  # the setups of the `tiny_model` fixture


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_prompt_boundary_found_from_the_marker(setup, side, tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model(setup)
    sequences, prompt_lengths = single_inputs(pref)
    ids, mask = pad_sequences(sequences, tokenizer.pad_token_id, side)
    found = find_prompt_end(ids, mask, marker_ids=model.config.response_marker_ids)
    expected = find_prompt_end(ids, mask, prompt_lengths=prompt_lengths)
    assert torch.equal(found, expected)
    # the boundary token is the last token of the marker, and the next one starts the response
    marker = model.config.response_marker_ids
    for row in range(ids.shape[0]):
        end = int(found[row])
        assert ids[row, end - len(marker) + 1 : end + 1].tolist() == marker


@pytest.mark.parametrize("setup", SETUPS)
def test_rewards_do_not_depend_on_padding_side_or_explicit_lengths(setup, tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model(setup)
    sequences, prompt_lengths = single_inputs(pref)
    outputs = []
    with torch.no_grad():
        for side in ("right", "left"):
            ids, mask = pad_sequences(sequences, tokenizer.pad_token_id, side)
            outputs.append(model(input_ids=ids, attention_mask=mask, prompt_lengths=prompt_lengths))
            outputs.append(model(input_ids=ids, attention_mask=mask))  # boundary from the marker
        unpadded = torch.cat([model(input_ids=torch.tensor([s])).logits for s in sequences])
    for out in outputs[1:]:
        assert torch.allclose(out.logits, outputs[0].logits, atol=1e-5)
        assert torch.allclose(out.objective_weights, outputs[0].objective_weights, atol=1e-5)
        assert torch.allclose(out.reward_std, outputs[0].reward_std, atol=1e-5)
    assert torch.allclose(unpadded, outputs[0].logits, atol=1e-5)
    # the prompt state really is the prompt's: same prompt -> same objective weights for both responses
    n = len(PAIRS)
    assert torch.allclose(outputs[0].objective_weights[:n], outputs[0].objective_weights[n:], atol=1e-5)
    assert not torch.allclose(outputs[0].objective_weights[0], outputs[0].objective_weights[1], atol=1e-4)


def test_missing_marker_is_a_clear_error(tiny_model):
    model, tokenizer, _ = tiny_model("llama_chat")
    ids = torch.tensor([tokenizer("no template here").input_ids])
    with pytest.raises(PromptBoundaryError, match="response marker .* not found"):
        model(input_ids=ids)
    model.config.response_marker_ids = None
    with pytest.raises(PromptBoundaryError, match="no prompt_lengths"):
        model(input_ids=ids)


@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
def test_pair_forward_matches_single_forward(setup, tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model(setup)
    examples = [PreferenceExample(p, c, r) for p, c, r in PAIRS]
    batch = PreferenceCollator(tokenizer.pad_token_id)(pref.tokenize_pairs(examples)[0])
    sequences, prompt_lengths = single_inputs(pref)
    ids, mask = pad_sequences(sequences, tokenizer.pad_token_id)
    with torch.no_grad():
        samples = model(**batch)
        single = model(input_ids=ids, attention_mask=mask, prompt_lengths=prompt_lengths)
    n = len(PAIRS)
    assert torch.allclose(samples.chosen.reward, single.logits[:n, 0], atol=1e-5)
    assert torch.allclose(samples.rejected.reward, single.logits[n:, 0], atol=1e-5)
    assert samples.reward_chosen.shape == (model.config.num_samples, n)


@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
@pytest.mark.parametrize("head_type", ["bt", "vrm"])
def test_save_and_load_give_identical_rewards(tmp_path, setup, head_type, tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model(setup, head_type)
    sequences, _ = single_inputs(pref)
    ids, mask = pad_sequences(sequences, tokenizer.pad_token_id)
    model.save_pretrained(tmp_path)
    loaded = VRMForSequenceClassification.from_pretrained(tmp_path).eval()
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(auto, VRMForSequenceClassification)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask)
        for other in (loaded, auto):
            after = other(input_ids=ids, attention_mask=mask)  # boundary from the saved marker
            assert torch.equal(before.logits, after.logits)
            assert torch.equal(before.reward_std, after.reward_std)
    assert loaded.config.response_marker_ids == model.config.response_marker_ids
    assert loaded.config.is_causal == model.config.is_causal


def test_reward_normalization_is_applied(tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model("llama_chat")
    sequences, _ = single_inputs(pref)
    ids, mask = pad_sequences(sequences, tokenizer.pad_token_id)
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=mask)
        model.config.reward_mean, model.config.reward_scale = 0.5, 2.0
        normalized = model(input_ids=ids, attention_mask=mask)
    assert torch.allclose(normalized.logits, (raw.logits - 0.5) / 2.0)
    assert torch.allclose(normalized.reward_std, raw.reward_std / 2.0)


def test_bfloat16_backbone_keeps_a_float32_head(tmp_path, tiny_model):
    model, tokenizer, pref = tiny_model("llama_chat")
    model.save_pretrained(tmp_path)
    loaded = VRMForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert next(loaded.backbone.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in loaded.head.parameters())
    examples = [PreferenceExample(p, c, r) for p, c, r in PAIRS]
    batch = PreferenceCollator(tokenizer.pad_token_id)(pref.tokenize_pairs(examples)[0])
    samples = loaded(**batch)  # Dirichlet sampling has no bfloat16 kernel: this fails if the head is bf16
    samples.reward_chosen.mean().backward()
    assert loaded.head.weight_net.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what `--bf16 true` does to a float32 model
        assert torch.isfinite(model(**batch).reward_chosen).all()


@pytest.mark.parametrize("setup", ["llama_chat", "bert_pair"])
def test_detached_prompt_state_changes_gradients_not_outputs(setup, tiny_model):
    """--no_prompt_state_gradient: same loss, the weight network still learns, the backbone's gradient loses
    the prompt-state path, and an encoder's prompt-only pass runs without backward (fewer FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vrm.training.losses import preference_loss

    model, tokenizer, pref = tiny_model(setup)
    detached = copy.deepcopy(model)
    detached.config.prompt_state_gradient = False
    examples = [PreferenceExample(p, c, r) for p, c, r in PAIRS]
    batch = PreferenceCollator(tokenizer.pad_token_id)(pref.tokenize_pairs(examples)[0])
    losses, flops = [], []
    for m in (model, detached):
        torch.manual_seed(0)
        with FlopCounterMode(display=False) as counter:
            samples = m(**batch)
            loss = preference_loss(samples, beta_w=0.1, beta_z=0.1).loss
            loss.backward()
        losses.append(loss.detach())
        flops.append(counter.get_total_flops())
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert detached.head.weight_net.weight.grad.abs().sum() > 0
    backbone_grads = [
        torch.cat([p.grad.flatten() for p in m.backbone.parameters() if p.grad is not None])
        for m in (model, detached)
    ]
    assert not torch.allclose(backbone_grads[0], backbone_grads[1])
    if setup == "bert_pair":
        assert flops[1] < flops[0]
    else:  # a causal backbone reads h_x from the shared pass: only the head's input gradient is saved
        assert 0.99 * flops[0] < flops[1] <= flops[0]


def test_scoring_encodes_a_shared_prompt_once(tiny_model):
    """An encoder scoring several responses to one prompt runs the prompt-only pass once per distinct prompt
    (without gradients); the rewards equal those of the pass per row (with gradients, as in training)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, tokenizer, pref = tiny_model("bert_pair", head_type="moe")
    responses = ["Yes, that works.", "No.", "It depends on the version you run.", "Yes, that works."]
    encoded = [pref.tokenize_single(PAIRS[0][0], r) for r in responses]
    encoded.append(pref.tokenize_single(PAIRS[1][0], "Sure."))
    ids, mask = pad_sequences([sequence for sequence, _ in encoded], tokenizer.pad_token_id)
    lengths = torch.tensor([length for _, length in encoded])
    rewards, flops = [], []
    for grad in (False, True):
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as counter:
            rewards.append(model(input_ids=ids, attention_mask=mask, prompt_lengths=lengths).logits.detach())
        flops.append(counter.get_total_flops())
    assert torch.allclose(rewards[0], rewards[1], atol=1e-5)
    # the same response to the same prompt scores the same up to float rounding (rows of one batch may round
    # differently on some CPUs), a different response does not
    assert torch.isclose(rewards[0][0], rewards[0][3], atol=1e-6) and not torch.isclose(
        rewards[0][0], rewards[0][1]
    )
    assert flops[0] < flops[1]  # 2 prompt passes instead of 5
