"""Warm upstream connections: logged in ahead of time, each handed to one client session.

Connecting to RDS Proxy with IAM costs a network round trip, IAM authentication and the
log-in itself. For start-up parameters a client recently used (database user, database
name, application_name and every other parameter, compared exactly) that logged in
successfully at least twice, the pool keeps a few connections already logged in, and the next client
session with those parameters takes one instead of waiting. Taking one starts a
replacement in the background.

A warm connection serves exactly one client session and closes with it: RDS Proxy pins a
client connection to its database connection after SET, prepared statements, LISTEN or
temporary tables, so reuse would carry one app's session state into another's. The pool
is bounded per parameter set and in total, forgets parameter sets nobody used for
`forgetAfter`, closes connections idle for `idleTimeout` (keep it below RDS Proxy's idle client
timeout, 30 minutes by default), and closes any connection that said anything after its
log-in. It is emptied when the access file changes, so nothing outlives the grant that
made it. Only sessions that passed authorization reach the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .config import Warm
from .errors import ProxyError
from .metrics import Metrics
from .upstream import UpstreamSession

log = logging.getLogger(__name__)

Key = tuple[tuple[str, str], ...]
#: How long a parameter set whose fill failed waits before the pool tries it again.
FAILURE_BACKOFF = 30.0


def key_of(params: dict[str, str]) -> Key:
    return tuple(sorted(params.items()))


@dataclass(slots=True, eq=False)
class _Warm:
    session: UpstreamSession
    since: float

    def usable(self) -> bool:
        stream = self.session.stream
        transport = stream.transport
        return (
            not stream.closed
            and transport is not None
            and not transport.is_closing()
            and not len(stream.reader)
        )

    def close(self) -> None:
        self.session.stream.close()

    def peer_address(self) -> str | None:
        transport = self.session.stream.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if peer else None


class WarmPool:
    def __init__(
        self,
        config: Warm,
        login: Callable[[dict[str, str]], Coroutine[Any, Any, UpstreamSession]],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        group: list[WarmPool] | None = None,
    ) -> None:
        """`group`: the pools of one process (one per endpoint), which share the gauge."""
        self.config = config
        self._login = login
        self._metrics = metrics
        self._clock = clock
        self._idle: dict[Key, deque[_Warm]] = {}
        self._filling: dict[Key, int] = {}
        #: Parameter sets in demand, with when a client last asked for each.
        self._wanted: dict[Key, float] = {}
        self._failed: dict[Key, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Usable idle connections when last published.
        self.usable = 0
        self._group = group if group is not None else []
        self._group.append(self)

    @property
    def enabled(self) -> bool:
        return self.config.per_key > 0

    @property
    def idle_count(self) -> int:
        return sum(len(q) for q in self._idle.values())

    def _publish(self) -> None:
        """The gauge, set from the event loop (the metrics thread must not walk the pool)."""
        self.usable = sum(w.usable() for q in self._idle.values() for w in q)
        self._metrics.warm_idle.set(sum(pool.usable for pool in self._group))

    def take(self, params: dict[str, str]) -> UpstreamSession | None:
        """A logged-in upstream connection for exactly these parameters, or None (a miss);
        a hit starts its replacement."""
        if not self.enabled:
            return None
        key = key_of(params)
        found = None
        queue = self._idle.get(key)
        while queue:
            warm = queue.popleft()
            if warm.usable():
                found = warm.session
                break
            warm.close()
        if queue is not None and not queue:
            del self._idle[key]
        self._metrics.warm_taken.labels("hit" if found else "miss").inc()
        if found is not None:
            self._wanted[key] = self._clock()
            self._refill(key, params)
        self._publish()
        return found

    def logged_in(self, params: dict[str, str]) -> None:
        """A client session logged in upstream with these parameters: keep some warm once
        they come back. A set seen once is only remembered, so clients that put something
        unique in every connection's parameters (a pid in application_name) cost no spare
        log-ins."""
        if not self.enabled:
            return
        key = key_of(params)
        seen = key in self._wanted
        self._wanted[key] = self._clock()
        if seen:
            self._refill(key, params)

    def _refill(self, key: Key, params: dict[str, str]) -> None:
        failed = self._failed.get(key)
        if failed is not None and self._clock() - failed < FAILURE_BACKOFF:
            return
        have = len(self._idle.get(key, ())) + self._filling.get(key, 0)
        room = self.config.max_total - self.idle_count - sum(self._filling.values())
        for _ in range(max(0, min(self.config.per_key - have, room))):
            self._filling[key] = self._filling.get(key, 0) + 1
            task = asyncio.create_task(self._fill(key, dict(params)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill(self, key: Key, params: dict[str, str]) -> None:
        try:
            session = await self._login(params)
        except ProxyError as exc:
            self._failed[key] = self._clock()
            log.info("warm upstream connection for %s failed: %s", params.get("user"), exc)
            return
        except Exception:
            self._failed[key] = self._clock()
            log.exception("warm upstream connection for %s failed", params.get("user"))
            return
        finally:
            left = self._filling[key] - 1
            if left:
                self._filling[key] = left
            else:
                del self._filling[key]
        self._failed.pop(key, None)
        warm = _Warm(session, self._clock())
        if key not in self._wanted or len(self._idle.get(key, ())) >= self.config.per_key:
            warm.close()
            return
        self._idle.setdefault(key, deque()).append(warm)
        self._publish()

    def sweep(self) -> None:
        """Closes connections idle too long or gone bad, and forgets sets nobody used."""
        now = self._clock()
        for key, last in list(self._wanted.items()):
            if now - last > self.config.forget_after:
                del self._wanted[key]
        for key, queue in list(self._idle.items()):
            keep = deque(
                w
                for w in queue
                if key in self._wanted and now - w.since < self.config.idle_timeout and w.usable()
            )
            for w in queue:
                if w not in keep:
                    w.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        self._publish()

    def keep_addresses(self, addresses: set[str]) -> None:
        """Closes idle connections to an address the endpoint's name no longer resolves to
        (RDS Proxy failed over, or was replaced): none is handed to a client after that, and
        their replacements log in at the new address."""
        for key, queue in list(self._idle.items()):
            keep = deque(w for w in queue if w.peer_address() in addresses)
            if len(keep) == len(queue):
                continue
            for w in queue:
                if w not in keep:
                    log.info(
                        "warm upstream connection to %s closed: the endpoint moved to %s",
                        w.peer_address(),
                        ", ".join(sorted(addresses)),
                    )
                    w.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
            if key in self._wanted:
                self._refill(key, dict(key))
        self._publish()

    def clear(self) -> None:
        """Closes every idle connection (the access file changed, or shutdown)."""
        for queue in self._idle.values():
            for w in queue:
                w.close()
        self._idle.clear()
        self._wanted.clear()
        self._publish()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.clear()
