"""Arrays on the wire: {"dtype": "float32", "shape": [T, 22, 3], "data": "<base64 of little-endian bytes>"}.

A float32 motion of 196 frames is 52 KB as bytes and 70 KB as base64, instead of ~250 KB of JSON numbers, and it
decodes with one `np.frombuffer`.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

# Wire dtype name -> little-endian numpy dtype.
DTYPES = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8"}
MAX_DIMS = 4


class ArrayError(ValueError):
    """A malformed array payload: `field` (e.g. "joints.data") and why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def encode_array(array: np.ndarray, dtype: str = "float32") -> dict[str, Any]:
    """The wire form of `array` converted to `dtype` (one of DTYPES)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported on the wire; use one of {', '.join(DTYPES)}")
    data = np.ascontiguousarray(np.asarray(array), dtype=DTYPES[dtype])
    return {"dtype": dtype, "shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(payload: dict[str, Any], where: str = "array") -> np.ndarray:
    """The array in a wire payload; a bad dtype, shape, base64 text or byte count raises ArrayError naming `where`."""
    dtype, shape, data = payload.get("dtype"), payload.get("shape"), payload.get("data")
    if dtype not in DTYPES:
        raise ArrayError(f"{where}.dtype", f"{dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ArrayError(f"{where}.shape",
                         f"expected a list of at most {MAX_DIMS} non-negative integers, got {shape!r}")
    if not isinstance(data, str):
        raise ArrayError(f"{where}.data", "expected a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ArrayError(f"{where}.data", "not valid base64 (standard alphabet, with padding)") from None
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    expected = math.prod(shape) * itemsize
    if len(raw) != expected:
        raise ArrayError(f"{where}.data", f"holds {len(raw)} bytes but shape {shape} of {dtype} needs {expected}")
    return np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
