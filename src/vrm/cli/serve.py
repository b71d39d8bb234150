"""`vrm serve`: an HTTP reward server with dynamic batching (`vrm.serving`): OpenRLHF's `/get_reward`, `/score`,
`/health`, `/stats`. Needs the `serve` extra (fastapi, uvicorn)."""

from __future__ import annotations

import argparse

HELP = "serve a reward model over HTTP (OpenRLHF /get_reward, /score)"

_HELP = {
    "max_batch_size": "Most items per forward batch.",
    "max_wait_ms": "How long a request may wait for others to join its batch.",
    "max_queue": "Queued items beyond which requests get 503.",
    "max_items_per_request": "Most texts or pairs per request (more: 413).",
    "max_text_chars": "Most characters per text or message list (more: 413).",
    "max_request_tokens": "Most tokens per request, as tokenized before truncation (more: 413).",
    "max_batch_tokens": "Most padded tokens (rows x longest) per forward batch; larger requests are split.",
    "request_timeout_s": "Longest time a request may take before it gets 503.",
    "max_body_bytes": "Largest request body (more: 413, before parsing).",
    "timeout_keep_alive": "Seconds uvicorn keeps an idle connection open.",
    "limit_concurrency": "Most concurrent connections and tasks; beyond it uvicorn answers 503.",
    "conservative_lambda": "Report reward - lambda * reward_std too (and return it from /get_reward).",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `ServerConfig` field, with its default, and where to listen."""
    from dataclasses import fields

    from vrm.serving.requests import ServerConfig

    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="Directory of a saved vrm model (repeat it, with --ensemble, to serve a deep ensemble).",
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="Serve the --model directories as one deep ensemble."
    )
    parser.add_argument(
        "--model_id", default=None, help="Name shown by /health (default: the model directory's base name)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=8000)
    for item in fields(ServerConfig):
        default = item.default
        parser.add_argument(
            f"--{item.name}",
            type=type(default),
            default=default,
            help=f"{_HELP[item.name]} Default: {default}.",
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


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from vrm.scoring.deep_ensemble import ensemble_paths
    from vrm.serving.app import run_server
    from vrm.serving.requests import ServerConfig

    try:
        config = ServerConfig(**{item.name: getattr(args, item.name) for item in fields(ServerConfig)})
    except ValueError as err:
        args.parser.error(str(err))
    if args.torch_threads is not None and args.torch_threads < 1:
        args.parser.error(f"--torch_threads must be >= 1, got {args.torch_threads}")
    try:
        model_path = ensemble_paths(args.model, args.ensemble)
    except ValueError as err:
        args.parser.error(str(err))
    run_server(
        model_path,
        args.host,
        args.port,
        config,
        args.device,
        args.log_level,
        args.torch_threads,
        args.model_id,
    )
    return 0
