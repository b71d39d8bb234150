"""Reliability of vrm on bad input (issue 17): replay a bad-input corpus against the real commands and server.

    nice -n 15 python benchmarks/robustness.py            # full run (~10 min on 2 cores), writes the JSON below
    nice -n 15 python benchmarks/robustness.py --quick    # a smaller corpus and shorter load phases (~3 min)

It builds a tiny random llama-like backbone (`tests/fixtures/tiny_models.py`), trains a vrm model on it with
`vrm train` (the control), and writes the corpus of `tests/fixtures/bad_inputs.py` into a temporary directory:
preference files (NaN / Infinity margins and ratings, broken CSV, truncated or fake .gz, non-UTF-8, JSON nested
100k deep, lone surrogates, dict subsets, ...), `vrm score` rows (numbers, bools, dicts, lists where text must be,
messages without content, empty message lists, ...), Best-of-N pools with NaN gold scores, corrupted copies of
the model (truncated or garbage `model.safetensors`, NaN weights, `reward_scale` NaN / 1e-45, `reward_mean` inf),
a `vrm score` into an output made from another input, a resume after a half-written checkpoint, bad flags.

Each case runs `python -m vrm ...` as a subprocess and is classified:

* `clear_error`: exit code != 0, exactly one stderr line `vrm <command>: error: ...`, no traceback
  (`names_field`: that line matches the case's expected file:line:field pattern);
* `traceback`: a Python traceback on stderr (target 0);
* `unclear_error`: exit code != 0 without a single one-line error;
* `silent`: exit 0 on an input that must be refused, a NaN / infinite number in an output, a model saved by a
  refused run, an output changed by a refused run (target 0);
* `stall`: no exit within `--case_timeout` seconds (target 0);
* `accepted` / `false_refusal`: the controls (good inputs) must exit 0 with finite outputs.

Then `vrm serve` runs as a real uvicorn subprocess on 127.0.0.1 (default limits) and gets: every bad request of
the corpus once (pad-only and whitespace queries, surrogates, 50 MB bodies with and without Content-Length,
wrong types, malformed / non-UTF-8 / 100k-deep JSON, too many items, characters or tokens, ...: each must get a
4xx naming the field, never a 5xx or a 200); `--clients` concurrent clients sending a mixed good / bad load for
`--load_seconds` (target: 0 responses >= 500, every good answer 200 with finite numbers); and the latency of
1-item `/score` requests while maximal legal requests (`max_items_per_request` items filling
`max_request_tokens`) run back to back (target: p99 <= 2 s). Results: `benchmarks/results/robustness.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

import bad_inputs  # noqa: E402
from serve_throughput import stop_server, wait_until_healthy  # noqa: E402  (this script's folder)
from tiny_models import save_llama_backbone  # noqa: E402

ERROR_LINE = re.compile(r"^vrm(?: [\w-]+)?: error: ")
TRACEBACK = "Traceback (most recent call last)"
TRAIN_FLAGS = {
    "max_steps": 4,
    "per_device_train_batch_size": 3,
    "learning_rate": 1e-3,
    "max_length": 1024,
    "logging_steps": 2,
    "save_strategy": "no",
    "disable_tqdm": "true",
    "num_objectives": 2,
    "feature_dim": 4,
    "report_to": "none",
}
EVAL_CASES = {  # preference files also replayed against `vrm eval`: what is correct besides a clear error
    "margin-infinity": ((("accepted",)), ""),  # eval does not read margins
    # eval skips an unusable row and names it ("N unusable row(s) skipped: FILE:LINE (reason)")
    "surrogate-rejected": (("skipped",), r"x\.jsonl:2 \('rejected' is not valid Unicode"),
    "chosen-number": (("skipped",), r"x\.jsonl:2 \('chosen'"),
    "message-without-content": (("skipped",), r"x\.jsonl:2 \('prompt"),
    "gz-not-gzip": ((), ""),
    "json-nested-100k": ((), ""),
    "csv-bad-quote": ((), ""),
}
TRAIN_DUPLICATES = {  # same code path as another train case: in-process only (tests/test_robustness.py)
    "margin-neg-infinity",
    "json-not-utf8",
}
QUICK = {  # the --quick corpus: a few of each kind
    "train": {
        "margin-nan",
        "csv-extra-field",
        "gz-truncated",
        "jsonl-nested-100k",
        "surrogate-chosen",
        "subset-dict",
    },
    "eval": {"surrogate-rejected"},
    "score": {"response-number", "message-content-5", "prompt-empty-message-list"},
    "model": {"safetensors-half", "config-reward-scale-nan"},
    "bon": {"bon-gold-nan"},
    "flags": {"train-max-length-0"},
    "server": {
        "query-pad-only",
        "query-whitespace",
        "query-surrogate",
        "score-response-number",
        "malformed-json",
        "json-nested-100k",
        "body-50mb",
        "tokens-over-max-request-tokens",
    },
}


# ----- running commands ---------------------------------------------------------------------------------------
@dataclass
class Step:
    argv: list[str]
    refuse: bool  # must exit != 0 with one clear line (else: must exit 0)


@dataclass
class Case:
    """One bad input (or a control): steps run in order, the last one is judged; `check` looks at what it left."""

    name: str
    group: str
    steps: list[Step]
    message: str = ""
    refuse: bool = True
    also_ok: tuple[str, ...] = ()  # besides a clear error: "skipped" (exit 0 naming the row), "accepted"
    skip_message: str = ""  # what the warning of a skipped row must match
    prepare: Callable[[], None] | None = field(default=None, repr=False)
    check: Callable[[subprocess.CompletedProcess], str | None] | None = field(default=None, repr=False)
    outputs: list[str] = field(default_factory=list)  # files that must not hold NaN / infinite numbers


def vrm(*args: str) -> list[str]:
    return [sys.executable, "-m", "vrm", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def non_finite_in(path: str) -> str | None:
    """Where `path` (a model directory or file, a json / jsonl file) holds a NaN or infinite number."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.exists(path):
        return None
    if path.endswith(".safetensors"):
        import torch
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except Exception:
            return None  # unreadable, not NaN (the corruption cases make these on purpose)
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"{path}: tensor {name}"
        return None

    def bad(value: Any) -> bool:
        if isinstance(value, float):
            return not math.isfinite(value)
        if isinstance(value, dict):
            return any(bad(v) for v in value.values())
        if isinstance(value, list):
            return any(bad(v) for v in value)
        return False

    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    documents = text.splitlines() if path.endswith(".jsonl") else [text]
    for number, document in enumerate(documents, 1):
        if not document.strip():
            continue
        try:
            value = json.loads(document)
        except ValueError:
            continue
        if bad(value):
            return f"{path}:{number}"
    return None


def run_case(case: Case, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        return _run_case(case, timeout, started)
    except Exception as err:  # the benchmark's own failure: reported, never mistaken for vrm's
        return {
            "case": case.name,
            "group": case.group,
            "expected": expected_of(case),
            "outcome": "harness_error",
            "detail": f"{type(err).__name__}: {err}",
            "seconds": round(time.perf_counter() - started, 2),
        }


def _run_case(case: Case, timeout: float, started: float) -> dict[str, Any]:
    if case.prepare is not None:
        case.prepare()
    result: dict[str, Any] = {"case": case.name, "group": case.group, "expected": expected_of(case)}
    process = None
    for index, step in enumerate(case.steps):
        try:
            process = subprocess.run(
                step.argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                env=subprocess_env(),
            )
        except subprocess.TimeoutExpired:
            result.update(outcome="stall", detail=f"step {index + 1}: no exit within {timeout:g} s")
            break
        last = index == len(case.steps) - 1
        if not last and (process.returncode != 0) != step.refuse:  # a setup step went wrong
            result.update(
                outcome="setup_failed",
                returncode=process.returncode,
                detail=tail(process.stderr, process.stdout),
            )
            break
    else:
        result.update(judge(case, process))
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def expected_of(case: Case) -> str:
    if not case.refuse:
        return "accept"
    return "_or_".join(["refuse", *case.also_ok])


def tail(stderr: str, stdout: str = "") -> str:
    lines = [line for line in (stderr or stdout).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def judge(case: Case, process: subprocess.CompletedProcess) -> dict[str, Any]:
    stderr = process.stderr or ""
    errors = [line for line in stderr.splitlines() if ERROR_LINE.match(line)]
    out: dict[str, Any] = {"returncode": process.returncode}
    problems = [p for p in (non_finite_in(path) for path in case.outputs) if p]
    if problems:
        out.update(outcome="silent", detail=f"NaN or infinite number in {problems[0]}")
        return out
    if case.check is not None:
        problem = case.check(process)
        if problem:
            out.update(outcome="silent", detail=problem)
            return out
    if TRACEBACK in stderr:
        trace = [line for line in stderr.splitlines() if line.strip()]
        out.update(outcome="traceback", detail=trace[-1][:300] if trace else "")
        return out
    if process.returncode == 0:
        printed = [line for line in (process.stdout + "\n" + stderr).splitlines() if "skipped" in line]
        named = [line for line in printed if case.skip_message and re.search(case.skip_message, line)]
        if not case.refuse:
            out.update(outcome="accepted", detail=tail(process.stdout))
        elif "skipped" in case.also_ok and named:
            out.update(outcome="skipped", detail=named[0][:400], names_field=True)
        elif "accepted" in case.also_ok:
            out.update(outcome="accepted", detail=tail(process.stdout))
        else:
            out.update(
                outcome="silent", detail="exit 0 on an input that must be refused: " + tail(process.stdout)
            )
        return out
    if not case.refuse:
        out.update(outcome="false_refusal", detail=tail(stderr, process.stdout))
        return out
    if len(errors) == 1:
        out.update(
            outcome="clear_error",
            detail=errors[0][:400],
            names_field=bool(re.search(case.message, errors[0])) if case.message else None,
        )
    else:
        out.update(outcome="unclear_error", detail=tail(stderr, process.stdout))
    return out


# ----- the CLI corpus -----------------------------------------------------------------------------------------
def train_argv(backbone: str, data: str, output: str, **overrides: Any) -> list[str]:
    flags = {
        "model_name_or_path": backbone,
        "dataset_name": data,
        "output_dir": output,
        **TRAIN_FLAGS,
        **overrides,
    }
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def eval_metrics_finite(report: str) -> Callable[[subprocess.CompletedProcess], str | None]:
    """The report's accuracy, margin and NLL are finite (its undefined metrics, e.g. an AUROC without
    errors, are NaN by design)."""

    def check(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0 or not os.path.exists(report):
            return None
        with open(report) as handle:
            datasets = json.load(handle).get("datasets", {})
        for name, result in datasets.items():
            overall = result.get("overall", {})
            for key in ("accuracy", "mean_margin", "nll"):
                value = overall.get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    return f"{report}: {name} overall {key} = {value}"
        return None

    return check


def no_model_saved(directory: str) -> Callable[[subprocess.CompletedProcess], str | None]:
    def check(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0 and os.path.exists(os.path.join(directory, "model.safetensors")):
            return f"a refused run saved a model in {directory}"
        return None

    return check


def no_rows_written(
    path: str, before: bytes | None = None
) -> Callable[[subprocess.CompletedProcess], str | None]:
    def check(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode == 0:
            return None
        now = open(path, "rb").read() if os.path.exists(path) else None
        if before is None and now:
            return f"a refused run wrote {len(now.splitlines())} rows to {path}"
        if before is not None and now != before:
            return f"a refused run changed {path}"
        return None

    return check


def cli_cases(work: str, backbone: str, model: str, quick: bool) -> list[Case]:
    corpus = os.path.join(work, "corpus")
    runs = os.path.join(work, "runs")
    os.makedirs(runs, exist_ok=True)
    pick = (lambda group, name: name in QUICK[group]) if quick else (lambda group, name: True)
    good_pairs = bad_inputs.good_pairs_file().write(corpus)
    good_rows = bad_inputs.good_score_file().write(corpus)
    cases: list[Case] = []

    for item in bad_inputs.preference_files():
        if not pick("train", item.case) or item.case in TRAIN_DUPLICATES:
            continue
        output = os.path.join(runs, f"train-{item.case}")
        argv = vrm("train", *train_argv(backbone, item.write(corpus), output), *item.args)
        cases.append(
            Case(
                f"train:{item.case}",
                "train",
                [Step(argv, True)],
                item.message,
                also_ok=("accepted",) if item.also_accepted else (),
                check=no_model_saved(output),
                outputs=[output],
            )
        )
    for item in bad_inputs.preference_files():
        if item.case not in EVAL_CASES or not pick("eval", item.case):
            continue
        report = os.path.join(runs, f"eval-{item.case}.json")
        argv = vrm(
            "eval", "--model", model, "--dataset", item.write(corpus), "--output", report, "--no_progress"
        )
        cases.append(
            Case(
                f"eval:{item.case}",
                "eval",
                [Step(argv, True)],
                item.message,
                also_ok=EVAL_CASES[item.case][0],
                skip_message=EVAL_CASES[item.case][1],
                check=eval_metrics_finite(report),
            )
        )
    for item in bad_inputs.score_files():
        if not pick("score", item.case):
            continue
        output = os.path.join(runs, f"score-{item.case}.jsonl")
        argv = vrm(
            "score", "--model", model, "--input", item.write(corpus), "--output", output, "--no_progress"
        )
        cases.append(
            Case(
                f"score:{item.case}", "score", [Step(argv, True)], item.message, check=no_rows_written(output)
            )
        )
    for corruption in bad_inputs.model_corruptions():
        if not pick("model", corruption.case):
            continue
        broken = os.path.join(runs, f"model-{corruption.case}")

        def prepare(broken: str = broken, corrupt: Callable[[str], None] = corruption.corrupt) -> None:
            shutil.copytree(model, broken)
            corrupt(broken)

        output = os.path.join(runs, f"score-{corruption.case}.jsonl")
        argv = vrm("score", "--model", broken, "--input", good_rows, "--output", output, "--no_progress")
        cases.append(
            Case(
                f"score-model:{corruption.case}",
                "model",
                [Step(argv, True)],
                corruption.message,
                prepare=prepare,
                check=no_rows_written(output),
            )
        )
        if not quick and corruption.case in {"safetensors-half", "weights-nan", "config-reward-mean-inf"}:
            broken_eval = broken + "-eval"

            def prepare_eval(
                broken: str = broken_eval, corrupt: Callable[[str], None] = corruption.corrupt
            ) -> None:
                shutil.copytree(model, broken)
                corrupt(broken)

            argv = vrm("eval", "--model", broken_eval, "--dataset", good_pairs, "--no_progress")
            cases.append(
                Case(
                    f"eval-model:{corruption.case}",
                    "model",
                    [Step(argv, True)],
                    corruption.message,
                    prepare=prepare_eval,
                )
            )
    for item in bad_inputs.pool_files():
        if not pick("bon", item.case):
            continue
        output = os.path.join(runs, f"bon-{item.case}.json")
        argv = vrm("bench", "bon", "--pool", item.write(corpus), "--proxy", model, "--gold_column", "gold")
        argv += ["--output", output, "--no_progress"]

        def check(process: subprocess.CompletedProcess, output: str = output) -> str | None:
            return f"a refused run wrote {output}" if process.returncode and os.path.exists(output) else None

        cases.append(Case(f"bon:{item.case}", "bon", [Step(argv, True)], item.message, check=check))

    # bad flags
    flag_cases = [
        ("train-max-length-0", "train", {"max_length": 0}, r"max_length", False),
        ("train-num-objectives-0", "train", {"num_objectives": 0}, r"num_objectives", False),
        ("train-learning-rate-nan", "train", {"learning_rate": "nan"}, r"(?i)learning rate|nan", True),
        (
            "train-learning-rate-1e30",
            "train",
            {"learning_rate": 1e30},
            r"(?i)loss became nan|non-finite",
            True,
        ),
        # the head's options (`HeadConfig`): every field is a flag
        ("train-concentration-min-0", "train", {"concentration_min": 0}, r"concentration_min", False),
        (
            "train-concentration-min-above-max",
            "train",
            {"concentration_min": 10, "concentration_max": 1},
            r"concentration_min must be below concentration_max",
            False,
        ),
        (
            "train-feature-logvar-max-nan",
            "train",
            {"feature_logvar_max": "nan"},
            r"feature_logvar_max",
            False,
        ),
        ("train-num-eval-samples-0", "train", {"num_eval_samples": 0}, r"num_eval_samples", False),
        ("train-pooling-unknown", "train", {"pooling": "max"}, r"pooling", False),
        # a Python-API option given on the command line, where the model is built from flags: refused, not ignored
        (
            "train-model-init-kwargs",
            "train",
            {"model_init_kwargs": '{"head_type": "bt"}'},
            r"model_init_kwargs",
            False,
        ),
    ]
    for name, _, overrides, message, either in flag_cases:
        if not pick("flags", name):
            continue
        output = os.path.join(runs, name)
        argv = vrm("train", *train_argv(backbone, good_pairs, output, **overrides))
        cases.append(
            Case(
                name,
                "flags",
                [Step(argv, True)],
                message,
                also_ok=("accepted",) if either else (),
                check=no_model_saved(output),
                outputs=[output],
            )
        )
    if not quick:
        pool = bad_inputs.BadFile(
            "good-pool", "pool.jsonl", b'{"prompt": "q", "responses": ["a", "b"], "gold": [0.1, 0.2]}\n', ""
        )
        score_to = ["--output", os.path.join(runs, "flags-score.jsonl"), "--no_progress"]
        for name, argv in [
            ("score-batch-size-0", vrm("score", "--model", model, "--input", good_rows, "--batch_size", "0")),
            ("score-chunk-size-0", vrm("score", "--model", model, "--input", good_rows, "--chunk_size", "0")),
            (
                "eval-batch-size-0",
                vrm("eval", "--model", model, "--dataset", good_pairs, "--batch_size", "0"),
            ),
            (
                "bon-batch-size-0",
                vrm(
                    "bench",
                    "bon",
                    "--pool",
                    pool.write(corpus),
                    "--proxy",
                    model,
                    "--gold_column",
                    "gold",
                    "--n",
                    "1",
                    "2",
                    "--batch_size",
                    "0",
                ),
            ),
        ]:
            report = ["--output", os.path.join(runs, name + ".json"), "--no_progress"]
            argv += score_to if name.startswith("score") else report
            cases.append(Case(name, "flags", [Step(argv, True)], r"batch_size|chunk_size must be >= 1"))

    # the sub-command parser: unknown commands and a missing benchmark are usage errors
    for name, argv, message in [
        ("cli-unknown-command", vrm("frobnicate"), r"invalid choice: 'frobnicate'"),
        (
            "cli-bench-without-benchmark",
            vrm("bench"),
            r"required: <benchmark>|the following arguments are required",
        ),
        (
            "cli-eval-unknown-flag",
            vrm("eval", "--model", model, "--dataset", good_pairs, "--bogus"),
            r"--bogus",
        ),
    ]:
        cases.append(Case(name, "flags", [Step(argv, True)], message))

    # score into an output made from another input: must refuse and leave that output as it was
    existing = os.path.join(runs, "score-existing.jsonl")
    other = bad_inputs.BadFile(
        "other-input", "rows.jsonl", open(good_rows, "rb").read().replace(b'"id": 0', b'"id": 100'), ""
    ).write(corpus)
    score_argv = vrm("score", "--model", model, "--output", existing, "--no_progress", "--input")
    snapshot: dict[str, bytes] = {}

    def score_first_input() -> None:
        subprocess.run([*score_argv, good_rows], capture_output=True, timeout=600, env=subprocess_env())
        snapshot["first"] = open(existing, "rb").read() if os.path.exists(existing) else b""

    def unchanged(process: subprocess.CompletedProcess) -> str | None:
        if not snapshot.get("first"):
            return "setup: scoring the first input wrote nothing"
        now = open(existing, "rb").read()
        return (
            None
            if process.returncode == 0 or now == snapshot["first"]
            else "the refused run changed the output"
        )

    cases.append(
        Case(
            "score:existing-output-from-another-input",
            "score",
            [Step([*score_argv, other], True)],
            r"scored from another input",
            prepare=score_first_input,
            check=unchanged,
        )
    )

    # resume after a half-written checkpoint: must skip it and resume from the newest complete one
    resumed = os.path.join(runs, "resume")

    def prepare_resume() -> None:
        shutil.copytree(os.path.join(work, "model-run"), resumed)
        os.remove(os.path.join(resumed, "checkpoint-4", "trainer_state.json"))  # killed while writing it
        os.remove(os.path.join(resumed, "model.safetensors"))

    def resumed_from_2(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0:
            return None
        state_path = os.path.join(resumed, "checkpoint-6", "trainer_state.json")
        if "skipping" not in process.stdout:
            return "the half-written checkpoint-4 was not reported as skipped"
        if not os.path.exists(state_path):
            return "no checkpoint-6 after resuming"
        with open(state_path) as handle:
            state = json.load(handle)
        steps = [entry["step"] for entry in state.get("log_history", []) if "loss" in entry]
        return (
            None if steps == [2, 4, 6] else f"logged steps {steps}, expected [2, 4, 6] (resumed from step 2)"
        )

    argv = train_argv(
        backbone,
        good_pairs,
        resumed,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        resume_from_checkpoint="true",
    )
    cases.append(
        Case(
            "train:resume-after-half-written-checkpoint",
            "train",
            [Step(vrm("train", *argv), False)],
            refuse=False,
            prepare=prepare_resume,
            check=resumed_from_2,
            outputs=[resumed],
        )
    )

    # controls: good inputs must be accepted with finite outputs
    control = os.path.join(runs, "control-score.jsonl")
    cases.append(
        Case(
            "control:score",
            "control",
            [
                Step(
                    vrm(
                        "score", "--model", model, "--input", good_rows, "--output", control, "--no_progress"
                    ),
                    False,
                )
            ],
            refuse=False,
            outputs=[control],
        )
    )
    report = os.path.join(runs, "control-eval.json")
    cases.append(
        Case(
            "control:eval",
            "control",
            [
                Step(
                    vrm(
                        "eval", "--model", model, "--dataset", good_pairs, "--output", report, "--no_progress"
                    ),
                    False,
                )
            ],
            refuse=False,
            check=eval_metrics_finite(report),
        )
    )
    return cases


# ----- the server ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, threads: int, log_path: str) -> subprocess.Popen:
    command = vrm("serve", "--model", model, "--port", str(port), "--log_level", "warning")
    if threads:
        command += ["--torch_threads", str(threads)]
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
    return wait_until_healthy(process, port, lambda: f": see {log_path}")


def raw_request(
    port: int, request: bad_inputs.BadRequest, timeout: float = 120
) -> tuple[int | None, str, float]:
    """Send `request` over a plain socket (exact bytes, any header); stop sending once the server answered.

    Returns (status or None, response body, seconds)."""
    import select

    started = time.perf_counter()
    headers = {"Host": f"127.0.0.1:{port}", "Connection": "close", **request.headers}
    body = request.body
    if body is not None:
        if request.stream:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers.setdefault("Content-Length", str(len(body)))
    head = f"{request.method} {request.path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def answered() -> bool:
            return bool(select.select([sock], [], [], 0)[0])

        try:
            sock.sendall(head.encode() + b"\r\n")
            if body:
                piece = 1 << 20
                for start in range(0, len(body), piece):
                    if answered():  # an early answer (413): a well-behaved client stops sending
                        break
                    part = body[start : start + piece]
                    sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n" if request.stream else part)
                else:
                    if request.stream:
                        sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection while the body was being sent: read its answer
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except OSError:
            pass
    seconds = time.perf_counter() - started
    match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
    if not match:
        return None, received[:200].decode("utf-8", "replace"), seconds
    text = received.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
    return int(match.group(1)), text, seconds


def detail_of(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(value, dict) and "detail" in value:
        return str(value["detail"])[:400]
    return text[:300]


def finite_answer(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return non_finite_value(value) is False


def non_finite_value(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite_value(v) for v in value.values())
    if isinstance(value, list):
        return any(non_finite_value(v) for v in value)
    return False


def judge_response(
    request: bad_inputs.BadRequest, status: int | None, text: str, alive: bool
) -> dict[str, Any]:
    refuse = 200 not in request.expect
    out: dict[str, Any] = {"case": f"serve:{request.case}", "group": "serve", "status": status}
    out["expected"] = "refuse" if refuse else "accept"
    if not alive:
        out.update(outcome="crash", detail="the server process exited")
    elif status is None:
        out.update(outcome="stall", detail=f"no HTTP answer ({text[:100]!r})")
    elif status >= 500:
        out.update(outcome="server_5xx", detail=detail_of(text))
    elif not refuse:
        ok = status == 200 and finite_answer(text)
        out.update(
            outcome="accepted" if ok else "silent" if status == 200 else "false_refusal", detail=text[:200]
        )
    elif status < 300:
        out.update(outcome="silent", detail="200 on a request that must be refused: " + text[:200])
    else:
        detail = detail_of(text)
        out.update(
            outcome="clear_error",
            detail=detail,
            names_field=bool(re.search(request.message, detail)) if request.message else None,
            expected_status=status in request.expect,
        )
    return out


def maximal_request(model: str, items: int = 256, tokens: int = 262_144) -> tuple[bytes, int]:
    """A /score body as large as the default limits allow: `items` pairs of together <= `tokens` tokens."""
    from transformers import PreTrainedTokenizerFast

    from vrm.data.tokenization import PreferenceTokenizer
    from vrm.models.config import VRMConfig

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model)
    template = PreferenceTokenizer.from_model_config(tokenizer, VRMConfig.from_pretrained(model))
    words = "Add an index and measure again, then check the query plan once more.".split()
    prompt = "How do I fix a slow query? Please explain step by step."

    def count(n: int) -> int:
        response = " ".join(words[i % len(words)] for i in range(n))
        prompt_ids, response_ids = template.encode_parts(prompt, response)
        return len(prompt_ids) + len(response_ids)

    low, high = 1, 4096
    while low < high:  # the most words whose pair fits in tokens // items tokens
        middle = (low + high + 1) // 2
        low, high = (middle, high) if count(middle) <= tokens // items else (low, middle - 1)
    response = " ".join(words[i % len(words)] for i in range(low))
    body = json.dumps({"prompts": [prompt] * items, "responses": [response] * items}).encode()
    return body, count(low) * items


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def load_phase(
    base: str, mix: list[bad_inputs.BadRequest], clients: int, seconds: float
) -> dict[str, Any]:
    """`clients` concurrent clients cycle through `mix` (good and bad requests) for `seconds`."""
    statuses: Counter[str] = Counter()
    silent, errors, sent = [], Counter(), 0
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal sent
            position = offset
            while time.perf_counter() < deadline:
                request = mix[position % len(mix)]
                position += 1
                sent += 1
                started = time.perf_counter()
                try:
                    answer = await client.request(
                        request.method, request.path, content=request.body, headers=request.headers
                    )
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[str(answer.status_code)] += 1
                good = 200 in request.expect
                if good and (answer.status_code != 200 or not finite_answer(answer.text)):
                    silent.append(f"{request.case}: {answer.status_code} {answer.text[:100]}")
                elif not good and answer.status_code < 300:
                    silent.append(f"{request.case}: 200 on a request that must be refused")

        await asyncio.gather(*[worker(i * 7) for i in range(clients)])
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": sent,
        "good_requests_in_mix": sum(200 in r.expect for r in mix),
        "bad_requests_in_mix": sum(200 not in r.expect for r in mix),
        "statuses": dict(sorted(statuses.items())),
        "responses_5xx": sum(n for code, n in statuses.items() if code.startswith("5")),
        "transport_errors": dict(errors),
        "wrong_answers": len(silent),
        "wrong_answer_examples": silent[:5],
        "p50_s": round(percentile(latencies, 0.5) or 0, 4),
        "p99_s": round(percentile(latencies, 0.99) or 0, 4),
    }


async def latency_phase(base: str, big: bytes, probes: int, max_seconds: float) -> dict[str, Any]:
    """p50 / p99 of 1-item /score requests while maximal legal requests run back to back."""
    small = {"prompts": ["Tell me a joke."], "responses": ["Why did the chicken cross the road?"]}
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        idle = []
        for _ in range(10):
            started = time.perf_counter()
            await client.post("/score", json=small)
            idle.append(time.perf_counter() - started)
        state = {"in_flight": False, "stop": False}
        big_runs: list[tuple[int, float]] = []

        async def big_loop() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=300) as big_client:
                while not state["stop"]:
                    state["in_flight"] = True
                    started = time.perf_counter()
                    answer = await big_client.post("/score", content=big, headers=headers)
                    big_runs.append((answer.status_code, time.perf_counter() - started))
                    state["in_flight"] = False

        task = asyncio.create_task(big_loop())
        await asyncio.sleep(1.0)  # the first large request is being tokenized / scored
        latencies, statuses = [], Counter()
        deadline = time.perf_counter() + max_seconds
        while len(latencies) < probes and time.perf_counter() < deadline:
            if not state["in_flight"]:
                await asyncio.sleep(0.01)
                continue
            started = time.perf_counter()
            answer = await client.post("/score", json=small)
            elapsed = time.perf_counter() - started
            statuses[str(answer.status_code)] += 1
            if state["in_flight"]:
                latencies.append(elapsed)
        state["stop"] = True
        await task
    return {
        "probes_during_large_requests": len(latencies),
        "probe_statuses": dict(statuses),
        "p50_s": round(percentile(latencies, 0.5) or 0, 4),
        "p99_s": round(percentile(latencies, 0.99) or 0, 4),
        "max_s": round(max(latencies, default=0), 4),
        "idle_p50_s": round(percentile(idle, 0.5) or 0, 4),
        "large_requests": len(big_runs),
        "large_request_statuses": dict(Counter(str(code) for code, _ in big_runs)),
        "large_request_seconds": [round(s, 2) for _, s in big_runs],
    }


def server_phase(work: str, model: str, args: argparse.Namespace) -> tuple[list[dict], dict, dict]:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model)
    user = [{"role": "user", "content": "How do I fix a slow query?"}]
    templated = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": "Add an index."}], tokenize=False
    )
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    bad = bad_inputs.server_requests(tokenizer.pad_token, templated, prompt, big=True)
    good = bad_inputs.good_requests(templated, prompt)
    if args.quick:
        bad = [r for r in bad if r.case in QUICK["server"]]
    big, big_tokens = maximal_request(model)
    port = free_port()
    process = start_server(model, port, args.torch_threads, os.path.join(work, "server.log"))
    results = []
    try:
        for request in [*good, *bad]:
            status, text, seconds = raw_request(port, request)
            result = judge_response(request, status, text, process.poll() is None)
            result["seconds"] = round(seconds, 3)
            results.append(result)
            print(f"[robustness] {result['case']:<50} {status}  {result['outcome']}", flush=True)
        mix_bad = [
            r
            for r in bad_inputs.server_requests(tokenizer.pad_token, templated, prompt, big=False)
            if not r.stream
            and "Content-Length" not in r.headers
            and r.case != "tokens-over-max-request-tokens"
        ]
        mix = [request for pair in zip(good * len(mix_bad), mix_bad, strict=False) for request in pair]
        print(
            f"[robustness] load: {args.clients} clients, {args.load_seconds:g} s, mixed good / bad",
            flush=True,
        )
        load = asyncio.run(load_phase(f"http://127.0.0.1:{port}", mix, args.clients, args.load_seconds))
        print(f"[robustness] load: {load['requests']} requests, statuses {load['statuses']}", flush=True)
        print(f"[robustness] latency: 1-item requests during {big_tokens}-token requests", flush=True)
        latency = asyncio.run(
            latency_phase(f"http://127.0.0.1:{port}", big, args.probes, args.latency_seconds)
        )
        latency.update(large_request_items=256, large_request_tokens=big_tokens, large_request_bytes=len(big))
        load["server_alive_after"] = process.poll() is None
        load["stats"] = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
    finally:
        stop_server(process)
    return results, load, latency


# ----- the report ---------------------------------------------------------------------------------------------
def summarize(cases: list[dict], load: dict, latency: dict) -> dict[str, Any]:
    bad = [c for c in cases if c["expected"] != "accept"]
    controls = [c for c in cases if c["expected"] == "accept"]
    outcomes = Counter(c["outcome"] for c in bad)
    return {
        "inputs_tried": len(bad),
        "inputs_tried_cli": sum(c["group"] != "serve" for c in bad),
        "inputs_tried_server": sum(c["group"] == "serve" for c in bad),
        "clear_errors": outcomes["clear_error"],
        "clear_errors_naming_the_field": sum(
            c.get("names_field") is True for c in bad if c["outcome"] == "clear_error"
        ),
        "rows_skipped_with_a_warning_naming_them": outcomes["skipped"],  # vrm eval's rule for unusable rows
        "accepted_with_finite_outputs": outcomes["accepted"],  # only where ignoring the input is correct
        "tracebacks": outcomes["traceback"],
        "unclear_errors": outcomes["unclear_error"],
        "silent_misbehaviour": outcomes["silent"] + sum(c["outcome"] == "silent" for c in controls),
        "server_5xx_single_requests": outcomes["server_5xx"],
        "stalls_or_crashes": outcomes["stall"] + outcomes["crash"] + outcomes["setup_failed"],
        "harness_errors": outcomes["harness_error"] + sum(c["outcome"] == "harness_error" for c in controls),
        "controls": len(controls),
        "controls_accepted": sum(c["outcome"] == "accepted" for c in controls),
        "server_5xx_under_load": load.get("responses_5xx"),
        "load_requests": load.get("requests"),
        "load_wrong_answers": load.get("wrong_answers"),
        "p99_latency_1_item_during_maximal_request_s": latency.get("p99_s"),
    }


def targets(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {
        "tracebacks": (summary["tracebacks"], 0),
        "silent_misbehaviour": (summary["silent_misbehaviour"], 0),
        "unclear_errors": (summary["unclear_errors"], 0),
        "stalls_or_crashes": (summary["stalls_or_crashes"], 0),
        "server_5xx": (summary["server_5xx_single_requests"] + (summary["server_5xx_under_load"] or 0), 0),
        "load_wrong_answers": (summary["load_wrong_answers"] or 0, 0),
        "controls_rejected": (summary["controls"] - summary["controls_accepted"], 0),
        "p99_latency_s": (summary["p99_latency_1_item_during_maximal_request_s"], 2.0),
    }
    return {
        name: {"value": value, "target": f"<= {goal}", "met": value is not None and value <= goal}
        for name, (value, goal) in rows.items()
    }


def write_json_atomic(data: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
        if not args.skip_server:
            served, load, latency = server_phase(work, model, args)
            results += served
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results, load, latency)
    report = {
        "command": "python benchmarks/robustness.py" + (" --quick" if args.quick else ""),
        "what": "bad inputs replayed against vrm train / eval / score / bench bon (subprocesses) and vrm serve "
        "(uvicorn on 127.0.0.1, default limits); corpus: tests/fixtures/bad_inputs.py",
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
        "cases": results,
    }
    report = json.loads(json.dumps(report).replace(work, "$WORK"))  # no temporary paths in the results
    write_json_atomic(report, args.output)
    print("\n" + "\n".join(f"{key:<48} {value}" for key, value in summary.items()))
    failed = [c for c in results if c["outcome"] not in ("clear_error", "accepted", "skipped")]
    for case in failed:
        print(f"[robustness] NOT OK {case['case']}: {case['outcome']}: {case.get('detail', '')}")
    if report["targets"]:
        missed = [name for name, row in report["targets"].items() if not row["met"]]
        print(f"[robustness] targets missed: {', '.join(missed) or 'none'}")
    print(f"[robustness] {report['seconds']:.0f} s; report written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
