"""Benchmark corpora: real docstrings from the standard library (deterministic), or generated text."""

from __future__ import annotations

import importlib
import inspect
import random

STDLIB_MODULES = (
    "argparse asyncio collections concurrent.futures csv dataclasses datetime decimal difflib email "
    "email.message enum fractions functools gzip http.client http.server importlib inspect ipaddress "
    "itertools json logging lzma mailbox multiprocessing os pathlib pickle pprint queue random re "
    "shutil socket sqlite3 statistics string subprocess tarfile tempfile textwrap threading "
    "tkinter typing unittest urllib.parse urllib.request uuid warnings xml.etree.ElementTree zipfile"
).split()


def docstrings(limit: int = 1200, min_chars: int = 40) -> list[str]:
    """Up to ``limit`` distinct real docstrings from standard-library modules, in a fixed order."""
    seen: set[str] = set()
    found: list[str] = []
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, obj in sorted(vars(module).items()):
            for candidate in [obj, *(vars(obj).values() if inspect.isclass(obj) else [])]:
                doc = inspect.getdoc(candidate) if callable(candidate) or inspect.isclass(candidate) else None
                if doc and len(doc) >= min_chars and doc not in seen:
                    seen.add(doc)
                    found.append(doc)
    random.Random(0).shuffle(found)
    return found[:limit]


WORDS = (
    "the of and to in is was for on that with as by at from his an were are which this be or has had "
    "not but have first one their its new after who they two her she been other when there all during "
    "into school time may years more most only over city some world would where later up such used many "
    "can state about national out known university united then made year team since group people"
).split()


def generated_texts(count: int, seed: int = 0, min_words: int = 5, max_words: int = 200):
    """Yield ``count`` synthetic passages of varied length (for memory benchmarks)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield " ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words)))
