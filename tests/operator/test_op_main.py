"""`rdsgate-operator` flags and their environment variables."""

from __future__ import annotations

import pytest

from rdsgate.operator.handlers import Config
from rdsgate.operator.main import build_parser, parse_config


def config(argv: list[str]) -> Config:
    return parse_config(build_parser().parse_args(argv))


def test_defaults_watch_all_namespaces_and_log_json(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "RDSGATE_WATCH_NAMESPACES",
        "RDSGATE_PROXY_IMAGE",
        "RDSGATE_LOG_FORMAT",
        "RDSGATE_OPERATOR_NAMESPACE",
        "POD_NAMESPACE",
    ):
        monkeypatch.delenv(var, raising=False)
    args = build_parser().parse_args([])
    assert args.log_format == "json"
    cfg = parse_config(args)
    assert cfg.namespaces == ()
    assert cfg.proxy_image.startswith("ghcr.io/rdsgate/rdsgate:")
    assert cfg.cluster_domain == "cluster.local"


def test_namespaces_from_flags_repeated_or_comma_separated() -> None:
    cfg = config(["-n", "shop,billing", "--namespace", "team-*", "-n", "shop"])
    assert cfg.namespaces == ("shop", "billing", "team-*")


def test_environment_configures_every_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDSGATE_WATCH_NAMESPACES", "a, b")
    monkeypatch.setenv("RDSGATE_PROXY_IMAGE", "registry.example/rdsgate:9")
    monkeypatch.setenv("RDSGATE_LOG_FORMAT", "text")
    monkeypatch.setenv("POD_NAMESPACE", "platform")
    monkeypatch.setenv("RDSGATE_RESYNC_INTERVAL", "60")
    args = build_parser().parse_args([])
    assert args.log_format == "text"
    cfg = parse_config(args)
    assert cfg.namespaces == ("a", "b")
    assert cfg.proxy_image == "registry.example/rdsgate:9"
    assert cfg.operator_namespace == "platform"
    assert cfg.resync_interval == 60
    assert config(["-n", "c", "--proxy-image", "x:1"]).namespaces == ("c",)


def test_an_unknown_log_format_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-format", "xml"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_allowed_proxy_images_default_to_the_proxy_image_repository(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RDSGATE_ALLOWED_PROXY_IMAGES", raising=False)
    monkeypatch.delenv("RDSGATE_PROXY_IMAGE", raising=False)
    assert config([]).allowed_proxy_images == ("ghcr.io/rdsgate/rdsgate",)
    pinned = config(["--proxy-image", "registry.example:5000/team/rdsgate@sha256:" + "ab" * 32])
    assert pinned.allowed_proxy_images == ("registry.example:5000/team/rdsgate",)
    assert config(
        ["--allowed-proxy-image", "a/proxy,b/proxy:1", "--allowed-proxy-image", "c/proxy"]
    ).allowed_proxy_images == ("a/proxy", "b/proxy:1", "c/proxy")
    monkeypatch.setenv("RDSGATE_ALLOWED_PROXY_IMAGES", "mirror/rdsgate, corp/rdsgate:2")
    assert config([]).allowed_proxy_images == ("mirror/rdsgate", "corp/rdsgate:2")
    assert config(["--allowed-proxy-image", "x/y"]).allowed_proxy_images == ("x/y",)  # flags win
