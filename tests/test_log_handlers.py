"""The test suite's own isolation: a library log handler made during one test does not print "--- Logging error ---"
tracebacks into a later test's stderr (conftest ``_library_log_handlers_follow_stderr``). The two tests run in order."""

from __future__ import annotations

import io
import logging

_closed = io.StringIO()
_made: list[logging.Handler] = []


def test_a_handler_made_on_a_stream_that_is_then_closed():
    logger = logging.getLogger("transformers")
    _made.append(logging.StreamHandler(_closed))  # as transformers' own is made on a test's capture stream
    logger.addHandler(_made[0])
    _closed.close()
    assert any(getattr(handler, "stream", None) is _closed for handler in logger.handlers)


def test_a_later_warning_prints_no_logging_error(capsys):
    logging.getLogger("transformers.tokenization_utils_base").warning("Token indices sequence length is longer")
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Token indices sequence length is longer" in err
    logger = logging.getLogger("transformers")
    logger.handlers = [handler for handler in logger.handlers if handler not in _made]  # leave no duplicate behind
