"""Fixtures shared by the whole suite: tiny backbones, tokenizers, reward models and data built in the test
session (no network, no ../shared), and the helpers tests share (as fixtures: test modules never import each
other). Plain builders and constants live in `fixtures/tiny_models.py`, which tests may import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
from tiny_models import (  # noqa: E402
    PAIRS,
    bert_config,
    llama_config,
    make_bert_tokenizer,
    make_llama_tokenizer,
)


@pytest.fixture(autouse=True, scope="session")
def _datasets_cache_in_a_temporary_directory(tmp_path_factory):
    """`datasets`' cache (and vrm's tokenization cache under it) lives in the session's temporary directory:
    the suite writes nothing under ~/.cache, in this process or in the `vrm` subprocesses it starts."""
    import datasets

    directory = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    before_env, before_config = os.environ.get("HF_DATASETS_CACHE"), datasets.config.HF_DATASETS_CACHE
    os.environ["HF_DATASETS_CACHE"] = directory
    datasets.config.HF_DATASETS_CACHE = directory
    yield
    datasets.config.HF_DATASETS_CACHE = before_config
    if before_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = before_env


# ----- tokenizers and backbones -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llama_tokenizer():
    return make_llama_tokenizer()


@pytest.fixture(scope="session")
def bert_tokenizer():
    return make_bert_tokenizer()


def save_backbone(kind: str, directory: str) -> str:
    """A random-initialized tiny backbone and its tokenizer saved as a local `from_pretrained` directory."""
    torch.manual_seed(0)
    tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
    size = len(tokenizer)
    config = llama_config(size) if kind == "llama" else bert_config(size)
    AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def llama_backbone_dir(tmp_path_factory):
    return save_backbone("llama", str(tmp_path_factory.mktemp("llama_backbone")))


@pytest.fixture(scope="session")
def bert_backbone_dir(tmp_path_factory):
    return save_backbone("bert", str(tmp_path_factory.mktemp("bert_backbone")))


# ----- data files ---------------------------------------------------------------------------------------------
def _write_pairs(path: str, rows: list[dict] | None = None) -> str:
    """`rows` (by default the PAIRS, in subsets "a" and "b") as a JSON-lines file at `path`."""
    rows = rows or [
        {"prompt": p, "chosen": c, "rejected": r, "subset": "a" if i % 2 else "b"}
        for i, (p, c, r) in enumerate(PAIRS)
    ]
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(name="write_pairs", scope="session")
def _write_pairs_fixture():
    """`write_pairs(path, rows=None) -> path`: rows (by default the PAIRS) as a JSON-lines file."""
    return _write_pairs


@pytest.fixture
def pairs_file(tmp_path):
    return _write_pairs(str(tmp_path / "pairs.jsonl"))


# ----- `vrm train` arguments ----------------------------------------------------------------------------------
def _train_argv(backbone: str, data: str, output: str, **overrides) -> list[str]:
    flags = {
        "model_name_or_path": backbone,
        "dataset_name": data,
        "output_dir": output,
        "max_steps": 4,
        "per_device_train_batch_size": 3,
        "learning_rate": 1e-3,
        "max_length": 64,
        "logging_steps": 2,
        "save_strategy": "no",
        "disable_tqdm": "true",
        "num_objectives": 2,
        "feature_dim": 4,
        **overrides,
    }
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


@pytest.fixture(scope="session")
def train_argv():
    """`train_argv(backbone, data, output, **overrides) -> argv`: a short `vrm train` run (4 steps, 2 objectives,
    no checkpoints) on a tiny backbone; each keyword sets one flag."""
    return _train_argv


# ----- tiny reward models -------------------------------------------------------------------------------------
SETUPS = {
    "llama_chat": (lambda: make_llama_tokenizer(chat=True), llama_config),
    "llama_plain": (lambda: make_llama_tokenizer(chat=False), llama_config),
    "bert_pair": (make_bert_tokenizer, bert_config),
}


def _tiny_model(setup: str, head_type: str = "vrm", seed: int = 0, **kwargs):
    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.models.modeling import VRMForSequenceClassification

    make_tokenizer, make_config = SETUPS[setup]
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = VRMForSequenceClassification.from_backbone_config(
        make_config(len(tokenizer)), head_type=head_type, **kwargs
    ).eval()
    pref = PreferenceTokenizer(tokenizer, max_length=64, is_causal=model.config.is_causal)
    model.config.response_marker_ids = pref.response_marker_ids
    model.config.input_format = pref.input_format
    model.config.max_length = 64
    with torch.no_grad():  # leave the prior-matching init so every output depends on its inputs
        for param in model.head.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model, tokenizer, pref


@pytest.fixture(scope="session")
def tiny_model():
    """`tiny_model(setup, head_type="vrm", seed=0, **config) -> (model, tokenizer, preference_tokenizer)`: an
    untrained vrm reward model (head moved off its prior) on a random backbone; `setup` is one of
    "llama_chat" (chat template), "llama_plain" (no template) or "bert_pair" (an encoder reading text pairs)."""
    return _tiny_model


def _single_inputs(pref):
    encoded = [pref.tokenize_single(p, r) for p, r, _ in PAIRS] + [
        pref.tokenize_single(p, r) for p, _, r in PAIRS
    ]
    return [ids for ids, _ in encoded], torch.tensor([n for _, n in encoded])


@pytest.fixture(scope="session")
def single_inputs():
    """`single_inputs(preference_tokenizer) -> (sequences, prompt_lengths)`: the chosen then the rejected
    responses of the PAIRS, tokenized one by one."""
    return _single_inputs


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    """`tiny_pipeline(**pipeline_kwargs) -> RewardPipeline` around a new `tiny_model("llama_chat")`."""
    from vrm.scoring.pipeline import RewardPipeline

    def make(**kwargs) -> RewardPipeline:
        model, tokenizer, _ = tiny_model("llama_chat")
        return RewardPipeline(model, tokenizer, **kwargs)

    return make


def _templated(tokenizer, prompt: str, response: str) -> tuple[str, str]:
    user = [{"role": "user", "content": prompt}]
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    return full, tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="session")
def templated():
    """`templated(tokenizer, prompt, response) -> (full text, prompt text)` as an RL framework sends them."""
    return _templated


def _save_classifier(directory, kind: str, **config_overrides) -> str:
    from transformers import BertForSequenceClassification, LlamaForSequenceClassification

    torch.manual_seed(0)
    tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
    config = (llama_config if kind == "llama" else bert_config)(len(tokenizer))
    config.num_labels = 1
    for key, value in config_overrides.items():
        setattr(config, key, value)
    model_class = LlamaForSequenceClassification if kind == "llama" else BertForSequenceClassification
    model_class(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def save_classifier():
    """`save_classifier(directory, kind, **config) -> path`: a plain transformers sequence classifier ("llama"
    or "bert", one label, random weights) and its tokenizer, saved: a reward model that is not vrm's."""
    return _save_classifier


@pytest.fixture(scope="session")
def three_objective_model_dir(tmp_path_factory):
    """A saved `tiny_model("llama_chat", num_objectives=3)` and its tokenizer."""
    directory = str(tmp_path_factory.mktemp("tiny_vrm"))
    model, tokenizer, _ = _tiny_model("llama_chat", num_objectives=3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, llama_backbone_dir):
    """(model directory, data file): a tiny model trained by `vrm train` with named objectives ("helpful",
    "safe") and an eval set (`--save_strategy no`)."""
    from vrm.cli.main import main

    root = tmp_path_factory.mktemp("trained")
    data = _write_pairs(str(root / "pairs.jsonl"))
    output = str(root / "model")
    argv = _train_argv(llama_backbone_dir, data, output, eval_dataset_name=data)
    assert main(["train", *argv, "--objective_names", "helpful", "safe"]) == 0
    return output, data


# ----- checks -------------------------------------------------------------------------------------------------
@pytest.fixture
def one_line_error(capsys):
    """`one_line_error(command) -> line`: what the command printed on stderr is one error line, no traceback."""

    def check(command: str) -> str:
        err = capsys.readouterr().err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith(f"vrm {command}: error: "), errors
        return errors[0]

    return check


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


@pytest.fixture(scope="session")
def load_without_vrm():
    """`load_without_vrm(path, ids, mask) -> {"module", "rewards"}`: a saved checkpoint loaded with
    `trust_remote_code=True` in a Python process where `vrm` cannot be imported, and its rewards for `ids`."""

    def load(path, ids, mask) -> dict:
        payload = json.dumps({"ids": ids.tolist(), "mask": mask.tolist()})
        result = subprocess.run(
            [sys.executable, "-c", BLOCK_VRM, str(path), payload], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    return load


def _layout_model(kind: str, head: str, attn: str = "sdpa", **kwargs):
    from vrm.models.modeling import VRMForSequenceClassification

    torch.manual_seed(0)
    tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
    config = llama_config(len(tokenizer)) if kind == "llama" else bert_config(len(tokenizer))
    config._attn_implementation = attn
    return VRMForSequenceClassification.from_backbone_config(config, head_type=head, **kwargs).float()


@pytest.fixture(scope="session")
def layout_model():
    """`layout_model(kind, head, attn="sdpa", **config) -> model`: a seeded random reward model on a tiny "llama"
    (causal) or "bert" (encoder) backbone, with the attention implementation `attn`."""
    return _layout_model


@pytest.fixture
def tokenized_pairs(tmp_path):
    """`tokenized_pairs(kind, causal) -> (tokenizer, pairs)`: the PAIRS, tokenized for a tiny "llama" or "bert"."""
    from vrm.data.rows import load_preferences
    from vrm.data.tokenization import PreferenceTokenizer

    def tokenize(kind: str, causal: bool):
        tokenizer = make_llama_tokenizer() if kind == "llama" else make_bert_tokenizer()
        examples = load_preferences(_write_pairs(str(tmp_path / "pairs.jsonl")))
        pairs, _ = PreferenceTokenizer(tokenizer, max_length=64, is_causal=causal).tokenize_pairs(examples)
        return tokenizer, pairs

    return tokenize


@pytest.fixture(scope="module")
def stochastic_pipeline(tiny_model):
    """A `RewardPipeline` of an untrained vrm model whose `reward_std` is positive on every PAIRS response, so that
    a conservative reward differs from the plain one."""
    from vrm.scoring.pipeline import RewardPipeline

    model, tokenizer, _ = tiny_model("llama_chat")
    return RewardPipeline(model, tokenizer)


@pytest.fixture(scope="module")
def stochastic_scores(stochastic_pipeline):
    """`stochastic_pipeline`'s scores of the PAIRS prompts with their chosen responses."""
    scores = stochastic_pipeline.score([p for p, _, _ in PAIRS], [c for _, c, _ in PAIRS])
    assert bool((scores.reward_std > 0).all())  # else the tests using it could not tell the forms apart
    return scores


# ----- a real browser -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """A headless chromium (Selenium `webdriver.Chrome`, fresh profile) for the tests marked `browser`; they
    skip, with the reason, where no chromium and chromedriver are installed (`fixtures/headless_chromium.py`)."""
    from headless_chromium import find_chromium, start_chromium

    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(f"no browser to run this test in: {found}")
    driver = start_chromium(*found, str(tmp_path_factory.mktemp("chromium_profile")))
    try:
        yield driver
    finally:
        driver.quit()
