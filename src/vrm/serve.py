"""An HTTP reward server with dynamic batching: `vrm serve --model DIR --port 8000`.

Start it (needs the `serve` extra: `pip install 'vrm[serve]'`, i.e. fastapi and uvicorn):

    vrm serve --model runs/my-rm --port 8000                  # or: python -m vrm.serve --model runs/my-rm
    vrm serve --model runs/my-rm --host 0.0.0.0 --max_batch_size 64 --max_wait_ms 10 --conservative_lambda 0.5

Endpoints (the OpenAPI schema is at `/openapi.json`, interactive docs at `/docs`):

* `GET /health` — model name, head type and objective names.
* `GET /stats` — forward batches run, items scored, items queued (shows how well requests are coalesced).
* `POST /get_reward` — OpenRLHF's remote reward model protocol. Each query is the full templated text (prompt
  and response, with the model's chat template applied) as an RL framework sends it; `prompts` (optional) are
  the templated prompts, used to find where each response starts (else the response marker stored in the
  model config is searched for). Padding tokens around the texts are stripped. The answer holds the same list
  as `rewards` and `scores`; it is the conservative reward `reward - lambda * reward_std` when the server runs
  with `--conservative_lambda lambda > 0`, else the plain reward.

      curl -s localhost:8000/get_reward -H 'Content-Type: application/json' \\
        -d '{"query": ["<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n"]}'
      # {"rewards": [0.53], "scores": [0.53]}

* `POST /score` — the full output for (prompt, response) pairs; each is a string or a list of
  `{"role", "content"}` messages, templated by the server exactly as at training time:

      curl -s localhost:8000/score -H 'Content-Type: application/json' \\
        -d '{"prompts": ["How do I sort a list?"], "responses": ["Use sorted(xs)."]}'
      # {"results": [{"reward": 0.53, "reward_std": 0.21, "objective_weights": [...],
      #               "objective_scores": [...]}]}      (+ "conservative_reward" with --conservative_lambda)

Use it from OpenRLHF as a remote reward model:

    python -m openrlhf.cli.train_ppo_ray ... --remote_rm_url http://HOST:8000/get_reward

Concurrent requests are coalesced: a single worker takes queued requests until `max_batch_size` items are
gathered or `max_wait_ms` have passed since the oldest one arrived, scores them in one forward batch in a
worker thread (the event loop stays responsive) and hands each request its slice. When accepting a request
would put more than `max_queue` items in the queue, the server answers 503 with a `Retry-After` header.
Bad requests get a 4xx answer `{"detail": "..."}` that names the field and index at fault.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"vrm serve needs fastapi and uvicorn ({err}); install them with: pip install 'vrm[serve]'"
    ) from err

from .pipeline import RewardPipeline, SequenceScores

logger = logging.getLogger("vrm.serve")

Kind = Literal["texts", "pairs"]


@dataclass
class ServerConfig:
    """Batching and request limits of the reward server.

    Args:
        max_batch_size: most items scored in one forward batch (a larger single request runs alone).
        max_wait_ms: longest time the oldest queued request waits for others to join its batch.
        max_queue: most items waiting in the queue; a request that would exceed it gets 503.
        max_items_per_request: most texts or pairs in one request (more: 413).
        max_text_chars: most characters in one text, or in one message list (more: 413).
        conservative_lambda: when > 0, results include `reward - lambda * reward_std`, and `/get_reward`
            returns it instead of the plain reward.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_items_per_request: int = 256
    max_text_chars: int = 100_000
    conservative_lambda: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_items_per_request", "max_text_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.conservative_lambda < 0:
            raise ValueError(f"conservative_lambda must be >= 0, got {self.conservative_lambda}")


# ----- request and response bodies ----------------------------------------------------------------------------
class ChatMessage(BaseModel):
    """One chat message; extra keys (e.g. `name`) are passed to the chat template."""

    model_config = ConfigDict(extra="allow")
    role: str = Field(description="`system`, `user` or `assistant`.")
    content: str


Text = str | list[ChatMessage]


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward model request."""

    query: list[str] = Field(description="Full templated texts: prompt followed by response.")
    prompts: list[str] | None = Field(
        default=None,
        description="The templated prompt of each query (optional): marks where responses start.",
    )
    labels: list[Any] | None = Field(default=None, description="Accepted for compatibility; ignored.")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(
        description="One reward per query (conservative with conservative_lambda > 0)."
    )
    scores: list[float] = Field(description="The same list as `rewards` (read by newer OpenRLHF).")


class ScoreRequest(BaseModel):
    """(prompt, response) pairs; each is a string or a list of chat messages."""

    prompts: list[Text]
    responses: list[Text]


class ScoreResult(BaseModel):
    reward: float
    reward_std: float = Field(description="Posterior standard deviation of the reward.")
    objective_weights: list[float] = Field(description="Prompt-dependent weights of the K objectives.")
    objective_scores: list[float] = Field(description="The response's score on each of the K objectives.")
    conservative_reward: float | None = Field(
        default=None,
        description="`reward - conservative_lambda * reward_std` (only with conservative_lambda > 0).",
    )


class ScoreResponse(BaseModel):
    results: list[ScoreResult]


class HealthResponse(BaseModel):
    status: str
    model: str
    head_type: str
    num_objectives: int
    objective_names: list[str]
    conservative_lambda: float


class StatsResponse(BaseModel):
    batches: int = Field(description="Scoring calls (forward batches) run.")
    items: int = Field(description="Items (texts or pairs) sent to the model.")
    requests: int = Field(description="Requests answered with scores.")
    queued: int = Field(description="Items waiting in the queue now.")
    rejected: int = Field(description="Requests refused with 503 because the queue was full.")
    failed_batches: int = Field(description="Scoring calls that raised an error.")


class ErrorResponse(BaseModel):
    detail: str


# ----- dynamic batching ---------------------------------------------------------------------------------------
class QueueFullError(RuntimeError):
    """The batcher's queue cannot take the request now."""


class BatcherStoppedError(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Job:
    kind: Kind
    items: list[tuple[Any, Any]]
    future: asyncio.Future
    enqueued_at: float


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    requests: int = 0
    rejected: int = 0
    failed_batches: int = 0


@dataclass
class DynamicBatcher:
    """Coalesces concurrent requests into forward batches scored in one worker thread.

    `submit` queues a request's items and waits for its slice of the scores. One background task takes queued
    requests of the same kind, oldest first, until `max_batch_size` items or `max_wait_ms` since the oldest
    arrived, and scores them with `RewardPipeline.score_texts` ("texts") or `.score` ("pairs"). When a batch of
    several requests fails, each request is retried alone, so one bad request fails only itself.
    """

    pipeline: RewardPipeline
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    stats: BatcherStats = field(default_factory=BatcherStats)
    queued: int = 0

    def __post_init__(self) -> None:
        self._queue: deque[_Job] = deque()
        self._in_flight: list[_Job] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

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
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for job in [*self._in_flight, *self._queue]:
            if not job.future.done():
                job.future.set_exception(BatcherStoppedError("the server is shutting down"))
        self._queue.clear()
        self._in_flight = []
        self.queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def submit(self, kind: Kind, items: list[tuple[Any, Any]]) -> SequenceScores:
        """Queue one request's items and wait for their scores (in order)."""
        if not self.running or self._wakeup is None:
            raise BatcherStoppedError("the scoring worker is not running (start the app with its lifespan)")
        if self.queued > 0 and self.queued + len(items) > self.max_queue:
            self.stats.rejected += 1
            raise QueueFullError(
                f"server overloaded: {self.queued} items queued (max_queue {self.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        job = _Job(kind, items, loop.create_future(), loop.time())
        self._queue.append(job)
        self.queued += len(items)
        self._wakeup.set()
        return await job.future  # a cancelled request cancels its future: the worker then skips it

    def _pop(self) -> _Job:
        job = self._queue.popleft()
        self.queued -= len(job.items)
        return job

    async def _next_batch(self) -> list[_Job]:
        """Wait for queued requests and gather one batch of the same kind."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._pop()
            if not first.future.done():  # skip requests whose client went away
                break
        batch, count = [first], len(first.items)
        deadline = first.enqueued_at + self.max_wait_ms / 1000
        while count < self.max_batch_size:
            if self._queue:
                head = self._queue[0]
                if head.future.done():
                    self._pop()
                    continue
                if head.kind != first.kind or count + len(head.items) > self.max_batch_size:
                    break
                batch.append(self._pop())
                count += len(head.items)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._in_flight = batch
            try:
                outcomes = await loop.run_in_executor(self._executor, self._score_batch, batch)
            except Exception as err:  # the worker must survive anything
                logger.exception("scoring worker error")
                outcomes = [err] * len(batch)
            finally:
                self._in_flight = []
            for job, outcome in zip(batch, outcomes, strict=True):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    self.stats.requests += 1
                    job.future.set_result(outcome)

    def _score(self, kind: Kind, items: list[tuple[Any, Any]]) -> SequenceScores:
        self.stats.batches += 1
        self.stats.items += len(items)
        try:
            if kind == "texts":
                texts = [text for text, _ in items]
                prompts = [prompt for _, prompt in items]
                return self.pipeline.score_texts(texts, None if all(p is None for p in prompts) else prompts)
            return self.pipeline.score([p for p, _ in items], [r for _, r in items])
        except Exception:
            self.stats.failed_batches += 1
            raise

    def _score_batch(self, batch: list[_Job]) -> list[SequenceScores | BaseException]:
        """Runs in the worker thread: one scoring call, or one per request when the joint call fails."""
        kind = batch[0].kind
        try:
            scores = self._score(kind, [item for job in batch for item in job.items])
        except Exception as err:
            if len(batch) == 1:
                return [err]
        else:
            out: list[SequenceScores | BaseException] = []
            start = 0
            for job in batch:
                out.append(scores.select(slice(start, start + len(job.items))))
                start += len(job.items)
            return out
        outcomes: list[SequenceScores | BaseException] = []
        for job in batch:  # isolate the bad request(s)
            try:
                outcomes.append(self._score(kind, job.items))
            except Exception as err:
                outcomes.append(err)
        return outcomes


# ----- request checks -----------------------------------------------------------------------------------------
def _check_items(name: str, values: Sequence[Any], config: ServerConfig) -> None:
    """400 for an empty list or text, 413 for too many items or an over-long text, naming the index."""
    if not values:
        raise HTTPException(400, f"{name} is an empty list; send at least one item")
    if len(values) > config.max_items_per_request:
        raise HTTPException(
            413,
            f"{name} has {len(values)} items, more than max_items_per_request={config.max_items_per_request}; "
            "split the request",
        )
    for index, value in enumerate(values):
        if isinstance(value, str):
            if not value:
                raise HTTPException(400, f"{name}[{index}] is an empty string")
            size = len(value)
        else:
            if not value:
                raise HTTPException(400, f"{name}[{index}] is an empty message list")
            size = sum(len(message.content) for message in value)
        if size > config.max_text_chars:
            raise HTTPException(
                413,
                f"{name}[{index}] has {size} characters, more than max_text_chars={config.max_text_chars}",
            )


def _strip_padding(text: str, pad: str | None, eos: str | None) -> str:
    """Remove pad tokens around a decoded sequence (RL frameworks may send padded texts)."""
    if not pad:
        return text
    while text.startswith(pad):
        text = text[len(pad) :]
    stripped = text
    while stripped.endswith(pad):
        stripped = stripped[: -len(pad)]
    if pad == eos and stripped != text:  # the pad token is the EOS token: keep one, it may be the real end
        stripped += eos
    return stripped


def _as_text(value: str | list[ChatMessage]) -> Any:
    return value if isinstance(value, str) else [message.model_dump() for message in value]


def _error_status(err: BaseException) -> tuple[int, str]:
    if isinstance(err, ValueError):
        return 400, str(err)
    return 500, f"scoring failed: {type(err).__name__}: {err}"


# ----- the app ------------------------------------------------------------------------------------------------
def build_app(
    pipeline: RewardPipeline, config: ServerConfig | None = None, *, model_name: str | None = None
) -> FastAPI:
    """A FastAPI app serving `pipeline`; the batching worker runs during the app's lifespan.

    `pipeline.batch_size` caps the rows of one model forward: give it at least `config.max_batch_size`
    (`run_server` does) so that one coalesced batch is one forward.
    """
    config = config or ServerConfig()
    batcher = DynamicBatcher(pipeline, config.max_batch_size, config.max_wait_ms, config.max_queue)
    model_config = pipeline.model.config
    num_objectives = int(model_config.num_objectives)
    objective_names = list(model_config.objective_names or [f"objective_{k}" for k in range(num_objectives)])
    name = model_name or getattr(model_config, "_name_or_path", "") or type(pipeline.model).__name__
    tokenizer = pipeline.tokenizer
    pad, eos = getattr(tokenizer, "pad_token", None), getattr(tokenizer, "eos_token", None)
    lam = config.conservative_lambda

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="vrm reward server",
        description="Rewards, uncertainties and objective weights from a Variational Reward Model.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.config = config

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            error = next(error for error in errors if error.get("type") == "json_invalid")
            reason = (error.get("ctx") or {}).get("error") or error.get("msg", "")
            return JSONResponse({"detail": f"malformed JSON body: {reason}"}, status_code=400)
        parts = []
        for error in errors:
            location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
            parts.append(f"{location}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    async def run(kind: Kind, items: list[tuple[Any, Any]]) -> SequenceScores:
        try:
            return await batcher.submit(kind, items)
        except QueueFullError as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from err
        except BatcherStoppedError as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from err
        except Exception as err:
            status, message = _error_status(err)
            raise HTTPException(status, message) from err

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 413, 422, 500, 503)
    }

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness and the served model's description."""
        return HealthResponse(
            status="ok" if batcher.running else "starting",
            model=name,
            head_type=str(model_config.head_type),
            num_objectives=num_objectives,
            objective_names=objective_names,
            conservative_lambda=lam,
        )

    @app.get("/stats", response_model=StatsResponse)
    async def stats() -> StatsResponse:
        """Batching counters since the server started."""
        return StatsResponse(queued=batcher.queued, **asdict(batcher.stats))

    @app.post("/get_reward", response_model=GetRewardResponse, responses=errors)
    async def get_reward(body: GetRewardRequest) -> GetRewardResponse:
        """OpenRLHF remote reward model: one reward per full templated text."""
        _check_items("query", body.query, config)
        prompts: list[str | None] = [None] * len(body.query)
        if body.prompts is not None:
            if len(body.prompts) != len(body.query):
                raise HTTPException(400, f"{len(body.query)} queries but {len(body.prompts)} prompts")
            _check_items("prompts", body.prompts, config)
            prompts = [_strip_padding(p, pad, eos) for p in body.prompts]
        texts = [_strip_padding(q, pad, eos) for q in body.query]
        scores = await run("texts", list(zip(texts, prompts, strict=True)))
        reward = scores.reward - lam * scores.reward_std if lam else scores.reward
        values = [float(v) for v in reward.tolist()]
        return GetRewardResponse(rewards=values, scores=values)

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, responses=errors)
    async def score(body: ScoreRequest) -> ScoreResponse:
        """Reward, reward std, objective weights and scores for (prompt, response) pairs."""
        if len(body.prompts) != len(body.responses):
            raise HTTPException(400, f"{len(body.prompts)} prompts but {len(body.responses)} responses")
        _check_items("prompts", body.prompts, config)
        _check_items("responses", body.responses, config)
        items = [(_as_text(p), _as_text(r)) for p, r in zip(body.prompts, body.responses, strict=True)]
        scores = await run("pairs", items)
        results = []
        for index in range(len(items)):
            reward, std = float(scores.reward[index]), float(scores.reward_std[index])
            results.append(
                ScoreResult(
                    reward=reward,
                    reward_std=std,
                    objective_weights=scores.objective_weights[index].tolist(),
                    objective_scores=scores.objective_scores[index].tolist(),
                    conservative_reward=reward - lam * std if lam else None,
                )
            )
        return ScoreResponse(results=results)

    return app


# ----- running it ---------------------------------------------------------------------------------------------
def _default_device() -> str | None:
    import torch

    return "cuda" if torch.cuda.is_available() else None


def run_server(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServerConfig | None = None,
    device: str | None = None,
    log_level: str = "info",
    torch_threads: int | None = None,
) -> None:
    """Load the model at `model_path` and serve it with uvicorn until interrupted.

    `device` defaults to CUDA when available, else CPU; `torch_threads` sets torch's intra-op CPU threads.
    """
    import torch
    import uvicorn

    config = config or ServerConfig()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    pipeline = RewardPipeline.from_pretrained(
        model_path,
        device=device or _default_device(),
        batch_size=config.max_batch_size,
        conservative_lambda=config.conservative_lambda,
    )
    app = build_app(pipeline, config, model_name=model_path)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `vrm serve` options."""
    defaults = ServerConfig()
    parser.add_argument("--model", required=True, help="Directory of a saved vrm model.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--max_batch_size", type=int, default=defaults.max_batch_size, help="Items per forward."
    )
    parser.add_argument(
        "--max_wait_ms",
        type=float,
        default=defaults.max_wait_ms,
        help="How long a request may wait for others to join its batch.",
    )
    parser.add_argument(
        "--max_queue",
        type=int,
        default=defaults.max_queue,
        help="Queued items beyond which requests get 503.",
    )
    parser.add_argument("--max_items_per_request", type=int, default=defaults.max_items_per_request)
    parser.add_argument("--max_text_chars", type=int, default=defaults.max_text_chars)
    parser.add_argument(
        "--conservative_lambda",
        type=float,
        default=defaults.conservative_lambda,
        help="Report reward - lambda * reward_std too (and return it from /get_reward).",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is steadier on cores shared with other work).",
    )
    parser.add_argument(
        "--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`vrm serve`: parse the options and run the server until interrupted."""
    parser = add_serve_arguments(
        argparse.ArgumentParser(prog="vrm serve", description="Serve a reward model over HTTP.")
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = ServerConfig(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_items_per_request=args.max_items_per_request,
            max_text_chars=args.max_text_chars,
            conservative_lambda=args.conservative_lambda,
        )
    except ValueError as err:
        parser.error(str(err))
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error(f"--torch_threads must be >= 1, got {args.torch_threads}")
    run_server(args.model, args.host, args.port, config, args.device, args.log_level, args.torch_threads)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
