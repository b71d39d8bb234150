"""`python -m benchmarks.robustness [--quick]`: the robustness benchmark's command line (see `__init__.py`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bad_inputs  # tests/fixtures (on sys.path: benchmarks/robustness/__init__.py)
from tiny_models import save_llama_backbone

import benchmarks.robustness as package
from benchmarks.robustness.cli_cases import cli_cases, train_argv
from benchmarks.robustness.harness import ROOT, Case, Step, run_case, vrm
from benchmarks.robustness.report import print_summary, summarize, targets, write_json_atomic
from benchmarks.robustness.server import server_phase

COMMAND = "python -m benchmarks.robustness"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=package.__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="A few cases of each kind, shorter load phases.")
    parser.add_argument("--jobs", type=int, default=2, help="CLI cases run at once.")
    parser.add_argument(
        "--case_timeout", type=float, default=300.0, help="Seconds before a case counts as stalled."
    )
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients of the load phase.")
    parser.add_argument("--load_seconds", type=float, default=None, help="Load phase length (20; --quick 5).")
    parser.add_argument("--probes", type=int, default=None, help="1-item requests timed (100; --quick 20).")
    parser.add_argument(
        "--latency_seconds", type=float, default=None, help="Cap of the latency phase (90; 30)."
    )
    parser.add_argument(
        "--torch_threads", type=int, default=1, help="The server's torch threads (0: torch's)."
    )
    parser.add_argument("--skip_server", action="store_true", help="Only the CLI cases.")
    parser.add_argument(
        "--keep", default=None, help="Work in this directory and keep it (default: a temp dir)."
    )
    parser.add_argument(
        "--output", default=str(ROOT / "benchmarks" / "results" / "robustness.json"), help="JSON report."
    )
    args = parser.parse_args(argv)
    args.load_seconds = args.load_seconds or (5.0 if args.quick else 20.0)
    args.probes = args.probes or (20 if args.quick else 100)
    args.latency_seconds = args.latency_seconds or (30.0 if args.quick else 90.0)
    started = time.perf_counter()
    work = args.keep or tempfile.mkdtemp(prefix="vrm-robustness-")
    os.makedirs(work, exist_ok=True)
    try:
        backbone = save_llama_backbone(os.path.join(work, "backbone"), hidden_size=64, max_positions=1024)
        model = os.path.join(work, "model-run")
        good_pairs = bad_inputs.good_pairs_file().write(os.path.join(work, "corpus"))
        control_train = Case(
            "control:train",
            "control",
            [
                Step(
                    vrm(
                        "train", *train_argv(backbone, good_pairs, model, save_strategy="steps", save_steps=2)
                    ),
                    False,
                )
            ],
            refuse=False,
            outputs=[model],
        )
        print("[robustness] training the control model", flush=True)
        results = [run_case(control_train, args.case_timeout)]
        if results[0]["outcome"] != "accepted":
            raise RuntimeError(f"training the control model failed: {results[0]}")
        cases = cli_cases(work, backbone, model, args.quick)
        print(f"[robustness] {len(cases)} CLI cases, {args.jobs} at a time", flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for result in pool.map(lambda case: run_case(case, args.case_timeout), cases):
                results.append(result)
                print(
                    f"[robustness] {result['case']:<50} {result['outcome']:<14} {result['seconds']:6.1f} s",
                    flush=True,
                )
        load: dict[str, Any] = {}
        latency: dict[str, Any] = {}
        slow: dict[str, Any] = {}
        if not args.skip_server:
            served, load, latency, slow = server_phase(work, model, args)
            results += served
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results, load, latency, slow)
    report = {
        "command": COMMAND + (" --quick" if args.quick else ""),
        "what": "bad inputs replayed against vrm train / eval / score / bench bon / serve / recipe and python -m "
        "benchmarks.studies.experiment (subprocesses; hostile runs: kill -9, a full disk, concurrent writers) and "
        "vrm serve (uvicorn on 127.0.0.1, default limits; slow clients); corpus: tests/fixtures/bad_inputs.py",
        "model": "tiny random llama-like backbone (hidden 64, 2 layers, max_length 1024), trained 4 steps with "
        "vrm train (tests/fixtures/tiny_models.py)",
        "settings": {
            "quick": args.quick,
            "jobs": args.jobs,
            "clients": args.clients,
            "load_seconds": args.load_seconds,
            "probes": args.probes,
            "server_torch_threads": args.torch_threads,
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "targets": targets(summary) if load else None,
        "load": load,
        "latency": latency,
        "slow_clients": slow,
        "cases": results,
    }
    report = json.loads(json.dumps(report).replace(work, "$WORK"))  # no temporary paths in the results
    write_json_atomic(report, args.output)
    print_summary(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
