"""`rdsgate-proxy --config FILE`: load and validate the config, then serve until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import logs
from .audit import AuditLog
from .aws import TokenMinter, make_session
from .config import ProxyConfig, load_config
from .errors import ConfigError
from .metrics import Health, Metrics, serve
from .server import Server

log = logging.getLogger("rdsgate.proxy")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rdsgate-proxy",
        description="Postgres proxy: authenticates clients, checks their roles, logs in to "
        "RDS Proxy with IAM auth tokens and relays the protocol, with an audit trail.",
    )
    p.add_argument("--config", required=True, type=Path, help="proxy config file (YAML)")
    p.add_argument("--check", action="store_true", help="validate the config file and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="json", choices=["json", "text"])
    return p.parse_args(argv)


async def serve_forever(config: ProxyConfig) -> None:
    metrics = Metrics()
    health = Health()
    audit = AuditLog(
        max_buffer_bytes=config.audit.max_buffer_bytes, on_drop=metrics.audit_dropped.inc
    )
    minter = TokenMinter(config.aws, make_session(config.aws, f"rdsgate-{config.database.name}"))
    httpd = serve(config.metrics.address, config.metrics.port, metrics, health)
    server = Server(config, metrics=metrics, health=health, audit=audit, minter=minter)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # Everything loaded so far lives as long as the process: keep the collector off it,
    # and let it run less often (the data path makes few long-lived objects).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    collector = asyncio.create_task(_collect_garbage())
    await stop.wait()
    collector.cancel()
    log.info("shutting down")
    await server.drain()
    await server.stop()
    if not await asyncio.to_thread(audit.close):
        log.error("audit trail: stdout did not take the last lines within 5s")
    httpd.shutdown()


#: Seconds between full garbage collections.
GC_INTERVAL = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, which hands the free pages inside malloc's heaps back to the
    kernel. What a collection frees stays in the process otherwise: the periodic diagnosis
    left about 3 MiB more RSS each time, which one trim took back. None elsewhere (musl)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


async def _collect_garbage() -> None:
    """With the thresholds above a full collection almost never comes by itself, and
    cyclic garbage piles up: every periodic diagnosis builds botocore sessions and
    clients, about 12 MiB of cycles, which a soak saw as RSS growing by that much every
    5 minutes. So collect on a timer, and trim malloc's heaps after; with the start-up
    objects frozen both take milliseconds."""
    trim = _malloc_trim()
    while True:
        await asyncio.sleep(GC_INTERVAL)
        started = time.perf_counter()
        found = gc.collect()
        if trim is not None:
            trim(0)
        log.debug(
            "gc: %d unreachable objects in %.1f ms", found, (time.perf_counter() - started) * 1e3
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"rdsgate-proxy: invalid config {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok")
        return 0
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve_forever(config))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
