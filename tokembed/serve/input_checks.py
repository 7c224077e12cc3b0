"""The request inputs' checks, cheap enough for the event loop whatever the body holds.

pydantic validates a union by trying every form and records one error per item for each form that fails: a body of
a million one-text lists (6 MiB) took 15-35 s of the event loop and GBs of error records, and stalled every other
request. These validators pick the one form the first item names, stop at the first item that is not of it, and the
request's count of inputs is refused (``refuse_too_many_inputs``, from the request's model validator) before any item
is looked at. Valid inputs come out as pydantic's strict union would give them.

The server's ``--max-inputs`` reaches the models through ``inputs_limit`` (a context variable the app sets for each
request): models validated outside a server count nothing.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

from pydantic_core import PydanticCustomError

from tokembed.errors import BadInputError

_MAX_INPUTS: ContextVar[int | None] = ContextVar("tokembed_serve_max_inputs", default=None)
_POOLING_FORMS = "a text, a list of texts, a list of token ids (integers >= 0) or a list of lists of token ids"


class APIError(BadInputError):
    """A request the server refuses, as vLLM's error envelope: HTTP ``status``, ``type``, ``param``."""

    def __init__(self, message: str, status: int = 400, type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.param = status, type, param


@contextlib.contextmanager
def inputs_limit(max_inputs: int):
    """Requests validated inside count their inputs against ``max_inputs``."""
    token = _MAX_INPUTS.set(max_inputs)
    try:
        yield
    finally:
        _MAX_INPUTS.reset(token)


def refuse_too_many_inputs(count: int, param: str, limit: int | None = None) -> None:
    """``count`` inputs over ``limit`` (default: the server's ``inputs_limit``) is an ``APIError``."""
    limit = _MAX_INPUTS.get() if limit is None else limit
    if limit is not None and count > limit:
        raise APIError(f"{count} inputs in one request; this server accepts at most {limit} (split the request)",
                       param=param)


def checked_pooling_input(value, handler):
    """``/pooling``'s ``input``: a text, texts, token ids or lists of token ids, the form named by the first item."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _invalid(f"Input should be {_POOLING_FORMS}")
    if not value:
        return value
    first = value[0]
    if type(first) in (int, float):  # floats: numpy's tolist() of a float array, refused as token ids
        _check_token_ids(value, "")
    elif isinstance(first, list):
        for index, ids in enumerate(value):
            if not isinstance(ids, list):
                raise _invalid(f"item {index} is not a list of token ids, as item 0 is")
            _check_token_ids(ids, f"item {index}: ")
    elif isinstance(first, str):
        _check_texts(value)
    else:
        raise _invalid(f"item 0 is {_json_type(first)}; input should be {_POOLING_FORMS}")
    return value


def checked_text_inputs(value, handler):
    """A text or a list of texts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _invalid(f"Input should be a text or a list of texts, not {_json_type(value)}")
    _check_texts(value)
    return value


def checked_texts(value, handler):
    """A list of texts."""
    if not isinstance(value, list):
        raise _invalid(f"Input should be a list of texts, not {_json_type(value)}")
    _check_texts(value)
    return value


def _check_texts(values: list) -> None:
    if not set(map(type, values)) <= {str}:  # C speed: millions of items in a tenth of a second
        index = next(i for i, item in enumerate(values) if type(item) is not str)
        raise _invalid(f"item {index} is {_json_type(values[index])}, not a text (texts are not mixed with other values)")


def _check_token_ids(ids: list, where: str) -> None:
    if not set(map(type, ids)) <= {int}:
        index = next(i for i, item in enumerate(ids) if type(item) is not int)
        raise _invalid(f"{where}token {index} is {_json_type(ids[index])}: token ids are integers >= 0")
    if ids and min(ids) < 0:
        index = next(i for i, item in enumerate(ids) if item < 0)
        raise _invalid(f"{where}token {index} is {ids[index]}: token ids are integers >= 0")


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_input", message)


def _json_type(value) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
