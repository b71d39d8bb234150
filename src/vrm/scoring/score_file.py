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
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from vrm.data.files import DataFormatError, exclusive_lock, read_records, write_json
from vrm.data.rows import check_text_or_messages
from vrm.models.integrity import NonFiniteError
from vrm.scoring.data_parallel import RankZeroError, ScoringWorld
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


@dataclass
class ShardPlan:
    """How a data-parallel launch splits the rows still to score: rank r writes rows `shards[r]` (a contiguous
    [start, stop) range) into `parts[r]`; rank 0 appends the parts to the output, in order, when all are done.
    Saved beside the output (`OUTPUT.parts.json`) so that a killed launch resumes each rank's part."""

    start: int  # the output's row count when the plan was made (the first row of shard 0)
    rows: int  # rows of the input
    shards: list[tuple[int, int]]
    parts: list[str]

    @classmethod
    def split(cls, output_path: str, start: int, rows: int, world_size: int) -> ShardPlan:
        """Rows [start, rows) in `world_size` contiguous shards of sizes that differ by at most one."""
        remaining = rows - start
        bounds = [start + (remaining * r) // world_size for r in range(world_size + 1)]
        return cls(
            start,
            rows,
            [(bounds[r], bounds[r + 1]) for r in range(world_size)],
            [f"{output_path}.part{r}-of-{world_size}" for r in range(world_size)],
        )

    @staticmethod
    def path(output_path: str) -> str:
        return output_path + ".parts.json"

    @classmethod
    def load(cls, output_path: str) -> ShardPlan | None:
        """The plan of an unfinished launch into `output_path` (None when there is none)."""
        path = cls.path(output_path)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            plan = cls(
                int(data["start"]),
                int(data["rows"]),
                [(int(a), int(b)) for a, b in data["shards"]],
                [str(p) for p in data["parts"]],
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}: unreadable record of an unfinished data-parallel run ({type(err).__name__}: {err}); "
                "pass --overwrite to score the output again from scratch"
            ) from None
        bounds = [plan.start] + [b for _, b in plan.shards]
        if len(plan.parts) != len(plan.shards) or any(
            a != bounds[r] or b < a for r, (a, b) in enumerate(plan.shards)
        ):
            raise ValueError(
                f"{path}: its shards are not contiguous row ranges; pass --overwrite to score the output again"
            )
        return plan

    def save(self, output_path: str) -> None:
        write_json(
            {"start": self.start, "rows": self.rows, "shards": self.shards, "parts": self.parts},
            self.path(output_path),
        )

    def remove(self, output_path: str) -> None:
        """Delete the parts, then the plan (a crash in between leaves a plan whose parts are empty)."""
        for part in self.parts:
            if os.path.exists(part):
                os.remove(part)
        if os.path.exists(self.path(output_path)):
            os.remove(self.path(output_path))


def _append_part_rows(out, part: str, skip: int, count: int) -> None:
    """Append lines `skip` .. `count` - 1 of the jsonl `part` to the open file `out`."""
    if not os.path.exists(part):
        return
    with open(part, "rb") as handle:
        for number, line in enumerate(handle):
            if number >= count:
                break
            if number >= skip:
                out.write(line)


def merge_parts(output_path: str, done: int, plan: ShardPlan) -> int:
    """Append the rows of `plan`'s parts that continue the output (`done` rows) to it, in input order, stopping at
    the first unfinished part (rows after it are scored again); remove the parts and the plan. Returns the output's
    row count. Each part's lock is taken first (a rank still writing one is an `OutputLockedError`; a killed rank's
    lock file is cleared). A crash midway leaves plan and parts: the next run appends what the output still lacks."""
    with ExitStack() as locks:
        for part in plan.parts:
            locks.enter_context(exclusive_lock(part, "part of a data-parallel output"))
        if done < plan.start:  # the output lost rows since the plan was made: its parts do not continue it
            plan.remove(output_path)
            return done
        with open(output_path, "ab") as out:
            for (start, stop), part in zip(plan.shards, plan.parts, strict=True):
                count = _completed_rows(part)
                if count > stop - start:
                    raise ValueError(
                        f"{part}: holds {count} rows, more than the {stop - start} of its shard; pass "
                        "--overwrite to score the output again from scratch"
                    )
                _append_part_rows(out, part, max(0, done - start), count)
                done = max(done, start + count)
                if count < stop - start:
                    break
            out.flush()
            os.fsync(out.fileno())
        plan.remove(output_path)
    return done


def _score_chunk(pipeline: RewardPipeline, pairs: list, rows: list) -> list[str]:
    """The output lines of one chunk of rows: each row plus its scores (non-finite scores are an error)."""
    try:
        scores = pipeline.score([p for p, _ in pairs], [r for _, r in pairs])
    except Exception:  # a row the chat template refuses (an empty message list): name that row
        _raise_templating_error(pipeline, pairs, rows)
        raise
    finite = torch.isfinite(scores.reward) & torch.isfinite(scores.reward_std)
    finite &= torch.isfinite(scores.objective_weights).all(-1) & torch.isfinite(scores.objective_scores).all(
        -1
    )
    if not finite.all():
        offset = int((~finite).nonzero()[0])
        raise NonFiniteError(
            f"{rows[offset][0]}: the model gave a NaN or infinite score (reward "
            f"{float(scores.reward[offset])}); rows from here on were not written"
        )
    lines = []
    for offset, (location, row) in enumerate(rows):
        try:
            lines.append(json.dumps({**row, **pipeline.result(scores, offset)}, allow_nan=False) + "\n")
        except ValueError:
            raise DataFormatError(
                f"{location}: holds NaN or infinite numbers, which a JSON output cannot carry"
            ) from None
    return lines


def _score_rows_into(
    pipeline: RewardPipeline,
    rows: list,
    pairs: list,
    path: str,
    start: int,
    stop: int,
    *,
    chunk_size: int,
    progress: bool,
    description: str = "scoring",
) -> None:
    """Append the scored rows [start, stop) to the jsonl `path`, a chunk at a time (each flushed and fsync'ed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        starts = range(start, stop, chunk_size)
        for first in tqdm(starts, desc=description, disable=not progress, unit="chunk"):
            last = min(first + chunk_size, stop)
            lines = _score_chunk(pipeline, pairs[first:last], rows[first:last])
            try:
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())
            except OSError as err:  # a full disk or a file size limit: the rows written so far stay whole
                raise OSError(
                    f"{path}: writing rows {first + 1}-{last} failed ({err.strerror or err}); "
                    "a rerun resumes after the last whole row written"
                ) from err


def _read_rows(input_path: str, prompt_column: str, response_column: str) -> tuple[list, list]:
    """(located rows, (prompt, response) pairs) of the input; a bad row is a `DataFormatError` naming it."""
    rows = list(read_records(input_path))
    if not rows:
        raise DataFormatError(f"{input_path}: no rows to score")
    pairs = [_row_to_pair(row, location, prompt_column, response_column) for location, row in rows]
    return rows, pairs


def _prepare_output(
    pipeline: RewardPipeline,
    input_path: str,
    output_path: str,
    rows: int,
    *,
    prompt_column: str,
    response_column: str,
    overwrite: bool,
) -> int:
    """Check the output's manifest against this run (or clear it, with `overwrite`), record this run's, and return
    the rows already written. The caller holds the output's lock."""
    manifest = score_manifest(
        pipeline, input_path, prompt_column=prompt_column, response_column=response_column
    )
    manifest_path = output_path + ".manifest.json"
    plan_path = ShardPlan.path(output_path)
    if overwrite:
        if os.path.exists(plan_path):
            try:
                plan = ShardPlan.load(output_path)
            except ValueError:  # unreadable: its parts are unknown, drop the record
                os.remove(plan_path)
            else:
                with ExitStack() as locks:  # no rank of another launch may still be writing a part
                    for part in plan.parts:
                        locks.enter_context(exclusive_lock(part, "part of a data-parallel output"))
                    plan.remove(output_path)
        if os.path.exists(output_path):
            open(output_path, "w").close()
    elif (os.path.exists(output_path) and os.path.getsize(output_path) > 0) or os.path.exists(plan_path):
        check_manifest(manifest_path, manifest, output_path)
    write_json(manifest, manifest_path)
    done = _completed_rows(output_path)
    if done > rows:
        raise ValueError(f"{output_path} has {done} rows but {input_path} only {rows}: not its output")
    return done


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
    world: ScoringWorld | None = None,
) -> dict[str, int]:
    """Score every row of `input_path` into `output_path` (jsonl: the row plus the score fields).

    Resumable: rows already in the output are not scored again, each chunk is flushed and fsync'ed, and a
    partially written last line is discarded. `output_path + ".manifest.json"` records the input, the model
    and the settings; a run that does not match them refuses to add to the output (unless `overwrite`: the
    output is then scored again from scratch). Non-finite scores are an error, never written.
    Only one run writes an output at a time: while one holds its lock (`output_path + ".lock"`, dropped by
    the OS if the process dies), another is refused with an `OutputLockedError` (an `OSError`) before it reads,
    truncates or records anything. Returns {"rows", "skipped", "scored"}.

    With a `world` of several processes (`ScoringWorld.detect()` under `accelerate launch` / `torchrun`), every
    process calls this: the rows still to score are split in contiguous shards, one per rank, each scored into its
    own part file (`OUTPUT.partR-of-W`, resumable as the output is), and rank 0 appends the parts to the output in
    input order once all ranks are done: the output is the one a single process writes. A relaunch after a crash
    of any rank resumes every part (or, launched with another number of processes, keeps the rows that continue
    the output and splits the rest anew).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if world is not None and world.distributed:
        if getattr(pipeline, "embedding_cache", None) is not None:
            # the cache splits its own work across the launch's ranks and waits on them, while each rank here
            # scores a different shard: states of other shards would be missing, and the waits could hang
            raise ValueError(
                "data-parallel scoring does not take a pipeline with an embedding_cache: score in one process, "
                "or drop the cache"
            )
        return _score_file_sharded(
            pipeline,
            input_path,
            output_path,
            world,
            chunk_size=chunk_size,
            prompt_column=prompt_column,
            response_column=response_column,
            progress=progress,
            overwrite=overwrite,
        )
    with exclusive_lock(output_path, "output"):
        rows, pairs = _read_rows(input_path, prompt_column, response_column)
        done = _prepare_output(
            pipeline,
            input_path,
            output_path,
            len(rows),
            prompt_column=prompt_column,
            response_column=response_column,
            overwrite=overwrite,
        )
        plan = ShardPlan.load(output_path)
        if plan is not None:  # an unfinished data-parallel run: keep the rows that continue the output
            done = merge_parts(output_path, done, plan)
        skipped = done
        _score_rows_into(
            pipeline, rows, pairs, output_path, done, len(rows), chunk_size=chunk_size, progress=progress
        )
    return {"rows": len(rows), "skipped": skipped, "scored": len(rows) - skipped}


def _score_file_sharded(
    pipeline: RewardPipeline,
    input_path: str,
    output_path: str,
    world: ScoringWorld,
    *,
    chunk_size: int,
    prompt_column: str,
    response_column: str,
    progress: bool,
    overwrite: bool,
) -> dict[str, int]:
    """`score_file` in one process of a data-parallel launch (see there)."""
    with ExitStack() as held:
        decision: dict[str, Any]
        if world.is_main:  # rank 0 locks the output, checks its manifest and splits the rows
            try:
                held.enter_context(exclusive_lock(output_path, "output"))
                rows, pairs = _read_rows(input_path, prompt_column, response_column)
                done = _prepare_output(
                    pipeline,
                    input_path,
                    output_path,
                    len(rows),
                    prompt_column=prompt_column,
                    response_column=response_column,
                    overwrite=overwrite,
                )
                plan = ShardPlan.load(output_path)
                if plan is not None and (plan.start != done or len(plan.shards) != world.size):
                    # another launch size (or the output changed): keep what continues the output, split anew
                    if len(plan.shards) != world.size:
                        print(
                            f"[vrm] {output_path}: resuming a run of {len(plan.shards)} processes with "
                            f"{world.size}: rows that continue the output are kept, the rest split anew",
                            flush=True,
                        )
                    done = merge_parts(output_path, done, plan)
                    plan = None
                if plan is None and done < len(rows):
                    plan = ShardPlan.split(output_path, done, len(rows), world.size)
                    plan.save(output_path)
                decision = {"plan": plan, "done": done, "rows": len(rows)}
            except (
                BaseException
            ) as err:  # the other ranks stop with the line rank 0 prints (one refusal per launch)
                world.broadcast({"error": " ".join(str(err).split()) or type(err).__name__})
                raise
            world.broadcast(decision)
        else:
            decision = world.broadcast()
            if "error" in decision:
                raise RankZeroError(decision["error"])
            rows, pairs = _read_rows(input_path, prompt_column, response_column)
            if len(rows) != decision["rows"]:
                raise ValueError(
                    f"{input_path}: rank {world.rank} reads {len(rows)} rows, rank 0 read {decision['rows']}"
                )
        plan: ShardPlan | None = decision["plan"]
        written = 0
        if plan is not None:
            part = plan.parts[world.rank]
            start, stop = plan.shards[world.rank]
            with exclusive_lock(part, "part of a data-parallel output"):
                written = _completed_rows(part)
                if written > stop - start:
                    raise ValueError(
                        f"{part}: holds {written} rows, more than the {stop - start} of its shard"
                    )
                _score_rows_into(
                    pipeline,
                    rows,
                    pairs,
                    part,
                    start + written,
                    stop,
                    chunk_size=chunk_size,
                    progress=progress and world.is_main,
                    description=f"scoring (rank 0 of {world.size})",
                )
        # gathering also waits for every part to be complete (a rank that fails ends the whole launch)
        resumed = world.gather(written)
        if world.is_main and plan is not None:
            done = merge_parts(output_path, decision["done"], plan)
            if done != len(rows):
                raise ValueError(f"{output_path}: {done} rows after merging the parts, expected {len(rows)}")
        total = world.broadcast(decision["done"] + sum(resumed) if world.is_main else None)
    return {"rows": len(rows), "skipped": total, "scored": len(rows) - total}
