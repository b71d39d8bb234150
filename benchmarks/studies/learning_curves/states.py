"""The data of each setting and its frozen-backbone states, computed once and shared by every run.

A learning curve trains many heads on nested subsets of one training set. `vrm.data.state_cache.EmbeddingCache`
keys its entries by the exact list of sequences, so a subset passed as a data file would be a new entry (and a
new backbone pass) for every size and seed; instead the states of the whole training set and of each evaluation
set are computed (or read back) once here, and a run indexes into them (`SettingStates.train_subset`). The
tokenization is `VRMTrainer`'s own (`PreferenceTokenizer.from_arguments`, `tokenize_pairs`), so a run trains on
exactly the states `vrm train --freeze_backbone --embedding_cache` would give it.

Settings:

* `realdata` — the real-data study's split files (`benchmarks.studies.realdata.data.prepare_data`, the sizes of
  `benchmarks/experiments/realdata.yaml`): its whole 5,400-pair training file (RMB seen categories + AlpacaEval +
  UltraFeedback; `plan.REALDATA_POOL`), its 200-pair sample of the validation split (same sources, split apart
  from training by prompt) as the in-distribution held-out set, and its 200-pair sample of RMB's held-out
  harmlessness categories as the shift (`REALDATA_FILES`);
* `realdata_finetune` — the study's 1,000-pair fine-tuning sample (the first 1,000 pairs of the training file;
  `plan.FINETUNE_POOL`) and the same evaluation files;
* `synthetic` — the synthetic world of `vrm.data.synthetic` (true objective weights known; a training row keeps
  its per-objective ratings with probability `rated_fraction`), its iid and length-shifted test splits, and a
  second iid test sample (`test_iid_check`) on which the held-out error bounds are checked.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from vrm.data.state_cache import CachedPairDataset, EmbeddingCache
from vrm.data.tokenization import TokenizedPair

from .plan import FINETUNE_POOL, REALDATA_POOL

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
WORK = os.path.join(HERE, ".cache", "learning_curves")  # synthetic files (never committed)
REALDATA_WORK = os.path.join(HERE, ".cache", "study")  # the real-data study's split files and states

# which evaluation sets each setting scores; the first is the in-distribution held-out set of the gap
REALDATA_SETS = ("val", "rmb_shift_harm")
# the real-data files each name reads: the frozen setting trains on the study's whole training file; held-out
# and shift are the study's 200-pair samples of its validation split and of RMB's held-out harmlessness categories
REALDATA_FILES = {"train": REALDATA_POOL, "val": "ft_val", "rmb_shift_harm": "ft_rmb_shift_harm"}
# the frozen setting also scores AlpacaEval's held-out prompts (the study's 200-pair sample) and RM-Bench:
# `RM_BENCH_PROMPTS` prompts of the study's RM-Bench file, sampled in proportion to its domains (chat, code,
# safety-refuse, safety-response), each as its 9 pairs (chosen variant i against rejected variant j;
# `rm_bench_pairs_file`), so accuracy over them is RM-Bench's average and over the 3 pairs with i < j (the chosen
# answer plainer than the rejected one) its hard accuracy; tests average a prompt's 9 pairs first
REALDATA_EXTRA_FILES = {"alpaca_test": "ft_alpaca_test", "rm_bench": "rm_bench"}
RM_BENCH_PROMPTS = 200
RM_BENCH_PAIRS_PER_PROMPT = 9
FINETUNE_FILES = {**REALDATA_FILES, "train": "ft_train"}
SYNTHETIC_SETS = ("test_iid", "test_shifted", "test_iid_check")
REALDATA_OBJECTIVES = ["helpfulness", "harmlessness"]


@dataclass
class SettingStates:
    """A setting's tokenized pairs with their frozen states: the training set and each evaluation set."""

    train: CachedPairDataset
    eval_sets: dict[str, CachedPairDataset]
    attribute_names: list[str]
    objective_column: str | None
    backbone_dir: str  # the frozen backbone the states are of (each run builds its model on it)
    description: dict = field(default_factory=dict)
    # sets whose pairs come in consecutive groups of one prompt: the groups' sizes (and the pairs carry subsets)
    group_sizes: dict[str, list[int]] = field(default_factory=dict)

    def train_subset(self, indices: list[int], keep_labels: bool = True) -> CachedPairDataset:
        """The training pairs at `indices` (states indexed, no backbone pass); `keep_labels=False` strips the
        per-pair objective labels, ratings and attribute targets (a head that uses none of them)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        pairs = [self.train.pairs[i] for i in indices]
        if not keep_labels:
            pairs = [strip_labels(p) for p in pairs]
        return CachedPairDataset(
            pairs, self.train.prompt[index], self.train.chosen[index], self.train.rejected[index]
        )


def strip_labels(pair: TokenizedPair) -> TokenizedPair:
    return dataclasses.replace(pair, attribute_targets=None, objective_label=None, rating_differences=None)


def tokenize_and_embed(
    backbone_dir: str,
    files: dict[str, str],
    cache_dir: str,
    max_length: int,
    max_prompt_length: int,
    attribute_names: list[str],
    objective_column: str | None,
) -> dict[str, CachedPairDataset]:
    """Each file's pairs tokenized as `VRMTrainer` tokenizes them and their states from (or into) the cache."""
    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.training import ModelArguments, VRMTrainingArguments, build_model, load_tokenizer
    from vrm.training.pair_data import preference_examples, tokenize_pairs

    model_args = ModelArguments(model_name_or_path=backbone_dir, head_type="bt", freeze_backbone=True)
    args = VRMTrainingArguments(
        output_dir=os.path.join(cache_dir, "unused"),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        attribute_names=attribute_names,
        objective_column=objective_column,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
    )
    tokenizer = load_tokenizer(model_args)
    model = build_model(model_args)
    model.backbone.requires_grad_(False)
    model.eval()
    pref_tokenizer = PreferenceTokenizer.from_arguments(tokenizer, args, bool(model.config.is_causal))
    cache = EmbeddingCache(cache_dir, batch_size=32, progress=False)
    out: dict[str, CachedPairDataset] = {}
    for name, path in files.items():
        examples = preference_examples(path, name, args, split="train" if name == "train" else "test")
        pairs, _ = tokenize_pairs(pref_tokenizer, examples, name, args)
        out[name] = CachedPairDataset.build(model, pairs.pairs, cache, tokenizer.pad_token_id, name)
        print(f"[learning_curves] states of {name}: {len(out[name])} pairs", flush=True)
    return out


def pool_file(path: str, rows: int) -> str:
    """The first `rows` rows of a JSON-lines file, written once under `WORK` (the file is already shuffled)."""
    target = os.path.join(WORK, f"{os.path.basename(path).removesuffix('.jsonl')}-first{rows}.jsonl")
    if not os.path.exists(target):
        from vrm.data.files import atomic_output

        with open(path, encoding="utf-8") as handle:
            lines = [line for _, line in zip(range(rows), handle, strict=False)]
        os.makedirs(WORK, exist_ok=True)
        with atomic_output(target) as staging, open(staging, "w", encoding="utf-8") as out:
            out.writelines(lines)
    return target


def rm_bench_pairs_file(path: str, prompts: int, seed: int = 0) -> str:
    """RM-Bench rows (a prompt, 3 chosen and 3 rejected variants: concise, verbose, verbose with markdown) as
    preference pairs, written once under `WORK`: `prompts` rows sampled (seeded) in proportion to the rows'
    domains (`subset`: the file is sorted by domain, so its first rows would be one or two domains), largest
    remainders first, kept in file order; each row as its 9 pairs chosen[i] against rejected[j] in order i, j,
    with subset `hard` (i < j: the chosen answer is plainer than the rejected one), `normal` (i = j) or `easy`
    (i > j), so accuracies over them are RM-Bench's (`rm_bench_scores`). The file's name holds the source's
    digest, the count and the seed."""
    import hashlib
    import json
    import random

    from vrm.data.files import atomic_output

    with open(path, "rb") as handle:
        content = handle.read()
    digest = hashlib.sha256(content).hexdigest()[:12]
    target = os.path.join(WORK, f"rm_bench-{digest}-{prompts}prompts-seed{seed}-pairs.jsonl")
    if os.path.exists(target):
        return target
    rows = [json.loads(line) for line in content.decode("utf-8").splitlines() if line.strip()]
    domains: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        domains.setdefault(str(row.get("subset")), []).append(index)
    quotas = {name: prompts * len(found) / len(rows) for name, found in domains.items()}
    counts = {name: int(quota) for name, quota in quotas.items()}
    for name in sorted(quotas, key=lambda n: (counts[n] - quotas[n], n))[: prompts - sum(counts.values())]:
        counts[name] += 1
    rng = random.Random(seed)
    chosen_rows = sorted(i for name, found in domains.items() for i in rng.sample(found, counts[name]))
    os.makedirs(WORK, exist_ok=True)
    with atomic_output(target) as staging, open(staging, "w", encoding="utf-8") as out:
        for row in (rows[i] for i in chosen_rows):
            for i, chosen in enumerate(row["chosen"]):
                for j, rejected in enumerate(row["rejected"]):
                    subset = "hard" if i < j else "normal" if i == j else "easy"
                    pair = {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "subset": subset}
                    out.write(json.dumps(pair) + "\n")
    return target


def realdata_states(data_dir: str) -> SettingStates:
    """The real-data study's training set and evaluation sets (split files written once, states cached)."""
    from benchmarks.studies.backbones import backbone_path
    from benchmarks.studies.realdata.__main__ import DEFAULT_CONFIG, load_plan
    from benchmarks.studies.realdata.config import data_file
    from benchmarks.studies.realdata.data import prepare_data

    cfg = load_plan(DEFAULT_CONFIG).study_config()
    manifest = prepare_data(data_dir, cfg)
    sources = {**REALDATA_FILES, **REALDATA_EXTRA_FILES}
    files = {name: data_file(source) for name, source in sources.items()}
    files["rm_bench"] = rm_bench_pairs_file(files["rm_bench"], RM_BENCH_PROMPTS)
    found = tokenize_and_embed(
        backbone_path("minilm"),
        files,
        os.path.join(REALDATA_WORK, "embeddings"),
        cfg.max_length,
        max(cfg.max_prompt_length, cfg.max_length // 3),
        REALDATA_OBJECTIVES,
        "objective",
    )
    train = found.pop("train")
    expected = RM_BENCH_PROMPTS * RM_BENCH_PAIRS_PER_PROMPT
    if len(found["rm_bench"]) != expected:  # a dropped pair would shift every later prompt's group
        raise ValueError(
            f"{files['rm_bench']}: {len(found['rm_bench'])} pairs left after tokenization, not {expected}"
        )
    description = {
        "data": "the real-data study's split files (benchmarks/experiments/realdata.yaml sizes; "
        "benchmarks/results/study_runs/data.json)",
        "files": sources,
        "pool": f"every row of {REALDATA_POOL} (the study's whole training file)",
        "counts": {name: manifest["counts"][source] for name, source in sources.items()},
        "rm_bench": f"{RM_BENCH_PROMPTS} prompts of rm_bench sampled by domain, 9 pairs each (rm_bench_pairs_file)",
        "held_out_categories": manifest["held_out_categories"],
        "max_length": cfg.max_length,
    }
    groups = {"rm_bench": [RM_BENCH_PAIRS_PER_PROMPT] * RM_BENCH_PROMPTS}
    return SettingStates(
        train, found, REALDATA_OBJECTIVES, "objective", backbone_path("minilm"), description, groups
    )


def synthetic_files(train_pairs: int, test_pairs: int, seed: int = 0) -> dict[str, str]:
    """The synthetic world's files under `WORK` (written once per size): train, test_iid, test_shifted, and a
    second iid sample `test_iid_check` (another seed of the same generator)."""
    import json

    from vrm.data.synthetic import WorldConfig, generate_pairs, write_world

    config = WorldConfig(train_pairs=train_pairs, test_pairs=test_pairs, seed=seed)
    directory = os.path.join(WORK, f"synthetic-{train_pairs}-{test_pairs}-s{seed}")
    paths = {name: os.path.join(directory, f"{name}.jsonl") for name in ("train", *SYNTHETIC_SETS)}
    if not all(os.path.exists(p) for p in paths.values()):
        write_world(directory, config)
        rows = generate_pairs(test_pairs, config, config.length_bias, seed + 11)
        from vrm.data.files import atomic_output

        with (
            atomic_output(paths["test_iid_check"]) as staging,
            open(staging, "w", encoding="utf-8") as handle,
        ):
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    paths["truth"] = os.path.join(directory, "truth.json")
    return paths


def synthetic_states(train_pairs: int, test_pairs: int, max_length: int = 128) -> SettingStates:
    """The synthetic world's splits and their MiniLM states."""
    from benchmarks.studies.backbones import backbone_path
    from vrm.data.synthetic import OBJECTIVES

    paths = synthetic_files(train_pairs, test_pairs)
    files = {name: paths[name] for name in ("train", *SYNTHETIC_SETS)}
    found = tokenize_and_embed(
        backbone_path("minilm"),
        files,
        os.path.join(WORK, "embeddings"),
        max_length,
        max_length // 2,
        list(OBJECTIVES),
        None,
    )
    train = found.pop("train")
    description = {
        "data": f"vrm.data.synthetic world: WorldConfig(train_pairs={train_pairs}, test_pairs={test_pairs}, seed=0) "
        "defaults otherwise; test_iid_check = a second iid sample (generate_pairs seed 11)",
        "counts": {"train": len(train), **{k: len(v) for k, v in found.items()}},
        "max_length": max_length,
    }
    return SettingStates(train, found, list(OBJECTIVES), None, backbone_path("minilm"), description)


def realdata_finetune_files(data_dir: str) -> dict[str, str]:
    """The fine-tuned setting's files (`FINETUNE_FILES`, `FINETUNE_POOL`), as paths."""
    from benchmarks.studies.realdata.__main__ import DEFAULT_CONFIG, load_plan
    from benchmarks.studies.realdata.config import data_file
    from benchmarks.studies.realdata.data import prepare_data

    prepare_data(data_dir, load_plan(DEFAULT_CONFIG).study_config())
    files = {name: data_file(source) for name, source in FINETUNE_FILES.items()}
    return {**files, "train": pool_file(files["train"], FINETUNE_POOL)}
