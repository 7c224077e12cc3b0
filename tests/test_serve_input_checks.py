"""``tokembed serve``'s request inputs are checked without pydantic's unions (``tokembed/serve/input_checks.py``): a
body of a million wrong items, or too many right ones, is a short 400 in well under a second while the server goes
on answering; before, each union form that failed recorded an error per item on the event loop (15-35 s, GBs)."""

from __future__ import annotations

import threading
import time
from typing import Annotated

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from pydantic import Field, TypeAdapter, ValidationError  # noqa: E402

from tokembed.serve.input_checks import inputs_limit  # noqa: E402
from tokembed.serve.schemas import APIError, PoolingRequest, RerankRequest, ScoreRequest, SearchRequest  # noqa: E402

MILLION = 1 << 20
MANY = 5000  # one error, not one per item (each union form made its own, 4 x MANY)
_IDS = list[Annotated[int, Field(ge=0)]]
_PYDANTIC_UNION = TypeAdapter(str | list[str] | _IDS | list[_IDS], config={"strict": True})


def test_a_million_wrong_inputs_answer_400_at_once_and_the_server_goes_on(colbert_server):
    body = b'{"input":[' + b",".join([b'["a"]'] * MILLION) + b"]}"  # 6 MiB: under --max-body-mb, over --max-inputs
    answers = {}

    def send():
        started = time.monotonic()
        answers["big"] = httpx.post(colbert_server.url + "/pooling", content=body, timeout=60,
                                    headers={"Content-Type": "application/json"})
        answers["seconds"] = time.monotonic() - started

    sender = threading.Thread(target=send)
    sender.start()
    health = httpx.get(colbert_server.url + "/health", timeout=60)
    sender.join(60)
    assert health.status_code == 200
    assert answers["big"].status_code == 400 and answers["seconds"] < 3, answers
    error = answers["big"].json()["error"]
    assert error == {"message": f"{MILLION} inputs in one request; this server accepts at most 1024 (split the request)",
                     "type": "BadRequestError", "param": "input", "code": 400}


@pytest.mark.parametrize(
    "model, body, param",
    [
        (PoolingRequest, {"input": [[0]] * MILLION}, "input"),
        (PoolingRequest, {"input": ["a"] * MILLION}, "input"),
        (ScoreRequest, {"queries": "a", "documents": [1] * MILLION}, "documents"),
        (ScoreRequest, {"text_1": ["a"] * 600, "text_2": ["b"] * 600}, "documents"),
        (RerankRequest, {"query": "a", "documents": [None] * MILLION}, "documents"),
        (SearchRequest, {"query": [["a"]] * MILLION}, "query"),
    ],
)
def test_too_many_inputs_are_refused_before_their_items_are_looked_at(model, body, param):
    started = time.monotonic()
    with inputs_limit(1024), pytest.raises(APIError) as refused:
        model.model_validate(body)
    assert time.monotonic() - started < 1
    assert refused.value.param == param and "inputs in one request; this server accepts at most 1024" in str(refused.value)


@pytest.mark.parametrize(
    "model, body, says",
    [
        (PoolingRequest, {"input": [["a"]] * MANY}, "item 0: token 0 is a string"),
        (PoolingRequest, {"input": [101.0] * MANY}, "token 0 is a number: token ids are integers >= 0"),
        (PoolingRequest, {"input": ["a"] * MANY + [1]}, f"item {MANY} is an integer, not a text"),
        (PoolingRequest, {"input": [[1]] * MANY + [[-1]]}, f"item {MANY}: token 0 is -1"),
        (ScoreRequest, {"queries": "a", "documents": [1] * MANY}, "item 0 is an integer, not a text"),
        (RerankRequest, {"query": "a", "documents": ["a", {}] * MANY}, "item 1 is an object, not a text"),
        (SearchRequest, {"query": 7}, "Input should be a text or a list of texts, not an integer"),
    ],
)
def test_a_wrong_input_is_one_short_error(model, body, says):
    """Outside a server (no inputs_limit) nothing is counted: the first wrong item is the one error."""
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    errors = refused.value.errors(include_input=False)
    assert len(errors) == 1 and says in errors[0]["msg"] and len(errors[0]["msg"]) < 200, errors


@pytest.mark.parametrize(
    "value",
    ["x", "", [], ["a", "b"], [1, 2], [0], [[]], [[1], [2, 3]], [[1], []], [1, "a"], ["a", 1], [-1, 3], [[1], [-1]],
     [1.0], [True], [None], [[1], "a"], [["a"]], ["a", ["a"]], 5, None, {"a": 1}, [[1.5]], [[True]], [[], 1]],
)
def test_inputs_are_accepted_exactly_as_pydantics_strict_union_accepts_them(value):
    try:
        expected = _PYDANTIC_UNION.validate_python(value)
    except ValidationError:
        expected = ValidationError
    try:
        got = PoolingRequest.model_validate({"input": value}).input
    except ValidationError:
        got = ValidationError
    assert got == expected
