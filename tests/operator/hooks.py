"""Hooks in front of the Kubernetes API emulator (tests/fixtures/k8s.py): what a test needs
of a real API server that the emulator does not do by itself — an admission webhook that
refuses some writes, a request held at a chosen moment to interleave two reconcilers.

They wrap the emulator's request handling for the length of a `with` block; requests they
let through are served as usual.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp.web
import kmock

from tests.fixtures.k8s import ApiCall, ApiServer, api_call

#: What stands in front of the emulator's request handling: None lets the request through,
#: a response answers it instead.
Hook = Callable[[kmock.Request], Awaitable[aiohttp.web.StreamResponse | None]]


@contextmanager
def in_front_of(server: ApiServer, *hooks: Hook) -> Iterator[None]:
    """Put `hooks` in front of the API emulator, as an admission webhook or a slow network
    path sits in front of a real API server."""
    emulator = server.emulator
    handle = emulator._handle

    async def handle_after_hooks(request: kmock.Request) -> aiohttp.web.StreamResponse:
        for hook in hooks:
            answer = await hook(request)
            if answer is not None:
                return answer
        return await handle(request)

    setattr(emulator, "_handle", handle_after_hooks)  # noqa: B010 - shadows the method
    try:
        yield
    finally:
        delattr(emulator, "_handle")


def webhook(server: ApiServer, refuse: Callable[[ApiCall, Any], str | None]) -> Hook:
    """An admission webhook: a create or patch that `refuse(call, body)` has a message for is
    answered 422 Invalid, as the API server answers for a webhook's or a validation's denial."""

    async def hook(request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        call = api_call(request)
        message = refuse(call, request.data) if call.verb in ("create", "patch") else None
        if message is None:
            return None
        error = kmock.KubernetesError(status=422, reason="Invalid", message=message, details={})
        return await server.emulator._render_error(error)

    return hook


class Gate:
    """Watches for the first request `matches` picks: `arrived` is set when it comes, and it
    is held until `opened` is set (when `hold`)."""

    def __init__(self, matches: Callable[[ApiCall], bool], *, hold: bool = True) -> None:
        self.matches = matches
        self.hold = hold
        self.arrived = threading.Event()
        self.opened = threading.Event()

    async def __call__(self, request: kmock.Request) -> None:
        if self.arrived.is_set() or not self.matches(api_call(request)):
            return
        self.arrived.set()
        if self.hold:
            await asyncio.to_thread(self.opened.wait, 30)
