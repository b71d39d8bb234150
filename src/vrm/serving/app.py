"""An HTTP reward server with dynamic batching: `vrm serve --model DIR --port 8000`.

Start it (needs the `serve` extra: `pip install 'vrm[serve]'`, i.e. fastapi and uvicorn):

    vrm serve --model runs/my-rm --port 8000                  # or: python -m vrm serve --model runs/my-rm
    vrm serve --model runs/my-rm --host 0.0.0.0 --max_batch_size 64 --max_wait_ms 10 --conservative_lambda 0.5

Endpoints (the OpenAPI schema is at `/openapi.json`, interactive docs at `/docs`):

* `GET /` — the inspector, a page to score a prompt's responses by hand and look at rewards, stds, ranks,
  objective scores and weights (`inspector.html`, one self-contained file calling `/health` and `/score`).
* `GET /health` — model id (the directory's base name, or `--model_id`), head type and objective names, and
  `models`: each served model's name, head type and objectives (`vrm serve --model a --model b` serves both).
* `GET /stats` — forward batches run, items scored, items queued (shows how well requests are coalesced), in
  total and per replica (`replicas`: one per model and device).
* `POST /get_reward` — OpenRLHF's remote reward model protocol. Each query is the full templated text (prompt
  and response, with the model's chat template applied) as an RL framework sends it; `prompts` (optional) are
  the templated prompts, used to find where each response starts (else the response marker stored in the
  model config is searched for). Padding tokens around the texts are stripped. The answer holds the same list
  as `rewards` and `scores`; it is the conservative reward `reward - lambda * reward_std` when the server runs
  with `--conservative_lambda lambda > 0`, else the plain reward. A request may set its own lambda with an
  optional `"conservative_lambda": 0.5` field (a JSON number in [0, 1e6], else 422; OpenRLHF never sends it).

      curl -s localhost:8000/get_reward -H 'Content-Type: application/json' \\
        -d '{"query": ["<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n"]}'
      # {"rewards": [0.53], "scores": [0.53]}

* `POST /score` — the full output for (prompt, response) pairs; each is a string or a list of
  `{"role", "content"}` messages, templated by the server exactly as `vrm score` and training do:

      curl -s localhost:8000/score -H 'Content-Type: application/json' \\
        -d '{"prompts": ["How do I sort a list?"], "responses": ["Use sorted(xs)."]}'
      # {"results": [{"reward": 0.53, "reward_std": 0.21, "objective_weights": [...],
      #               "objective_scores": [...]}]}      (+ "conservative_reward" with --conservative_lambda
      #                                                    or the request's "conservative_lambda" > 0)

`/score` and `/get_reward` take an optional `"model": "name"` field: which served model scores the request (the
names `/health` lists; default: the first `--model`); another name is a 400 naming the served ones.

Use it from OpenRLHF as a remote reward model:

    python -m openrlhf.cli.train_ppo_ray ... --remote_rm_url http://HOST:8000/get_reward

A request is checked, then templated and tokenized item by item in one tokenizing thread (items of concurrent
requests take turns), then queued on one replica of the model: with `--devices cuda:0,cuda:1` each model has one replica per device,
each with its own batching worker, and a request goes whole to the replica with the fewest items queued or being
scored (`vrm.serving.batching.ReplicaPool`). A replica's single worker builds forward batches from the queued items round-robin
over the requests, under `max_batch_size` rows and `max_batch_tokens` padded tokens, waiting up to
`max_wait_ms` for others to join, and scores each in a worker thread (the event loop stays responsive).
Limits (`ServerConfig`): body size (413 before parsing), items, characters and tokens per request (413), queue
length (per replica; 503 with `Retry-After`), time per request (503 with `Retry-After`), time to send a request
(`timeout_request_read`: 408), and uvicorn's keep-alive timeout and concurrency limit, which counts requests, not
idle or half-open connections (`vrm.serving.connections`). Bad requests get a 4xx answer `{"detail": "..."}` that
names the field and index at fault. No reward leaves the server unless it is finite: a NaN or infinite reward (or
std, weight or objective score in `/score`) from the model answers 500 naming the item, and lambda is at most 1e6
(`vrm.scoring.conservative`), so that `reward - lambda * reward_std` is finite for any finite reward and std.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"vrm serve needs fastapi and uvicorn ({err}); install them with: pip install 'vrm[serve]'"
    ) from err

from vrm.scoring.conservative import NonFiniteRewardError, conservative_rewards
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.scores import SequenceScores
from vrm.serving.batching import (
    BatcherStoppedError,
    DynamicBatcher,
    QueueFullError,
    ReplicaPool,
    pipeline_score_fn,
    replica_devices,
)
from vrm.serving.config import ServerConfig
from vrm.serving.requests import (
    BodySizeLimit,
    ErrorResponse,
    GetRewardRequest,
    GetRewardResponse,
    HealthResponse,
    ItemError,
    ModelDescription,
    PreparedItem,
    ReplicaStats,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    StatsResponse,
    as_text,
    check_items,
    prepare_pair,
    prepare_text,
    strip_padding,
    text_size,
)

__all__ = ["ServedModel", "build_app", "run_server", "served_model_names", "uvicorn_settings"]

logger = logging.getLogger("vrm.serving.app")
SCORE_FIELDS = frozenset(ScoreResult.model_fields)
TOKENIZE_CHUNK_CHARS = 8192  # characters tokenized per turn of the tokenizing thread (whole items)


def _model_id(name: str) -> str:
    """A model path's base name (an absolute path would tell clients about the server's file system)."""
    return os.path.basename(os.path.normpath(name)) if os.sep in name or os.path.isdir(name) else name


@dataclass
class ServedModel:
    """One model of the server: the name requests pick it by (`"model"`) and `/health` lists, and its replicas,
    the same weights loaded on each device (the first replica templates and tokenizes for all of them)."""

    name: str
    replicas: list[RewardPipeline]


def device_of(pipeline: RewardPipeline) -> str:
    """The device a pipeline's model runs on."""
    parameter = next(pipeline.model.parameters(), None)
    return str(parameter.device) if parameter is not None else "cpu"


@dataclass
class _Served:
    """A served model as the endpoints use it: its replicas' batchers and what `/health` says of it."""

    name: str
    pipeline: RewardPipeline  # templates, tokenizes and formats results for every replica
    pool: ReplicaPool
    description: ModelDescription
    pad: str | None = None
    eos: str | None = None
    devices: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, model: ServedModel, config: ServerConfig) -> _Served:
        if not model.replicas:
            raise ValueError(f"model {model.name!r} has no replica")
        batchers = [
            DynamicBatcher(
                pipeline_score_fn(replica),
                config.max_batch_size,
                config.max_wait_ms,
                config.max_queue,
                config.max_batch_tokens,
            )
            for replica in model.replicas
        ]
        devices = [device_of(replica) for replica in model.replicas]
        pipeline = model.replicas[0]
        model_config = pipeline.model.config
        num_objectives = int(model_config.num_objectives)
        description = ModelDescription(
            model=model.name,
            head_type=str(model_config.head_type),
            num_objectives=num_objectives,
            objective_names=list(
                model_config.objective_names or [f"objective_{k}" for k in range(num_objectives)]
            ),
        )
        tokenizer = pipeline.tokenizer
        return cls(
            model.name,
            pipeline,
            ReplicaPool(batchers, devices),
            description,
            getattr(tokenizer, "pad_token", None),
            getattr(tokenizer, "eos_token", None),
            devices,
        )


def build_app(
    models: RewardPipeline | Sequence[ServedModel],
    config: ServerConfig | None = None,
    *,
    model_name: str | None = None,
) -> FastAPI:
    """A FastAPI app serving one pipeline, or several models each on one or more replicas (`ServedModel`s, the
    first one the default); the batching workers and the tokenizing thread run during its lifespan.

    `model_name` names a single pipeline in `/health` (default: the base name of the model's directory).
    """
    config = config or ServerConfig()
    if isinstance(models, RewardPipeline):
        name = model_name or _model_id(
            getattr(models.model.config, "_name_or_path", "") or type(models.model).__name__
        )
        models = [ServedModel(name, [models])]
    if not models:
        raise ValueError("build_app needs at least one model")
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"served model names must differ, got {names}")
    served = {model.name: _Served.build(model, config) for model in models}
    default = served[names[0]]
    batcher = default.pool.batchers[0]
    lam = config.conservative_lambda
    tokenizing: dict[str, ThreadPoolExecutor] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # one thread for every model: a fast tokenizer must not be called from two threads at once
        tokenizing["executor"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vrm-tokenize")
        for entry in served.values():
            await entry.pool.start()
        try:
            yield
        finally:
            for entry in served.values():
                await entry.pool.stop()
            tokenizing.pop("executor").shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="vrm reward server",
        description="Rewards, uncertainties and objective weights from a Variational Reward Model.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.state.batcher = batcher  # the default model's first replica
    app.state.pools = {name: entry.pool for name, entry in served.items()}
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

    def prepare_chunk(label: str, work: Callable[[int], PreparedItem], indices: range) -> list[PreparedItem]:
        """Runs in the tokenizing thread; anything the tokenizer raises on an item is that item's fault."""
        items = []
        for index in indices:
            try:
                items.append(work(index))
            except ItemError:
                raise
            except Exception as err:
                logger.warning("%s could not be tokenized", label.format(i=index), exc_info=True)
                raise ItemError(
                    f"{label.format(i=index)} cannot be tokenized: {type(err).__name__}: {err}"
                ) from None
        return items

    async def prepare(
        label: str, work: Callable[[int], PreparedItem], sizes: list[int]
    ) -> list[PreparedItem]:
        """Tokenize a request's items in the tokenizing thread, a few thousand characters at a time (requests
        take turns), stopping as soon as the request has more than max_request_tokens."""
        executor = tokenizing.get("executor")
        if executor is None:
            raise HTTPException(503, "the server is not running (start the app with its lifespan)")
        loop = asyncio.get_running_loop()
        items: list[PreparedItem] = []
        tokens, start = 0, 0
        while start < len(sizes):
            end, chars = start + 1, sizes[start]
            while end < len(sizes) and chars + sizes[end] <= TOKENIZE_CHUNK_CHARS:
                chars += sizes[end]
                end += 1
            try:
                chunk = await loop.run_in_executor(executor, prepare_chunk, label, work, range(start, end))
            except ItemError as err:
                raise HTTPException(400, str(err)) from None
            items += chunk
            tokens += sum(item.tokens for item in chunk)
            if tokens > config.max_request_tokens:
                raise HTTPException(
                    413,
                    f"the request has more than max_request_tokens={config.max_request_tokens} tokens "
                    f"({tokens} in its first {end} items); split it into smaller requests",
                )
            start = end
        return items

    def choose(name: str | None) -> _Served:
        """The model a request names (default: the first one); another name is the client's error."""
        if name is None:
            return default
        if name not in served:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise HTTPException(
                400, f"model: {shown!r} is not served here; the served models are: {', '.join(served)}"
            )
        return served[name]

    async def run(
        entry: _Served, label: str, work: Callable[[int], PreparedItem], sizes: list[int]
    ) -> SequenceScores:
        chosen: DynamicBatcher | None = None
        try:
            async with asyncio.timeout(config.request_timeout_s):
                items = await prepare(label, work, sizes)
                chosen = entry.pool.pick(len(items))
                return await chosen.submit([i.ids for i in items], [i.prompt_length for i in items])
        except TimeoutError as err:
            (chosen or entry.pool.batchers[0]).stats.timed_out += 1
            raise HTTPException(
                503,
                f"the request took longer than request_timeout_s={config.request_timeout_s:g} (server busy); "
                "retry later or send fewer items",
                headers={"Retry-After": "5"},
            ) from err
        except QueueFullError as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from err
        except BatcherStoppedError as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from err
        except HTTPException:
            raise
        except Exception as err:
            raise HTTPException(500, f"scoring failed: {type(err).__name__}: {err}") from err

    def non_finite(label: str, err: NonFiniteRewardError) -> HTTPException:
        """The answer for a reward that is not finite: never a 200 with a `null` (what JSON makes of NaN)."""
        item = label.format(i=err.index)
        if err.lambda_at_fault:  # the reward and std are finite: only lambda * std overflowed
            return HTTPException(422, f"{item}: {err}; use a smaller conservative_lambda")
        logger.error("the model gave %s a reward that is not finite: %s", item, err)
        return HTTPException(
            500, f"{item}: {err} (the model's output); no rewards are returned for this request"
        )

    def request_lambda(requested: float | None) -> float:
        """The request's conservative_lambda (validated by the request model), else the server's."""
        return lam if requested is None else requested

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 413, 422, 500, 503)
    }

    inspector_page = resources.files("vrm.serving").joinpath("inspector.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def inspector() -> HTMLResponse:
        """The inspector page; it loads nothing from elsewhere (the policy forbids it) and calls this server."""
        policy = (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
        )
        return HTMLResponse(inspector_page, headers={"Content-Security-Policy": policy})

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        """Liveness, the default model's description, and every served model's (`models`)."""
        running = all(entry.pool.running for entry in served.values())
        return HealthResponse(
            status="ok" if running else "starting",
            **default.description.model_dump(),
            conservative_lambda=lam,
            models=[entry.description for entry in served.values()],
        )

    @app.get("/stats", response_model=StatsResponse)
    async def stats() -> StatsResponse:
        """Batching counters since the server started: in total, and per replica (model and device)."""
        replicas = [
            ReplicaStats(model=name, device=device, queued=one.queued, **asdict(one.stats))
            for name, entry in served.items()
            for one, device in zip(entry.pool.batchers, entry.devices, strict=True)
        ]
        totals = {
            key: sum(getattr(replica, key) for replica in replicas)
            for key in ("batches", "items", "requests", "queued", "rejected", "failed_batches", "timed_out")
        }
        return StatsResponse(**totals, replicas=replicas)

    @app.post("/get_reward", response_model=GetRewardResponse, responses=errors)
    async def get_reward(body: GetRewardRequest) -> GetRewardResponse:
        """OpenRLHF remote reward model: one reward per full templated text."""
        entry = choose(body.model)
        pipeline, pad, eos = entry.pipeline, entry.pad, entry.eos
        check_items("query", body.query, config)
        texts = [strip_padding(q, pad, eos) for q in body.query]
        prompts: list[str | None] = [None] * len(texts)
        if body.prompts is not None:
            if len(body.prompts) != len(texts):
                raise HTTPException(400, f"{len(texts)} queries but {len(body.prompts)} prompts")
            check_items("prompts", body.prompts, config)
            prompts = [strip_padding(p, pad, eos) for p in body.prompts]
        for field_name, values in (("query", texts), ("prompts", prompts)):
            for index, value in enumerate(values):
                if value is not None and not value:
                    raise HTTPException(
                        400, f"{field_name}[{index}] is empty (once padding tokens are removed)"
                    )
        sizes = [len(text) for text in texts]
        scores = await run(
            entry, "query[{i}]", lambda i: prepare_text(pipeline, texts[i], prompts[i], i), sizes
        )
        try:
            values = conservative_rewards(
                scores.reward, scores.reward_std, request_lambda(body.conservative_lambda)
            )
        except NonFiniteRewardError as err:
            raise non_finite("query[{i}]", err) from None
        return GetRewardResponse(rewards=values, scores=values)

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, responses=errors)
    async def score(body: ScoreRequest) -> ScoreResponse:
        """Reward, reward std, objective weights and scores for (prompt, response) pairs."""
        entry = choose(body.model)
        pipeline = entry.pipeline
        if len(body.prompts) != len(body.responses):
            raise HTTPException(400, f"{len(body.prompts)} prompts but {len(body.responses)} responses")
        check_items("prompts", body.prompts, config)
        check_items("responses", body.responses, config)
        pairs = [(as_text(p), as_text(r)) for p, r in zip(body.prompts, body.responses, strict=True)]
        sizes = [text_size(p) + text_size(r) for p, r in zip(body.prompts, body.responses, strict=True)]
        label = "prompts[{i}] / responses[{i}]"
        scores = await run(entry, label, lambda i: prepare_pair(pipeline, *pairs[i], i), sizes)
        pessimism = request_lambda(body.conservative_lambda)
        try:
            conservative = conservative_rewards(scores.reward, scores.reward_std, pessimism)
        except NonFiniteRewardError as err:
            raise non_finite(label, err) from None
        results = []
        for index in range(len(pairs)):
            # the fields `vrm score` and `RewardPipeline` return (one writer), with the request's lambda
            fields = {
                key: value for key, value in pipeline.result(scores, index).items() if key in SCORE_FIELDS
            }
            fields["conservative_reward"] = conservative[index] if pessimism else None
            result = ScoreResult(**fields)
            bad = [
                f"{name}={value!r}"
                for name in ("reward", "reward_std", "objective_weights", "objective_scores")
                for value in ([getattr(result, name)] if name.startswith("reward") else getattr(result, name))
                if not math.isfinite(value)
            ]
            if bad:
                raise HTTPException(
                    500,
                    f"{label.format(i=index)}: the model's output is not finite ({', '.join(bad[:4])}); "
                    "no results are returned for this request",
                )
            results.append(result)
        return ScoreResponse(results=results)

    return app


# ----- running it ---------------------------------------------------------------------------------------------
def served_model_names(models: Sequence[str | Sequence[str]], model_id: str | None = None) -> list[str]:
    """The name of each model to serve (a directory, or the directories of one deep ensemble): its base name
    (`a + b` for an ensemble), or `model_id` for a single model. Two models of one name are a `ValueError`: a
    request's `"model"` field could not tell them apart."""
    names = [
        _model_id(model) if isinstance(model, str) else " + ".join(_model_id(path) for path in model)
        for model in models
    ]
    if model_id is not None:
        if len(names) != 1:
            raise ValueError(
                f"--model_id names one model; {len(names)} are served, each named by its directory's base name"
            )
        names = [model_id]
    for index, name in enumerate(names):
        if name in names[:index]:
            first = names.index(name)
            raise ValueError(
                f"two --model directories have the same name {name!r} ({_shown(models[first])} and "
                f"{_shown(models[index])}): a request's \"model\" field names a model by its directory's base name; "
                "serve distinct names (rename or link one), or pass --ensemble to serve them as one deep ensemble"
            )
    return names


def _shown(model: str | Sequence[str]) -> str:
    return model if isinstance(model, str) else " + ".join(model)


def run_server(
    models: Sequence[str | Sequence[str]],
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServerConfig | None = None,
    devices: Sequence[str] | None = None,
    log_level: str = "info",
    torch_threads: int | None = None,
    model_id: str | None = None,
) -> None:
    """Load each model (a directory, or the directories of one deep ensemble, `vrm.scoring.deep_ensemble`) on
    each of `devices` and serve them with uvicorn until interrupted; the first model is the default.

    `devices` defaults to CUDA when available, else CPU (`replica_devices`); `torch_threads` sets torch's
    intra-op CPU threads; `model_id` is the name `/health` shows for a single model (default: the base name).
    """
    import torch
    import uvicorn

    config = config or ServerConfig()
    names = served_model_names(models, model_id)
    devices = list(devices) if devices else replica_devices(None)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    served = [
        ServedModel(
            name,
            [
                RewardPipeline.from_pretrained(
                    model,
                    device=device,
                    batch_size=config.max_batch_size,
                    conservative_lambda=config.conservative_lambda,
                )
                for device in devices
            ],
        )
        for name, model in zip(names, models, strict=True)
    ]
    app = build_app(served, config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, **uvicorn_settings(config))


def uvicorn_settings(config: ServerConfig) -> dict[str, Any]:
    """The keywords of `uvicorn.run` / `uvicorn.Config` for `config`: its keep-alive timeout and concurrency
    limit, and the HTTP protocol that counts only requests against that limit and times out requests that are
    not received in full within `timeout_request_read` (`vrm.serving.connections`)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from vrm.serving.connections import guarded_protocol

    return {
        "timeout_keep_alive": config.timeout_keep_alive,
        "limit_concurrency": config.limit_concurrency,
        "http": guarded_protocol(H11Protocol, config.timeout_request_read),
    }
