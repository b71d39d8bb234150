import json
import subprocess
import sys

import pytest
import torch
from conftest import PAIRS
from test_modeling import build

from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.reward_function import VRMRewardFunction


@pytest.fixture
def pipeline():
    model, tokenizer, _ = build("llama_chat")
    return RewardPipeline(model, tokenizer)


def test_grpo_reward_function_call_signature(pipeline):
    reward = VRMRewardFunction(pipeline)
    assert reward.__name__ == "vrm_reward"
    prompts, completions = [p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS]
    expected = pipeline.score(prompts, completions).reward.tolist()
    # standard format, called as GRPOTrainer calls it: keywords plus extra dataset columns
    plain = reward(
        prompts=prompts, completions=completions, completion_ids=[[1]] * len(PAIRS), subset=["x"] * 6
    )
    assert isinstance(plain, list) and all(isinstance(r, float) for r in plain)
    assert plain == pytest.approx(expected, abs=1e-5)
    # conversational format
    conversational = reward(
        prompts=[[{"role": "user", "content": p}] for p in prompts],
        completions=[[{"role": "assistant", "content": c}] for c in completions],
    )
    assert conversational == pytest.approx(expected, abs=1e-5)
    conservative = VRMRewardFunction(pipeline, conservative_lambda=1.0)(
        prompts=prompts, completions=completions
    )
    stds = pipeline.score(prompts, completions).reward_std.tolist()
    assert conservative == pytest.approx([r - s for r, s in zip(expected, stds, strict=True)], abs=1e-5)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        reward(prompts=["a", "b"], completions=["c"])


BLOCK_VRM = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "vrm" or name.startswith("vrm."):
            raise ImportError("vrm is not installed here")
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForSequenceClassification
try:
    import vrm  # noqa: F401
    raise SystemExit("vrm was importable")
except ImportError:
    pass
path, inputs = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
with torch.no_grad():
    out = model(input_ids=torch.tensor(inputs["ids"]), attention_mask=torch.tensor(inputs["mask"]))
print(json.dumps({"module": type(model).__module__, "rewards": out.logits[:, 0].tolist()}))
"""


def test_checkpoint_loads_with_remote_code_where_vrm_is_not_installed(tmp_path, pipeline):
    from vrm.data.collate import pad_sequences

    pipeline.fit_normalization([p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS])
    pipeline.save_pretrained(str(tmp_path))
    encoded = [pipeline.template.tokenize_single(p, c) for p, c, _ in PAIRS]
    ids, mask = pad_sequences([i for i, _ in encoded], pipeline.tokenizer.pad_token_id, side="left")
    with torch.no_grad():
        expected = pipeline.model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    inputs = json.dumps({"ids": ids.tolist(), "mask": mask.tolist()})
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_VRM, str(tmp_path), inputs], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules.")  # the copied code, not vrm
    assert loaded["rewards"] == pytest.approx(expected, abs=1e-5)
