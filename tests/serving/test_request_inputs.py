"""The reward server and client input: never a 5xx, clear 4xx messages, and the same rules as `vrm score`."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrm.data.files import DataFormatError
from vrm.scoring.pipeline import RewardPipeline
from vrm.scoring.score_file import score_file
from vrm.serving.app import build_app
from vrm.serving.config import ServerConfig

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline):
    return tiny_pipeline(batch_size=32)


@pytest.fixture(scope="module")
def client(pipeline):
    config = ServerConfig(
        max_items_per_request=6,
        max_text_chars=1000,
        max_request_tokens=1000,
        max_batch_tokens=256,
        max_body_bytes=20_000,
        max_wait_ms=0,
    )
    with TestClient(build_app(pipeline, config), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/score", '{"prompts": ["\\ud800"], "responses": ["a"]}', ["prompts[0]", "surrogate"]),
        ("/score", '{"prompts": ["a", "b"], "responses": ["c", "x\\udfff"]}', ["responses[1]", "surrogate"]),
        (
            "/score",
            '{"prompts": [[{"role": "user", "content": "q\\ud83d"}]], "responses": ["a"]}',
            ["prompts[0][0].content", "surrogate"],
        ),
        (
            "/score",
            '{"prompts": [[{"role": "user", "content": "q", "name": "\\udc00"}]], "responses": ["a"]}',
            ["prompts[0][0].name", "surrogate"],
        ),
        ("/get_reward", '{"query": ["\\ud800"]}', ["query[0]", "surrogate"]),
        ("/get_reward", '{"query": ["abc"], "prompts": ["\\ud800"]}', ["prompts[0]", "surrogate"]),
    ],
)
def test_lone_surrogates_are_400_naming_the_item(client, path, body, words):
    """A lone surrogate (valid JSON, not valid Unicode) is a 400 naming the item, not a tokenizer TypeError (500)."""
    response = client.post(path, content=body.encode(), headers=JSON)
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["detail"], (word, response.json()["detail"])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"query": ["[PAD][PAD][PAD]"]}, ["query[0]", "empty", "padding"]),
        ({"query": [" "], "prompts": [" "]}, ["query[0]", "no tokens"]),
        ({"query": ["[CLS] a [SEP]"], "prompts": ["[CLS] a [SEP]"]}, ["query[0]", "no response"]),
    ],
)
def test_an_encoder_model_refuses_texts_without_a_response(body, words, tiny_model):
    """On a BERT-like (MiniLM-like) model, texts with no response are 400s, not IndexErrors (500)."""
    model, tokenizer, _ = tiny_model("bert_pair")
    with TestClient(build_app(RewardPipeline(model, tokenizer), ServerConfig())) as test_client:
        response = test_client.post("/get_reward", json=body)
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["detail"], (word, response.json()["detail"])


def test_a_chat_template_that_rejects_a_role_is_a_400(pipeline, tiny_pipeline):
    """Real chat templates raise on roles they do not know: that is the request's fault, not the server's."""
    strict = tiny_pipeline()
    strict.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with TestClient(build_app(strict, ServerConfig())) as test_client:
        bad = [{"role": "banana", "content": "x"}]
        response = test_client.post("/score", json={"prompts": ["q", "q"], "responses": ["a", bad]})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "responses[1]" in detail and "unknown role banana" in detail


ROWS = [
    ("q", ""),  # an empty response: the template still closes the assistant turn
    ("q", " "),
    ("q", "\n\t "),
    ("", "a"),
    ("", ""),
    ("q", []),
    ("q", [{"role": "assistant", "content": ""}]),
    ("q", [{"role": "tool", "content": "output"}]),  # any role the chat template renders
    ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}], " "),
    ([], "a"),  # an empty conversation: the chat template refuses it
    ("\ud800", "a"),  # a lone surrogate
    ("q", [{"role": "assistant", "content": "x\udfff"}]),
]


@pytest.mark.parametrize(("prompt", "response"), ROWS, ids=[repr(row)[:40] for row in ROWS])
def test_server_and_vrm_score_accept_and_score_the_same_pairs(pipeline, tmp_path, prompt, response):
    """The server accepts what `vrm score` scores ("" responses, empty message lists) and refuses what it refuses."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": prompt, "response": response}) + "\n")
    try:
        score_file(pipeline, str(rows), str(tmp_path / "out.jsonl"), progress=False)
        offline = json.loads((tmp_path / "out.jsonl").read_text())
    except (ValueError, DataFormatError):
        offline = None
    body = json.dumps({"prompts": [prompt], "responses": [response]}).encode()
    with TestClient(build_app(pipeline, ServerConfig())) as test_client:
        answer = test_client.post("/score", content=body, headers=JSON)
    if offline is None:
        assert answer.status_code == 400, answer.text
        assert "s[0]" in answer.json()["detail"]  # prompts[0] or responses[0]
    else:
        assert answer.status_code == 200, answer.text
        assert abs(answer.json()["results"][0]["reward"] - offline["reward"]) < 1e-5


def test_get_reward_scores_an_empty_response_like_score(client, pipeline, templated):
    full, prompt = templated(pipeline.tokenizer, "q", "")
    texts = client.post("/get_reward", json={"query": [full], "prompts": [prompt]})
    pairs = client.post("/score", json={"prompts": ["q"], "responses": [""]})
    assert texts.status_code == pairs.status_code == 200, (texts.text, pairs.text)
    assert abs(texts.json()["rewards"][0] - pairs.json()["results"][0]["reward"]) < 1e-5


SPECIAL = ["<pad>", "</s>", "<s>", "<|im_start|>", "<|im_end|>", "[PAD]", "\x00", "\ufeff"]


MARKERS = ["<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n"]


weird_text = st.lists(
    st.one_of(
        st.sampled_from(SPECIAL + MARKERS),
        st.text(st.characters(exclude_categories=()), max_size=12),  # surrogates and control characters too
        st.text(st.sampled_from(" \t\n\r\x0b\x1f\x7f"), max_size=4),
        st.text(st.sampled_from("abc "), max_size=30),
    ),
    min_size=1,
    max_size=5,
).map("".join)


long_text = st.integers(990, 1010).map(
    lambda n: "hello " * (n // 6)
)  # around max_text_chars and token limits


text = st.one_of(*[weird_text] * 29, long_text)


scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    weird_text,
)


any_json = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(weird_text, inner, max_size=3),
    max_leaves=10,
)


role = st.one_of(st.sampled_from(["user", "assistant", "system", "tool", ""]), weird_text)


message = st.one_of(
    *[st.fixed_dictionaries({"role": role, "content": text}, optional={"name": any_json})] * 9,
    st.fixed_dictionaries({}, optional={"role": st.one_of(role, scalar), "content": scalar, "x": any_json}),
)


text_or_messages = st.one_of(text, text, text, st.lists(message, max_size=3))


anything = st.one_of(*[text_or_messages] * 19, any_json)


@st.composite
def get_reward_body(draw) -> dict:
    count = draw(st.integers(1, 4))
    prompts = draw(st.lists(weird_text, min_size=count, max_size=count))
    if draw(st.booleans()):  # queries that start with their prompts, as RL frameworks send them
        query = [p + draw(st.sampled_from(["", MARKERS[1]])) + draw(weird_text) for p in prompts]
    else:
        query = draw(st.lists(weird_text, min_size=count, max_size=count))
    if draw(st.integers(0, 9)) == 0:
        query[-1] = draw(long_text)
    body = {"query": query}
    if draw(st.booleans()):
        body["prompts"] = prompts if draw(st.integers(0, 4)) else prompts[1:]
    if draw(st.booleans()):
        body["labels"] = draw(any_json)
    return body


@st.composite
def score_body(draw) -> dict:
    count = draw(st.integers(1, 4))
    prompts = draw(st.lists(anything, min_size=count, max_size=count))
    responses = draw(st.lists(anything, min_size=count, max_size=count))
    return {"prompts": prompts, "responses": responses if draw(st.integers(0, 4)) else responses[1:]}


@st.composite
def requests(draw) -> tuple[str, bytes]:
    names = st.sampled_from(["query", "prompts", "responses", "labels", "extra"])
    loose = st.dictionaries(names, st.one_of(st.lists(anything, max_size=7), any_json), max_size=4)
    path, body = draw(
        st.one_of(
            *[st.tuples(st.just("/get_reward"), get_reward_body())] * 2,
            *[st.tuples(st.just("/score"), score_body())] * 2,
            st.tuples(st.sampled_from(["/get_reward", "/score"]), st.one_of(loose, any_json)),
        )
    )
    raw = json.dumps(body)  # ensure_ascii: lone surrogates go out as \\udxxx escapes, valid JSON
    choice = draw(st.integers(0, 9))
    if choice == 7:
        raw = raw[: len(raw) // 2]  # truncated
    elif choice == 8:
        raw = raw.replace("0", "1" * 5000, 1)  # a number beyond Python's int-parsing limit
    elif choice == 9:
        raw = '{"query": [1e999, -1e999], "prompts": [' + "1" * 5000 + "]}"
    return path, raw.encode()


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
@pytest.mark.slow
def test_fuzzed_requests_never_get_a_5xx(client, request):
    path, body = request
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code < 500, (body[:300], response.text[:300])
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str | list)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    prompts=st.lists(weird_text, min_size=1, max_size=4),
    responses=st.lists(st.one_of(weird_text, st.lists(message, max_size=2)), min_size=1, max_size=4),
)
def test_fuzzed_pairs_are_scored_or_named(client, prompts, responses):
    """Well-formed bodies of weird texts: either scored, or a 4xx whose message names an item or a limit."""
    body = json.dumps({"prompts": prompts, "responses": responses[: len(prompts)]}).encode()
    response = client.post("/score", content=body, headers=JSON)
    assert response.status_code < 500, (body[:300], response.text[:300])
    if response.status_code in (400, 413) and len(responses) >= len(prompts):
        detail = response.json()["detail"]
        assert "[" in detail or "max_" in detail, detail
