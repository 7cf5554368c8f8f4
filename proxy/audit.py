"""The audit trail: one JSON object per line on stdout.

Events: `session.start`, `session.query`, `session.end`, `session.failed`,
`session.revoked`, `auth.denied`. Lines are queued and written together every 20 ms
(or every 512 lines), so a busy proxy makes one write for many events. Nothing secret is
ever passed here: identities, user and database names, addresses, reasons, SQL text.

`session.query` is on the data path (one per statement), so its line is assembled from
the session's fields encoded once (`encode_fields`) and the SQL encoded by json's C
string encoder; the timestamp text is reused within a millisecond.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

#: Lines wait at most this long (or until this many are queued) to be written together.
FLUSH_DELAY = 0.02
FLUSH_LINES = 512
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_encode_str = json.encoder.encode_basestring_ascii


def encode_fields(fields: dict[str, Any]) -> str:
    """Fields as the inside of a JSON object (`"a":1,"b":"x"`), to splice into lines."""
    return _ENCODER.encode(fields)[1:-1]


class AuditLog:
    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._pending: list[str] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ms = -1
        self._stamp = ""

    def _now(self) -> str:
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms = ms
            self._stamp = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        return self._stamp

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        self._queue(f'{{"time":"{self._now()}","event":"{event}",{encode_fields(fields)}}}')

    def query(self, session_fields: str, kind: str, sql: str, truncated: bool) -> None:
        """A `session.query` event; `session_fields` is the session's `encode_fields`."""
        tail = ',"truncated":true}' if truncated else "}"
        self._queue(
            f'{{"time":"{self._now()}","event":"session.query",{session_fields},'
            f'"kind":"{kind}","sql":{_encode_str(sql)}{tail}'
        )

    def _queue(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        if len(pending) >= FLUSH_LINES:
            self.flush()
        elif not self._scheduled:
            try:
                loop = self._loop or asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._loop = loop
            self._scheduled = True
            loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode()
        self._pending.clear()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
