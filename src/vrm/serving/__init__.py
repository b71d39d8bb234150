"""The HTTP reward server (needs the `serve` extra): the FastAPI app (`app`), request and response bodies with
the server's limits (`requests`), and dynamic batching shared fairly between requests (`batching`)."""

from vrm.serving.app import build_app, run_server
from vrm.serving.batching import DynamicBatcher
from vrm.serving.requests import ServerConfig

__all__ = ["DynamicBatcher", "ServerConfig", "build_app", "run_server"]
