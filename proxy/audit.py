"""The audit trail: one JSON object per line on stdout.

Events: `session.start`, `session.query`, `session.end`, `session.failed`,
`session.revoked`, `auth.denied`. Lines are queued and written together every 20 ms
(or every 512 lines), so a busy proxy makes one write for many events. Nothing secret is
ever passed here: identities, user and database names, addresses, reasons, SQL text.

`session.query` is on the data path (one per statement), so its line is assembled from
the session's fields encoded once (`encode_fields`) and the SQL encoded by json's C
string encoder; the timestamp text is reused within a millisecond.

Writing never blocks the event loop: a thread of its own writes the batches, so a stdout
nobody reads (a stalled log pipeline) cannot freeze the sessions. What waits for that
thread is bounded by `audit.maxBufferBytes`; past it, whole batches are dropped, counted
in `rdsgate_audit_dropped_lines_total` and reported on stderr at once and every 10 s while
it lasts. Nothing is lost silently and memory stays bounded; on shutdown the proxy waits
up to 5 s for the thread to write what it holds.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

#: Lines wait at most this long (or until this many are queued) to be written together.
FLUSH_DELAY = 0.02
FLUSH_LINES = 512
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_encode_str = json.encoder.encode_basestring_ascii
#: How often, at most, a lasting overflow is reported again.
REPORT_INTERVAL = 10.0


def encode_fields(fields: dict[str, Any]) -> str:
    """Fields as the inside of a JSON object (`"a":1,"b":"x"`), to splice into lines."""
    return _ENCODER.encode(fields)[1:-1]


class _Writer(threading.Thread):
    """Writes batches to the file descriptor, blocking only itself."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        super().__init__(name="rdsgate-audit", daemon=True)
        self._fd = fd
        self._max = max_bytes
        self._batches: collections.deque[bytes] = collections.deque()
        self._held = 0
        self._cond = threading.Condition()

    def offer(self, data: bytes) -> bool:
        """Queues a batch; False (nothing queued) when that would pass the bound."""
        with self._cond:
            if self._held and self._held + len(data) > self._max:
                return False
            self._batches.append(data)
            self._held += len(data)
            self._cond.notify()
            return True

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._batches:
                    self._cond.wait()
                data = self._batches[0]
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except InterruptedError:
                    continue
                except OSError as exc:
                    log.error("audit trail: cannot write to stdout: %s", exc)
                    break
            with self._cond:
                self._batches.popleft()
                self._held -= len(data)
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Waits until everything queued is written, at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._batches:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


class AuditLog:
    def __init__(
        self,
        fd: int | None = None,
        *,
        max_buffer_bytes: int = 16 << 20,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._writer = _Writer(sys.stdout.fileno() if fd is None else fd, max_buffer_bytes)
        self._writer.start()
        self._on_drop = on_drop
        self._dropped = 0
        self._reported_at = -REPORT_INTERVAL
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
        lines = len(self._pending)
        self._pending.clear()
        if not self._writer.offer(data):
            self._dropped += lines
            if self._on_drop is not None:
                self._on_drop(lines)
            now = time.monotonic()
            if now - self._reported_at >= REPORT_INTERVAL:
                self._reported_at = now
                log.error(
                    "AUDIT LINES DROPPED: stdout is not being read and the audit buffer "
                    "(audit.maxBufferBytes) is full; %d lines dropped so far "
                    "(rdsgate_audit_dropped_lines_total)",
                    self._dropped,
                )

    def close(self, timeout: float = 5.0) -> bool:
        """Writes what is queued, waiting at most `timeout` seconds for stdout."""
        self.flush()
        return self._writer.drain(timeout)
