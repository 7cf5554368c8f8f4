"""The audit trail: one JSON object per line on stdout.

Events: `session.start`, `session.query`, `session.end`, `session.failed`,
`session.revoked`, `auth.denied`. Lines are queued and written together once per
event-loop turn, so a busy proxy makes one write for many events. Nothing secret is
ever passed here: identities, user and database names, addresses, reasons, SQL text.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any


class AuditLog:
    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._pending: list[str] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event}
        record.update(fields)
        self._pending.append(json.dumps(record, separators=(",", ":"), default=str))
        if not self._scheduled:
            try:
                loop = self._loop or asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._loop = loop
            self._scheduled = True
            loop.call_soon(self.flush)

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
