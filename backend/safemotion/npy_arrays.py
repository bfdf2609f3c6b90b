"""Reading plain numeric .npy arrays from disk: never unpickles, and every refusal names the file.

Object arrays (pickles) are refused by `np.load(allow_pickle=False)`; this adds the file name to numpy's message,
refuses non-numeric dtypes (strings, structured records) and, on request, NaN and infinite values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_numeric_npy(path: Path, finite: bool = True) -> np.ndarray:
    """The float32 array in a .npy file; ValueError naming the file when it is a pickle, not numeric or not finite."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays, truncated or foreign files
        raise ValueError(f"{path}: not a plain numeric .npy array ({err}); pickled objects are never loaded") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{path}: holds {kind} values, expected a numeric array")
    array = array.astype(np.float32)
    if finite and not np.isfinite(array).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    return array
