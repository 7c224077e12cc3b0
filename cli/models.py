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
    from rich.console import Console  # here, not at the top: `tokembed --help` stays fast
    from rich.table import Table

    table = Table(title="tokembed model families")
    for column in ("family", "modes", "detected by", "needs", "exact to", "loaded by"):
        table.add_column(column)
    for f in families:
        table.add_row(f.key, f.modes, f.detected_by, f.needs, f.reference, f.where)
    Console().print(table)
