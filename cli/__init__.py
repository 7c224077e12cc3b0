"""The tokembed command line: Typer wiring, progress and exit codes. No model code lives here."""
