"""Values the compatibility tests send and expect, shared by the driver modules.

They hold the awkward cases (NUL bytes, tabs and newlines, non-ASCII, NULLs, arrays, long
decimals) and large values built from fixed seeds, so every run and every target sees the
same bytes and a test can compare what came back with what went in.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

#: Columns and values of the binary COPY round trip, with the awkward cases in them.
COPY_TYPES = ["int4", "text", "bytea", "numeric", "timestamptz", "text[]"]
COPY_ROWS: list[tuple[Any, ...]] = [
    (1, "plain", b"\x00\x01\xfe\xff", Decimal("12.34"), datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), ["a", "b"]),
    (2, "ünïcødé\ttab\nnewline\\backslash", b"", Decimal("-0.000001"), datetime(1999, 12, 31, tzinfo=UTC), []),
    (3, None, None, None, None, None),
    *[
        (i, f"row {i}", bytes(range(i % 256)), Decimal(i) / 7, datetime(2020, 1, 1, tzinfo=UTC), [str(i)])
        for i in range(4, 2004)
    ],
]  # fmt: skip

#: Sizes of the large values: a few rows of 1 to 4 MB.
LARGE_SIZES = [1 << 20, 2 << 20, 3 << 20, 4 << 20]

#: The many-wide-rows result: WIDE_ROWS rows of `repeat(md5(i::text), 64)` (2 KB each).
WIDE_ROWS = 4000
WIDE_SQL = "select i, repeat(md5(i::text), 64) from generate_series(1, 4000) i order by i"


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 -- compared with PostgreSQL's md5()


def large_payloads() -> list[bytes]:
    """Random bytes of each of LARGE_SIZES, the same on every call."""
    return [random.Random(n).randbytes(n) for n in LARGE_SIZES]


def wide_digest(rows: list[tuple[int, str]]) -> str:
    return sha("".join(f"{i}:{v}" for i, v in rows))


#: What wide_digest gives for WIDE_SQL's result.
EXPECTED_WIDE_DIGEST = wide_digest([(i, md5(str(i)) * 64) for i in range(1, WIDE_ROWS + 1)])
