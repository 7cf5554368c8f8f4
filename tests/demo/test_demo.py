"""`rdsgate demo --json`, driven the way a script would drive it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def rdsgate() -> list[str]:
    script = Path(sys.executable).parent / "rdsgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rdsgate.operator.cli.main"]


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-XAtc", sql], capture_output=True, text=True, check=False, timeout=30
    )


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_demo_json_drives_the_whole_path() -> None:
    """Started as a script's background job is (SIGINT ignored), Ctrl-C still stops it."""
    demo = subprocess.Popen(
        [*rdsgate(), "demo", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,
    )
    first: list[str] = []
    reader = threading.Thread(
        target=lambda: first.append(demo.stdout.readline() if demo.stdout else "")
    )
    reader.start()
    reader.join(120)
    try:
        if not first or not first[0]:
            demo.kill()
            pytest.fail("demo printed nothing: " + (demo.stderr.read() if demo.stderr else ""))
        ends: dict[str, Any] = json.loads(first[0])
        assert set(ends) == {"dsn", "denied_dsn", "direct_dsn", "audit_log", "metrics_url"}

        ok = psql(ends["dsn"], "select item from orders order by id")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.split() == ["coffee", "tea"]

        denied = psql(ends["denied_dsn"], "select 1")
        assert denied.returncode != 0
        assert (
            "access denied: shop/orders-app may not log in as database user 'postgres'"
            in denied.stderr
        )

        direct = psql(ends["direct_dsn"], "select current_user")
        assert direct.stdout.strip() == "app"

        with urllib.request.urlopen(ends["metrics_url"], timeout=5) as resp:  # noqa: S310
            metrics = resp.read().decode()
        assert "rdsgate_sessions_total 1.0" in metrics

        audit_log = Path(ends["audit_log"])
        events = [json.loads(line)["event"] for line in audit_log.read_text().splitlines()]
        assert "session.start" in events
        assert "auth.denied" in events
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            assert demo.wait(60) == 0
        except subprocess.TimeoutExpired:
            demo.terminate()  # its own clean-up, so no server outlives the test
            demo.wait(60)
            raise
    assert not audit_log.parent.exists()
    assert "Stopped; everything the demo started is gone." in (
        demo.stderr.read() if demo.stderr else ""
    )
