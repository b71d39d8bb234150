"""The reward server's batching and request limits (`ServerConfig`): one field per `vrm serve` option.

Kept apart from the request bodies (`vrm.serving.requests`) so that building the command's options imports
neither torch nor FastAPI: `vrm serve --help` answers at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class ServerConfig:
    """Batching and request limits of the reward server; each field's `help` is also its `vrm serve` option's."""

    max_batch_size: int = field(default=32, metadata={"help": "Most items scored in one forward batch."})
    max_wait_ms: float = field(
        default=5.0,
        metadata={"help": "Longest time the oldest queued request waits for others to join its batch."},
    )
    max_queue: int = field(
        default=1024,
        metadata={"help": "Most items waiting in the queue; a request that would exceed it gets 503."},
    )
    max_items_per_request: int = field(
        default=256, metadata={"help": "Most texts or pairs in one request (more: 413)."}
    )
    max_text_chars: int = field(
        default=100_000, metadata={"help": "Most characters in one text, or in one message list (more: 413)."}
    )
    max_request_tokens: int = field(
        default=262_144,
        metadata={
            "help": "Most tokens in one request, counted as tokenized (after templating, before the truncation to "
            "the model's max_length); more: 413. Tokenization stops as soon as it is exceeded."
        },
    )
    max_batch_tokens: int = field(
        default=16_384,
        metadata={
            "help": "Most padded tokens (rows x longest row) in one forward batch. Requests are split into forward "
            "batches under this and max_batch_size, interleaved item by item with other requests, so a small "
            "request never waits behind the whole of a large one. One item longer than this runs alone."
        },
    )
    request_timeout_s: float = field(
        default=60.0,
        metadata={
            "help": "Longest time a request may take (tokenizing, queueing, scoring); beyond it the request gets "
            "503 with Retry-After and its remaining work is dropped."
        },
    )
    max_body_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata={
            "help": "Largest request body; a larger one gets 413 before it is parsed (from Content-Length, or "
            "while its bytes are streamed in)."
        },
    )
    timeout_keep_alive: int = field(
        default=5, metadata={"help": "Seconds uvicorn keeps an idle connection open."}
    )
    limit_concurrency: int = field(
        default=128,
        metadata={
            "help": "Most requests served at once (received in full, not yet answered); beyond it uvicorn "
            "answers 503. Idle, half-open and still-sending connections do not count: timeout_request_read "
            "bounds those."
        },
    )
    timeout_request_read: float = field(
        default=30.0,
        metadata={
            "help": "Longest time, in seconds, a client may take to send one whole request (headers and body), "
            "counted from its connection or from the first byte of a request on a kept-alive connection; "
            "beyond it the connection gets 408 and is closed."
        },
    )
    conservative_lambda: float = field(
        default=0.0,
        metadata={
            "help": "When > 0 (at most 1e6), results include reward - lambda * reward_std, and /get_reward "
            "returns it instead of the plain reward."
        },
    )

    def __post_init__(self) -> None:
        from vrm.scoring.conservative import check_conservative_lambda  # torch-free at --help time

        # the one rule for lambda (a finite number in [0, 1e6]), as for each request's field
        self.conservative_lambda = check_conservative_lambda(self.conservative_lambda)
        for name in ("max_wait_ms", "request_timeout_s", "timeout_keep_alive", "timeout_request_read"):
            # NaN passes every comparison below
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        positive = (
            "max_batch_size",
            "max_queue",
            "max_items_per_request",
            "max_text_chars",
            "max_request_tokens",
            "max_batch_tokens",
            "max_body_bytes",
            "limit_concurrency",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "timeout_keep_alive", "timeout_request_read"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if (
            self.max_queue < self.max_items_per_request
        ):  # else such a request is refused whenever one is queued
            raise ValueError(
                f"max_queue ({self.max_queue}) must be >= max_items_per_request ({self.max_items_per_request})"
            )
