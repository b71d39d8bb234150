"""The inspector page of `vrm serve` (GET /): a self-contained page (no network), and, in a real headless
chromium against a real `vrm serve` process (`browser` marker), the numbers it shows are `/score`'s for the same
input and a refused request shows the server's own error text."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from vrm.scoring.pipeline import RewardPipeline
from vrm.serving.app import build_app

PROMPT = "How do I sort a list in Python?"
RESPONSES = ["Use sorted(xs), or xs.sort() to sort in place.", "Lists cannot be sorted."]
MAX_TEXT_CHARS = 300
PAGE_TIMEOUT_S = 60


def test_inspector_page_is_html_that_loads_nothing_from_elsewhere(tiny_pipeline):
    with TestClient(build_app(tiny_pipeline())) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(link|iframe|img|object|embed)\b", page)
    assert not re.search(r"<script\b[^>]*\bsrc=", page)
    # the page calls the endpoints programs use, relative to where it is served
    assert 'fetch("health"' in page and 'fetch("score"' in page
    # and the browser is told not to load anything from elsewhere either
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_inspector_page_is_not_in_the_api_schema(tiny_pipeline):
    with TestClient(build_app(tiny_pipeline())) as client:
        assert "/" not in client.get("/openapi.json").json()["paths"]


# ----- a real server and a real browser -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(models: list[str], log_path: str, *flags: str) -> tuple[subprocess.Popen, str]:
    """`vrm serve` in its own process on a free port; returns once /health answers."""
    port = _free_port()
    argv = [sys.executable, "-m", "vrm", "serve", "--port", str(port), "--log_level", "warning"]
    argv += [item for model in models for item in ("--model", model)]
    argv += ["--torch_threads", "1", "--device", "cpu", "--max_text_chars", str(MAX_TEXT_CHARS), *flags]
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.close()
            raise AssertionError(f"vrm serve exited: {open(log_path).read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).json().get("status") == "ok":
                return process, url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"vrm serve did not answer /health: {open(log_path).read()[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(three_objective_model_dir, tmp_path_factory):
    process, url = _start_server([three_objective_model_dir], str(tmp_path_factory.mktemp("serve") / "log"))
    yield url
    _stop(process)


def _wait(driver, script: str, what: str):
    """Poll `script` (a JavaScript expression) until it is truthy; its value."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"the page did not show {what} within {PAGE_TIMEOUT_S} s")


def _open(driver, url: str) -> None:
    driver.get(url + "/")
    _wait(driver, "document.querySelector('#server').dataset.state === 'ready'", "the model from /health")


def _fill(driver, prompt: str, responses: list[str]) -> None:
    from selenium.webdriver.common.by import By

    area = driver.find_element(By.ID, "prompt")
    area.clear()
    area.send_keys(prompt)
    while len(driver.find_elements(By.CSS_SELECTOR, ".response-text")) < len(responses):
        driver.find_element(By.ID, "add-response").click()
    for box, text in zip(driver.find_elements(By.CSS_SELECTOR, ".response-text"), responses, strict=True):
        box.clear()
        box.send_keys(text)


def _score(driver) -> str:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.querySelector('#results').dataset.state = 'waiting';")
    driver.find_element(By.ID, "score").click()
    return _wait(
        driver,
        "['done', 'error'].includes(document.querySelector('#results').dataset.state) && "
        "document.querySelector('#results').dataset.state",
        "the scores",
    )


SHOWN = """
return [...document.querySelectorAll('.model-column')].map((column) => ({
  model: column.dataset.model,
  weights: Object.fromEntries([...column.querySelectorAll('.weights-panel .objective-weight')]
    .map((cell) => [cell.dataset.name, Number(cell.dataset.value)])),
  cards: [...column.querySelectorAll('.card')].map((card) => ({
    reward: Number(card.querySelector('.reward').dataset.value),
    reward_text: card.querySelector('.reward').textContent,
    reward_std: Number(card.querySelector('.reward-std').dataset.value),
    rank: Number(card.querySelector('.rank').dataset.rank),
    conservative: card.querySelector('.conservative-reward')
      ? Number(card.querySelector('.conservative-reward').dataset.value) : null,
    scores: Object.fromEntries([...card.querySelectorAll('.objective-score')]
      .map((cell) => [cell.dataset.name, Number(cell.dataset.value)])),
    members: [...card.querySelectorAll('.member-reward')].map((cell) => Number(cell.dataset.value)),
    stds: [...card.querySelectorAll('.epistemic-std, .aleatoric-std')].map((cell) => Number(cell.dataset.value)),
  })),
}));
"""


def _score_shown(driver) -> None:
    """Score, and fail with the page's error text when it shows one."""
    state = _score(driver)
    assert state == "done", driver.execute_script("return document.querySelector('#error').textContent;")


def _direct(url: str, responses: list[str], **extra) -> list[dict]:
    body = {"prompts": [PROMPT] * len(responses), "responses": responses, **extra}
    answer = httpx.post(url + "/score", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


def _assert_shows(card: dict, result: dict, names: list[str]) -> None:
    assert card["reward"] == pytest.approx(result["reward"], abs=1e-5)
    assert float(card["reward_text"]) == pytest.approx(result["reward"], abs=5e-5)  # 4 decimals shown
    assert card["reward_std"] == pytest.approx(result["reward_std"], abs=1e-5)
    assert list(card["scores"]) == names
    assert list(card["scores"].values()) == pytest.approx(result["objective_scores"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.browser
def test_inspector_shows_the_rewards_of_the_score_endpoint(chromium, server):
    _open(chromium, server)
    _fill(chromium, PROMPT, RESPONSES)
    _score_shown(chromium)
    (column,) = chromium.execute_script(SHOWN)
    expected = _direct(server, RESPONSES, conservative_lambda=0)
    names = httpx.get(server + "/health").json()["objective_names"]
    assert len(column["cards"]) == 2
    for card, result in zip(column["cards"], expected, strict=True):
        _assert_shows(card, result, names)
        assert card["conservative"] is None  # the toggle is off: the plain reward
    # rank 1 is the higher reward; the prompt's weights, by name
    rewards = [result["reward"] for result in expected]
    assert [card["rank"] for card in column["cards"]] == [1 + sum(r > v for r in rewards) for v in rewards]
    assert list(column["weights"]) == names
    assert list(column["weights"].values()) == pytest.approx(expected[0]["objective_weights"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.browser
def test_inspector_conservative_toggle_and_a_third_response(chromium, server):
    from selenium.webdriver.common.by import By

    responses = [*RESPONSES, "I do not know."]
    _open(chromium, server)
    _fill(chromium, PROMPT, responses)
    chromium.find_element(By.ID, "conservative").click()
    lam = chromium.find_element(By.ID, "lambda")
    lam.clear()
    lam.send_keys("0.5")
    _score_shown(chromium)
    (column,) = chromium.execute_script(SHOWN)
    expected = _direct(server, responses, conservative_lambda=0.5)
    assert len(column["cards"]) == 3
    shown = [card["conservative"] for card in column["cards"]]
    assert shown == pytest.approx([result["conservative_reward"] for result in expected], abs=1e-5)
    # ranked by the conservative reward once it is on
    assert [card["rank"] for card in column["cards"]] == [1 + sum(c > v for c in shown) for v in shown]
    # a response removed: two cards again
    chromium.find_elements(By.CSS_SELECTOR, ".remove-response")[2].click()
    _score_shown(chromium)
    assert len(chromium.execute_script(SHOWN)[0]["cards"]) == 2


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize(
    ("prompt", "as_messages", "lam", "status"),
    [
        ("x" * (MAX_TEXT_CHARS + 1), False, None, 413),  # longer than the server's --max_text_chars
        ('[{"role": "user"}]', True, None, 422),  # a message without content
        (PROMPT, False, "2000000", 422),  # a conservative lambda over the server's 1e6
    ],
)
def test_inspector_shows_the_servers_error_for_a_bad_input(
    chromium, server, prompt, as_messages, lam, status
):
    from selenium.webdriver.common.by import By

    _open(chromium, server)
    _fill(chromium, prompt, RESPONSES)
    if as_messages:
        chromium.find_element(By.ID, "as-messages").click()
    if lam is not None:
        chromium.find_element(By.ID, "conservative").click()
        chromium.find_element(By.ID, "lambda").clear()
        chromium.find_element(By.ID, "lambda").send_keys(lam)
    assert _score(chromium) == "error"
    shown = chromium.find_element(By.ID, "error").text
    sent = [json.loads(prompt)] * 2 if as_messages else [prompt] * 2
    body = {"prompts": sent, "responses": RESPONSES, "conservative_lambda": float(lam or 0)}
    answer = httpx.post(server + "/score", json=body)
    assert answer.status_code == status
    assert shown == f"HTTP {status}: {answer.json()['detail']}"
    assert chromium.find_elements(By.CSS_SELECTOR, ".card") == []


@pytest.mark.slow
@pytest.mark.browser
def test_inspector_refuses_a_conversation_that_is_not_json(chromium, server):
    from selenium.webdriver.common.by import By

    _open(chromium, server)
    _fill(chromium, "[{'role': 'user'", RESPONSES)
    chromium.find_element(By.ID, "as-messages").click()
    assert _score(chromium) == "error"
    assert "the prompt is not valid JSON" in chromium.find_element(By.ID, "error").text


@pytest.mark.slow
@pytest.mark.browser
def test_inspector_scores_a_conversation(chromium, server):
    from selenium.webdriver.common.by import By

    conversation = '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, '
    conversation += '{"role": "user", "content": "How do I sort a list?"}]'
    _open(chromium, server)
    _fill(chromium, conversation, RESPONSES)
    chromium.find_element(By.ID, "as-messages").click()
    _score_shown(chromium)
    messages = json.loads(conversation)
    body = {"prompts": [messages] * 2, "responses": RESPONSES, "conservative_lambda": 0}
    expected = httpx.post(server + "/score", json=body, timeout=60).json()["results"]
    shown = [card["reward"] for card in chromium.execute_script(SHOWN)[0]["cards"]]
    assert shown == pytest.approx([result["reward"] for result in expected], abs=1e-5)


OLD_SERVER = """
(() => {  // a server from before /health listed `models`: drop the field, and record what /score is sent
  const original = window.fetch.bind(window);
  window.sentBodies = [];
  window.fetch = async (url, options) => {
    if (String(url).endsWith("score")) window.sentBodies.push(JSON.parse(options.body));
    const response = await original(url, options);
    if (!String(url).endsWith("health")) return response;
    const body = await response.json();
    window.droppedModels = "models" in body;
    delete body.models;
    return new Response(JSON.stringify(body), { status: response.status, headers: response.headers });
  };
})();
"""


@pytest.mark.slow
@pytest.mark.browser
def test_inspector_works_with_a_health_answer_without_models(chromium, server):
    added = chromium.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OLD_SERVER})
    try:
        _open(chromium, server)
        _fill(chromium, PROMPT, RESPONSES)
        _score_shown(chromium)
        columns = chromium.execute_script(SHOWN)
        sent = chromium.execute_script("return window.sentBodies;")
        assert chromium.execute_script("return window.droppedModels;") is True  # the page saw no `models`
    finally:
        chromium.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]}
        )
    health = httpx.get(server + "/health").json()
    assert [column["model"] for column in columns] == [health["model"]]
    assert len(sent) == 1 and "model" not in sent[0]  # the server's default model, as before
    expected = _direct(server, RESPONSES, conservative_lambda=0)
    assert [card["reward"] for card in columns[0]["cards"]] == pytest.approx(
        [result["reward"] for result in expected], abs=1e-5
    )


@pytest.fixture(scope="module")
def second_model(three_objective_model_dir, tmp_path_factory) -> str:
    """`three_objective_model_dir`'s model with its head moved: the same objectives, other rewards."""
    directory = str(tmp_path_factory.mktemp("models") / "second")
    pipeline = RewardPipeline.from_pretrained(three_objective_model_dir)
    with torch.no_grad():
        for param in pipeline.model.head.parameters():
            param.add_(0.3)
    pipeline.save_pretrained(directory)
    return directory


@pytest.mark.slow
@pytest.mark.browser
def test_inspector_scores_with_each_served_model_side_by_side(
    chromium, three_objective_model_dir, second_model, tmp_path
):
    process, url = _start_server([three_objective_model_dir, second_model], str(tmp_path / "log"))
    try:
        models = [entry["model"] for entry in httpx.get(url + "/health").json()["models"]]
        _open(chromium, url)
        _fill(chromium, PROMPT, RESPONSES)
        _score_shown(chromium)
        columns = chromium.execute_script(SHOWN)
        expected = [_direct(url, RESPONSES, conservative_lambda=0, model=model) for model in models]
    finally:
        _stop(process)
    assert models == [os.path.basename(three_objective_model_dir), "second"]
    assert [column["model"] for column in columns] == models
    for column, results in zip(columns, expected, strict=True):
        for card, result in zip(column["cards"], results, strict=True):
            assert card["reward"] == pytest.approx(result["reward"], abs=1e-5)
    # the two models really differ, so each column shows its own model's answer
    assert expected[0][0]["reward"] != pytest.approx(expected[1][0]["reward"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.browser
def test_inspector_shows_each_member_of_a_deep_ensemble(
    chromium, three_objective_model_dir, second_model, tmp_path
):
    members = [three_objective_model_dir, second_model]
    process, url = _start_server(members, str(tmp_path / "log"), "--ensemble")
    try:
        _open(chromium, url)
        _fill(chromium, PROMPT, RESPONSES)
        _score_shown(chromium)
        cards = chromium.execute_script(SHOWN)[0]["cards"]
        expected = _direct(url, RESPONSES, conservative_lambda=0)
    finally:
        _stop(process)
    assert all("member_rewards" in result for result in expected)
    for card, result in zip(cards, expected, strict=True):
        assert len(result["member_rewards"]) == 2
        assert card["members"] == pytest.approx(result["member_rewards"], abs=1e-5)
        assert card["stds"] == pytest.approx([result["epistemic_std"], result["aleatoric_std"]], abs=1e-5)
        assert card["reward"] == pytest.approx(result["reward"], abs=1e-5)
