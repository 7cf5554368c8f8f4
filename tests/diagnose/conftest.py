"""Fixtures for the diagnose tests (and, re-exported, the iam tests): proxy config files
(`write_config`), and the `rdsgate` CLI run in this process (`cli`).

In-process runs (`cli`) are for checks whose servers live in this process (moto, the RDS
Proxy stand-in, TLS test servers); the environment is isolated the way TESTING.md says,
with IMDS disabled unless a test is about IMDS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rdsgate.operator.cli.main import main

_CLEARED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_ENDPOINT_URL",
)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def finding(self, check: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [f for f in self.json()["findings"] if f["check"] == check]
        assert found, f"no finding for {check} in {self.out}"
        return found[0]


Cli = Callable[..., Result]
WriteConfig = Callable[..., Path]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`rdsgate ARGS` in this process with `env` (AWS variables not given are unset)."""

    def run(*args: str, env: Mapping[str, str] | None = None) -> Result:
        with monkeypatch.context() as m:
            for name in _CLEARED:
                m.delenv(name, raising=False)
            m.setenv("AWS_CONFIG_FILE", "/dev/null")
            m.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            m.setenv("AWS_EC2_METADATA_DISABLED", "true")
            m.setenv("AWS_DEFAULT_REGION", "eu-west-1")
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capsys.readouterr()
            code = main(list(args))
            captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """A proxy config file (the ConfigMap's config.yaml) for an endpoint, with overrides."""
    counter = [0]

    def write(
        endpoint: str,
        *,
        region: str = "eu-west-1",
        tls: Mapping[str, Any] | None = None,
        aws: Mapping[str, Any] | None = None,
        connect_timeout: str = "2s",
    ) -> Path:
        counter[0] += 1
        path = tmp_path / f"config-{counter[0]}.yaml"
        path.write_text(
            json.dumps(
                {
                    "database": {"name": "orders", "namespace": "shop", "labels": {"env": "test"}},
                    "tls": {"certFile": "/etc/rdsgate/tls/tls.crt", "keyFile": "/etc/rdsgate/k"},
                    "upstream": {
                        "endpoint": endpoint,
                        "tls": dict(tls or {}),
                        "connectTimeout": connect_timeout,
                    },
                    "aws": {"region": region, **dict(aws or {})},
                    "access": {"file": "/etc/rdsgate/access/access.yaml"},
                }
            )
        )
        return path

    return write
