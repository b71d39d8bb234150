"""Data of the over-optimization study: proxy training pairs, test pairs and a pool of candidates with gold scores.

`synthetic` (`vrm.data.synthetic`): the world's training pairs and `test_iid`, and a fresh pool of
`pool_candidates` random responses for each of `pool_prompts` prompts whose gold score is the true reward.

`alpacaeval` (~56 generators' answers per instruction): the instructions are split once (`split_seed`) into
`pool_prompts` pool instructions with at least `pool_candidates` distinct answers (that many drawn per
instruction; the pool keeps the first `pool_keep_prompts` of them with their first `pool_keep_candidates`
answers, a smaller pool on the same split) and the rest, whose judged pairs are shuffled into `gold_pairs`
training pairs of the gold model and `test_pairs` test pairs. No pool instruction is in any training pair. The
gold reward model (`gold` options of the study, seed 0) is trained on the gold pairs; it scores the pool (the
gold scores), and relabels the first `proxy_pairs` of its training pairs (the proxies' training set, as in Gao
et al., 2022: proxies learn the gold's preferences from less data) and the test pairs: `chosen` is the response
the gold prefers.
"""

from __future__ import annotations

import os
import random
from typing import Any

from benchmarks.studies.overoptimization.runner import (
    StudyConfig,
    StudyData,
    assemble_cached_states,
    score_model,
)
from benchmarks.studies.training import run_options, train_model
from vrm.data.files import read_records, write_json, write_jsonl


def prepare(config: StudyConfig, work_dir: str) -> StudyData:
    directory = os.path.join(work_dir, "data", config.name)
    os.makedirs(directory, exist_ok=True)
    if config.data["kind"] == "synthetic":
        return prepare_synthetic(config, directory)
    return prepare_alpacaeval(config, directory, work_dir)


def data_paths(config: StudyConfig, work_dir: str) -> StudyData:
    """Where `prepare` puts (or found) the data, without preparing anything."""
    directory = os.path.join(work_dir, "data", config.name)
    if config.data["kind"] == "synthetic":
        world = config.data["world_dir"]
        return StudyData(
            os.path.join(world, "train.jsonl"),
            os.path.join(world, config.data.get("test", "test_iid.jsonl")),
            os.path.join(directory, "pool.jsonl"),
        )
    return StudyData(*(os.path.join(directory, f"{name}.jsonl") for name in ("train", "test", "pool")))


def prepare_synthetic(config: StudyConfig, directory: str) -> StudyData:
    from vrm.data.synthetic import WorldConfig, generate_pool

    spec = config.data
    data = data_paths(config, os.path.dirname(os.path.dirname(directory)))
    if not os.path.exists(data.pool):
        rows = generate_pool(spec["pool_prompts"], spec["pool_candidates"], WorldConfig(), spec["pool_seed"])
        write_jsonl(rows, data.pool)
    return data


def split_alpacaeval(spec: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(pool rows without gold, gold training pairs, test pairs) from the judged AlpacaEval file."""
    rows_by_prompt: dict[str, list[dict]] = {}
    answers: dict[str, list[str]] = {}
    for location, row in read_records(spec["source"]):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not isinstance(row.get("chosen"), str):
            raise ValueError(f"{location}: expected text 'prompt', 'chosen' and 'rejected'")
        rows_by_prompt.setdefault(prompt, []).append(
            {"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}
        )
        seen = answers.setdefault(prompt, [])
        for response in (row["chosen"], row["rejected"]):
            if response not in seen:
                seen.append(response)
    rng = random.Random(spec.get("split_seed", 0))
    prompts = sorted(rows_by_prompt)
    rng.shuffle(prompts)
    size = spec["pool_candidates"]
    eligible = [p for p in prompts if len(answers[p]) >= size]
    pool_prompts = eligible[: spec["pool_prompts"]]
    if len(pool_prompts) < spec["pool_prompts"]:
        raise ValueError(f"{spec['source']}: only {len(pool_prompts)} prompts have {size} distinct answers")
    pool = [{"prompt": p, "responses": rng.sample(answers[p], size)} for p in pool_prompts]
    keep_prompts = spec.get("pool_keep_prompts", len(pool))
    keep_candidates = spec.get("pool_keep_candidates", size)
    pool = [{**row, "responses": row["responses"][:keep_candidates]} for row in pool[:keep_prompts]]
    held = set(pool_prompts)
    pairs = [row for p in prompts if p not in held for row in rows_by_prompt[p]]
    rng.shuffle(pairs)
    gold_pairs, test_pairs = spec["gold_pairs"], spec["test_pairs"]
    if len(pairs) < gold_pairs + test_pairs:
        raise ValueError(f"{spec['source']}: {len(pairs)} pairs, fewer than gold_pairs + test_pairs")
    return pool, pairs[:gold_pairs], pairs[gold_pairs : gold_pairs + test_pairs]


def relabel(rows: list[dict], chosen_gold, rejected_gold) -> tuple[list[dict], int]:
    """Rows with `chosen` the response of higher gold reward (ties keep the label); and how many flipped."""
    out, flipped = [], 0
    for row, c, r in zip(rows, chosen_gold, rejected_gold, strict=True):
        if r > c:
            row = {**row, "chosen": row["rejected"], "rejected": row["chosen"]}
            flipped += 1
        out.append(row)
    return out, flipped


def tokenizable(model_dir: str, rows: list[dict], path: str) -> list[dict]:
    """The rows whose pair survives the model's tokenization (a pair whose two answers are identical after
    truncation is dropped by it), written to `path`; the dropped ones are counted on stdout, not hidden."""
    from vrm.data.rows import load_preferences
    from vrm.scoring.loading import load_scorer

    every = path.removesuffix(".jsonl") + "_all.jsonl"
    write_jsonl(rows, every)
    template = load_scorer(model_dir).template
    examples = load_preferences(every, split="train")
    kept = [row for row, example in zip(rows, examples, strict=True) if template.tokenize_pairs([example])[0]]
    if len(kept) < len(rows):
        print(
            f"[overoptimization] {every}: {len(rows) - len(kept)} pairs identical after truncation, left out"
        )
    write_jsonl(kept, path)
    return kept


def prepare_alpacaeval(config: StudyConfig, directory: str, work_dir: str) -> StudyData:
    data = data_paths(config, work_dir)
    if all(os.path.exists(p) for p in (data.train, data.test, data.pool)):
        return data
    spec = config.data
    pool, gold_pairs, test_pairs = split_alpacaeval(spec)
    raw = {
        name: os.path.join(directory, f"{name}_raw.jsonl") for name in ("gold_train", "proxy", "test", "pool")
    }
    write_jsonl(gold_pairs, raw["gold_train"])
    pool_rows = [{**row, "gold_scores": [0.0] * len(row["responses"])} for row in pool]
    write_jsonl(pool_rows, raw["pool"])
    gold_dir = os.path.join(work_dir, "models", config.name, "gold")
    options = run_options(
        config.spec("gold", 0),
        config.backbone,
        raw["gold_train"],
        gold_dir,
        os.path.join(work_dir, "embeddings"),
    )
    if not os.path.exists(os.path.join(gold_dir, "config.json")):
        train_model(options)
    proxy_rows = tokenizable(gold_dir, gold_pairs[: spec["proxy_pairs"]], raw["proxy"])
    test_pairs = tokenizable(gold_dir, test_pairs, raw["test"])
    cache = options.get("embedding_cache")  # None: a fine-tuned gold, no states to reuse
    if cache:
        assemble_cached_states(options, raw["gold_train"], raw["proxy"], cache)
        assemble_cached_states(options, raw["test"].removesuffix(".jsonl") + "_all.jsonl", raw["test"], cache)
    # the gold scores the proxies' training pairs as test pairs: one call scores the pool and those pairs
    proxy_scores = score_model(gold_dir, pool_rows, raw["proxy"], cache)
    test_scores = score_model(gold_dir, pool_rows, raw["test"], cache)
    for row, gold in zip(pool_rows, proxy_scores["pool_reward"], strict=True):
        row["gold_scores"] = gold
    proxy, proxy_flipped = relabel(proxy_rows, proxy_scores["test_chosen"], proxy_scores["test_rejected"])
    test, test_flipped = relabel(test_pairs, test_scores["test_chosen"], test_scores["test_rejected"])
    write_jsonl(proxy, data.train)
    write_jsonl(test, data.test)
    if cache:
        assemble_cached_states(options, raw["gold_train"], data.train, cache)
    summary = {
        "gold_pairs": len(gold_pairs),
        "gold_accuracy_on_judge_labels_of_test_pairs": 1 - test_flipped / len(test_pairs),
        "gold_agreement_with_judge_on_proxy_pairs": 1 - proxy_flipped / len(proxy),
        "proxy_pairs": len(proxy),
        "test_pairs": len(test),
        "pool_prompts": len(pool_rows),
        "pool_candidates": len(pool_rows[0]["responses"]),
    }
    write_json(summary, os.path.join(directory, "gold.json"))
    write_jsonl(pool_rows, data.pool)  # last: its presence marks the data as prepared
    return data
