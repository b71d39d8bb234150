"""The command-line corpus of the robustness benchmark: bad files, flags, models and runs for `vrm train`, `eval`,
`score` and `bench bon` built from `tests/fixtures/bad_inputs.py`, each a `Case` of `harness.py`; the hostile
runs (`hostile_runs.py`) join them in `cli_cases`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import bad_inputs  # tests/fixtures (on sys.path: benchmarks/robustness/__init__.py)

from benchmarks.robustness.harness import Case, Step, free_port, subprocess_env, vrm

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
}


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


def corpus_cases(work: str, backbone: str, model: str, quick: bool) -> list[Case]:
    """The bad-input corpus (bad files, rows, models, pools, flags, a foreign output, a half-written
    checkpoint) and the controls."""
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
        # the scoring commands' --max_length (cut to the backbone's position table; below 1: a usage error)
        for name, argv in [
            ("score-max-length-0", vrm("score", "--model", model, "--input", good_rows, "--max_length", "0")),
            (
                "eval-max-length-0",
                vrm("eval", "--model", model, "--dataset", good_pairs, "--max_length", "0"),
            ),
        ]:
            report = ["--output", os.path.join(runs, name + ".json"), "--no_progress"]
            argv += score_to if name.startswith("score") else report
            cases.append(Case(name, "flags", [Step(argv, True)], r"--max_length must be >= 1"))

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
    def state_cut_off(resumed: str) -> None:
        os.remove(os.path.join(resumed, "checkpoint-4", "trainer_state.json"))  # killed while writing it

    cases.append(
        resume_past_damaged_checkpoint(
            "train:resume-after-half-written-checkpoint",
            "resume",
            state_cut_off,
            work,
            backbone,
            good_pairs,
            runs,
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


def cli_cases(work: str, backbone: str, model: str, quick: bool) -> list[Case]:
    """Every CLI case: the corpus (a few of each kind with `quick`), then the hostile runs (all of them)."""
    from benchmarks.robustness.hostile_runs import hostile_cases  # builds on this module's helpers

    cases = corpus_cases(work, backbone, model, quick) + serve_replica_flag_cases(model)
    cases += eval_html_cases(work, model)
    cases += auxiliary_term_cases(work, backbone, model)
    controls = [case for case in cases if case.group == "control"]
    others = [case for case in cases if case.group != "control"]
    return others + hostile_cases(work, backbone, model, quick) + controls


def logged_steps(output_dir: str, checkpoint: str) -> list[int] | None:
    """The steps with a logged loss in `output_dir/checkpoint/trainer_state.json` (None: no such checkpoint)."""
    path = os.path.join(output_dir, checkpoint, "trainer_state.json")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        state = json.load(handle)
    return [entry["step"] for entry in state.get("log_history", []) if "loss" in entry]


def resume_past_damaged_checkpoint(
    name: str,
    directory: str,
    damage: Callable[[str], None],
    work: str,
    backbone: str,
    good_pairs: str,
    runs: str,
) -> Case:
    """The control run (`--save_strategy steps --save_steps 2`, 4 steps, in `work/model-run`) copied, its
    `checkpoint-4` damaged by `damage(copy)` and its final model removed: resuming for 6 steps must report
    checkpoint-4 as skipped and go on from checkpoint-2."""
    resumed = os.path.join(runs, directory)

    def prepare() -> None:
        shutil.copytree(os.path.join(work, "model-run"), resumed)
        damage(resumed)
        os.remove(os.path.join(resumed, "model.safetensors"))  # the final model of the first run

    def resumed_from_2(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0:
            return None
        if not re.search(r"skipping \S*checkpoint-4", process.stdout):
            return "the damaged checkpoint-4 was not reported as skipped"
        steps = logged_steps(resumed, "checkpoint-6")
        if steps is None:
            return "no checkpoint-6 after resuming"
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
    return Case(
        name,
        "train",
        [Step(vrm("train", *argv), False)],
        refuse=False,
        prepare=prepare,
        check=resumed_from_2,
        outputs=[resumed],
    )


def serve_replica_flag_cases(model: str) -> list[Case]:
    """`vrm serve --devices` (one model replica per device) and several `--model`s (served side by side, named by
    their directories' base names): bad lists and clashing names end with one line (exit 2) before any model
    loads; a server that starts instead is a stall past the short timeout."""
    from benchmarks.robustness.hostile_runs import SERVE_TIMEOUT  # builds on this module's helpers

    cases = []
    for name, extra, message in [
        ("serve-devices-cuda-99", ["--devices", "cuda:99"], r"cuda:99"),
        ("serve-devices-empty-entry", ["--devices", "cpu,,cpu"], r"entry 2 is empty"),
        ("serve-devices-1000-replicas", ["--devices", ",".join(["cpu"] * 1000)], r"at most 64 replicas"),
        (
            "serve-devices-more-cpu-replicas-than-cores",
            ["--devices", ",".join(["cpu"] * ((os.cpu_count() or 1) + 1))],
            r"CPU cores|at most 64 replicas",
        ),
        ("serve-devices-not-a-device", ["--devices", "gpu0"], r"not a torch device"),
        ("serve-duplicate-model-names", ["--model", model], r"same name"),
        ("serve-model-id-with-two-models", ["--model", model + "/", "--model_id", "x"], r"--model_id"),
    ]:
        argv = vrm("serve", "--model", model, *extra, "--port", str(free_port()))
        cases.append(Case(name, "flags", [Step(argv, True, timeout=SERVE_TIMEOUT)], message, returncode=2))
    return cases


def eval_html_cases(work: str, model: str) -> list[Case]:
    """`vrm eval --html`: a path that cannot take the report (a directory, the --output file, a path under a
    file, a directory that refuses new files) ends in one line (exit 2) before any model loads, and the run writes
    no --output; the control writes a report that refers to nothing outside itself."""
    corpus, runs = os.path.join(work, "corpus"), os.path.join(work, "runs", "eval-html")
    os.makedirs(runs, exist_ok=True)
    good_pairs = bad_inputs.good_pairs_file().write(corpus)
    report = os.path.join(runs, "report.json")
    blocker = os.path.join(runs, "a-file")
    with open(blocker, "w") as handle:
        handle.write("not a directory\n")

    def no_report(process: subprocess.CompletedProcess) -> str | None:
        return "the refused run wrote its --output report" if os.path.exists(report) else None

    def eval_argv(html_path: str, output: str = report) -> list[str]:
        return vrm(
            "eval",
            "--model",
            model,
            "--dataset",
            good_pairs,
            "--output",
            output,
            "--no_progress",
            "--html",
            html_path,
        )

    cases = []
    for name, path, message in [
        ("eval-html-directory", runs, r"--html \S+ is a directory"),
        ("eval-html-same-as-output", report, r"--html and --output are the same file"),
        ("eval-html-under-a-file", os.path.join(blocker, "report.html"), r"a-file is not a directory"),
        ("eval-html-unwritable-directory", "/proc/vrm-report.html", r"cannot write in /proc"),
    ]:
        cases.append(
            Case(name, "flags", [Step(eval_argv(path), True)], message, returncode=2, check=no_report)
        )

    page = os.path.join(runs, "control", "report.html")

    def self_contained(process: subprocess.CompletedProcess) -> str | None:
        if process.returncode != 0:
            return None
        if not os.path.exists(page):
            return "no HTML report written"
        text = open(page, encoding="utf-8").read()
        if re.search(r"https?://", text):
            return "the HTML report refers to a URL"
        return None if "data:image/png;base64," in text else "the HTML report embeds no image"

    argv = eval_argv(page, os.path.join(runs, "control", "report.json"))
    cases.append(
        Case("control:eval-html", "control", [Step(argv, False)], refuse=False, check=self_contained)
    )
    return cases


def auxiliary_term_cases(work: str, backbone: str, model: str) -> list[Case]:
    """Training terms that no row can feed are refused in one line before any training, naming the flag and the
    way out (`vrm.training.auxiliary_terms`); an objective column needs the objectives it names; a deep ensemble
    of members on one backbone shares an embedding cache (the control: one checkpoint twice)."""
    corpus, runs = os.path.join(work, "corpus"), os.path.join(work, "runs", "auxiliary-terms")
    os.makedirs(runs, exist_ok=True)
    good_pairs = bad_inputs.good_pairs_file().write(corpus)  # no rating or label columns
    cases = []
    for name, flags, message in [
        (
            "train-objective-column-without-names",
            ["--objective_column", "objective"],
            r"--objective_column objective names objectives: pass --objective_names",
        ),
        (
            "train-attribute-names-without-ratings",
            ["--attribute_names", "help", "harm"],
            r"--attribute_names help, harm: none of the \d+ training rows .* or pass --attribute_weight 0",
        ),
        (
            "train-rating-weight-without-rated-pairs",
            ["--attribute_names", "help", "harm", "--attribute_weight", "0", "--rating_weight_coef", "1"],
            r"--rating_weight_coef 1.0: none of the \d+ training rows .* or pass --rating_weight_coef 0",
        ),
        (
            "train-objective-label-weight-without-labels",
            ["--objective_names", "help", "harm", "--objective_column", "objective"]
            + ["--attribute_weight", "0", "--objective_label_weight", "1"],
            r"--objective_label_weight 1.0: none of the \d+ training rows",
        ),
    ]:
        output = os.path.join(runs, name)
        argv = vrm("train", *train_argv(backbone, good_pairs, output), *flags)
        cases.append(Case(name, "flags", [Step(argv, True)], message, check=no_model_saved(output)))
    report = os.path.join(runs, "ensemble-cache.json")
    argv = vrm("eval", "--model", model, "--model", model, "--ensemble", "--dataset", good_pairs)
    argv += ["--embedding_cache", os.path.join(runs, "cache"), "--output", report, "--no_progress"]
    cases.append(
        Case(
            "control:eval-ensemble-shared-embedding-cache",
            "control",
            [Step(argv, False)],
            refuse=False,
            check=eval_metrics_finite(report),
        )
    )
    return cases
