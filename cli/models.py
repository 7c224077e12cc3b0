"""``tokembed models``: the registry's families, how each is detected and what it needs."""

from __future__ import annotations

import typer

FIELDS = (("modes", "modes"), ("detected by", "detected_by"), ("needs", "needs"), ("exact to", "reference"),
          ("loaded by", "where"))


def models(as_json: bool = typer.Option(False, "--json", help="Print the families as JSON.")) -> None:
    """List supported checkpoint layouts and how each is detected (a terminal gets one block per family; piped
    output one tab-separated line per family, with a header line)."""
    import sys

    from tokembed.models.registry import describe_families

    families = describe_families()
    if as_json:
        import json

        print(json.dumps([f.__dict__ for f in families]))
    elif sys.stdout.isatty():
        print(_blocks(families))
    else:
        for row in (("family", *(label for label, _ in FIELDS)), *(_cells(f) for f in families)):
            print("\t".join(" ".join(str(cell).split()) for cell in row))


def _cells(family) -> tuple[str, ...]:
    return (family.key, *(getattr(family, name) for _, name in FIELDS))


def _blocks(families) -> str:
    """Each family's name, then its fields wrapped to the terminal's width: a table of six columns squeezed into
    80 cut every family's name and what detects it."""
    import shutil
    import textwrap

    width = max(40, shutil.get_terminal_size().columns - 1)
    blocks = []
    for family in families:
        lines = [family.key]
        for label, name in FIELDS:
            lines += textwrap.wrap(" ".join(str(getattr(family, name)).split()), width=width, break_on_hyphens=False,
                                   initial_indent=f"  {label + ':':<13}", subsequent_indent=" " * 15)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
