"""Content keys for caches: the same matrix must give the same key whatever its NaN payload bits.

Shared by the dependency-statistics cache and the VAE cache, which both key on a training view
whose held-out entries are NaN: the NaN pattern is part of the key, the NaN bits are not."""
from __future__ import annotations

import json

import numpy as np


def update_with_matrix(h, Y: np.ndarray) -> None:
    """Feed `Y`'s shape, NaN pattern and values (NaN read as 0) into the hashlib object `h`."""
    Y = np.ascontiguousarray(Y, dtype=np.float64)
    nan = np.isnan(Y)
    h.update(json.dumps(list(Y.shape)).encode())
    h.update(np.packbits(nan).tobytes())
    h.update(np.where(nan, 0.0, Y).tobytes())
