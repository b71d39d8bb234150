"""`VRMForSequenceClassification.forward` keeps the `transformers` output contract."""

import pytest
import torch
from tiny_models import PAIRS
from transformers.utils import ModelOutput

from vrm.data.collate import PreferenceCollator, pad_sequences
from vrm.data.examples import PreferenceExample
from vrm.models.heads import PairSamples
from vrm.models.modeling import PairwiseRewardOutput, RewardModelOutput
from vrm.training.losses import preference_loss


@pytest.fixture(scope="module")
def setup(tiny_model, single_inputs):
    model, tokenizer, pref = tiny_model("llama_chat")
    examples = [PreferenceExample(p, c, r) for p, c, r in PAIRS]
    batch = PreferenceCollator(tokenizer.pad_token_id)(pref.tokenize_pairs(examples)[0])
    sequences, prompt_lengths = single_inputs(pref)
    ids, mask = pad_sequences(sequences, tokenizer.pad_token_id)
    return model, batch, {"input_ids": ids, "attention_mask": mask, "prompt_lengths": prompt_lengths}


def test_every_path_returns_a_model_output_or_a_tuple(setup):
    model, batch, single = setup
    with torch.no_grad():
        torch.manual_seed(0)
        pairs = model(**batch)
        torch.manual_seed(0)
        pairs_tuple = model(**batch, return_dict=False)
        scored = model(**single)
        scored_tuple = model(**single, return_dict=False)
    assert isinstance(pairs, PairwiseRewardOutput) and isinstance(pairs, PairSamples)
    assert isinstance(pairs, ModelOutput) and isinstance(scored, RewardModelOutput)
    assert torch.equal(pairs["reward_chosen"], pairs.reward_chosen)
    assert pairs.weight_samples.shape[:2] == pairs.reward_chosen.shape
    assert isinstance(pairs_tuple, tuple) and isinstance(scored_tuple, tuple)
    assert torch.equal(pairs_tuple[0], pairs.reward_chosen) and torch.equal(scored_tuple[0], scored.logits)
    assert len(pairs_tuple) == len(pairs.to_tuple())
    assert torch.isfinite(
        preference_loss(pairs, beta_w=0.1, beta_z=0.1).loss
    )  # vrm.training.losses takes it as is
    # the frozen-backbone path (precomputed states) keeps the contract too
    states = model.encode_pairs(
        batch["chosen_input_ids"],
        batch["chosen_attention_mask"],
        batch["rejected_input_ids"],
        batch["rejected_attention_mask"],
        batch["prompt_lengths"],
    )
    with torch.no_grad():
        out = model(prompt_states=states[0], chosen_states=states[1], rejected_states=states[2])
        scored_states = model(prompt_states=states[0], response_states=states[1], return_dict=False)
    assert isinstance(out, PairwiseRewardOutput) and isinstance(scored_states, tuple)


def test_unknown_arguments_are_refused_token_type_ids_accepted(setup):
    model, _, single = setup
    with torch.no_grad():
        plain = model(**single)
        typed = model(**single, token_type_ids=torch.zeros_like(single["input_ids"]))
        assert torch.equal(plain.logits, typed.logits)
        with pytest.raises(TypeError, match="prompt_length"):
            model(input_ids=single["input_ids"], prompt_length=single["prompt_lengths"])  # a typo
        with pytest.raises(ValueError, match="labels"):
            model(**single, labels=torch.ones(len(single["input_ids"])))
        model(**single, labels=None)  # what generic callers pass when they have none
