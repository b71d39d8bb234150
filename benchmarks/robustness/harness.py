"""Running and judging the subprocess cases of the robustness benchmark.

A `Case` is one bad input (or a control): its `Step`s run in order as subprocesses and the last one is judged
(`judge`):

* `clear_error`: exit code != 0, exactly one stderr line `<prog>: error: ...` (`vrm <command>` or
  `python -m <module>`), no traceback (`names_field`: that line matches the case's expected pattern);
* `traceback`: a Python traceback on stderr (target 0);
* `unclear_error`: exit code != 0 without a single one-line error, or not the exit code the case asks for;
* `silent`: exit 0 on an input that must be refused, a NaN / infinite number in an output, a model saved by a
  refused run, an output changed by a refused run, what a case's `check` finds wrong (target 0);
* `stall`: no exit within the step's timeout (target 0);
* `accepted` / `false_refusal`: the controls (good inputs) must exit 0 with finite outputs;
* `setup_failed` / `harness_error`: a step before the last went wrong / the benchmark itself failed.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

ERROR_LINE = re.compile(r"^(?:vrm(?: [\w-]+){0,2}|python -m [\w.]+): error: ")
TRACEBACK = "Traceback (most recent call last)"
VRM_COMMANDS = {"train", "eval", "score", "serve", "bench", "recipe", "calibrate", "synth"}

Check = Callable[[subprocess.CompletedProcess], "str | None"]


@dataclass
class Step:
    argv: list[str]
    refuse: bool  # must exit != 0 with one clear line (else: must exit 0)
    timeout: float | None = (
        None  # seconds before the step counts as stalled (default: the run's case timeout)
    )
    # SIGKILL the step once this returns true (polled every 50 ms): the step then counts as done; a step that
    # exits by itself first is a setup failure
    kill_when: Callable[[], bool] | None = field(default=None, repr=False)
    # run `argv` this many times at once; the judged process is the first that exited != 0 (else the first)
    concurrent: int = 1
    # with `concurrent`: start the later copies once this returns true (polled, at most `timeout`)
    start_others_when: Callable[[], bool] | None = field(default=None, repr=False)


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
    check: Check | None = field(default=None, repr=False)
    outputs: list[str] = field(default_factory=list)  # files that must not hold NaN / infinite numbers
    returncode: int | None = None  # the exit code a refusal must have (None: any != 0)
    surface: str = ""  # what is tested ("vrm train", ...); default: from the last step's command line
    # what the run left to report: the harness puts its step notes here (`killed`, `returncodes`) before `check`
    # runs, `check` may add its own (`rows_lost`, ...); all of them go into the case's result
    notes: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vrm(*args: str) -> list[str]:
    return [sys.executable, "-m", "vrm", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")]))
    return env


def surface_of(case: Case) -> str:
    """`vrm <command>` (`vrm bench bon`), `python -m <module>`, or the case's own `surface`."""
    if case.surface:
        return case.surface
    argv = case.steps[-1].argv if case.steps else []
    if "-m" in argv:
        index = argv.index("-m")
        module = argv[index + 1] if index + 1 < len(argv) else ""
        if module == "vrm":
            words = [w for w in argv[index + 2 : index + 4] if not w.startswith("-")]
            if not words or words[0] not in VRM_COMMANDS:
                return "vrm (no such command)"
            if words[0] == "bench":
                return "vrm " + " ".join(words[:2])
            return "vrm " + words[0]
        return f"python -m {module}"
    return case.group


def non_finite_value(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite_value(v) for v in value.values())
    if isinstance(value, list):
        return any(non_finite_value(v) for v in value)
    return False


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
        if non_finite_value(value):
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
            "surface": surface_of(case),
            "expected": expected_of(case),
            "outcome": "harness_error",
            "detail": f"{type(err).__name__}: {err}",
            "seconds": round(time.perf_counter() - started, 2),
        }


class StepTimeout(Exception):
    pass


def _wait(process: subprocess.Popen, deadline: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise StepTimeout from None


def run_step(step: Step, timeout: float) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """Run `step` (once, `concurrent` times at once, or until `kill_when`); raise `StepTimeout` past `timeout`.

    Returns the process to judge and notes about the run (`killed`, the exit codes of concurrent copies)."""
    limit = step.timeout or timeout
    deadline = time.monotonic() + limit
    popen = dict(
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=subprocess_env(),
        cwd=str(ROOT),
    )
    notes: dict[str, Any] = {}
    if step.kill_when is not None:
        # output to files, read at the end: a pipe nobody reads could fill and block the command
        with (
            tempfile.TemporaryFile("w+", errors="replace") as out_file,
            tempfile.TemporaryFile("w+", errors="replace") as err_file,
        ):
            popen.update(stdout=out_file, stderr=err_file)
            with subprocess.Popen(step.argv, **popen) as process:
                while process.poll() is None:
                    if step.kill_when():
                        process.send_signal(signal.SIGKILL)
                        notes["killed"] = True
                        break
                    if time.monotonic() > deadline:
                        process.kill()
                        process.wait()
                        raise StepTimeout
                    time.sleep(0.05)
                process.wait()
            out_file.seek(0)
            err_file.seek(0)
            out, err = out_file.read(), err_file.read()
        return subprocess.CompletedProcess(step.argv, process.returncode, out, err), notes
    processes = [subprocess.Popen(step.argv, **popen)]
    try:
        if step.concurrent > 1:
            while step.start_others_when is not None and not step.start_others_when():
                if processes[0].poll() is not None or time.monotonic() > deadline:
                    notes["started_others_late"] = True
                    break
                time.sleep(0.02)
            processes += [subprocess.Popen(step.argv, **popen) for _ in range(step.concurrent - 1)]
        outputs = [_wait(process, deadline) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    done = [
        subprocess.CompletedProcess(step.argv, p.returncode, out, err)
        for p, (out, err) in zip(processes, outputs, strict=True)
    ]
    if step.concurrent > 1:
        notes["returncodes"] = [p.returncode for p in done]
        failed = [p for p in done if p.returncode != 0]
        return (failed[0] if failed else done[0]), notes
    return done[0], notes


def _run_case(case: Case, timeout: float, started: float) -> dict[str, Any]:
    if case.prepare is not None:
        case.prepare()
    result: dict[str, Any] = {
        "case": case.name,
        "group": case.group,
        "surface": surface_of(case),
        "expected": expected_of(case),
    }
    process = None
    for index, step in enumerate(case.steps):
        try:
            process, notes = run_step(step, timeout)
        except StepTimeout:
            result.update(
                outcome="stall", detail=f"step {index + 1}: no exit within {step.timeout or timeout:g} s"
            )
            break
        case.notes.update(notes)
        last = index == len(case.steps) - 1
        if not last and step.kill_when is not None and not notes.get("killed"):
            result.update(
                outcome="setup_failed",
                returncode=process.returncode,
                detail=f"step {index + 1} exited ({process.returncode}) before it was killed: "
                + tail(process.stderr, process.stdout),
            )
            break
        if not last and step.kill_when is None and (process.returncode != 0) != step.refuse:
            result.update(
                outcome="setup_failed",
                returncode=process.returncode,
                detail=tail(process.stderr, process.stdout),
            )
            break
    else:
        result.update(judge(case, process))
    result.update({key: value for key, value in case.notes.items() if key not in result})
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def expected_of(case: Case) -> str:
    if not case.refuse:
        return "accept"
    return "_or_".join(["refuse", *case.also_ok])


def tail(stderr: str, stdout: str = "") -> str:
    lines = [line for line in (stderr or stdout).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def without_launcher_report(stderr: str) -> str:
    """`stderr` without the report torch's launcher (`torchrun`, `python -m torch.distributed.run`) prints about
    itself when one of its processes exits != 0: its own traceback ending in `ChildFailedError` and the table of
    failed ranks. What the ranks printed (vrm's one error line) stays and is judged."""
    if "ChildFailedError" not in stderr:
        return stderr
    lines = stderr.splitlines()
    failure = max(i for i, line in enumerate(lines) if "ChildFailedError" in line)
    starts = [i for i in range(failure + 1) if lines[i].startswith(TRACEBACK)]
    if not starts or not any("torch/distributed/" in line for line in lines[starts[-1] : failure + 1]):
        return stderr
    return "\n".join(lines[: starts[-1]])


def judge(case: Case, process: subprocess.CompletedProcess) -> dict[str, Any]:
    """The outcome of `case` from its last process (see the module docstring)."""
    stderr = without_launcher_report(process.stderr or "")
    stdout = process.stdout or ""
    # the ranks of a launch each print the same refusal: one distinct line is one clear error
    errors = list(dict.fromkeys(line for line in stderr.splitlines() if ERROR_LINE.match(line)))
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
        printed = [line for line in (stdout + "\n" + stderr).splitlines() if "skipped" in line]
        named = [line for line in printed if case.skip_message and re.search(case.skip_message, line)]
        if not case.refuse:
            out.update(outcome="accepted", detail=tail(stdout))
        elif "skipped" in case.also_ok and named:
            out.update(outcome="skipped", detail=named[0][:400], names_field=True)
        elif "accepted" in case.also_ok:
            out.update(outcome="accepted", detail=tail(stdout))
        else:
            out.update(outcome="silent", detail="exit 0 on an input that must be refused: " + tail(stdout))
        return out
    if not case.refuse:
        out.update(outcome="false_refusal", detail=tail(stderr, stdout))
        return out
    if process.returncode < 0:  # killed by a signal (SIGXFSZ, SIGKILL, ...): no message at all
        out.update(outcome="unclear_error", detail=f"killed by signal {-process.returncode}")
        return out
    if len(errors) == 1 and case.returncode is not None and process.returncode != case.returncode:
        out.update(
            outcome="unclear_error",
            detail=f"exit {process.returncode}, expected {case.returncode}: {errors[0][:300]}",
        )
    elif len(errors) == 1:
        out.update(
            outcome="clear_error",
            detail=errors[0][:400],
            names_field=bool(re.search(case.message, errors[0])) if case.message else None,
        )
    else:
        out.update(outcome="unclear_error", detail=tail(stderr, stdout))
    return out
