"""Arrow arrays as numpy views without ``Array.to_numpy``, which imports pandas (~0.4 s of a cold ``score``)."""

from __future__ import annotations

import numpy as np


_NUMPY_NAMES = {"halffloat": "float16", "float": "float32", "double": "float64"}


def numpy_view(array) -> np.ndarray:
    """Zero-copy numpy view of a primitive Arrow array without nulls (fixed-width values: ints, floats)."""
    if array.null_count:
        raise ValueError(f"cannot view an Arrow array with {array.null_count} null(s) as numpy")
    dtype = numpy_dtype(array.type)
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def list_offsets(array) -> np.ndarray:
    """A list array's offsets ([n + 1], int64) as numpy."""
    return numpy_view(array.offsets).astype(np.int64)


def string_offsets(array) -> np.ndarray:
    """A string (or binary) array's offsets ([n + 1], int64) into its data buffer (``buffers()[2]``), as numpy."""
    import pyarrow as pa

    wide = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    width, buffer = np.dtype(np.int64 if wide else np.int32), array.buffers()[1]
    offsets = np.frombuffer(buffer, width, count=buffer.size // width.itemsize)  # a damaged header's size may not divide
    return offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)


def numpy_dtype(arrow_type) -> np.dtype:
    """The numpy dtype of a fixed-width Arrow type (``pa.float16()`` -> float16; int32, uint16, ... share names)."""
    return np.dtype(_NUMPY_NAMES.get(str(arrow_type), str(arrow_type)))


def arrow_array(values: np.ndarray, arrow_type):
    """A primitive Arrow array over ``values`` cast to ``arrow_type``'s width (``pa.array`` imports pandas)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=numpy_dtype(arrow_type))
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def _validity(values: list) -> tuple[object, int]:
    """The validity bitmap of ``values`` (None = null) as an Arrow buffer, or None when nothing is null."""
    import pyarrow as pa

    valid = np.fromiter((value is not None for value in values), dtype=bool, count=len(values))
    if valid.all():
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), int(len(values) - valid.sum())


def string_array(values: list[str | None]):
    """``pa.array(values, pa.string())`` without pandas: the UTF-8 bytes and int32 offsets as buffers."""
    import pyarrow as pa

    encoded = [value.encode() if value is not None else b"" for value in values]
    lengths = np.fromiter((len(item) for item in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    validity, nulls = _validity(values)
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers, null_count=nulls)


def fixed_binary_array(values: list[bytes], width: int):
    """``pa.array(values, pa.binary(width))`` for values of exactly ``width`` bytes each, without pandas."""
    import pyarrow as pa

    if any(len(value) != width for value in values):
        raise ValueError(f"every value must be {width} bytes")
    return pa.Array.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(b"".join(values))])


def int32_array(values: list[int | None]):
    """``pa.array(values, pa.int32())`` with None as null, without pandas."""
    import pyarrow as pa

    data = np.fromiter((value or 0 for value in values), dtype=np.int32, count=len(values))
    validity, nulls = _validity(values)
    return pa.Array.from_buffers(pa.int32(), len(values), [validity, pa.py_buffer(data)], null_count=nulls)
