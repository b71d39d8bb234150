"""`vrm serve`: settings checked before anything loads, the model loaded and handed to uvicorn."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tiny_models import PAIRS

from vrm.cli import main
from vrm.serving.config import ServerConfig

PROMPTS = [p for p, _, _ in PAIRS] + [p for p, _, _ in PAIRS]


RESPONSES = [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]


def test_serve_main_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "somewhere", "--max_batch_size", "0"])
    assert exit_info.value.code == 2
    assert "max_batch_size must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("model_id", [None, "team/rm-v2"])
def test_serve_main_loads_the_model_and_runs_uvicorn(tmp_path, monkeypatch, model_id, tiny_pipeline):
    pipeline = tiny_pipeline()
    model_dir = tmp_path / "my-rm"
    pipeline.save_pretrained(str(model_dir))
    seen = {}

    def fake_run(app, host, port, log_level, **kwargs):
        seen.update(app=app, host=host, port=port, **kwargs)

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    argv = ["--model", str(model_dir), "--port", "8123", "--max_batch_size", "8", "--limit_concurrency", "7"]
    assert main(["serve", *argv, *(["--model_id", model_id] if model_id else [])]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert (seen["timeout_keep_alive"], seen["limit_concurrency"]) == (ServerConfig().timeout_keep_alive, 7)
    with TestClient(seen["app"]) as test_client:
        body = test_client.get("/health").json()
        response = test_client.post("/score", json={"prompts": [PROMPTS[0]], "responses": [RESPONSES[0]]})
    # /health names the model by its id or folder name, never its absolute path
    assert body["model"] == (model_id or "my-rm")
    assert str(tmp_path) not in str(body)
    direct = pipeline.score(PROMPTS[:1], RESPONSES[:1]).reward
    assert abs(response.json()["results"][0]["reward"] - float(direct[0])) < 1e-5


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max_batch_tokens", "0", "max_batch_tokens must be >= 1"),
        ("--max_request_tokens", "-1", "max_request_tokens must be >= 1"),
        ("--request_timeout_s", "0", "request_timeout_s must be > 0"),
        ("--max_body_bytes", "0", "max_body_bytes must be >= 1"),
        ("--limit_concurrency", "0", "limit_concurrency must be >= 1"),
    ],
)
def test_serve_main_rejects_bad_limits(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "somewhere", flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_main_rejects_a_nan_lambda(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "somewhere", "--conservative_lambda", "nan"])
    assert exit_info.value.code == 2
    assert "conservative_lambda must be a finite number" in capsys.readouterr().err
