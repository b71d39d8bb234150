"""The study's data recipe: split ../shared/data into train / validation / test files (seeded).

RMB: held-out categories make the shifted splits, the rest is split by prompt 80 / 10 / 10; AlpacaEval: split
by instruction 60 / 10 / 30, the judged candidates of the test instructions form the Best-of-N pool (gold = the
judge's P(candidate beats the GPT-4 reference)); UltraFeedback: 900 train / 100 validation pairs, its dev sample
tests; RM-Bench whole. Pairs with an empty response are counted and left out (`vrm.data` rejects them).
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from vrm.data.files import read_records, write_json, write_jsonl

from .config import (
    ALL_LABELLED,
    HELD_OUT_HARMLESSNESS,
    HELD_OUT_HELPFULNESS,
    PAIR_SETS,
    REFERENCE_GENERATOR,
    RUNS,
    WORK,
    StudyConfig,
    data_file,
)

Row = dict[str, Any]


def read_rows(path: str) -> list[Row]:
    return [row for _, row in read_records(path)]


def split_keys(keys: list[str], fractions: tuple[float, ...], rng: random.Random) -> list[set[str]]:
    """Partition distinct keys (prompts, instructions) at random into parts of the given fractions."""
    keys = sorted(set(keys))
    rng.shuffle(keys)
    parts, start = [], 0
    for index, fraction in enumerate(fractions):
        end = len(keys) if index == len(fractions) - 1 else start + round(fraction * len(keys))
        parts.append(set(keys[start:end]))
        start = end
    return parts


def response_text(response: Any) -> str:
    return response if isinstance(response, str) else "".join(m.get("content", "") for m in response)


def drop_empty(rows: list[Row], source: str, dropped: dict[str, int]) -> list[Row]:
    """Pairs with an empty chosen or rejected response are unusable: counted in `dropped`, left out."""
    kept = [r for r in rows if response_text(r["chosen"]).strip() and response_text(r["rejected"]).strip()]
    dropped[source] = len(rows) - len(kept)
    return kept


def sample(rows: list[Row], count: int, rng: random.Random) -> list[Row]:
    return rng.sample(rows, count) if len(rows) > count else list(rows)


def label_as_helpfulness(rows: list[Row]) -> list[Row]:
    """AlpacaEval and UltraFeedback pairs are judged on helpfulness: that label; RMB pairs keep theirs."""
    return [{**row, "objective": row.get("objective") or "helpfulness"} for row in rows]


def rmb_splits(data_dir: str, cfg: StudyConfig, rng: random.Random, files: dict, dropped: dict) -> tuple:
    """RMB's test files into `files`; returns its (train, validation) pairs."""
    rmb = drop_empty(read_rows(os.path.join(data_dir, "train", "rmb_pairwise.jsonl.gz")), "rmb", dropped)
    for row in rmb:
        parts = row["subset"].split("/")
        row["category"] = parts[2] if len(parts) > 2 else parts[-1]
        row["subset"] = f"rmb/{row['objective']}/{row['category']}"
    held = HELD_OUT_HELPFULNESS + HELD_OUT_HARMLESSNESS
    held_out = [r for r in rmb if r["category"] in held]
    in_dist = [r for r in rmb if r["category"] not in held]
    train_p, val_p, _ = split_keys([json.dumps(r["prompt"]) for r in in_dist], (0.8, 0.1, 0.1), rng)
    by_part = defaultdict(list)
    for row in in_dist:
        key = json.dumps(row["prompt"])
        by_part["train" if key in train_p else "val" if key in val_p else "test"].append(row)
    train = sample(by_part["train"], cfg.rmb_train, rng)
    validation = sample(by_part["val"], cfg.val_per_source, rng)
    files["rmb_id"] = sample(by_part["test"], cfg.test_per_split, rng)
    for name, objective in (("rmb_shift_help", "helpfulness"), ("rmb_shift_harm", "harmlessness")):
        files[name] = sample([r for r in held_out if r["objective"] == objective], cfg.test_per_split, rng)
    # helpfulness -> harmlessness: tested on all of RMB's harmlessness test pairs (seen and held-out categories)
    files["rmb_harm_all"] = [
        r for r in files["rmb_id"] + files["rmb_shift_harm"] if r["objective"] == "harmlessness"
    ]
    return train, validation


def alpaca_splits(data_dir: str, cfg: StudyConfig, rng: random.Random, files: dict, dropped: dict) -> tuple:
    """AlpacaEval's test file and Best-of-N pool into `files`; returns its (train, validation) pairs."""
    path = os.path.join(data_dir, "train", "alpacaeval_judged.jsonl.gz")
    alpaca = drop_empty(read_rows(path), "alpaca", dropped)
    for row in alpaca:
        row["judge_confidence"] = float(row["judge_confidence"])
        row["subset"] = f"alpaca/{row['subset']}"
    train_i, val_i, test_i = split_keys([r["prompt"] for r in alpaca], (0.6, 0.1, 0.3), rng)
    train = sample([r for r in alpaca if r["prompt"] in train_i], cfg.alpaca_train, rng)
    validation = sample([r for r in alpaca if r["prompt"] in val_i], cfg.val_per_source, rng)
    files["alpaca_test"] = sample([r for r in alpaca if r["prompt"] in test_i], cfg.test_per_split, rng)
    pool: dict[str, Row] = {}
    for row in alpaca:  # gold = the judge's P(candidate beats the reference); the reference is left out
        if row["prompt"] not in test_i:
            continue
        chosen_is_reference = row["chosen_generator"] == REFERENCE_GENERATOR
        candidate = row["rejected"] if chosen_is_reference else row["chosen"]
        gold = 1.0 - row["judge_confidence"] if chosen_is_reference else row["judge_confidence"]
        entry = pool.setdefault(row["prompt"], {"prompt": row["prompt"], "responses": [], "gold": []})
        if candidate not in entry["responses"]:
            entry["responses"].append(candidate)
            entry["gold"].append(gold)
    pool_rows = sorted(pool.values(), key=lambda r: r["prompt"])
    rng.shuffle(pool_rows)
    files["bon_pool"] = pool_rows[: cfg.bon_prompts]
    return train, validation


def split_files(data_dir: str, cfg: StudyConfig) -> tuple[dict[str, list[Row]], dict[str, int]]:
    """Every split file of the study (by name) and the pairs dropped per source. One seeded random stream, in
    this order (RMB, AlpacaEval, UltraFeedback): the same config gives the same files."""
    rng = random.Random(cfg.seed)
    files: dict[str, list[Row]] = {}
    dropped: dict[str, int] = {}
    rmb_train, rmb_val = rmb_splits(data_dir, cfg, rng, files, dropped)
    alpaca_train, alpaca_val = alpaca_splits(data_dir, cfg, rng, files, dropped)
    uf = drop_empty(
        read_rows(os.path.join(data_dir, "train", "ultrafeedback_sample.jsonl.gz")), "uf", dropped
    )
    rng.shuffle(uf)
    for row in uf:
        row["subset"] = "ultrafeedback"
    uf_train, uf_val = uf[: cfg.uf_train], uf[cfg.uf_train :]
    uf_eval = read_rows(os.path.join(data_dir, "dev", "ultrafeedback_sample_eval.jsonl.gz"))
    files["uf_eval"] = [{**r, "subset": "ultrafeedback"} for r in uf_eval]
    files["rm_bench"] = read_rows(os.path.join(data_dir, "dev", "rm_bench.jsonl.gz"))
    files["train"] = rmb_train + alpaca_train + uf_train
    rng.shuffle(files["train"])
    files["train_help_only"] = [r for r in files["train"] if r.get("objective") != "harmlessness"]
    files["val"] = rmb_val + alpaca_val + uf_val
    # the fine-tuned setting: a sample of the same training pairs, smaller test splits and pool
    files["ft_train"] = files["train"][: cfg.finetune_train]
    for name in PAIR_SETS:
        files[f"ft_{name}"] = sample(files[name], cfg.finetune_test, random.Random(cfg.seed + 1))
    files["ft_rm_bench"] = sample(files["rm_bench"], cfg.finetune_rm_bench, random.Random(cfg.seed + 1))
    files["ft_bon_pool"] = files["bon_pool"][: cfg.finetune_bon_prompts]
    for name, source in ALL_LABELLED.items():
        files[name] = label_as_helpfulness(files[source])
    return files, dropped


def prepare_data(data_dir: str, cfg: StudyConfig, work: str = WORK) -> dict[str, Any]:
    """Write the study's split files under `work`/data (unless written for this config already) and return
    their manifest (counts, definitions)."""
    manifest_path = os.path.join(work, "data", "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        complete = all(os.path.exists(data_file(name, work)) for name in manifest.get("counts", {}))
        if (
            manifest.get("config") == asdict(cfg)
            and complete
            and set(ALL_LABELLED) <= set(manifest["counts"])
        ):
            return manifest
    files, dropped = split_files(data_dir, cfg)
    for name, rows in files.items():
        write_jsonl(rows, data_file(name, work))
    manifest = {
        "config": asdict(cfg),
        "counts": {name: len(rows) for name, rows in files.items()},
        "dropped_empty_response": dropped,
        "candidates_bon_pool": sum(len(r["responses"]) for r in files["bon_pool"]),
        "held_out_categories": {"helpfulness": HELD_OUT_HELPFULNESS, "harmlessness": HELD_OUT_HARMLESSNESS},
        "sources": {
            "rmb": "train/rmb_pairwise.jsonl.gz (in-distribution categories split by prompt 80/10/10)",
            "alpaca": "train/alpacaeval_judged.jsonl.gz (split by instruction 60/10/30)",
            "ultrafeedback": "train/ultrafeedback_sample.jsonl.gz (900 train / 100 val); "
            "dev/ultrafeedback_sample_eval.jsonl.gz (test)",
            "rm_bench": "dev/rm_bench.jsonl.gz",
        },
    }
    write_json(manifest, manifest_path)
    return manifest


def record_manifest(manifest: dict[str, Any], root: str = RUNS) -> None:
    """The committed runs under `root` were made on the data of `root`/data.json: write it on the first run,
    refuse to add runs made on other data (give the study other sizes, and its runs another root)."""
    path = os.path.join(root, "data.json")
    if not os.path.exists(path):
        write_json(manifest, path)
        return
    recorded = recorded_manifest(root)
    if json.loads(json.dumps(manifest)) != recorded:
        raise ValueError(f"{path}: the committed runs were made on other data than these split files")


def recorded_manifest(root: str = RUNS) -> dict[str, Any]:
    """The manifest of the data the committed runs were made on (what the report stage describes)."""
    path = os.path.join(root, "data.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no data manifest; run the prepare stage first")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
