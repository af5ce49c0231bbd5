"""Memory sizes as the config and the CLI write them ("4GB", "512MB", a byte count). Torch-free, so
ModelConfig validates `max_memory` without loading the planner (model/memory.py)."""
from __future__ import annotations

import math
import re

from depmicro.core.errors import DepmicroError

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(text: str | int | float) -> int:
    """'4GB', '512MB', '1.5G', '4096M' (binary units: 1 GB = 2^30 bytes) or a byte count -> bytes; '' or 0 = no cap."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if str(text).strip() == "":
            return 0
        if m is None or m.group(2).lower() not in _UNITS:
            raise DepmicroError(f"max_memory must be a size like 4GB or 512MB, not {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value) or value < 0:
        raise DepmicroError(f"max_memory must be a size >= 0, not {text!r}")
    return int(value * _UNITS[unit])
