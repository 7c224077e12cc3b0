"""``tokembed models``: the registry's families, how each is detected and what it needs."""

from __future__ import annotations

import typer


def models(as_json: bool = typer.Option(False, "--json", help="Print the families as JSON.")) -> None:
    """List supported checkpoint layouts and how each is detected."""
    from tokembed.models.registry import describe_families

    families = describe_families()
    if as_json:
        import json

        print(json.dumps([f.__dict__ for f in families]))
        return
    import sys

    columns = ("family", "modes", "detected by", "needs", "exact to", "loaded by")
    rows = [(f.key, f.modes, f.detected_by, f.needs, f.reference, f.where) for f in families]
    if not sys.stdout.isatty():  # piped or redirected: whole lines (a table squeezed to 80 columns cut every name)
        for row in (columns, *rows):
            print("\t".join(" ".join(str(cell).split()) for cell in row))
        return
    from rich.console import Console  # here, not at the top: `tokembed --help` stays fast
    from rich.table import Table

    table = Table(title="tokembed model families")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
