"""The study's report: study.json, study.md and study_bon.png, rebuilt from the committed run files alone.

A setting and backbone (`study_runs/<setting>/<backbone>/`) is reported from its runs: `setting_entry`
groups them (sweep, main table, shift, ablations), summarizes each model over seeds and tests the
comparisons. The frozen settings ran before their per-run metrics were committed: their run files record the
spec and key of every run (and a sweep run's validation accuracy and NLL), and `aggregate.json` beside them
holds the tables their report was made of; such a setting is read from there (`recorded_entry`) until its
runs are made again.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from benchmarks.studies.report import fmt, machine, markdown_table, write_markdown
from vrm.data.files import atomic_output, write_json

from .aggregate import members, significance, summarize
from .config import RESULTS, RUNS, SETTING_ORDER, pair_set_names
from .runner import RunResult, load_results, runs_directory
from .specs import COMPARISONS

AGGREGATE = "aggregate.json"
REPORT_COMMAND = "python -m benchmarks.studies.realdata --stages report"
SET_NAMES = {
    "val": "validation",
    "rmb_id": "RMB (seen categories)",
    "rmb_shift_help": "RMB helpfulness, held-out categories",
    "rmb_shift_harm": "RMB harmlessness, held-out categories",
    "alpaca_test": "AlpacaEval (held-out instructions)",
    "uf_eval": "UltraFeedback eval",
    "rm_bench": "RM-Bench avg (hard)",
    "bon_pool": "BoN gold @ n=16",
    "rmb_harm_all": "RMB harmlessness (all test pairs)",
}
SIGNAL_SECTIONS = [
    ("calibration: expected calibration error (lower is better)", "ece"),
    ("Bradley-Terry NLL of the plug-in rewards (lower is better)", "nll"),
    (
        "errors flagged by the plug-in margin |r+ − r−| (AUROC; every model has it: the baseline)",
        "margin_error_auroc",
    ),
    ("errors flagged by the posterior std of the pair alone (AUROC)", "std_error_auroc"),
    (
        "errors flagged by the posterior flip probability Φ(−|Δr| / σ) (AUROC; margin and std)",
        "flip_error_auroc",
    ),
    ("selective accuracy: keeping the 50% of pairs with the lowest posterior std", "selective_accuracy_50"),
    ("length: accuracy where the chosen response is the shorter one", "accuracy_chosen_shorter"),
    ("length: accuracy where the chosen response is the longer one", "accuracy_chosen_longer"),
    (
        "length: Spearman correlation of reward and response length (0: length-blind)",
        "spearman_reward_length",
    ),
]
DIAGNOSTIC_COLUMNS = [
    ("KL(q(z) ‖ p(z)), nats", "kl_z"),
    ("active z dims (KL > 0.01)", "active_feature_dims"),
    ("KL(q(w) ‖ Dir(α0)), nats", "kl_w"),
    ("Σα (prior: K·α0)", "concentration_total"),
    ("E[w_harm]: harm − help prompts", "harmlessness_weight_gap"),
]


# ----- entries ---------------------------------------------------------------------------------------------------
def sweep_points(results: list[RunResult], validation: str) -> list[dict[str, Any]]:
    points = []
    for r in results:
        if r.spec.group == "sweep":
            accuracy, nll = r.validation_score(validation)
            points.append({"spec": r.spec_dict, "val_accuracy": accuracy, "val_nll": nll})
    return points


def setting_entry(results: list[RunResult]) -> dict[str, Any]:
    """The report of one setting and backbone, from its finished runs."""
    prefix = "ft_" if results[0].spec.train.startswith("ft_") else ""
    pair_sets = pair_set_names(prefix)
    by_group = {group: members(results, group) for group in ("main", "shift", "ablation")}
    main = summarize(by_group["main"], pair_sets)
    entry = {
        "runs": len(results),
        "train_seconds_total": sum(r.train_seconds for r in results),
        "eval_seconds_total": sum(r.eval_seconds for r in results),
        "main": main,
        "significance_vrm_minus_bt": significance(by_group["main"], pair_sets),
        "significance_more": {
            f"{a} − {b}": significance(by_group["main"], pair_sets, a, b)
            for a, b in COMPARISONS
            if a in main and b in main
        },
        "sweep": sweep_points(results, pair_sets[0]),
    }
    if by_group["shift"]:
        entry["help_to_harm"] = summarize(by_group["shift"], ["rmb_harm_all"])
        entry["significance_help_to_harm"] = significance(by_group["shift"], ["rmb_harm_all"])
    if by_group["ablation"]:
        chosen = {
            f"{k} (chosen setting)" if k == "vrm" else k: v for k, v in main.items() if k.startswith("vrm")
        }
        entry["ablations"] = {**chosen, **summarize(by_group["ablation"], pair_sets)}
    return entry


def recorded_entry(directory: str, results: list[RunResult]) -> dict[str, Any]:
    """A setting whose per-run metrics were not kept: its recorded tables, the sweep from its run files."""
    with open(os.path.join(directory, AGGREGATE), encoding="utf-8") as handle:
        recorded = json.load(handle)
    prefix = "ft_" if results and results[0].spec.train.startswith("ft_") else ""
    entry: dict[str, Any] = {}
    for key, value in recorded["entry"].items():  # the sweep where `setting_entry` puts it
        entry[key] = value
        if key == "significance_more" or (
            key == "significance_vrm_minus_bt" and "significance_more" not in recorded["entry"]
        ):
            entry["sweep"] = sweep_points(results, f"{prefix}val")
    return entry


def report_entries(root: str = RUNS) -> dict[str, dict[str, Any]]:
    """Every setting and backbone with runs under `root`, in the study's order."""
    entries = {}
    for setting in SETTING_ORDER:
        directory = os.path.join(root, setting)
        for backbone in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            results = load_results(setting, backbone, root)
            if results and all(r.complete for r in results):
                entries[f"{setting}/{backbone}"] = setting_entry(results)
            elif os.path.exists(os.path.join(runs_directory(setting, backbone, root), AGGREGATE)):
                entries[f"{setting}/{backbone}"] = recorded_entry(
                    runs_directory(setting, backbone, root), results
                )
            elif results:
                missing = [r.key for r in results if not r.complete]
                raise ValueError(
                    f"{setting}/{backbone}: runs without metrics or scores: {', '.join(missing[:5])}"
                )
    return entries


# ----- markdown --------------------------------------------------------------------------------------------------
def set_title(name: str) -> str:
    return SET_NAMES.get(name.removeprefix("ft_"), name)


def metric_table(
    table: dict[str, Any],
    sets: list[str],
    metric: str,
    extra: tuple[str, ...] = (),
    longer_wins: bool = False,
) -> list[str]:
    """One row per model: `metric` (mean ± std) on each set, then RM-Bench average (hard) and BoN @ 16."""
    rows = []
    for name, row in table.items():
        cells = [fmt(row[s][metric]) if s in row and metric in row[s] else "—" for s in sets]
        for key in extra:
            if key.endswith("rm_bench") and key in row:
                cells.append(f"{fmt(row[key]['average'])} ({fmt(row[key]['hard'])})")
            elif key.endswith("bon_pool") and key in row:
                cells.append(fmt(next(p for p in row[key] if p["n"] == 16)["gold"]))
            else:
                cells.append("—")
        rows.append([name, *cells])
    if longer_wins and table:
        first = next(iter(table.values()))
        cells = [f"{first[s]['longer_wins_accuracy']:.3f}" if s in first else "—" for s in sets]
        rows.append(["*the longer response wins*", *cells, *["—"] * len(extra)])
    return markdown_table(["model", *(set_title(s) for s in (*sets, *extra))], rows)


def diagnostics_table(table: dict[str, Any]) -> list[str]:
    rows = []
    for name, row in table.items():
        found = row.get("diagnostics", {})
        cells = [fmt(found[key], 2) if found.get(key, {}).get("n") else "—" for _, key in DIAGNOSTIC_COLUMNS]
        if any(cell != "—" for cell in cells):
            rows.append([name, *cells])
    return markdown_table(["model", *(name for name, _ in DIAGNOSTIC_COLUMNS)], rows)


def significance_table(found: dict[str, dict[str, Any]]) -> list[str]:
    rows = [[s, f"{v['difference']:+.3f}", f"{v['p_value']:.3f}", str(v["pairs"])] for s, v in found.items()]
    return markdown_table(["set", "difference", "p", "pairs"], rows)


def eval_prefix(entry: dict[str, Any]) -> str:
    """`ft_` where the entry was evaluated on the fine-tuned setting's test splits, else none."""
    return "ft_" if any(key.startswith("ft_") for row in entry["main"].values() for key in row) else ""


def setting_markdown(title: str, entry: dict[str, Any]) -> list[str]:
    """The markdown section of one setting and backbone, from its report entry alone."""
    prefix = eval_prefix(entry)
    pair_sets, main = pair_set_names(prefix), entry["main"]
    boards = (f"{prefix}rm_bench", f"{prefix}bon_pool")
    md = [f"## {title}: accuracy (mean ± std over seeds)", ""]
    md += metric_table(main, pair_sets, "accuracy", boards, longer_wins=True)
    minutes = (entry["train_seconds_total"] + entry["eval_seconds_total"]) / 60
    md += ["", f"{entry['runs']} runs, {minutes:.0f} min of training and evaluation (embedding included)."]
    settings = [
        f"{name}: learning rate {row['spec']['learning_rate']:g}, beta {row['spec']['beta']:g}, "
        f"seeds {' '.join(str(seed) for seed in row['seeds'])}"
        for name, row in main.items()
    ]
    md.append("Settings: " + "; ".join(settings) + ".")
    if entry.get("kept_from_previous_report"):
        before = entry["previous_report"]
        minutes = (before["train_seconds_total"] + before["eval_seconds_total"]) / 60
        md.append(
            f"Kept from an earlier report of {before['runs']} runs ({minutes:.0f} min), whose runs are no longer "
            f"on disk: {', '.join(entry['kept_from_previous_report'])}."
        )
    md += ["", "### vrm − bt (accuracy; p: paired sign-flip permutation test over test pairs)", ""]
    md += significance_table(entry["significance_vrm_minus_bt"])
    for comparison, found in entry.get("significance_more", {}).items():
        md += ["", f"### {comparison} (accuracy; the same test)", ""] + significance_table(found)
    for heading, metric in SIGNAL_SECTIONS:
        md += ["", f"### {title}: {heading}", ""] + metric_table(main, pair_sets, metric)
    if "help_to_harm" in entry:
        md += ["", f"### {title}: helpfulness → harmlessness (no harmlessness pair in training)", ""]
        md += metric_table(entry["help_to_harm"], ["rmb_harm_all"], "accuracy", longer_wins=True)
    if entry["sweep"]:
        md += ["", f"### {title}: the sweep (seed 0; chosen on validation accuracy)", ""]
        points = sorted(entry["sweep"], key=lambda p: (p["spec"]["head"], p["spec"]["learning_rate"]))
        rows = [
            [
                p["spec"]["head"],
                f"{p['spec']['learning_rate']:g}",
                f"{p['spec']['beta']:g}",
                f"{p['val_accuracy']:.3f}",
                f"{p['val_nll']:.3f}",
            ]
            for p in points
        ]
        md += markdown_table(["head", "learning rate", "beta", "validation accuracy", "validation NLL"], rows)
    ablations = entry.get("ablations", {})  # holds the chosen vrm and vrm (no labels) already
    if ablations:
        md += ["", f"### {title}: ablations of vrm", ""]
        md += metric_table({k: v for k, v in ablations.items() if v}, pair_sets, "accuracy", boards)
    diagnosed = {**{k: v for k, v in main.items() if not (ablations and k.startswith("vrm"))}, **ablations}
    md += ["", f"### {title}: is the posterior used? (RMB seen categories; see docs/results.md)", ""]
    return md + diagnostics_table(diagnosed) + [""]


# ----- figure and files ------------------------------------------------------------------------------------------
def plot_bon(panels: dict[str, tuple[dict[str, Any], str]], path: str) -> None:
    """Gold reward of the Best-of-n pick against KL_BoN, one panel per setting, one line per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(panels), 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, (table, pool)) in zip(axes, panels.items(), strict=True):
        for name, row in table.items():
            if pool not in row:
                continue
            kl = [p["kl_bon"] for p in row[pool]]
            mean = np.array([p["gold"]["mean"] for p in row[pool]])
            std = np.array([p["gold"]["std"] for p in row[pool]])
            ax.plot(kl, mean, marker="o", label=name)
            ax.fill_between(kl, mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("KL_BoN = log n - (n-1)/n")
        ax.set_ylabel("gold: judge P(candidate beats GPT-4 reference)")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    figure.tight_layout()
    with atomic_output(path) as staging:
        figure.savefig(staging, dpi=120, format="png")


def write_report(
    manifest: dict[str, Any], command: str, started: float, root: str = RUNS, results: str = RESULTS
) -> list[str]:
    """study.json, study.md and study_bon.png under `results`, from the runs under `root`; returns study.md."""
    import time

    entries = report_entries(root)
    md = [f"# Study results (generated by `{REPORT_COMMAND}`)", ""]
    panels = {}
    for key, entry in entries.items():
        title = key.replace("/", " ")
        md += setting_markdown(title, entry)
        panels[title] = (entry["main"], f"{eval_prefix(entry)}bon_pool")
    out = {
        "command": command,
        "machine": machine(),
        "data": manifest,
        "settings": entries,
        "wall_seconds_of_this_invocation": time.perf_counter() - started,
    }
    write_json(out, os.path.join(results, "study.json"))
    write_markdown("\n".join(md) + "\n", os.path.join(results, "study.md"))
    if panels:
        plot_bon(panels, os.path.join(results, "study_bon.png"))
    return md
