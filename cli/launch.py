"""The ``tokembed`` program: Python's UTF-8 mode first (``cli/_utf8.py``), before the commands' imports, which a
start again in it would otherwise pay twice (``python -m cli.main`` starts again from ``cli.main.main``)."""

from __future__ import annotations


def main() -> None:
    from cli._utf8 import run_in_utf8_mode

    run_in_utf8_mode()
    from cli.main import main as run_command

    run_command()
