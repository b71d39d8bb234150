"""`python -m benchmarks.studies.learning_curves CONFIG.yaml [--settings ...] [--stages run report]`: see the
package's docstring."""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.studies.report import command_line, run_main

from . import __doc__ as STUDY_DOC
from .plan import SettingPlan, StudyPlan, load_plan
from .report import write_report
from .runner import RUNS, execute_finetune, execute_frozen

MODULE = "benchmarks.studies.learning_curves"
STAGES = ("run", "report")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_CONFIG = os.path.join(
    REPOSITORY, "benchmarks", "experiments", "learning_curves", "frozen_and_finetune.yaml"
)


def run_setting(plan: StudyPlan, setting: SettingPlan, seeds: list[int], root: str = RUNS) -> None:
    """Every run of a setting, seeds in the outer loop (an interrupted study has every head and size at the
    first seeds), sizes from small to large."""
    from . import states as setting_states

    data_dir = os.path.join(REPOSITORY, plan.data_dir)
    if setting.kind == "realdata_finetune":
        files = setting_states.realdata_finetune_files(data_dir)
        for seed in seeds:
            for size in setting.sizes:
                for head in setting.heads:
                    execute_finetune(setting, head, size, seed, files, root)
        return
    if setting.kind == "realdata":
        found = setting_states.realdata_states(data_dir)
    else:
        found = setting_states.synthetic_states(setting.train_pairs, setting.test_pairs)
    for seed in seeds:
        for size in setting.sizes:
            for head in setting.heads:
                execute_frozen(setting, head, size, seed, found, root)


def main(argv: list[str] | None = None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=STUDY_DOC.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="the study's YAML (%(default)s)")
    parser.add_argument(
        "--settings", nargs="+", default=None, help="names of the settings to run (default: all)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="override each setting's seeds")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    args = parser.parse_args(argv)
    plan = load_plan(args.config)
    known = [s.name for s in plan.settings]
    wanted = args.settings or known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"{args.config}: no settings named {unknown} (known: {known})")
    started = time.perf_counter()
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    if "run" in args.stages:
        for setting in plan.settings:
            if setting.name in wanted:
                run_setting(plan, setting, args.seeds or setting.seeds)
    if "report" in args.stages:
        for line in write_report(plan, args.config, command_line(MODULE, argv), started):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, MODULE))
