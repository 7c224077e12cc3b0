"""Every command runs in Python's UTF-8 mode, whatever the locale.

tokembed reads a file name as its bytes taken as UTF-8 (README "Paths"): a text, image, PDF or video file's id, an
index folder Arrow opens. Python decodes names with the locale's encoding instead, and under one that is not UTF-8
(``LANG=en_US.ISO-8859-1``; ``LC_ALL=C`` with ``PYTHONUTF8=0``) a cron re-run gave ``résumé.txt`` the id
``rÃ©sumÃ©.txt`` (deleting and adding it again, exit 0), called a UTF-8 name "not UTF-8", and found no shards in
``idx-é`` (Arrow encodes the mis-decoded text as UTF-8 again: other bytes). The command then starts itself again
in UTF-8 mode: ``exec`` keeps the process (its pid, so signals and the exit status reach the caller as before, and
its descriptors: stdin unread, stdout, stderr) and costs one more interpreter start, under such a locale only.
"""

from __future__ import annotations

import os
import sys

from tokembed.locale_names import names_read_as_utf8


def run_in_utf8_mode() -> None:
    """Exec this command again in Python's UTF-8 mode where file names are decoded otherwise; returns where it
    runs in it already, or cannot (``PYTHONUTF8=1`` set and still not in it: ``-X utf8=0``, ``-E``; no interpreter path): the
    library then refuses a name it would read otherwise (``tokembed/locale_names.py``)."""
    if names_read_as_utf8() or os.environ.get("PYTHONUTF8") == "1" or not sys.executable:
        return
    before = os.environ.get("PYTHONUTF8")
    os.environ["PYTHONUTF8"] = "1"  # the environment too: worker processes read names alike (Ray actors: actor_env)
    try:
        os.execv(sys.executable, [sys.orig_argv[0], "-X", "utf8", *sys.orig_argv[1:]])
    except OSError:
        if before is None:
            os.environ.pop("PYTHONUTF8")
        else:
            os.environ["PYTHONUTF8"] = before

