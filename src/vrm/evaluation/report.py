"""The `vrm eval` report as dataclasses: one writer (`EvalReport.to_json`), one reader (`EvalReport.from_json`).

    EvalReport                      model, head_type, num_objectives, objective_names, schema_version
      datasets: {source: DatasetReport}
        convention                  pairwise | rewardbench | rm-bench | best-of-k | rewardbench2
        overall, subsets            PairwiseMetrics | RMBenchScores | BestOfKMetrics (by convention)
        invalid_rows                InvalidRowsSummary (count, the first rows with location and reason)
        tokenization                vrm.data.TruncationStats (vrm models)
        rewardbench / rewardbench2  section scores (RewardBench v1 / v2 files)
        max_rows, sample, seed      which rows were scored

The JSON keys are the ones `vrm eval --output` wrote before the report was typed, plus `schema_version`.
Optional metrics that were absent stay absent (a field left at None is not written), and keys this version
does not know (a metric added by a newer writer) are kept in each record's `extra` and written back as they
were, so adding a metric is one field with a default. Reports without `schema_version` (written before it
existed) load as version 0: fields they lack take their defaults; a report of a newer schema is refused with a
message naming the file.

The file is strict JSON (`vrm.data.files.write_json`): a metric that is undefined (NaN, e.g.
`accuracy_chosen_shorter` when no chosen answer is shorter) is written as `null` and read back as the NaN the
dataclasses hold, so a report reads back as it was written. (A field that is None when not computed is left out
of the file, so its `null` always means NaN; fields written as `null` on purpose, as RewardBench 2's `score`
without all subsets, stay None.) Reports written before, with bare `NaN`, still read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from vrm.data.files import DataFormatError, write_json
from vrm.data.tokenization import TruncationStats

SCHEMA_VERSION = 1
PAIRWISE_CONVENTIONS = ("pairwise", "rewardbench")
BEST_OF_K_CONVENTIONS = ("best-of-k", "rewardbench2")


class ReportFormatError(DataFormatError):
    """A report file that is not a `vrm eval` report of a schema this version reads."""


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, TruncationStats):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass
class Record:
    """Base of the report's records: unknown keys go to `extra` on reading and come back on writing.

    `_nested` maps a field to the converter of its JSON value; `_omit_if_none` lists the fields that are left
    out of the JSON while None (metrics that were not computed); `_required` the fields a file must have."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    _nested: ClassVar[dict[str, Callable[[Any, str], Any]]] = {}
    _omit_if_none: ClassVar[tuple[str, ...] | None] = None  # None: every field
    _required: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, values: Any, where: str = "report"):
        return cls._build(values, where, cls._nested)

    @classmethod
    def _build(cls, values: Any, where: str, nested: Mapping[str, Callable[[Any, str], Any]]):
        if not isinstance(values, Mapping):
            raise ReportFormatError(f"{where}: expected an object, got {type(values).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        for name in cls._required:
            if name not in values:
                raise ReportFormatError(f"{where}: missing field '{name}'")
        known: dict[str, Any] = {}
        float_fields = cls._float_fields()
        for name in names & values.keys():
            convert = nested.get(name)
            value = values[name]
            if name in float_fields:
                value = _nan_for_null(value, float_fields[name])
            known[name] = convert(value, f"{where}.{name}") if convert else value
        extra = {k: v for k, v in values.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def _float_fields(cls) -> dict[str, str]:
        """{field: "float" | "container"} of the fields whose `null` in a file is a NaN written as strict JSON:
        floats left out of the file while None, and dicts and lists of floats."""
        out = {}
        for f in fields(cls):
            kind = str(f.type).replace(" ", "")
            omitted = cls._omit_if_none is None or f.name in cls._omit_if_none
            if kind.startswith("float") and omitted:
                out[f.name] = "float"
            elif kind.startswith(("dict[str,float]", "list[float]")):
                out[f.name] = "container"
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        omitted = self._omit_if_none
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and (omitted is None or f.name in omitted)):
                continue
            out[f.name] = _plain(value)
        return {**out, **self.extra}


def _nan_for_null(value: Any, kind: str) -> Any:
    """A float field's `null` (or a `null` inside a dict or list of floats) as NaN; anything else unchanged."""
    if kind == "float":
        return math.nan if value is None else value
    if isinstance(value, Mapping):
        return {k: math.nan if v is None else v for k, v in value.items()}
    if isinstance(value, list):
        return [math.nan if v is None else v for v in value]
    return value


def _records(kind: type[Record]) -> Callable[[Any, str], Any]:
    def convert(values: Any, where: str) -> Any:
        if isinstance(values, list):
            return [kind.from_dict(v, f"{where}[{i}]") for i, v in enumerate(values)]
        if not isinstance(values, Mapping):
            raise ReportFormatError(f"{where}: expected an object, got {type(values).__name__}")
        return {k: kind.from_dict(v, f"{where}.{k}") for k, v in values.items()}

    return convert


@dataclass
class CalibrationBin(Record):
    """One confidence bin of `vrm.evaluation.metrics.calibration`."""

    low: float = 0.0
    high: float = 0.0
    count: int = 0
    confidence: float = 0.0
    accuracy: float = 0.0


@dataclass
class SelectiveAccuracy(Record):
    """Accuracy on the most certain share of pairs per coverage ("1", "0.9", ...), and the curve's area."""

    curve: dict[str, float] = field(default_factory=dict)
    area: float | None = None


@dataclass
class LengthBias(Record):
    """`vrm.evaluation.metrics.length_bias`: how much of the accuracy follows response length."""

    spearman_reward_length: float | None = None
    accuracy_chosen_longer: float | None = None
    accuracy_chosen_shorter: float | None = None
    pairs_chosen_longer: int | None = None
    pairs_chosen_shorter: int | None = None
    longer_wins_accuracy: float | None = None


@dataclass
class PairwiseMetrics(Record):
    """`vrm.evaluation.pairwise.pairwise_metrics` of a set of pairs (only `pairs` when there are none)."""

    pairs: int = 0
    accuracy: float | None = None
    ties: int | None = None
    accuracy_ties_half: float | None = None
    mean_margin: float | None = None
    nll: float | None = None
    brier: float | None = None
    ece: float | None = None
    calibration_bins: list[CalibrationBin] | None = None
    predictive_temperature: float | None = (
        None  # the predictive probability's T (`vrm.evaluation.calibration`)
    )
    predictive_nll: float | None = None
    predictive_brier: float | None = None
    predictive_ece: float | None = None
    mean_reward_std: float | None = None
    mean_epistemic_std: float | None = (
        None  # ensembles: the members' disagreement (`vrm.models.head_ensemble`)
    )
    objective_weights: list[float] | None = None
    error_auroc: dict[str, float] | None = None  # by uncertainty source: margin, std, flip, ...
    selective_accuracy: SelectiveAccuracy | None = None
    uncertainty_error_auroc: float | None = None
    length_bias: LengthBias | None = None
    _nested: ClassVar = {
        "calibration_bins": _records(CalibrationBin),
        "selective_accuracy": SelectiveAccuracy.from_dict,
        "length_bias": LengthBias.from_dict,
    }
    _required: ClassVar = ("pairs",)


@dataclass
class RMBenchScores(Record):
    """RM-Bench's difficulties (`vrm.evaluation.benchmark_rules.rm_bench_scores`)."""

    easy: float | None = None
    normal: float | None = None
    hard: float | None = None
    average: float | None = None
    prompts: int = 0


@dataclass
class BestOfKMetrics(Record):
    """`vrm.evaluation.best_of_k.best_of_k_metrics` (only `prompts` when there are none)."""

    prompts: int = 0
    accuracy: float | None = None
    ties: int | None = None
    accuracy_ties_shared: float | None = None
    chance: float | None = None
    mean_candidates: float | None = None
    pairs: int | None = None
    pairwise_accuracy: float | None = None
    mean_margin: float | None = None
    mean_reward_std: float | None = None
    objective_weights: list[float] | None = None
    _required: ClassVar = ("prompts",)


@dataclass
class RewardBenchScore(Record):
    """RewardBench (v1) section scores and their mean."""

    sections: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    _omit_if_none: ClassVar = ()


@dataclass
class RewardBench2Score(Record):
    """RewardBench 2 subset scores; `score` is None (and `partial_mean`, `note` say why) without all six."""

    subsets: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    partial_mean: float | None = None
    note: str | None = None
    _omit_if_none: ClassVar = ("partial_mean", "note")


@dataclass
class InvalidRow(Record):
    location: str = ""
    reason: str = ""


@dataclass
class InvalidRowsSummary(Record):
    """Rows skipped as unusable: the exact count, the first ones listed (`vrm.evaluation.rows.InvalidRows`)."""

    count: int = 0
    rows: list[InvalidRow] = field(default_factory=list)
    _nested: ClassVar = {"rows": _records(InvalidRow)}


def _truncation(values: Any, where: str) -> TruncationStats:
    if not isinstance(values, Mapping):
        raise ReportFormatError(f"{where}: expected an object, got {type(values).__name__}")
    known = {f.name for f in fields(TruncationStats)}
    return TruncationStats(**{k: v for k, v in values.items() if k in known})


Metrics = PairwiseMetrics | RMBenchScores | BestOfKMetrics


def metrics_type(convention: str) -> type[Record]:
    if convention == "rm-bench":
        return RMBenchScores
    if convention in BEST_OF_K_CONVENTIONS:
        return BestOfKMetrics
    return PairwiseMetrics


@dataclass
class DatasetReport(Record):
    """The report of one dataset: overall and per-subset metrics of its convention, and what was scored."""

    convention: str = "pairwise"
    overall: Metrics = field(default_factory=PairwiseMetrics)
    subsets: dict[str, Metrics] = field(default_factory=dict)
    tokenization: TruncationStats | None = None
    rewardbench: RewardBenchScore | None = None
    rewardbench2: RewardBench2Score | None = None
    invalid_rows: InvalidRowsSummary = field(default_factory=InvalidRowsSummary)
    max_rows: int | None = None
    sample: int | None = None
    seed: int | None = None
    _omit_if_none: ClassVar = ("tokenization", "rewardbench", "rewardbench2")
    _required: ClassVar = ("overall",)

    @classmethod
    def from_dict(cls, values: Any, where: str = "dataset") -> DatasetReport:
        if isinstance(values, Mapping):
            kind = metrics_type(str(values.get("convention", "pairwise")))
            nested = {
                "overall": kind.from_dict,
                "subsets": _records(kind),
                "tokenization": _truncation,
                "rewardbench": RewardBenchScore.from_dict,
                "rewardbench2": RewardBench2Score.from_dict,
                "invalid_rows": InvalidRowsSummary.from_dict,
            }
            return cls._build(values, where, nested)
        return super().from_dict(values, where)

    @property
    def is_pairwise(self) -> bool:
        return self.convention in PAIRWISE_CONVENTIONS


@dataclass
class EvalReport(Record):
    """The `vrm eval` report of one model: one `DatasetReport` per dataset source."""

    model: str = ""
    head_type: str = ""
    num_objectives: int = 1
    objective_names: list[str] | None = None
    calibration_temperature: float | None = None  # saved by `vrm calibrate`; 1 = uncalibrated; None: not vrm
    ensemble: dict[str, Any] | None = None  # {"kind": "deep" | "multi-head", "members": paths | count}
    datasets: dict[str, DatasetReport] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    _nested: ClassVar = {"datasets": _records(DatasetReport)}
    _omit_if_none: ClassVar = ("calibration_temperature", "ensemble")
    _required: ClassVar = ("model", "datasets")

    @classmethod
    def from_dict(cls, values: Any, where: str = "report") -> EvalReport:
        if isinstance(values, Mapping):
            version = values.get("schema_version", 0)
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise ReportFormatError(
                    f"{where}: schema_version {version!r} is newer than this vrm reads ({SCHEMA_VERSION}); "
                    "upgrade vrm"
                )
        return super().from_dict(values, where)

    def to_json(self, path: str) -> str:
        """Write the report atomically as JSON; return the path."""
        write_json(self.to_dict(), path)
        return path

    @classmethod
    def from_json(cls, path: str) -> EvalReport:
        """Read a report written by `to_json` (or by `vrm eval --output` of one model)."""
        reports = read_reports(path)
        if len(reports) != 1:
            raise ReportFormatError(f"{path}: holds {len(reports)} model reports; read it with read_reports")
        return reports[0]


def _load(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ReportFormatError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None


def read_reports(path: str) -> list[EvalReport]:
    """The model reports of a `vrm eval --output` file: one report, or `{"models": [...]}` for several."""
    data = _load(path)
    if isinstance(data, Mapping) and "models" in data and "datasets" not in data:
        models = data["models"]
        if not isinstance(models, list):
            raise ReportFormatError(f"{path}: 'models' must be a list of reports")
        return [EvalReport.from_dict(m, f"{path}: models[{i}]") for i, m in enumerate(models)]
    return [EvalReport.from_dict(data, path)]


def write_reports(reports: list[EvalReport], path: str) -> str:
    """One report as it is, several as `{"models": [...]}` (what `vrm eval --output` writes)."""
    if len(reports) == 1:
        return reports[0].to_json(path)
    write_json({"models": [r.to_dict() for r in reports]}, path)
    return path


def as_report(report: EvalReport | Mapping[str, Any]) -> EvalReport:
    """An `EvalReport` from itself or from its JSON dict (readers accept both)."""
    return report if isinstance(report, EvalReport) else EvalReport.from_dict(report)


def report_files(directory: str) -> list[str]:
    """JSON files under `directory` that hold `vrm eval` reports (their top level has `datasets` or `models`)."""
    found = []
    for root, _, names in os.walk(directory):
        for name in sorted(names):
            if name.endswith(".json"):
                path = os.path.join(root, name)
                data = _load(path)
                if isinstance(data, Mapping) and ("datasets" in data or "models" in data):
                    found.append(path)
    return sorted(found)
