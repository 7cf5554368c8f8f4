"""How the lab's parts start and stop: services as context managers, child processes
stopped with a deadline so that nothing a demo or a test started outlives it."""

from __future__ import annotations

import abc
import signal
import subprocess
from types import TracebackType
from typing import Any, Self


class Service(abc.ABC):
    """A server the lab runs; `with` starts it and stops it whatever happens inside."""

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[Any], timeout: float, sig: int = signal.SIGTERM) -> int:
    """Sends `sig` (the child cleans up on it) and kills the child if it has not exited
    within `timeout`; its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
