"""Waiting, visibly and under a deadline: a spinner on a terminal, plain lines in a pipe."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.text import Text


class Progress:
    """Waits on stderr: a spinner on a terminal, a line per change otherwise (logs, CI)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def waiting(self, text: str) -> Iterator[Callable[[str], None]]:
        if self.console.is_terminal:
            with self.console.status(Text(text)) as status:
                yield lambda t: status.update(Text(t))
            return
        self.console.print(Text(text), soft_wrap=True)
        last = [text]

        def update(t: str) -> None:
            if t != last[0]:
                last[0] = t
                self.console.print(Text(t), soft_wrap=True)

        yield update

    def done(self, text: str) -> None:
        self.console.print(Text.assemble(("✓ ", "green"), text), soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(Text.assemble(("! ", "yellow"), text), soft_wrap=True)


class Backoff:
    """Poll intervals growing from 0.1 s to 1 s, under a deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.delay = 0.1

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    @property
    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def restart(self, timeout: float) -> None:
        """The deadline is `timeout` from now (while a request waits for a person, the
        deadline waits too)."""
        self.deadline = time.monotonic() + timeout

    def sleep(self) -> None:
        time.sleep(min(self.delay, self.remaining))
        self.delay = min(self.delay * 1.6, 1.0)
