"""Reading an index needs no pandas, which is no dependency of tokembed.

The vectors' dtype name (``tokembed/index/reader.py``) came from pyarrow's ``DataType.to_pandas_dtype()``, which
imports pandas in pyarrow 16-25 (``pyarrow>=16`` is the declared floor): where pandas was not installed, ``info``,
``score``, ``export`` and a second ``encode`` into an index died with ModuleNotFoundError, exit 1. The name now
comes from the numpy mapping of ``tokembed/index/arrays.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO
from helpers import write_jsonl

# The CLI commands of argv[1] (a JSON list of argument lists) in one interpreter where pandas cannot be imported,
# up to the first that fails; the last line printed: their exit codes.
WITHOUT_PANDAS = """
import json, sys


class NoPandas:  # as where pandas is not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NoPandas())
sys.modules.pop("pandas", None)
from cli.main import run

codes = []
for args in json.loads(sys.argv[1]):
    codes.append(run(args))
    if codes[-1]:
        break
print(json.dumps(codes))
"""


def test_info_score_export_and_a_second_encode_run_without_pandas(cli, checkpoint, tmp_path):
    model, index = checkpoint("stanford"), tmp_path / "index"
    first = write_jsonl(tmp_path / "first.jsonl", [{"id": "a", "text": "bread rises"}, {"id": "b", "text": "rivers flow"}])
    assert cli("encode", first, "--model", model, "-o", index, "--quiet").exit_code == 0
    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "c", "text": "snow falls"}])
    commands = [["info", index], ["score", index, "--query", "bread", "--quiet"],
                ["export", index, "--to", tmp_path / "export", "--format", "parquet", "--quiet"],
                ["encode", more, "--model", model, "-o", index, "--quiet"], ["info", index]]
    listed = json.dumps([[str(arg) for arg in args] for args in commands])
    done = subprocess.run([sys.executable, "-c", WITHOUT_PANDAS, listed], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [0] * len(commands), done.stderr


def test_no_module_calls_a_pyarrow_to_pandas_method():
    """The run above passes on pyarrow 26 whatever the code calls (its ``to_pandas_dtype`` imports no pandas); this
    holds on the older releases the floor admits: ``Array.to_pandas``, ``Table.to_pandas``, ``to_pandas_dtype``."""
    modules = sorted((REPO / "tokembed").rglob("*.py")) + sorted((REPO / "cli").rglob("*.py"))
    calls = [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for path in modules
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\.to_pandas\w*\(", line)]
    assert calls == []
