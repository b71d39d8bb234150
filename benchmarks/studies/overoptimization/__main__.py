"""`python -m benchmarks.studies.overoptimization CONFIG.yaml [--report_only]`: see the package's docstring."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.studies.overoptimization import __doc__ as STUDY_DOC
from benchmarks.studies.overoptimization.data import data_paths, prepare
from benchmarks.studies.overoptimization.report import build_report, plot_report, pool_record, report_markdown
from benchmarks.studies.overoptimization.runner import (
    StudyConfig,
    load_study,
    read_pool_rows,
    read_runs,
    run_study,
)
from benchmarks.studies.report import command_line, machine, run_main, write_report
from vrm.data.files import write_json

MODULE = "benchmarks.studies.overoptimization"
POOL_RECORD = "pool.json"


def record_pool(config: StudyConfig, work_dir: str, results_dir: str) -> dict[str, Any]:
    """The pool's gold scores and lengths (and how the gold was made), kept in `<results>/pool.json`."""
    data = prepare(config, work_dir) if config.data["kind"] == "synthetic" else data_paths(config, work_dir)
    if not os.path.exists(data.pool):
        raise FileNotFoundError(
            f"{results_dir}/{POOL_RECORD} is missing and {data.pool} is not prepared: run the study without "
            "--report_only to make its data"
        )
    record = pool_record(read_pool_rows(data.pool))
    gold_summary = os.path.join(os.path.dirname(data.pool), "gold.json")  # AlpacaEval: how the gold was made
    if os.path.exists(gold_summary):
        with open(gold_summary, encoding="utf-8") as handle:
            record["gold_summary"] = json.load(handle)
    write_json(record, os.path.join(results_dir, POOL_RECORD), indent=None)
    return record


def read_pool_record(config: StudyConfig, work_dir: str, results_dir: str) -> dict[str, Any]:
    path = os.path.join(results_dir, POOL_RECORD)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    return record_pool(config, work_dir, results_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=STUDY_DOC.split("\n\n")[0])
    parser.add_argument("config", help="study YAML")
    parser.add_argument(
        "--results_dir", default=None, help="default: benchmarks/results/overoptimization/<name>"
    )
    parser.add_argument("--work_dir", default=os.path.join("benchmarks", ".cache", "overopt"),
                        help="data, models (deleted once scored) and the embedding cache")  # fmt: skip
    parser.add_argument("--proxies", nargs="+", default=None, help="run only these proxies (default: all)")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="rebuild the report from runs/ and pool.json of the results",
    )
    args = parser.parse_args(argv)
    config = load_study(args.config)
    results_dir = args.results_dir or os.path.join("benchmarks", "results", "overoptimization", config.name)
    if args.report_only:
        pool = read_pool_record(config, args.work_dir, results_dir)
    else:
        data = prepare(config, args.work_dir)
        run_study(config, data, results_dir, args.work_dir, only=args.proxies)
        pool = record_pool(config, args.work_dir, results_dir)
    meta = {
        "command": command_line(MODULE, argv),
        "config": args.config,
        "backbone": config.backbone,
        "data": config.data,
        "notes": config.notes,
        "gpu_command": config.gpu_command,
        "machine": machine(),
    }
    if "gold_summary" in pool:
        meta["gold_summary"] = pool["gold_summary"]
    report = build_report(config, read_runs(config, results_dir), pool, meta)
    markdown = report_markdown(report)
    write_report(report, markdown, results_dir)
    plot_report(report, os.path.join(results_dir, "gold_vs_kl.png"))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, MODULE))
