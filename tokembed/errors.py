"""The errors tokembed raises. The CLI maps each class to one exit code (cli/_errors.py).

The library never calls ``sys.exit``; every failure a user can cause or fix has a class here,
and its message names the file, row or setting at fault.
"""

from __future__ import annotations


class TokembedError(Exception):
    """Base class of every error tokembed raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(TokembedError):
    """Flags or settings that do not fit together."""


class VectorsDroppedError(UsageError):
    """An operation that needs stored vectors, on an index whose vectors ``compress --drop-vectors`` dropped."""


class BadInputError(TokembedError):
    """An input file or row that cannot be read: missing column, bad encoding, null text, duplicate id."""


class ModelError(TokembedError):
    """A checkpoint that cannot be resolved, recognised or loaded."""


class LayoutMismatchError(ModelError):
    """A checkpoint whose tensors do not match the module its detected family builds (loading.require_complete)."""


class UnsupportedModelError(ModelError):
    """A checkpoint whose layout no registered family reads."""


class ModelNotFoundError(ModelError):
    """A model that is neither a local folder nor reachable/cached on the hub."""


class ModelMismatchError(ModelError):
    """The model given to ``score`` is not the one the index was built with."""


class NonFiniteOutputError(ModelError):
    """A served model's forward gave NaN or inf (float16 overflow, weights holding NaN): ``serve``'s 500, the server's
    ``--dtype`` or weights being at fault, not the request. ``encode`` and ``score`` refuse such vectors as a usage
    error (exit 2), ``--dtype`` being theirs to change (``embedder.refuse_non_finite``)."""


class IndexError_(TokembedError):
    """Base of index problems (named with a trailing underscore to keep the builtin usable)."""


class IndexNotFoundError(IndexError_):
    """No manifest where an index was expected."""


class IndexUnavailableError(IndexNotFoundError):
    """``serve --index``: the folder holds no complete generation yet and none was opened before (a deploy swapping
    it in, a copy under way); a later request may find one."""


class IndexCorruptError(IndexError_):
    """A manifest that lists a missing shard, or a shard whose checksum does not match."""


class IndexReplacedError(IndexError_):
    """An index held open (``open_index``) that must read a file of its generation by path (its search structure's,
    opened with ``structure=False``) after a later commit replaced that generation and removed the file: the index is
    sound, the reader is behind it; reopened, it reads the new generation."""


class IndexLockedError(IndexError_):
    """Another process holds the index's writer lock."""


class IndexUnreadableError(IndexError_):
    """An index file or folder that is there but that this user may not read (EACCES, EPERM: another user's index,
    written under umask 077): named with the reason, never called missing or corrupt; the files are intact."""


class IndexWriteError(IndexError_):
    """Writing the index failed (disk full, permission, a read-only folder): the previous index is untouched."""


class OpenFilesLimitError(TokembedError):
    """The OS refused to open another file: the process's limit (``ulimit -n``) or the system's was reached; the
    files are intact (``tokembed/open_files.py``)."""


class DeviceError(TokembedError):
    """A device that cannot be used, or a worker that died."""


class InterruptedRun(TokembedError):
    """The run was interrupted (SIGINT/SIGTERM); the previous index is untouched."""
