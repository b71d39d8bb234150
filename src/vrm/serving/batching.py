"""Dynamic batching for the reward server: concurrent requests share forward batches, fairly.

Each request arrives as token sequences. A single worker builds each forward batch item by item, round-robin
over the requests that have items left (those served least recently first), under `max_batch_size` rows and
`max_batch_tokens` padded tokens. A large request is thus split into many forward batches, and a
request that arrives meanwhile joins the next one instead of waiting for the whole large request.

A model served on several devices (`vrm serve --devices cuda:0,cuda:1`) has one `DynamicBatcher` per device, its
replicas, held by a `ReplicaPool`: each request goes whole to the replica with the fewest items queued or being
scored (ties: the one chosen least recently), so requests are batched, and shared fairly, within that replica
exactly as with one device.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.scores import SequenceScores, score_sequences

logger = logging.getLogger("vrm.serving.app")

ScoreFn = Callable[[list[list[int]], list[int]], SequenceScores]


class QueueFullError(RuntimeError):
    """The batcher's queue cannot take the request now."""


class BatcherStoppedError(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


def pipeline_score_fn(pipeline: RewardPipeline) -> ScoreFn:
    """Score token sequences (with their prompt lengths) in one forward, as `RewardPipeline.score` would."""

    def score(sequences: list[list[int]], prompt_lengths: list[int]) -> SequenceScores:
        scores = score_sequences(
            pipeline.model,
            sequences,
            prompt_lengths,
            pipeline.tokenizer.pad_token_id,
            batch_size=len(sequences),
            embedding_cache=pipeline.embedding_cache,
        )
        return pipeline._maybe_unnormalize(scores)

    return score


@dataclass(eq=False)
class _Job:
    sequences: list[list[int]]
    prompt_lengths: list[int]
    future: asyncio.Future
    enqueued_at: float
    order: list[int] = field(default_factory=list)  # item indices, shortest first
    taken: int = 0  # items of `order` already put in a batch
    last_batch: int = -1  # the last forward batch that took items of this request
    scored: int = 0
    result: SequenceScores | None = None

    @property
    def left(self) -> int:
        return len(self.order) - self.taken

    def store(self, indices: list[int], scores: SequenceScores) -> None:
        """Put one forward batch's scores of this request's `indices` in place: every field the model gave,
        an ensemble's member rewards and std parts too."""
        if self.result is None:
            count = len(self.sequences)
            self.result = SequenceScores(
                **{
                    name: None if values is None else values.new_empty((count, *values.shape[1:]))
                    for name, values in vars(scores).items()
                }
            )
        index = torch.tensor(indices, dtype=torch.long)
        for name, values in vars(scores).items():
            if values is not None:
                getattr(self.result, name)[index] = values
        self.scored += len(indices)


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    requests: int = 0
    rejected: int = 0
    failed_batches: int = 0
    timed_out: int = 0


Outcome = tuple[_Job, list[int], SequenceScores | BaseException]


@dataclass
class DynamicBatcher:
    """Coalesces concurrent requests into forward batches scored in one worker thread.

    `submit` queues a request's token sequences and waits for their scores (in order). One background task
    gathers a forward batch when the worker is free: if fewer than `max_batch_size` items are queued it waits
    up to `max_wait_ms` since the oldest queued request arrived, then takes items round-robin over the queued
    requests under `max_batch_size` rows and `max_batch_tokens` padded tokens, and runs `score_fn` on them in
    the worker thread. When a batch shared by several requests fails, each request's part is retried alone,
    so one bad request fails only itself. A request whose future is cancelled (a timeout, a client gone) is
    dropped from the queue at once.
    """

    score_fn: ScoreFn
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_batch_tokens: int = 16_384
    stats: BatcherStats = field(default_factory=BatcherStats)
    queued: int = 0

    def __post_init__(self) -> None:
        self._active: deque[_Job] = deque()  # requests with items not yet in a batch, in arrival order
        self._batch_number = 0
        self._in_flight: list[_Job] = []
        self.in_flight_items = 0  # items of the forward batch being scored now
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def load(self) -> int:
        """Items waiting or being scored: what a `ReplicaPool` compares to pick a replica."""
        return self.queued + self.in_flight_items

    async def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vrm-score")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="vrm-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued or in flight fail with `BatcherStoppedError`."""
        task, self._task = self._task, None
        # `_run` forgets its in-flight batch when it is cancelled: take its requests first, so that a request
        # whose items were all taken into that batch is answered too.
        in_flight = list(self._in_flight)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for job in dict.fromkeys([*in_flight, *self._in_flight, *self._active]):
            if not job.future.done():
                job.future.set_exception(BatcherStoppedError("the server is shutting down"))
        self._active.clear()
        self._in_flight, self.in_flight_items = [], 0
        self.queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def submit(self, sequences: list[list[int]], prompt_lengths: list[int]) -> SequenceScores:
        """Queue one request's sequences and wait for their scores (in order)."""
        if not self.running or self._wakeup is None:
            raise BatcherStoppedError("the scoring worker is not running (start the app with its lifespan)")
        if not sequences:
            raise ValueError("nothing to score")
        if self.queued > 0 and self.queued + len(sequences) > self.max_queue:
            self.stats.rejected += 1
            raise QueueFullError(
                f"server overloaded: {self.queued} items queued (max_queue {self.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        job = _Job(sequences, prompt_lengths, loop.create_future(), loop.time(), order)
        job.future.add_done_callback(lambda _: self._discard(job))
        self._active.append(job)
        self.queued += len(sequences)
        self._wakeup.set()
        return await job.future  # a cancelled request cancels its future: its items leave the queue

    def _discard(self, job: _Job) -> None:
        """Drop a finished (answered, failed or cancelled) request's items that are still queued."""
        if job in self._active:
            self._active.remove(job)
            self.queued -= job.left
            job.taken = len(job.order)

    async def _next_batch(self) -> list[tuple[_Job, int]]:
        """Wait for queued items, give others `max_wait_ms` to join, and take one batch."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._active:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = min(job.enqueued_at for job in self._active) + self.max_wait_ms / 1000
            while self._active and self.queued < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            if self._active:
                return self._take()

    def _take(self) -> list[tuple[_Job, int]]:
        """One forward batch: one item per request in turn, while rows and padded tokens allow.

        The turn order starts with the requests served least recently (new ones first), then by arrival.
        """
        self._batch_number += 1
        batch: list[tuple[_Job, int]] = []
        full: set[_Job] = set()  # requests whose next (shortest) item does not fit any more
        longest = 0
        turns = sorted(self._active, key=lambda job: job.last_batch)  # stable: arrival order among equals
        while len(batch) < self.max_batch_size:
            progressed = False
            for job in turns:
                if job.left == 0:
                    continue
                if len(batch) >= self.max_batch_size:
                    break
                if job in full:
                    continue
                index = job.order[job.taken]
                width = max(longest, len(job.sequences[index]))
                if batch and width * (len(batch) + 1) > self.max_batch_tokens:
                    full.add(job)
                    continue
                batch.append((job, index))
                longest, progressed = width, True
                job.taken += 1
                job.last_batch = self._batch_number
                self.queued -= 1
                if job.left == 0:
                    self._active.remove(job)
            if not progressed:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            jobs = list(dict.fromkeys(job for job, _ in batch))
            self._in_flight, self.in_flight_items = jobs, len(batch)
            try:
                outcomes = await loop.run_in_executor(self._executor, self._score_batch, batch)
            except Exception as err:  # the worker must survive anything
                logger.exception("scoring worker error")
                outcomes = [(job, [], err) for job in jobs]
            finally:
                self._in_flight, self.in_flight_items = [], 0
            for job, indices, outcome in outcomes:
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                    continue
                job.store(indices, outcome)
                if job.scored == len(job.sequences):
                    self.stats.requests += 1
                    job.future.set_result(job.result)

    def _score(self, part: list[tuple[_Job, int]]) -> SequenceScores:
        self.stats.batches += 1
        self.stats.items += len(part)
        try:
            return self.score_fn(
                [job.sequences[i] for job, i in part], [job.prompt_lengths[i] for job, i in part]
            )
        except Exception:
            self.stats.failed_batches += 1
            raise

    def _score_batch(self, batch: list[tuple[_Job, int]]) -> list[Outcome]:
        """Runs in the worker thread: one scoring call, or one per request when the joint call fails."""
        parts: dict[_Job, list[int]] = {}
        for job, index in batch:
            parts.setdefault(job, []).append(index)
        try:
            scores = self._score(batch)
        except Exception as err:
            if len(parts) == 1:
                return [(job, indices, err) for job, indices in parts.items()]
        else:
            rows = {(id(job), index): row for row, (job, index) in enumerate(batch)}
            return [
                (job, indices, scores.select(torch.tensor([rows[(id(job), i)] for i in indices])))
                for job, indices in parts.items()
            ]
        outcomes: list[Outcome] = []
        for job, indices in parts.items():  # isolate the bad request(s)
            try:
                outcomes.append((job, indices, self._score([(job, i) for i in indices])))
            except Exception as err:
                outcomes.append((job, indices, err))
        return outcomes


# ----- replicas: one batcher per device ---------------------------------------------------------------------------
MAX_REPLICAS = 64  # devices in one `--devices` list: beyond it a typo (or a loop) rather than a machine


def replica_devices(spec: str | None) -> list[str]:
    """The devices of `--devices` / `--device`: a comma-separated list of torch devices, one model replica each.

    `None` / `auto`: CUDA when available, else the CPU (one replica); `all`: every visible CUDA device (the CPU
    when there is none). Each entry must be a device that exists here (`cuda:3` needs 4 GPUs); a device may repeat
    (two replicas on one GPU, or `cpu,cpu`), but there are at most `MAX_REPLICAS`, and no more CPU replicas than
    CPU cores (each replica's worker would only wait for a core, and its copy of the weights costs memory).
    A bad list is a `ValueError` naming the entry.
    """
    import os

    import torch

    from vrm.scoring.device import resolve_device

    if spec is None or spec.strip() in ("", "auto"):
        return [resolve_device(None)]
    if spec.strip() == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{index}" for index in range(count)] or ["cpu"]
    entries = spec.split(",")
    if len(entries) > MAX_REPLICAS:
        raise ValueError(
            f"--devices lists {len(entries)} devices; at most {MAX_REPLICAS} replicas are served"
        )
    devices = []
    for position, entry in enumerate(entries, 1):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"--devices {spec!r}: entry {position} is empty (a list such as cuda:0,cuda:1)")
        if entry in ("auto", "all"):
            raise ValueError(f"--devices {spec!r}: {entry!r} stands alone, not in a list")
        device = resolve_device(entry)
        if device == "cuda":
            device = f"cuda:{torch.cuda.current_device()}"
        parsed = torch.device(device)
        if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"--devices {spec!r}: {entry} does not exist ({torch.cuda.device_count()} CUDA device(s) here: "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
        if parsed.type not in ("cpu", "cuda"):
            raise ValueError(f"--devices {spec!r}: {entry} is not a CPU or CUDA device")
        devices.append(device)
    kinds = sorted({torch.device(device).type for device in devices})
    if len(kinds) > 1:  # each kind runs its own dtype (bf16 on CUDA, fp32 on CPU): one request, two rewards
        raise ValueError(
            f"--devices {spec!r} mixes {' and '.join(kinds)} devices, whose replicas would score in different "
            "precisions (bfloat16 / float32) and give one request different rewards: list devices of one kind"
        )
    cores = os.cpu_count() or 1
    if devices.count("cpu") > cores:
        raise ValueError(
            f"--devices lists {devices.count('cpu')} CPU replicas, more than this machine's {cores} CPU cores"
        )
    return devices


@dataclass
class ReplicaPool:
    """The batchers of one model, one per device (`devices[i]` runs `batchers[i]`).

    `submit` sends a request whole to the replica with the smallest `load` (items queued or being scored), the one
    chosen least recently among equals, so an idle pool alternates and a busy one fills its least busy device.
    Limits stay per replica: `max_queue` bounds each replica's queue.
    """

    batchers: Sequence[DynamicBatcher]
    devices: Sequence[str]

    def __post_init__(self) -> None:
        if not self.batchers or len(self.batchers) != len(self.devices):
            raise ValueError(f"{len(self.batchers)} batchers for {len(self.devices)} devices")
        self._last_chosen = [0] * len(self.batchers)
        self._choices = 0

    @property
    def running(self) -> bool:
        return all(batcher.running for batcher in self.batchers)

    @property
    def queued(self) -> int:
        return sum(batcher.queued for batcher in self.batchers)

    def pick(self, items: int = 1) -> DynamicBatcher:
        """The replica the next request (of `items` items) goes to: the least loaded of the running replicas
        whose queue can take it; when none can, the least loaded running one (whose `submit` then answers
        "overloaded"); a replica whose worker has stopped gets nothing while another runs."""
        indices = range(len(self.batchers))
        running = [i for i in indices if self.batchers[i].running] or list(indices)
        room = [
            i
            for i in running
            if self.batchers[i].queued == 0 or self.batchers[i].queued + items <= self.batchers[i].max_queue
        ]
        index = min(room or running, key=lambda i: (self.batchers[i].load, self._last_chosen[i]))
        self._choices += 1
        self._last_chosen[index] = self._choices
        return self.batchers[index]

    async def start(self) -> None:
        for batcher in self.batchers:
            await batcher.start()

    async def stop(self) -> None:
        for batcher in self.batchers:
            await batcher.stop()
