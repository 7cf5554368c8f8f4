"""The proxy config file: defaults, durations, and every problem listed at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rdsgate.proxy.config import parse_config
from rdsgate.proxy.durations import format_duration, parse_duration
from rdsgate.proxy.errors import ConfigError

MINIMAL: dict[str, Any] = {
    "database": {"name": "orders", "namespace": "shop"},
    "tls": {"certFile": "/tls/tls.crt", "keyFile": "/tls/tls.key"},
    "upstream": {"endpoint": "orders.proxy-abc.eu-west-1.rds.amazonaws.com:5432"},
    "aws": {"region": "eu-west-1"},
    "access": {"file": "/access/access.yaml"},
}


def test_defaults_match_the_documented_contract() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.listen.port == 5432
    assert cfg.upstream.tls.mode == "verify-full"
    assert cfg.upstream.host == "orders.proxy-abc.eu-west-1.rds.amazonaws.com"
    assert cfg.upstream.port == 5432
    assert cfg.limits.idle_timeout == 1800
    assert cfg.limits.max_session_duration == 12 * 3600
    assert cfg.metrics.port == 9187
    assert cfg.dump()["limits"]["idleTimeout"] == "30m"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("15m", 900), ("12h", 43200), ("1h30m", 5400), ("7d", 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "10", "5 minutes", "1x", "m5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_every_problem_is_listed_by_field() -> None:
    bad = dict(MINIMAL)
    bad["upstream"] = {"endpoint": "no-port", "tls": {"mode": "sometimes"}}
    bad["aws"] = {"region": "Europe", "assumeRoleArn": "role/x"}
    bad["limits"] = {"idleTimeout": "soon"}
    bad["lisen"] = {}
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    problems = "\n".join(info.value.problems)
    for where in (
        "upstream.endpoint:",
        "upstream.tls.mode:",
        "aws.region:",
        "aws.assumeRoleArn:",
        "limits.idleTimeout: Value error, invalid duration 'soon'",
        "lisen: unknown field",
    ):
        assert where in problems


def test_proxy_exits_non_zero_listing_problems(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("database: {name: orders}\nupstream: {endpoint: 'x:99999'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "rdsgate.proxy.main", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"invalid config {cfg}" in result.stderr
    for line in (
        "  - tls: required field is missing",
        "  - upstream.endpoint: Value error, port 99999 is out of range 1-65535",
        "  - aws: required field is missing",
        "  - access: required field is missing",
    ):
        assert line in result.stderr
