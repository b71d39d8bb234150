"""Scoring token sequences with a vrm model: `score_sequences` runs the model over length-sorted batches under a
token budget (or over cached backbone states) and returns `SequenceScores`, the per-sequence rewards,
uncertainties and objective weights every scorer (pipeline, server, evaluation) hands on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from vrm.data.collate import pad_sequences
from vrm.data.state_cache import EmbeddingCache
from vrm.models.modeling import VRMForSequenceClassification
from vrm.models.shared_prompt import has_shared_prompts, score_layout, score_prompt_trees
from vrm.scoring.data_parallel import ScoringWorld, balanced_shards


@dataclass
class SequenceScores:
    """Per-sequence outputs of a reward model, in input order (what every scorer returns)."""

    reward: torch.Tensor  # [N]
    reward_std: torch.Tensor  # [N]
    objective_weights: torch.Tensor  # [N, K]
    objective_scores: torch.Tensor  # [N, K]
    # ensembles only (`vrm.models.head_ensemble`, `vrm.scoring.deep_ensemble`): reward_std^2 = aleatoric_std^2 + epistemic_std^2
    aleatoric_std: torch.Tensor | None = None  # [N]
    epistemic_std: torch.Tensor | None = None  # [N]
    member_rewards: torch.Tensor | None = None  # [N, members]

    def select(self, index: torch.Tensor | slice) -> SequenceScores:
        def part(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values[index]

        return SequenceScores(
            self.reward[index],
            self.reward_std[index],
            self.objective_weights[index],
            self.objective_scores[index],
            part(self.aleatoric_std),
            part(self.epistemic_std),
            part(self.member_rewards),
        )

    @classmethod
    def assemble(cls, count: int, parts: Sequence[tuple[Sequence[int], SequenceScores]]) -> SequenceScores:
        """The scores of `count` sequences from parts that each hold the scores of the sequences at their
        indices (together every index once)."""
        template = next(scores for _, scores in parts if len(scores.reward))

        def empty(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values.new_empty((count, *values.shape[1:]))

        fields = ("reward", "reward_std", "objective_weights", "objective_scores")
        optional = ("aleatoric_std", "epistemic_std", "member_rewards")
        out = cls(*(empty(getattr(template, f)) for f in fields + optional))
        for index, scores in parts:
            if not len(index):
                continue
            where = torch.as_tensor(list(index), dtype=torch.long)
            for name in fields + optional:
                values = getattr(out, name)
                if values is not None:
                    values[where] = getattr(scores, name)
        return out


def score_in_shards(
    world: ScoringWorld,
    group_keys: Sequence[object],
    costs: Sequence[int],
    score: Callable[[list[int]], SequenceScores],
) -> SequenceScores:
    """Data-parallel scoring of `len(costs)` items: items with one group key (the responses of one prompt, which
    a shared-prompt model or the prompt-alone pass computes once) stay on one rank, groups are spread so each
    rank gets about the same cost (tokens; `balanced_shards`), each rank runs `score(its indices)` and every
    rank receives the whole result, in input order. One process: `score` of every index."""
    count = len(costs)
    if not world.distributed:
        return score(list(range(count)))
    members: dict[object, list[int]] = {}
    for index, key in enumerate(group_keys):
        members.setdefault(key, []).append(index)
    groups = list(members.values())
    mine = balanced_shards(groups, [sum(costs[i] for i in g) for g in groups], world.size)[world.rank]
    local = score(mine) if mine else None
    parts = [part for part in world.all_gather((mine, local)) if part[1] is not None]
    if not parts:
        return score([])
    return SequenceScores.assemble(count, parts)


# a batch stops growing once padding would be more than this share of its tokens, provided it already holds
# `1 / MIN_BATCH_SHARE` of the token budget: sorted rows of very different lengths (150 to 1,024 tokens) then run in
# several batches of similar lengths instead of one padded to the longest
MAX_PADDING_SHARE = 0.2
MIN_BATCH_SHARE = 16


def token_budget_batches(
    sequences: Sequence[Sequence[int]], batch_size: int, pad_token_id: int, budget: int | None = None
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Batches of sequences sorted by length: (indices into `sequences`, right-padded ids, mask).

    A batch holds as many sequences as fit `budget` padded tokens (rows × the batch's longest sequence); the
    default budget, `batch_size` × the longest sequence of all, gives the longest sequences `batch_size` rows and
    shorter ones more (never more than 8 × `batch_size`), so a batch costs about the same whatever its lengths. A
    batch is also cut where the next (longer) sequence would make padding more than `MAX_PADDING_SHARE` of its
    tokens, once it holds `budget / MIN_BATCH_SHARE` tokens: the padded tokens stay close to the real ones when
    lengths vary, without batches too small to keep a device busy."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    if not order:
        return
    budget = budget or batch_size * max(1, len(sequences[order[-1]]))
    most = 8 * batch_size
    start = 0
    while start < len(order):
        stop = start + 1
        real = len(sequences[order[start]])
        while stop < len(order) and stop - start < most:
            longest = len(sequences[order[stop]])
            rows = stop - start + 1
            if rows * longest > budget:
                break
            filled = (rows - 1) * len(sequences[order[stop - 1]]) * MIN_BATCH_SHARE >= budget
            if filled and rows * longest - (real + longest) > MAX_PADDING_SHARE * rows * longest:
                break
            real += longest
            stop += 1
        index = order[start:stop]
        yield (index, *pad_sequences([sequences[i] for i in index], pad_token_id))
        start = stop


def prompt_states_alone(
    model: VRMForSequenceClassification,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    pad_token_id: int,
    batch_size: int,
) -> torch.Tensor:
    """An encoder's prompt-alone states `h_x` [N, H] (`VRMForSequenceClassification._encode_prompt_alone`) of all
    sequences at once: each distinct prompt is encoded once, in batches of prompts sorted by their own length (the
    prompts of a batch of full sequences differ in length more, and would pad to the longest)."""
    device = next(model.parameters()).device
    keys: dict[tuple[int, ...], int] = {}
    inverse = [
        keys.setdefault(tuple(ids[:length]), len(keys))
        for ids, length in zip(sequences, prompt_lengths, strict=True)
    ]
    prompts = [list(key) for key in keys]
    states: torch.Tensor | None = None
    for index, ids, mask in token_budget_batches(prompts, batch_size, pad_token_id):
        state = model.encode_prompts(ids.to(device), mask.to(device))
        if states is None:
            states = state.new_empty(len(prompts), state.shape[-1])
        states[torch.tensor(index, device=state.device)] = state
    return states[torch.tensor(inverse, device=states.device)]


def separate_prompt_pass(model: VRMForSequenceClassification) -> bool:
    """Whether `model` reads its prompt state from a pass over the prompt alone (a bidirectional backbone scored on
    the separate layout, with a head whose weights depend on the prompt) that `score_sequences` can run apart."""
    return (
        hasattr(model, "backbone")
        and not model.config.is_causal
        and model.config.weight_posterior != "none"
        and score_layout(model) == "separate"
    )


def score_sequences(
    model: VRMForSequenceClassification,
    sequences: Sequence[Sequence[int]],
    prompt_lengths: Sequence[int],
    pad_token_id: int,
    batch_size: int = 32,
    progress: bool = False,
    description: str = "scoring",
    embedding_cache: EmbeddingCache | None = None,
    world: ScoringWorld | None = None,
) -> SequenceScores:
    """Score token sequences, returned in input order, under `torch.inference_mode`.

    Sequences run in batches sorted by length with a token budget (`token_budget_batches`: little padding, short
    sequences in larger batches). An encoder's prompt-alone pass runs apart, once per distinct prompt
    (`prompt_states_alone`); a causal backbone reads the prompt state in the sequence's own pass; a prompt shared
    by several sequences of a tree-layout model is computed once (`vrm.models.shared_prompt`).
    With an `embedding_cache` (a model trained with `--freeze_backbone`), the backbone states come from the cache
    (computed into it once) and only the head runs here.
    With a `world` of several processes (`vrm.scoring.data_parallel`), each scores the sequences of its share of
    the prompts and every process returns all the scores (`score_in_shards`).
    """
    if world is not None and world.distributed:
        if embedding_cache is not None:
            raise ValueError(
                "data-parallel scoring does not take an embedding cache (its ranks would write the same "
                "cache files): run in one process, or without the cache"
            )

        def shard(index: list[int]) -> SequenceScores:
            return score_sequences(
                model,
                [sequences[i] for i in index],
                [prompt_lengths[i] for i in index],
                pad_token_id,
                batch_size,
                progress and world.is_main,
                description,
            )

        keys = [tuple(sequence[:length]) for sequence, length in zip(sequences, prompt_lengths, strict=True)]
        return score_in_shards(world, keys, [len(s) for s in sequences], shard)
    model.eval()
    device = next(model.parameters()).device
    count, k = len(sequences), model.config.num_objectives
    out = SequenceScores(torch.empty(count), torch.empty(count), torch.empty(count, k), torch.empty(count, k))

    def store(index, result) -> None:
        out.reward[index] = result.logits[:, 0].float().cpu()
        out.reward_std[index] = result.reward_std.float().cpu()
        out.objective_weights[index] = result.objective_weights.float().cpu()
        out.objective_scores[index] = result.objective_scores.float().cpu()
        if getattr(result, "member_rewards", None) is not None:  # an ensemble
            if out.member_rewards is None:
                out.aleatoric_std, out.epistemic_std = torch.empty(count), torch.empty(count)
                out.member_rewards = torch.empty(count, result.member_rewards.shape[-1])
            out.aleatoric_std[index] = result.aleatoric_std.float().cpu()
            out.epistemic_std[index] = result.epistemic_std.float().cpu()
            out.member_rewards[index] = result.member_rewards.float().cpu()

    with torch.inference_mode():
        _score_into(
            store,
            model,
            device,
            sequences,
            prompt_lengths,
            pad_token_id,
            batch_size,
            progress,
            description,
            embedding_cache,
        )
    return out


def _score_into(
    store,
    model,
    device,
    sequences,
    prompt_lengths,
    pad_token_id,
    batch_size,
    progress,
    description,
    embedding_cache,
) -> None:
    """`score_sequences`' scoring: hands each batch's indices and `RewardModelOutput` to `store`."""
    count = len(sequences)
    if embedding_cache is not None:
        prompt_states, response_states = embedding_cache.states(
            model, sequences, prompt_lengths, pad_token_id, description
        )
        for start in range(0, count, 4096):
            part = slice(start, start + 4096)
            store(
                part,
                model(
                    prompt_states=prompt_states[part].to(device),
                    response_states=response_states[part].to(device),
                ),
            )
        return
    if count == 0:
        return
    if score_layout(model) == "shared_prompt" and (
        not model.config.is_causal or has_shared_prompts(sequences, prompt_lengths)
    ):  # a prompt shared by several sequences is computed once (vrm.models.shared_prompt)
        for index, result in score_prompt_trees(model, sequences, prompt_lengths, pad_token_id, batch_size):
            store(index, result)
        return
    prompt_states = (
        prompt_states_alone(model, sequences, prompt_lengths, pad_token_id, batch_size)
        if separate_prompt_pass(model)
        else None
    )
    batches = list(token_budget_batches(sequences, batch_size, pad_token_id))
    for index, ids, mask in tqdm(batches, desc=description, disable=not progress, leave=False):
        ids, mask = ids.to(device), mask.to(device)
        if prompt_states is not None:
            result = model._score_states(
                prompt_states[torch.tensor(index, device=device)], model.encode_responses(ids, mask)
            )
        else:
            lengths = torch.tensor([prompt_lengths[i] for i in index], device=device)
            result = model(input_ids=ids, attention_mask=mask, prompt_lengths=lengths)
        store(index, result)
