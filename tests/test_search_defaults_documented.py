"""The search defaults as ``tokembed.search.plaid.search`` has them are the ones the user is told: `score --help`,
the README's description of the search, and the benchmarks that run "the defaults". The README's Performance
section keeps runs made at earlier defaults; those call their settings "the defaults then" (or name them), never
"the defaults" (it did: a table row "probe 32, candidates 512 (the defaults)" outlived the change to 24 / 384).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tokembed.search.plaid.search import CENTROID_POOL, DEFAULT_CANDIDATES, DEFAULT_PROBE

REPO = Path(__file__).resolve().parent.parent
CURRENT = (DEFAULT_PROBE, DEFAULT_CANDIDATES)

# A setting presented as the current defaults: "probe P, candidates C (the defaults)", "the defaults (probe P,
# candidates C)", "this release's defaults, probe P and C", "the defaults (probe P / C candidates)".
_PAIR = r"probe (\d+)(?:,| and| /) (?:candidates )?(\d+)"
_CLAIMS = [
    re.compile(r"probe (\d+), candidates (\d+) \((?:the|this release's) defaults\)"),
    re.compile(r"(?:\bthe|this release's|`score`) defaults,? \(?" + _PAIR),
]


def _readme() -> str:
    """README.md with its lines joined and bold marks dropped, so that a claim split over lines still reads as one."""
    return re.sub(r"\s+", " ", (REPO / "README.md").read_text(encoding="utf-8").replace("**", ""))


def _module_constant(path: Path, name: str):
    """A module-level constant of a bench script, read without running the script (it imports the model's stack)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name}: no {name}")


def test_the_readme_describes_the_search_with_the_current_defaults():
    text = _readme()
    probe = re.search(r"each query token probes its best `--probe` centroids \(default (\d+)\)", text)
    pool = re.search(r"the best `(\d+) x --candidates` of those are scored again", text)
    candidates = re.search(r"the best `--candidates` \(default (\d+);", text)
    assert probe and pool and candidates, "README: the search structure's paragraph no longer names its defaults"
    assert (int(probe[1]), int(candidates[1]), int(pool[1])) == (*CURRENT, CENTROID_POOL)


def test_the_readme_calls_no_other_setting_the_defaults():
    text = _readme()
    claims = [(m[0], (int(m[1]), int(m[2]))) for pattern in _CLAIMS for m in pattern.finditer(text)]
    assert claims, "README: no statement of the defaults found (the patterns no longer match its wording)"
    stale = [phrase for phrase, setting in claims if setting != CURRENT]
    assert stale == [], f"README calls these the defaults; they are {CURRENT[0]} / {CURRENT[1]}: {stale}"


def test_score_help_names_the_current_defaults(capsys):
    from cli.main import run

    assert run(["score", "--help"]) == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert f"token (default {DEFAULT_PROBE})" in text
    assert f"(default {DEFAULT_CANDIDATES}; {CENTROID_POOL}x as many are pre-scored" in text


def test_the_search_benchmarks_run_the_current_defaults():
    phases = REPO / "bench" / "_search_phases.py"
    assert CURRENT in _module_constant(phases, "GRID")
    assert re.search(rf"^DEFAULTS = GRID\.index\(\({CURRENT[0]}, {CURRENT[1]}\)\)$", phases.read_text(encoding="utf-8"), re.M)
    assert CURRENT in _module_constant(REPO / "bench" / "search_real.py", "GRID")
    assert _module_constant(REPO / "bench" / "search.py", "DEFAULT_POOL") == CENTROID_POOL
