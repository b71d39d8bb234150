"""Hostile runs of the command line: what goes wrong around a command rather than in its input file.

* `vrm serve --conservative_lambda 1e300` (one model; `--model A --model A --ensemble`): exit 2, one line, no
  server started (a short timeout: a server that starts is a stall);
* `vrm train --max_length -5` (a clear error) and `--max_length 1000000000000` (cut to the backbone's positions
  with a printed line, or a clear error);
* a model whose config.json asks for `ensemble_members: 1000000`: `vrm score` and `vrm eval` end with one line,
  quickly;
* resumes: after `checkpoint-4/model.safetensors` was cut to half its size (falls back to checkpoint-2 and says
  it skipped checkpoint-4), and after a `kill -9` while checkpoints were being written (the final model loads);
* a checkpoint write on a full disk (`ulimit -f`): exit != 0 with `vrm train: error: <output_dir>: writing the
  checkpoint ...`;
* hostile experiment YAML files for `python -m benchmarks.studies.experiment`: one line naming the file, nothing
  written, no code run;
* `vrm recipe finegrained-qa` on a row whose question holds a lone surrogate: one line naming file, line, field;
* two `vrm score` runs into one output at once: one succeeds, the other names the output (its lock), no row
  duplicated or lost;
* `vrm eval --output R.json` where the chosen-shorter metrics are undefined: R.json is strict JSON (no NaN).
* data-parallel `vrm score` (`python -m torch.distributed.run --nproc_per_node 2 -m vrm score`): a kill -9 of
  rank 1 (then of the launcher) mid-run, resumed by the same launch, or by one process (another world size): every
  row once, in input order, no part file left; two launches into one output at once: one finishes, the other is
  refused naming the output's lock, no row duplicated or lost.
* data-parallel `vrm eval` (two processes): a kill -9 of rank 1 mid-run leaves no partial report (whole or
  absent, strict JSON) and a relaunch writes the whole report; `--embedding_cache` under a launch of two is one
  usage line; `vrm bench bon --best_of 0` and `vrm calibrate` under a launch of two are one line each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import bad_inputs  # tests/fixtures (on sys.path: benchmarks/robustness/__init__.py)

from benchmarks.robustness.cli_cases import (
    no_model_saved,
    no_rows_written,
    resume_past_damaged_checkpoint,
    train_argv,
)
from benchmarks.robustness.harness import ROOT, Case, Step, free_port, vrm

SERVE_TIMEOUT = 90.0  # a refused `vrm serve` exits in seconds; one that starts serving is a stall past this
QUICK_LOAD_TIMEOUT = 120.0  # "quickly": a config asking for 1e6 heads must not allocate them first


def hostile_cases(work: str, backbone: str, model: str, quick: bool) -> list[Case]:
    corpus = os.path.join(work, "corpus")
    runs = os.path.join(work, "runs")
    os.makedirs(runs, exist_ok=True)
    good_pairs = bad_inputs.good_pairs_file().write(corpus)
    good_rows = bad_inputs.good_score_file().write(corpus)
    return [
        *serve_flag_cases(model),
        *max_length_cases(backbone, good_pairs, runs),
        *ensemble_members_cases(model, good_pairs, good_rows, runs),
        resume_after_truncated_checkpoint(work, backbone, good_pairs, runs),
        checkpoint_write_fails(work, backbone, good_pairs, runs),
        resume_after_kill_9(backbone, good_pairs, runs),
        *experiment_yaml_cases(runs),
        recipe_surrogate_case(corpus, runs),
        two_score_writers(model, corpus, runs),
        strict_json_eval_report(model, corpus, runs),
        *data_parallel_score_cases(model, corpus, runs),
        *data_parallel_eval_cases(model, corpus, runs),
    ]


# ----- flags ----------------------------------------------------------------------------------------------------
def serve_flag_cases(model: str) -> list[Case]:
    cases = []
    for name, models in [
        ("serve-conservative-lambda-1e300", ["--model", model]),
        ("serve-conservative-lambda-1e300-ensemble", ["--model", model, "--model", model, "--ensemble"]),
    ]:
        argv = vrm("serve", *models, "--port", str(free_port()), "--conservative_lambda", "1e300")
        cases.append(
            Case(
                name,
                "flags",
                [Step(argv, True, timeout=SERVE_TIMEOUT)],
                r"conservative_lambda",
                returncode=2,
            )
        )
    return cases


def max_length_cases(backbone: str, good_pairs: str, runs: str) -> list[Case]:
    negative = os.path.join(runs, "train-max-length-negative")
    huge = os.path.join(runs, "train-max-length-1e12")

    def cut_with_a_line(process: subprocess.CompletedProcess) -> str | None:
        """Exit 0 is fine (the pairs are short); whether a line said the length was cut is recorded: a backbone
        with computed (rotary) positions, as the tiny llama-like one, has no position table to cut to."""
        if process.returncode == 0:
            line = re.search(r"\[vrm\] max_length 1000000000000 .*", process.stdout)
            case.notes["printed_a_limit_line"] = line.group(0)[:200] if line else False
        return None

    case = Case(
        "train-max-length-1e12",
        "flags",
        [Step(vrm("train", *train_argv(backbone, good_pairs, huge, max_length=1_000_000_000_000)), True)],
        r"max_length",
        also_ok=("accepted",),
        check=cut_with_a_line,
        outputs=[huge],
    )
    return [
        Case(
            "train-max-length-negative",
            "flags",
            [Step(vrm("train", *train_argv(backbone, good_pairs, negative, max_length=-5)), True)],
            r"max_length",
            check=no_model_saved(negative),
            outputs=[negative],
        ),
        case,
    ]


# ----- a model asking for too much -------------------------------------------------------------------------------
def ensemble_members_cases(model: str, good_pairs: str, good_rows: str, runs: str) -> list[Case]:
    corruption = bad_inputs.ensemble_members_corruption()
    cases = []
    for command in ("score", "eval"):
        broken = os.path.join(runs, f"model-{corruption.case}-{command}")

        def prepare(broken: str = broken) -> None:
            shutil.copytree(model, broken)
            corruption.corrupt(broken)

        if command == "score":
            output = os.path.join(runs, f"score-{corruption.case}.jsonl")
            argv = vrm("score", "--model", broken, "--input", good_rows, "--output", output, "--no_progress")
            check = no_rows_written(output)
        else:
            output = os.path.join(runs, f"eval-{corruption.case}.json")
            argv = vrm(
                "eval", "--model", broken, "--dataset", good_pairs, "--output", output, "--no_progress"
            )

            def check(process: subprocess.CompletedProcess, output: str = output) -> str | None:
                return (
                    f"a refused run wrote {output}" if process.returncode and os.path.exists(output) else None
                )

        cases.append(
            Case(
                f"{command}-model:{corruption.case}",
                "model",
                [Step(argv, True, timeout=QUICK_LOAD_TIMEOUT)],
                corruption.message,
                prepare=prepare,
                check=check,
            )
        )
    return cases


# ----- checkpoints: truncated, disk full, kill -9 ------------------------------------------------------------------
def resume_after_truncated_checkpoint(work: str, backbone: str, good_pairs: str, runs: str) -> Case:
    """`checkpoint-4/model.safetensors` cut to half its size (a full disk, a copy cut short) while its state is
    readable: resuming must fall back to checkpoint-2."""

    def weights_cut(resumed: str) -> None:
        weights = os.path.join(resumed, "checkpoint-4", "model.safetensors")
        with open(weights, "r+b") as handle:
            handle.truncate(os.path.getsize(weights) // 2)

    name = "train:resume-after-truncated-checkpoint-weights"
    return resume_past_damaged_checkpoint(
        name, "resume-truncated", weights_cut, work, backbone, good_pairs, runs
    )


def checkpoint_write_fails(work: str, backbone: str, good_pairs: str, runs: str) -> Case:
    """`vrm train --save_steps 1` under `ulimit -f` (in KiB) of half the model's weights: the first checkpoint
    write fails (EFBIG: Python ignores SIGXFSZ) and the run must end with one line naming the output directory."""
    output = os.path.join(runs, "train-disk-full")
    argv = vrm("train", *train_argv(backbone, good_pairs, output, save_strategy="steps", save_steps=1))
    limit = {"kib": 64}

    def prepare() -> None:
        weights = os.path.getsize(os.path.join(work, "model-run", "model.safetensors"))
        limit["kib"] = max(1, weights // 2 // 1024)
        step.argv[:] = ["bash", "-c", f'ulimit -S -f {limit["kib"]}; exec "$@"', "bash", *argv]

    def no_final_model(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0 and os.path.exists(os.path.join(output, "model.safetensors")):
            return f"a failed run saved a model in {output}"
        return None

    step = Step(list(argv), True)
    return Case(
        "train:checkpoint-write-fails-disk-full",
        "train",
        [step],
        re.escape(output) + r": writing the checkpoint",
        prepare=prepare,
        check=no_final_model,
        surface="vrm train",
    )


def resume_after_kill_9(backbone: str, good_pairs: str, runs: str) -> Case:
    """A run saving every step is killed (SIGKILL) as soon as its first checkpoint directory appears (while it is
    written); `--resume_from_checkpoint true` must then finish (exit 0) and leave a final model that loads."""
    output = os.path.join(runs, "train-kill-9")
    flags = dict(max_steps=8, save_strategy="steps", save_steps=1)

    def first_checkpoint() -> bool:
        found = (
            sorted(n for n in os.listdir(output) if n.startswith("checkpoint-"))
            if os.path.isdir(output)
            else []
        )
        if found:
            case.notes["killed_with"] = found
        return bool(found)

    def final_model_loads(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0:
            return None
        case.notes["resume_said"] = [line[:200] for line in process.stdout.splitlines() if "skipping" in line]
        try:
            from vrm.models.modeling import VRMForSequenceClassification

            VRMForSequenceClassification.from_pretrained(output)
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            return f"the final model does not load: {type(err).__name__}: {str(err)[:200]}"
        return None

    case = Case(
        "train:resume-after-kill-9-while-checkpointing",
        "train",
        [
            Step(
                vrm("train", *train_argv(backbone, good_pairs, output, **flags)),
                False,
                kill_when=first_checkpoint,
            ),
            Step(
                vrm(
                    "train", *train_argv(backbone, good_pairs, output, **flags, resume_from_checkpoint="true")
                ),
                False,
            ),
        ],
        refuse=False,
        check=final_model_loads,
        outputs=[output],
    )
    return case


# ----- experiment files, recipes ---------------------------------------------------------------------------------
MODULE = "benchmarks.studies.experiment"


def experiment_yaml_cases(runs: str) -> list[Case]:
    """Each file in its own directory, with `--results_dir` and `--work_dir` under it: exit 1, one line
    `python -m benchmarks.studies.experiment: error: FILE: ...`, nothing written anywhere, `echo owned` not run."""
    cases = []
    committed = ROOT / "benchmarks" / "results" / "experiments"
    for item in bad_inputs.experiment_files():
        directory = os.path.join(runs, f"experiment-{item.case}")
        path = item.write(directory)  # directory/<case>/experiment.yaml
        results, work_dir = os.path.join(directory, "results"), os.path.join(directory, "work")
        escapes = [
            "/abs/path",
            "/tmp/x",
            str(committed / "x"),
            os.path.normpath(os.path.join(results, "../../x")),
        ]
        escapes += [os.path.normpath(os.path.join(work_dir, "models", "../../../x"))]
        before = {p: os.path.exists(p) for p in escapes}
        argv = [sys.executable, "-m", MODULE, path, "--results_dir", results, "--work_dir", work_dir]

        def check(
            process: subprocess.CompletedProcess,
            directory: str = directory,
            before: dict[str, bool] = before,
        ) -> str | None:
            if "owned" in process.stdout:
                return "the YAML file ran `echo owned`"
            written = [
                os.path.join(root, name)
                for root, _, names in os.walk(directory)
                for name in names
                if not name.endswith("experiment.yaml")
            ]
            written += [p for p, existed in before.items() if os.path.exists(p) and not existed]
            return f"a refused experiment wrote {written[:3]}" if written else None

        cases.append(
            Case(
                f"experiment:{item.case}",
                "experiment",
                [Step(argv, True)],
                re.escape(path) + ": .*" + item.message,
                check=check,
                returncode=1,
            )
        )
    return cases


def recipe_surrogate_case(corpus: str, runs: str) -> Case:
    item = bad_inputs.finegrained_qa_surrogate_file()
    output = os.path.join(runs, "recipe-surrogate")
    argv = vrm("recipe", "finegrained-qa", "--input", item.write(corpus), "--output_dir", output)

    def nothing_written(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0 and os.path.isdir(output) and os.listdir(output):
            return f"a refused recipe wrote {sorted(os.listdir(output))[:3]}"
        return None

    return Case(f"recipe:{item.case}", "recipe", [Step(argv, True)], item.message, check=nothing_written)


# ----- concurrent writers, strict JSON ----------------------------------------------------------------------------
def two_score_writers(model: str, corpus: str, runs: str, rows: int = 3000) -> Case:
    """Two `vrm score` runs into one `--output`, started at once, each scoring for several seconds (3,000 rows,
    batches of 2) so that both are running when the later one reaches the output: exactly one exits 0, the other 1
    naming the output; no row duplicated or lost."""
    lines = [
        json.dumps(
            {"id": i, "prompt": f"Question {i}: how do I sort a list?", "response": f"Use sorted() ({i})."}
        )
        for i in range(rows)
    ]
    source = bad_inputs.BadFile("many-rows", "rows.jsonl", ("\n".join(lines) + "\n").encode(), "").write(
        corpus
    )
    output = os.path.join(runs, "score-two-writers.jsonl")
    argv = vrm(
        "score", "--model", model, "--input", source, "--output", output, "--no_progress", "--batch_size", "4"
    )

    def one_writer(process: subprocess.CompletedProcess) -> str | None:
        codes = sorted(case.notes.get("returncodes", []))
        ids: list = []
        if os.path.exists(output):
            with open(output, encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, 1):
                    try:
                        ids.append(json.loads(line).get("id"))
                    except ValueError:
                        return f"{output}:{number}: a torn line"
        duplicated = len(ids) - len(set(ids))
        lost = rows - len(set(ids)) if 0 in codes else 0
        case.notes.update(rows_lost=lost, rows_duplicated=duplicated)
        if duplicated:
            return f"{duplicated} duplicated rows in the output (exit codes {codes})"
        if lost:
            return f"{lost} rows lost from the output (exit codes {codes})"
        if codes == [0, 0]:
            return "both runs exited 0 (no lock on the output)"
        return None

    case = Case(
        "score:two-writers-one-output",
        "score",
        [Step(argv, True, concurrent=2)],
        re.escape(output) + r".*(?i:lock|another process|being written)",
        check=one_writer,
        returncode=1,
    )
    return case


def strict_json_eval_report(model: str, corpus: str, runs: str) -> Case:
    pairs = bad_inputs.no_chosen_shorter_pairs().write(corpus)
    report = os.path.join(runs, "eval-strict.json")
    argv = vrm("eval", "--model", model, "--dataset", pairs, "--output", report, "--no_progress")

    def refuse_constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON")

    def strict(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0:
            return None
        try:
            with open(report, encoding="utf-8") as handle:
                json.loads(handle.read(), parse_constant=refuse_constant)
        except (OSError, ValueError) as err:
            return f"{os.path.basename(report)} is not strict JSON: {err}"
        return None

    return Case(
        "eval:strict-json-report-no-chosen-shorter",
        "eval",
        [Step(argv, False)],
        refuse=False,
        check=strict,
    )


# ----- data-parallel scoring ---------------------------------------------------------------------------------------
def torchrun(processes: int, *args: str) -> list[str]:
    """`vrm ARGS` launched in `processes` processes by torch's launcher (as `torchrun` does)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", str(processes), "-m", "vrm", *args]


def data_parallel_score_cases(model: str, corpus: str, runs: str, rows: int = 400) -> list[Case]:
    """A rank killed mid-run and resumed (by the same launch, or by one process), and two launches into one
    output: the output holds every row once, in input order, and no part file or plan is left."""
    lines = [
        json.dumps(
            {"id": i, "prompt": f"Question {i}: how do I sort a list?", "response": f"Use sorted() ({i})."}
        )
        for i in range(rows)
    ]
    source = bad_inputs.BadFile("dp-rows", "dp-rows.jsonl", ("\n".join(lines) + "\n").encode(), "").write(
        corpus
    )

    def score(output: str) -> list[str]:
        return [
            "score",
            "--model",
            model,
            "--input",
            source,
            "--output",
            output,
            "--no_progress",
            "--batch_size",
            "2",
            "--chunk_size",
            "4",
            "--device",
            "cpu",
        ]

    def every_row_in_order(output: str, case: Case):
        def check(process: subprocess.CompletedProcess) -> str | None:
            if process.returncode != 0:
                return None
            with open(output, encoding="utf-8", errors="replace") as handle:
                ids = [json.loads(line).get("id") for line in handle]
            case.notes["rows_written"] = len(ids)
            if ids != list(range(rows)):
                return f"the output's ids are not 0..{rows - 1} once each in order ({len(ids)} rows)"
            left = [n for n in os.listdir(runs) if n.startswith(os.path.basename(output) + ".part")]
            return f"left behind: {left}" if left else None

        return check

    def kill_rank_1(output: str, case: Case):
        part = output + ".part1-of-2"

        def kill() -> bool:
            if not (os.path.exists(part) and os.path.getsize(part) > 0 and os.path.exists(part + ".lock")):
                return False
            try:
                with open(part + ".lock", encoding="ascii") as handle:
                    os.kill(int(handle.read().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                return False
            case.notes["killed_rank_1_after_rows"] = sum(1 for _ in open(part, "rb"))
            return True  # the harness then SIGKILLs the launcher: rank 0 must stop by itself

        return kill

    cases = []
    for name, processes in (("same-launch", 2), ("one-process", 1)):
        output = os.path.join(runs, f"score-dp-killed-{name}.jsonl")
        case = Case(f"score:data-parallel-rank-killed-resumed-by-{name}", "score", [], refuse=False)
        resume = torchrun(2, *score(output)) if processes == 2 else vrm(*score(output))
        case.steps = [
            Step(torchrun(2, *score(output)), False, kill_when=kill_rank_1(output, case)),
            Step(resume, False),
        ]
        case.check = every_row_in_order(output, case)
        cases.append(case)

    output = os.path.join(runs, "score-dp-two-launches.jsonl")

    def one_launch_wrote(process: subprocess.CompletedProcess) -> str | None:
        codes = sorted(case.notes.get("returncodes", []))
        if codes == [0, 0]:
            return "both launches exited 0 (no lock on the output)"
        if 0 in codes:
            return every_row_in_order(output, case)(subprocess.CompletedProcess([], 0))
        return f"no launch finished (exit codes {codes})"

    case = Case(
        "score:data-parallel-two-launches-one-output",
        "score",
        [Step(torchrun(2, *score(output)), True, concurrent=2)],
        re.escape(output) + r".*(?i:lock|another process|being written)",
        check=one_launch_wrote,
    )
    cases.append(case)
    return cases


def rank_pid(rank: int, marker: str) -> int | None:
    """The pid of the launched process of `rank` whose command line holds `marker` (read from /proc)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environment = handle.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environment and marker.encode() in command:
            return int(pid)
    return None


def data_parallel_eval_cases(model: str, corpus: str, runs: str, pairs: int = 400) -> list[Case]:
    """`vrm eval` under a two-process launch: a rank killed mid-run, then relaunched (the report is whole or
    absent after the kill, whole after the relaunch); an embedding cache and a bad best-of-n size refused."""
    lines = [
        json.dumps(
            {
                "prompt": f"Question {i}: how do I sort a list?",
                "chosen": f"Use sorted() ({i}).",
                "rejected": "No idea.",
            }
        )
        for i in range(pairs)
    ]
    source = bad_inputs.BadFile("dp-pairs", "dp-pairs.jsonl", ("\n".join(lines) + "\n").encode(), "").write(
        corpus
    )
    output = os.path.join(runs, "eval-dp-killed.json")
    argv = ["eval", "--model", model, "--dataset", source, "--output", output, "--no_progress"]
    argv += ["--batch_size", "2", "--device", "cpu"]
    case = Case("eval:data-parallel-rank-killed-relaunched", "eval", [], refuse=False)

    def kill_rank_1() -> bool:
        pid = rank_pid(1, output)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            return False
        case.notes["report_after_kill"] = os.path.exists(output)
        return True

    after_kill = os.path.join(runs, "eval-dp-killed-as-the-kill-left-it.json")
    keep_what_the_kill_left = [
        sys.executable,
        "-c",
        "import os, shutil, sys; os.path.exists(sys.argv[1]) and shutil.copyfile(sys.argv[1], sys.argv[2])",
        output,
        after_kill,
    ]

    def strict(name: str):
        raise ValueError(f"non-finite {name}")

    def whole_report(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0:
            return None
        if os.path.exists(after_kill):  # the killed launch wrote a report: it must be whole
            try:
                with open(after_kill, encoding="utf-8") as handle:
                    json.load(handle, parse_constant=strict)
            except ValueError as err:
                return f"the killed launch left a report that is not whole strict JSON ({err})"
        with open(output, encoding="utf-8") as handle:
            report = json.load(handle, parse_constant=strict)
        counted = report["datasets"][source]["overall"]["pairs"]
        left = [n for n in os.listdir(runs) if n.startswith(os.path.basename(output) + ".")]
        if counted != pairs:
            return f"the report counts {counted} pairs, not {pairs}"
        return f"left behind: {left}" if left else None

    case.steps = [
        Step(torchrun(2, *argv), False, kill_when=kill_rank_1),
        Step(keep_what_the_kill_left, False),
        Step(torchrun(2, *argv), False),
    ]
    case.check = whole_report
    cache = os.path.join(runs, "eval-dp-cache")
    refused_cache = Case(
        "eval:data-parallel-embedding-cache",
        "eval",
        [Step(torchrun(2, "eval", "--model", model, "--dataset", source, "--embedding_cache", cache), True)],
        r"--embedding_cache with 2 processes",
    )
    bon = os.path.join(runs, "bon-dp-best-of-0.json")
    pool = bad_inputs.BadFile(
        "dp-pool",
        "dp-pool.jsonl",
        (json.dumps({"prompt": "q", "responses": ["a", "b"], "gold": [1.0, 0.0]}) + "\n").encode(),
        "",
    ).write(corpus)
    bon_argv = ["bench", "bon", "--pool", pool, "--proxy", model, "--gold_column", "gold", "--best_of", "0"]
    refused_size = Case(
        "bon:data-parallel-best-of-0",
        "bon",
        [Step(torchrun(2, *bon_argv, "--output", bon, "--device", "cpu"), True)],
        r"(?i)best.of|--n|n must|>= 1",
        check=lambda process: None if not os.path.exists(bon) else f"{bon} was written",
    )
    labelled = bad_inputs.BadFile(
        "dp-calibrate-pairs", "dp-calibrate-pairs.jsonl", ("\n".join(lines[:20]) + "\n").encode(), ""
    ).write(corpus)
    refused_calibrate = Case(
        "calibrate:launched-in-two-processes",
        "calibrate",
        [Step(torchrun(2, "calibrate", "--model", model, "--dataset", labelled, "--dry_run"), True)],
        r"vrm calibrate runs in one process",
    )
    return [case, refused_cache, refused_size, refused_calibrate]
