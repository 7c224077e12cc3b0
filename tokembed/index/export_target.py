"""Export targets refused before anything is written (exit 2): a URI, and a path in the index folder.

``export`` writes local folders only: ``s3://bucket/x`` given to ``pathlib`` is the local ``s3:/bucket/x``, where
the files would land unsaid. A target inside the index folder (``INDEX/plaid``, ``INDEX/export``) is refused
whatever is there: the index's folders hold tokembed's files, and a later ``encode`` or ``compress`` removes
those of its names that no manifest lists; the folder is also moved or swapped as one index.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath

from tokembed.errors import UsageError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # s3:, gs:, file:, hdfs:, az:, abfs:, http: ... (pathlib keeps one /)


def refuse_uri(to) -> None:
    """``to`` (str or Path) written as a URI, ``scheme://...``: refused, naming it as given."""
    if isinstance(to, str) and "://" in to and _SCHEME.match(to):
        shown = to
    else:
        parts = PurePath(to).parts
        if not parts or PurePath(to).is_absolute() or not (_SCHEME.match(parts[0]) and parts[0].endswith(":")):
            return
        shown = f"{parts[0]}//{'/'.join(parts[1:])}"
    raise UsageError(f"--to {shown}: a URI; export writes a local folder only",
                     hint="export to a local folder, then copy it (aws s3 cp --recursive, gsutil cp -r); "
                          "a local folder named so: give its absolute path")


def refuse_inside_index(to: Path, index_folder: Path) -> None:
    """``to`` is the index folder or lies inside it (links resolved)."""
    target, folder = to.resolve(), Path(index_folder).resolve()
    if target == folder:
        raise UsageError(f"--to {to}: the index folder itself", hint="export to a new folder outside the index")
    if target.is_relative_to(folder):
        raise UsageError(f"--to {to}: inside the index folder {index_folder}, whose files a later encode or compress "
                         "may remove", hint="export to a new folder outside the index")
