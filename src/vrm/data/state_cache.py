"""The frozen-backbone fast path: compute prompt and response states once, keep them on disk, train heads on them.

With `--freeze_backbone` the backbone is a fixed feature extractor (ArmoRM's stage 2): every head (bt, ib, moe,
vrm) and every seed sees the same states, so they are computed once. `EmbeddingCache` stores, for each token
sequence `x ⊕ y`, the prompt state `h_x` and the response state `h_xy` that `VRMForSequenceClassification.encode`
would compute, in chunks of safetensors files:

    DIR/<key>/meta.json               what the states are of (backbone, pooling, number of sequences, ...)
    DIR/<key>/chunk-00000.safetensors prompt_states [n, H], response_states [n, H] (float32)

`key` hashes the backbone (name, config, dtype, pooling and a checksum of some of its weights) and every token id
and prompt length, so the data, the chat template, the truncation and `max_length` are all part of it: a stale
cache is never read, it is simply a different key. Chunks are written atomically and skipped when present, so an
interrupted run resumes where it stopped; under `accelerate launch` each process computes its share of the chunks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vrm.data.collate import collate_targets, length_sorted_batches
from vrm.data.files import atomic_output, write_json
from vrm.data.tokenization import TokenizedPair
from vrm.models.modeling import VRMForSequenceClassification

CACHE_FORMAT = 1


def backbone_fingerprint(model: VRMForSequenceClassification) -> dict:
    """What the states depend on besides the tokens: the backbone's identity and weights, and the pooling.

    The weights enter through float64 sums of the first and last two parameter tensors (cheap at any size, and
    any fine-tuning moves them), so a cache built on a base backbone is not reused for a fine-tuned one.
    """
    params = [p for _, p in model.backbone.named_parameters()]
    probes = params[:2] + params[-2:]
    checksum = [round(float(p.detach().double().sum()), 6) for p in probes]
    checksum += [round(float(p.detach().double().abs().sum()), 6) for p in probes]
    text_config = model.config.text_config
    return {
        "format": CACHE_FORMAT,
        "backbone": getattr(text_config, "_name_or_path", "") or text_config.model_type,
        "backbone_config": json.loads(text_config.to_json_string(use_diff=False)),
        "dtype": str(next(model.backbone.parameters()).dtype),
        "pooling": model.config.pooling,
        "is_causal": bool(model.config.is_causal),
        "weights_checksum": checksum,
    }


def sequences_digest(sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> str:
    """sha256 over every token id and prompt length (in order)."""
    digest = hashlib.sha256()
    for ids, prompt_length in zip(sequences, prompt_lengths, strict=True):
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(np.asarray([-1 - int(prompt_length)], dtype=np.int64).tobytes())  # separator
    return digest.hexdigest()


@torch.no_grad()
def compute_states(
    model: VRMForSequenceClassification,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    pad_token_id: int,
    batch_size: int = 32,
    progress: tqdm | None = None,
) -> tuple[Tensor, Tensor]:
    """Prompt and response states [N, H] (float32, on the CPU, in input order), in length-sorted batches.

    A causal backbone gives both from one pass. An encoder needs a prompt-only pass: it runs once per distinct
    prompt (a preference pair's two sequences, or a Best-of-N pool's n, share one), and `progress` (counting
    sequences) gets those prompts added to its total, so the bar keeps its total and ETA.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hidden_size = model.config.text_config.hidden_size
    count = len(sequences)
    prompt_states = torch.empty(count, hidden_size)
    response_states = torch.empty(count, hidden_size)

    def batches(items: Sequence[Sequence[int]]):
        for index, ids, mask in length_sorted_batches(items, batch_size, pad_token_id):
            yield index, ids.to(device), mask.to(device)
            if progress is not None:
                progress.update(len(index))

    if model.config.is_causal:
        for index, ids, mask in batches(sequences):
            lengths = torch.tensor([prompt_lengths[i] for i in index], device=device)
            prompt, response = model.encode(ids, mask, lengths)
            prompt_states[index] = prompt.float().cpu()
            response_states[index] = response.float().cpu()
    else:
        for index, ids, mask in batches(sequences):
            response_states[index] = model.encode_responses(ids, mask).float().cpu()
        prompts: dict[tuple[int, ...], int] = {}
        prompt_of = [
            prompts.setdefault(tuple(ids[:n]), len(prompts))
            for ids, n in zip(sequences, prompt_lengths, strict=True)
        ]
        unique = list(prompts)
        if progress is not None and progress.total is not None:  # the prompt pass is work too: keep an ETA
            progress.total += len(unique)
            progress.refresh()
        unique_states = torch.empty(len(unique), hidden_size)
        for index, ids, mask in batches(unique):
            unique_states[index] = model.encode_prompts(ids, mask).float().cpu()
        prompt_states = unique_states[torch.tensor(prompt_of, dtype=torch.long)]
    model.train(was_training)
    return prompt_states, response_states


def states_model(model):
    """The model whose backbone computes the states: `model` itself, or what its `states_model()` names (a deep
    ensemble of heads on one shared backbone: its first member, `vrm.scoring.deep_ensemble`)."""
    own = getattr(model, "states_model", None)
    return own() if callable(own) else model


class EmbeddingCache:
    """States of token sequences under a frozen backbone, on disk (see the module docstring)."""

    def __init__(self, directory: str, chunk_size: int = 1024, batch_size: int = 32, progress: bool = True):
        if chunk_size < 1 or batch_size < 1:
            raise ValueError("chunk_size and batch_size must be positive")
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise NotADirectoryError(f"--embedding_cache {directory}: exists and is not a directory")
        self.directory = directory
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.progress = progress
        self.computed = 0  # sequences embedded (not read from disk) by this object

    def entry(
        self, model: VRMForSequenceClassification, sequences, prompt_lengths, fingerprint: dict | None = None
    ) -> str:
        """The directory that holds (or will hold) the states of these sequences under this model."""
        fingerprint = fingerprint or backbone_fingerprint(model)
        key_source = json.dumps(fingerprint, sort_keys=True) + sequences_digest(sequences, prompt_lengths)
        key = hashlib.sha256(f"{key_source}/{self.chunk_size}".encode()).hexdigest()[:24]
        return os.path.join(self.directory, key)

    def states(
        self,
        model: VRMForSequenceClassification,
        sequences: Sequence[Sequence[int]],
        prompt_lengths: Sequence[int],
        pad_token_id: int,
        description: str = "embedding",
    ) -> tuple[Tensor, Tensor]:
        """Prompt and response states [N, H] of the sequences, computed where the cache does not have them."""
        from accelerate import PartialState

        if len(sequences) != len(prompt_lengths):
            raise ValueError(f"{len(sequences)} sequences but {len(prompt_lengths)} prompt lengths")
        state = PartialState()
        model = states_model(model)
        fingerprint = backbone_fingerprint(model)
        entry = self.entry(model, sequences, prompt_lengths, fingerprint)
        num_chunks = math.ceil(len(sequences) / self.chunk_size)
        paths = [os.path.join(entry, f"chunk-{i:05d}.safetensors") for i in range(num_chunks)]
        mine = [i for i in range(num_chunks) if i % state.num_processes == state.process_index]
        missing = [i for i in mine if not os.path.exists(paths[i])]
        if state.is_main_process:
            os.makedirs(entry, exist_ok=True)
            meta = {
                **fingerprint,
                "sequences": len(sequences),
                "chunk_size": self.chunk_size,
                "hidden_size": model.config.text_config.hidden_size,
                "description": description,
            }
            write_json(meta, os.path.join(entry, "meta.json"))
        state.wait_for_everyone()
        todo = sum(min(self.chunk_size, len(sequences) - i * self.chunk_size) for i in missing)
        if todo:
            done = len(sequences) - todo if state.num_processes == 1 else None
            print(
                f"[vrm] {description}: embedding {todo} of {len(sequences)} sequences into {entry}"
                + (f" ({done} already cached)" if done else ""),
                flush=True,
            )
        with tqdm(total=todo, desc=description, disable=not (self.progress and todo), leave=False) as bar:
            for i in missing:
                part = slice(i * self.chunk_size, (i + 1) * self.chunk_size)
                prompt, response = compute_states(
                    model, sequences[part], prompt_lengths[part], pad_token_id, self.batch_size, bar
                )
                with atomic_output(paths[i]) as staging:
                    save_file({"prompt_states": prompt, "response_states": response}, staging)
                self.computed += len(prompt)
        state.wait_for_everyone()
        chunks = [load_file(path) for path in paths]
        prompt_states = torch.cat([c["prompt_states"] for c in chunks]) if chunks else torch.empty(0, 0)
        response_states = torch.cat([c["response_states"] for c in chunks]) if chunks else torch.empty(0, 0)
        if prompt_states.shape[0] != len(sequences):
            raise RuntimeError(
                f"{entry}: the cache holds {prompt_states.shape[0]} states for {len(sequences)} sequences"
            )
        return prompt_states, response_states


# ----- training on cached states ------------------------------------------------------------------------------
class CachedPairDataset(Dataset):
    """Preference pairs as precomputed states: what `VRMForSequenceClassification.forward` takes instead of ids."""

    def __init__(self, pairs: Sequence[TokenizedPair], prompt: Tensor, chosen: Tensor, rejected: Tensor):
        if not len(pairs) == len(prompt) == len(chosen) == len(rejected):
            raise ValueError("pairs and states differ in length")
        self.pairs, self.prompt, self.chosen, self.rejected = pairs, prompt, chosen, rejected

    @classmethod
    def build(
        cls,
        model: VRMForSequenceClassification,
        pairs: Sequence[TokenizedPair],
        cache: EmbeddingCache,
        pad_token_id: int,
        description: str = "train",
    ) -> CachedPairDataset:
        """States of the chosen and the rejected sequence of each pair, from the cache or computed into it."""
        sequences = [p.chosen_input_ids for p in pairs] + [p.rejected_input_ids for p in pairs]
        lengths = [p.prompt_length for p in pairs] * 2
        prompt, response = cache.states(model, sequences, lengths, pad_token_id, description)
        count = len(pairs)
        return cls(pairs, prompt[:count], response[:count], response[count:])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        return {
            "pair": self.pairs[index],
            "prompt_states": self.prompt[index],
            "chosen_states": self.chosen[index],
            "rejected_states": self.rejected[index],
        }


@dataclass
class CachedStatesCollator:
    """Stacks `CachedPairDataset` items; margins and attribute targets as `PreferenceCollator` collates them."""

    def __call__(self, items: Sequence[dict]) -> dict[str, Tensor]:
        names = ("prompt_states", "chosen_states", "rejected_states")
        batch = {name: torch.stack([item[name] for item in items]) for name in names}
        batch.update(collate_targets([item["pair"] for item in items]))
        return batch
