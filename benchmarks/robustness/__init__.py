"""Reliability of vrm on bad input: replay a bad-input corpus against the real commands and server.

    nice -n 15 python -m benchmarks.robustness            # full run (~12 min on 2 cores), writes the JSON below
    nice -n 15 python -m benchmarks.robustness --quick    # a smaller corpus and shorter load phases

It builds a tiny random llama-like backbone (`tests/fixtures/tiny_models.py`), trains a vrm model on it with
`vrm train` (the control), and writes the corpus of `tests/fixtures/bad_inputs.py` into a temporary directory:
preference files (NaN / Infinity margins and ratings, broken CSV, truncated or fake .gz, non-UTF-8, JSON nested
100k deep, lone surrogates, dict subsets, ...), `vrm score` rows (numbers, bools, dicts, lists where text must be,
messages without content, empty message lists, ...), Best-of-N pools with NaN gold scores, corrupted copies of
the model (truncated or garbage `model.safetensors`, NaN weights, `reward_scale` NaN / 1e-45, `reward_mean` inf,
`ensemble_members` 1e6), a `vrm score` into an output made from another input, two `vrm score` runs into one
output at once, resumes after a half-written or truncated checkpoint or a `kill -9`, a checkpoint write on a
full disk (`ulimit -f`), bad flags (`--max_length -5`, `vrm serve --conservative_lambda 1e300`), hostile
experiment YAML files, a recipe input with a lone surrogate, an eval report that must be strict JSON.

The modules:

* `harness.py`: `Case` / `Step`, running a case's subprocesses and judging the last one (clear one-line error,
  traceback, unclear error, silent misbehaviour, stall, accepted);
* `cli_cases.py`: the command-line corpus; `hostile_runs.py`: the hostile runs (crashes, disk full, kill -9,
  concurrent writers, hostile YAML, ...);
* `server.py`: `vrm serve` as a real uvicorn subprocess on 127.0.0.1 (default limits): every bad request of the
  corpus once, a mixed good / bad load, the latency of 1-item requests during maximal legal requests, and during
  1,000 half-open connections plus slow-body senders, and a silent connection's 408;
* `report.py`: the summary (overall and per surface), the targets and the JSON report
  (`benchmarks/results/robustness.json`);
* `__main__.py`: the command line.
"""

import sys
from pathlib import Path

_FIXTURES = str(Path(__file__).resolve().parents[2] / "tests" / "fixtures")
if _FIXTURES not in sys.path:  # bad_inputs.py, tiny_models.py
    sys.path.insert(0, _FIXTURES)
