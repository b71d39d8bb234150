"""The reward server's limits, request and response bodies, and the checks that turn a request into token ids.

Every way a client's input can be unscoreable is found here, before the model runs, and reported as a 4xx
naming the item (`prompts[0]: ...`). Items are checked with `vrm score`'s own rule
(`vrm.data.rows.check_text_or_messages`) and templated and tokenized exactly as `vrm score` does
(`PreferenceTokenizer.encode_parts` + `fit`, i.e. `tokenize_single`), so the server accepts, rejects and scores
the same (prompt, response) pairs as `vrm score`: an empty or whitespace-only response is a valid response (the
template still gives it its end tokens), and any text role the model's chat template renders is valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat

from vrm.data.files import DataFormatError
from vrm.data.rows import check_text_or_messages
from vrm.models.pooling import PromptBoundaryError, find_prompt_end
from vrm.scoring.conservative import MAX_CONSERVATIVE_LAMBDA, check_conservative_lambda
from vrm.scoring.pipeline import RewardPipeline
from vrm.serving.config import ServerConfig


# ----- request and response bodies ----------------------------------------------------------------------------
class ChatMessage(BaseModel):
    """One chat message; extra keys (e.g. `name`) are passed to the chat template."""

    model_config = ConfigDict(extra="allow")
    role: str = Field(
        description="Any role the model's chat template renders (`system`, `user`, `assistant`...)."
    )
    content: str


Text = str | list[ChatMessage]


def _check_request_lambda(value: float | None) -> float | None:
    return None if value is None else check_conservative_lambda(value)


# a request's lambda of the conservative reward (`vrm.scoring.conservative`): a JSON number (strict: not a string
# such as "0.5", not true/false; an integer such as 1 is fine) that passes `check_conservative_lambda`, the one
# rule for lambda (finite, in [0, 1e6]); anything else is a 422 naming the field
ConservativeLambda = Annotated[
    StrictFloat | None,
    AfterValidator(_check_request_lambda),
    Field(
        description="This request's lambda of `reward - lambda * reward_std` (a JSON number in "
        f"[0, {MAX_CONSERVATIVE_LAMBDA:g}]; default: the server's --conservative_lambda).",
        json_schema_extra={"minimum": 0, "maximum": MAX_CONSERVATIVE_LAMBDA},
    ),
]


MAX_MODEL_NAME_CHARS = 256  # a served model's name is a directory's base name: longer is no name of ours


def _model_field() -> Any:
    return Field(
        default=None,
        max_length=MAX_MODEL_NAME_CHARS,
        description="Which served model scores the request (a name in `/health`'s `models`; default: the first).",
    )


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward model request."""

    query: list[str] = Field(description="Full templated texts: prompt followed by response.")
    prompts: list[str] | None = Field(
        default=None,
        description="The templated prompt of each query (optional): marks where responses start.",
    )
    labels: list[Any] | None = Field(default=None, description="Accepted for compatibility; ignored.")
    conservative_lambda: ConservativeLambda = None
    model: str | None = _model_field()


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(
        description="One reward per query (conservative with the request's, else the server's, "
        "conservative_lambda > 0)."
    )
    scores: list[float] = Field(description="The same list as `rewards` (read by newer OpenRLHF).")


class ScoreRequest(BaseModel):
    """(prompt, response) pairs; each is a string or a list of chat messages."""

    prompts: list[Text]
    responses: list[Text]
    conservative_lambda: ConservativeLambda = None
    model: str | None = _model_field()


class ScoreResult(BaseModel):
    reward: float
    reward_std: float = Field(description="Posterior standard deviation of the reward.")
    objective_weights: list[float] = Field(description="Prompt-dependent weights of the K objectives.")
    objective_scores: list[float] = Field(description="The response's score on each of the K objectives.")
    conservative_reward: float | None = Field(
        default=None,
        description="`reward - conservative_lambda * reward_std` (only with a conservative_lambda > 0: the "
        "request's, else the server's).",
    )
    objective_weights_by_name: dict[str, float] | None = Field(
        default=None,
        description="The objective weights keyed by objective name (models with named objectives).",
    )
    objective_scores_by_name: dict[str, float] | None = Field(
        default=None,
        description="The objective scores keyed by objective name (models with named objectives).",
    )
    aleatoric_std: float | None = Field(default=None, description="Ensembles: the members' mean own std.")
    epistemic_std: float | None = Field(
        default=None, description="Ensembles: the spread of the members' rewards."
    )
    member_rewards: list[float] | None = Field(default=None, description="Ensembles: each member's reward.")


class ScoreResponse(BaseModel):
    results: list[ScoreResult]


class ModelDescription(BaseModel):
    model: str = Field(description="The name a request's `model` field gives (its directory's base name).")
    head_type: str
    num_objectives: int
    objective_names: list[str]


class HealthResponse(BaseModel):
    status: str
    model: str = Field(description="The default model's id (by default its directory's base name).")
    head_type: str
    num_objectives: int
    objective_names: list[str]
    conservative_lambda: float
    models: list[ModelDescription] = Field(description="Every served model, the default (first) one first.")


class BatchingCounters(BaseModel):
    batches: int = Field(description="Scoring calls (forward batches) run.")
    items: int = Field(description="Items (texts or pairs) sent to the model.")
    requests: int = Field(description="Requests answered with scores.")
    queued: int = Field(description="Items waiting in the queue now.")
    rejected: int = Field(description="Requests refused with 503 because the queue was full.")
    failed_batches: int = Field(description="Scoring calls that raised an error.")
    timed_out: int = Field(description="Requests answered 503 because they ran past request_timeout_s.")


class ReplicaStats(BatchingCounters):
    model: str = Field(description="The served model this replica holds.")
    device: str = Field(description="The device it runs on.")


class StatsResponse(BatchingCounters):
    """The counters summed over every replica of every model, then each replica's own."""

    replicas: list[ReplicaStats] = Field(description="Each model replica (one per model and device).")


class ErrorResponse(BaseModel):
    detail: str


# ----- the body size limit ------------------------------------------------------------------------------------
class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, from `Content-Length` or while it streams in."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> JSONResponse:
        detail = f"request body of {size} bytes is larger than max_body_bytes={self.max_bytes}"
        return JSONResponse({"detail": detail}, status_code=413)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await JSONResponse({"detail": "invalid Content-Length"}, status_code=400)(
                    scope, receive, send
                )
                return
            if size > self.max_bytes:
                await self._too_large(str(size))(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # FastAPI re-raises an HTTPException met while reading the body
                    raise HTTPException(413, f"request body larger than max_body_bytes={self.max_bytes}")
            return message

        await self.app(scope, limited_receive, send)


# ----- checks on the parsed request ---------------------------------------------------------------------------
class ItemError(ValueError):
    """One request item cannot be scored; the message says why (the caller adds the item's name)."""


def check_items(name: str, values: Sequence[Any], config: ServerConfig) -> None:
    """400 for an empty list, 413 for too many items or an over-long text, naming the index."""
    if not values:
        raise HTTPException(400, f"{name} is an empty list; send at least one item")
    if len(values) > config.max_items_per_request:
        raise HTTPException(
            413,
            f"{name} has {len(values)} items, more than max_items_per_request={config.max_items_per_request}; "
            "split the request",
        )
    for index, value in enumerate(values):
        size = text_size(value)
        if size > config.max_text_chars:
            raise HTTPException(
                413,
                f"{name}[{index}] has {size} characters, more than max_text_chars={config.max_text_chars}",
            )


def text_size(value: str | list[ChatMessage]) -> int:
    """Characters of a text, or of a message list's contents."""
    return len(value) if isinstance(value, str) else sum(len(message.content) for message in value)


def strip_padding(text: str, pad: str | None, eos: str | None) -> str:
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


def as_text(value: str | list[ChatMessage]) -> Any:
    """A request text as the pipeline takes it: a string, or a list of message dicts."""
    return value if isinstance(value, str) else [message.model_dump() for message in value]


def find_invalid_unicode(value: Any, path: str) -> str | None:
    """The path of the first string in `value` holding a lone surrogate (JSON allows `\\ud800`, UTF-8 does not)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"{path} holds {value[err.start : err.end]!a} at character {err.start}"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = find_invalid_unicode(key, f"{path} key") or find_invalid_unicode(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_invalid_unicode(item, f"{path}[{index}]")
            if found:
                return found
    return None


def check_item(value: Any, name: str) -> None:
    """`vrm score`'s rule for a prompt or response (`check_text_or_messages`: valid Unicode text, or messages
    with text `role` and `content`), and valid Unicode in a message's other keys too."""
    try:
        check_text_or_messages(value, "request", name)
    except DataFormatError as err:
        raise ItemError(str(err).removeprefix("request: ")) from None
    found = find_invalid_unicode(value, name)
    if found:
        raise ItemError(
            f"{found}, a lone UTF-16 surrogate, which is not valid Unicode text; send valid UTF-8"
        )


# ----- items to token ids (run in the tokenizing thread) ------------------------------------------------------
@dataclass
class PreparedItem:
    """One item as the model runs it: token ids fitted to `max_length`, and the prompt's token count."""

    ids: list[int]
    prompt_length: int
    tokens: int  # as tokenized, before truncation: what counts against max_request_tokens


def prepare_pair(pipeline: RewardPipeline, prompt: Any, response: Any, index: int) -> PreparedItem:
    """Template and tokenize one (prompt, response) exactly as `RewardPipeline.score` (and `vrm score`) do."""
    check_item(prompt, f"prompts[{index}]")
    check_item(response, f"responses[{index}]")
    try:
        prompt_ids, response_ids = pipeline.template.encode_parts(prompt, response)
    except Exception as err:  # e.g. a chat template that rejects a role, or an empty conversation
        raise ItemError(
            f"prompts[{index}] / responses[{index}] cannot be templated for this model: {type(err).__name__}: {err}"
        ) from None
    if not prompt_ids:
        raise ItemError(f"prompts[{index}] has no tokens once templated")
    if not response_ids:
        raise ItemError(f"responses[{index}] has no tokens once templated")
    tokens = len(prompt_ids) + len(response_ids)
    prompt_ids, response_ids = pipeline.template.fit(prompt_ids, response_ids)
    return PreparedItem(prompt_ids + response_ids, len(prompt_ids), tokens)


def _encode(pipeline: RewardPipeline, text: str) -> list[int]:
    return pipeline.tokenizer(text, add_special_tokens=False, verbose=False).input_ids


def prepare_text(pipeline: RewardPipeline, text: str, prompt: str | None, index: int) -> PreparedItem:
    """Tokenize one templated text as `RewardPipeline.score_texts` does, refusing what it cannot score.

    The prompt boundary is the token count of `prompt` when it is a prefix of `text`, else the response marker
    saved at training time; the response must keep at least one token.
    """
    check_item(text, f"query[{index}]")
    if prompt is not None:
        check_item(prompt, f"prompts[{index}]")
    ids = _encode(pipeline, text)
    if not ids:
        raise ItemError(f"query[{index}] has no tokens")
    if prompt is not None and text.startswith(prompt):
        prompt_length = len(_encode(pipeline, prompt))
        if prompt_length == 0:
            raise ItemError(f"prompts[{index}] has no tokens")
    else:
        marker = pipeline.model.config.response_marker_ids
        row = torch.tensor([ids])
        try:  # the model's own rule: the last marker that is followed by a response token
            prompt_length = int(find_prompt_end(row, torch.ones_like(row), marker_ids=marker)[0]) + 1
        except PromptBoundaryError:
            given = "prompts[{index}] is not a prefix of it" if prompt is not None else "no prompt was given"
            raise ItemError(
                f"query[{index}]: cannot find where the response starts ({given.format(index=index)}, and the "
                f"response marker {marker} is not followed by a response in the text); send it with the "
                "model's chat template applied"
            ) from None
    if prompt_length >= len(ids):
        raise ItemError(
            f"query[{index}] has no response: its {len(ids)} tokens all belong to the prompt (prompts[{index}])"
        )
    prompt_ids, response_ids = pipeline.template.fit(ids[:prompt_length], ids[prompt_length:])
    return PreparedItem(prompt_ids + response_ids, len(prompt_ids), len(ids))
