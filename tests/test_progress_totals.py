"""The progress bar's total: the rows a run will advance by, where that is cheap to know, and never a false one."""

from __future__ import annotations

import io

from PIL import Image

from tokembed.sources.base import SourceOptions, estimate_rows


def test_a_folder_of_images_counts_its_images(tmp_path):
    """An image folder's total was 0 (only text files were counted): a bar at 13/0 rows, ETA 0:00:00."""
    for number in range(5):
        Image.new("RGB", (4, 4)).save(tmp_path / f"p{number}.png")
    (tmp_path / "notes.txt").write_text("not an image row")
    assert estimate_rows([tmp_path], SourceOptions(modality="image")) == 5
    assert estimate_rows([tmp_path]) == 1  # a text run reads the text file alone


def test_a_total_the_run_outgrows_is_dropped(capsys):
    """A Parquet column of PDFs advances by pages, not by the Parquet rows the total counted: 12/3 rows."""
    from cli.progress import LineProgress

    progress = LineProgress(every=0.0)
    progress.start(3)
    progress.advance(2, 10)
    progress.advance(10, 50)
    lines = capsys.readouterr().err.splitlines()
    assert "progress: 2/3 rows" in lines[0] and "progress: 12 rows" in lines[1], lines


def test_the_terminal_bar_drops_a_total_it_outgrows():
    from rich.console import Console

    from cli._terminal import TerminalProgress

    progress = TerminalProgress(Console(file=io.StringIO(), force_terminal=True))
    progress.start(3)
    try:
        progress.advance(2, 10)
        assert progress.bar.tasks[0].total == 3
        progress.advance(10, 50)
        assert progress.bar.tasks[0].total is None and progress.bar.tasks[0].completed == 12
    finally:
        progress.bar.stop()
