"""Offline scoring of files (`vrm score`): every row of a jsonl / json / csv / parquet file scored into a jsonl.

Each output line is the input row plus the fields of `RewardPipeline.result` (`reward`, `reward_std`, ...).
The output is resumable: rows already written are not scored again, each chunk is flushed and fsync'ed, a torn
last line is cut off, and `OUTPUT.manifest.json` (`vrm.scoring.manifest`) records what the output was scored from.
One writer at a time: a run holds an exclusive lock (`OUTPUT.lock`, `vrm.data.files.exclusive_lock`) from before it
looks at the output until it returns, so a second `vrm score` on the same output is refused instead of scoring
the same rows again beside the first (duplicated rows, a manifest rewritten under the other's feet).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from tqdm.auto import tqdm

from vrm.data.files import DataFormatError, exclusive_lock, read_records, write_json
from vrm.data.rows import check_text_or_messages
from vrm.models.integrity import NonFiniteError
from vrm.scoring.manifest import check_manifest, score_manifest
from vrm.scoring.pipeline import RewardPipeline, split_conversation


def _completed_rows(path: str) -> int:
    """Rows already written to a jsonl output; a torn last line (a crash mid-write) is cut off."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as handle:
        data = handle.read()
        keep = data.rfind(b"\n") + 1  # everything after the last newline is a partial row
        if keep < len(data):
            handle.truncate(keep)
    return data[:keep].count(b"\n")


def _row_to_pair(row: dict[str, Any], location: str, prompt_column: str, response_column: str):
    """(prompt, response) of a row to score: text or well-formed messages, else a `DataFormatError`."""
    if "messages" in row and prompt_column not in row:
        conversation = row["messages"]
        if isinstance(conversation, str):
            raise DataFormatError(f"{location}: 'messages' must be a list of messages, got text")
        check_text_or_messages(conversation, location, "messages")
        try:
            return split_conversation(conversation)
        except ValueError as err:
            raise DataFormatError(f"{location}: 'messages' {err}") from None
    column = response_column if response_column in row else "completion"
    response = row.get(column)
    if row.get(prompt_column) is None or response is None:
        raise DataFormatError(
            f"{location}: needs '{prompt_column}' and '{response_column}' (or 'completion') columns, "
            f"or a 'messages' conversation; columns present: {', '.join(sorted(map(str, row))) or 'none'}"
        )
    return (
        check_text_or_messages(row[prompt_column], location, prompt_column),
        check_text_or_messages(response, location, column),
    )


def _raise_templating_error(pipeline: RewardPipeline, pairs: list, rows: list) -> None:
    """A `DataFormatError` naming the first row of a chunk that cannot be templated (none: returns)."""
    template = getattr(pipeline, "template", None)
    if template is None:
        return
    for (prompt, response), (location, _) in zip(pairs, rows, strict=True):
        try:
            template.encode_parts(prompt, response)
        except Exception as err:
            message = " ".join(str(err).split())
            raise DataFormatError(
                f"{location}: cannot be templated for this model ({type(err).__name__}: {message})"
            ) from None


def score_file(
    pipeline: RewardPipeline,
    input_path: str,
    output_path: str,
    *,
    chunk_size: int = 256,
    prompt_column: str = "prompt",
    response_column: str = "response",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, int]:
    """Score every row of `input_path` into `output_path` (jsonl: the row plus the score fields).

    Resumable: rows already in the output are not scored again, each chunk is flushed and fsync'ed, and a
    partially written last line is discarded. `output_path + ".manifest.json"` records the input, the model
    and the settings; a run that does not match them refuses to add to the output (unless `overwrite`: the
    output is then scored again from scratch). Non-finite scores are an error, never written.
    Only one run writes an output at a time: while one holds its lock (`output_path + ".lock"`, dropped by
    the OS if the process dies), another is refused with an `OutputLockedError` (an `OSError`) before it reads,
    truncates or records anything. Returns {"rows", "skipped", "scored"}.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with exclusive_lock(output_path, "output"):
        return _score_file_locked(
            pipeline,
            input_path,
            output_path,
            chunk_size=chunk_size,
            prompt_column=prompt_column,
            response_column=response_column,
            progress=progress,
            overwrite=overwrite,
        )


def _score_file_locked(
    pipeline: RewardPipeline,
    input_path: str,
    output_path: str,
    *,
    chunk_size: int,
    prompt_column: str,
    response_column: str,
    progress: bool,
    overwrite: bool,
) -> dict[str, int]:
    """`score_file` once this process holds the output's lock."""
    rows = list(read_records(input_path))
    if not rows:
        raise DataFormatError(f"{input_path}: no rows to score")
    pairs = [_row_to_pair(row, location, prompt_column, response_column) for location, row in rows]
    manifest = score_manifest(
        pipeline, input_path, prompt_column=prompt_column, response_column=response_column
    )
    manifest_path = output_path + ".manifest.json"
    if overwrite and os.path.exists(output_path):
        open(output_path, "w").close()
    elif os.path.exists(output_path) and os.path.getsize(output_path) > 0:
        check_manifest(manifest_path, manifest, output_path)
    write_json(manifest, manifest_path)
    done = _completed_rows(output_path)
    if done > len(rows):
        raise ValueError(f"{output_path} has {done} rows but {input_path} only {len(rows)}: not its output")
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "a", encoding="utf-8") as out:
        starts = range(done, len(rows), chunk_size)
        for start in tqdm(starts, desc="scoring", disable=not progress, unit="chunk"):
            chunk = pairs[start : start + chunk_size]
            try:
                scores = pipeline.score([p for p, _ in chunk], [r for _, r in chunk])
            except Exception:  # a row the chat template refuses (an empty message list): name that row
                _raise_templating_error(pipeline, chunk, rows[start : start + chunk_size])
                raise
            finite = torch.isfinite(scores.reward) & torch.isfinite(scores.reward_std)
            finite &= torch.isfinite(scores.objective_weights).all(-1) & torch.isfinite(
                scores.objective_scores
            ).all(-1)
            if not finite.all():
                offset = int((~finite).nonzero()[0])
                raise NonFiniteError(
                    f"{rows[start + offset][0]}: the model gave a NaN or infinite score (reward "
                    f"{float(scores.reward[offset])}); rows from here on were not written"
                )
            lines = []
            for offset in range(len(chunk)):
                location, row = rows[start + offset]
                try:
                    lines.append(
                        json.dumps({**row, **pipeline.result(scores, offset)}, allow_nan=False) + "\n"
                    )
                except ValueError:
                    raise DataFormatError(
                        f"{location}: holds NaN or infinite numbers, which a JSON output cannot carry"
                    ) from None
            try:
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())
            except OSError as err:  # a full disk or a file size limit: the rows written so far stay whole
                raise OSError(
                    f"{output_path}: writing rows {start + 1}-{start + len(chunk)} failed ({err.strerror or err}); "
                    "a rerun resumes after the last whole row written"
                ) from err
    return {"rows": len(rows), "skipped": done, "scored": len(rows) - done}
