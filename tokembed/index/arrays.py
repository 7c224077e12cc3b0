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


def numpy_dtype(arrow_type) -> np.dtype:
    """The numpy dtype of a fixed-width Arrow type (``pa.float16()`` -> float16; int32, uint16, ... share names)."""
    return np.dtype(_NUMPY_NAMES.get(str(arrow_type), str(arrow_type)))


def arrow_array(values: np.ndarray, arrow_type):
    """A primitive Arrow array over ``values`` cast to ``arrow_type``'s width (``pa.array`` imports pandas)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=numpy_dtype(arrow_type))
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])
