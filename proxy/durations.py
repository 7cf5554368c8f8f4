"""Durations as people write them in config and resources: `500ms`, `30s`, `15m`, `1h30m`, `7d`."""

from __future__ import annotations

import math
import re
import sys
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError with the accepted forms."""
    text = text.strip()
    pos = 0
    total = 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, like 500ms, 30s, 15m, 12h, "
            "1h30m or 7d"
        )
    if not math.isfinite(total):
        # "999…9s" parses to infinity, which no timer accepts.
        raise ValueError(f"invalid duration {text[:40]!r}: too long")
    return total


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    if rest or not out:
        out += f"{rest}s"
    return out


def _validate(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a string like 30s or 15m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if not value <= sys.float_info.max:
            # NaN, infinity (YAML .nan, .inf) or an integer past float: timers refuse them.
            raise ValueError("a duration must be a finite number of seconds")
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("a duration is a string like 30s or 15m")


#: Seconds as a float, written and read as a duration string.
Duration = Annotated[
    float,
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str),
]
