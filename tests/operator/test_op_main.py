"""`rdsgate-operator` flags and their environment variables."""

from __future__ import annotations

import os

import pytest

from rdsgate.operator.handlers import Config
from rdsgate.operator.main import build_parser, main, parse_config


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


def test_the_webhooks_are_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("RDSGATE_ADMISSION_")]:
        monkeypatch.delenv(var)
    assert config([]).admission is None
    url = config(["--admission-url", "https://10.0.0.5:9443/"]).admission
    assert url is not None and url.target is not None
    assert (url.listen, url.target.url, url.target.service) == (
        ("0.0.0.0", 9443),  # noqa: S104 - the default listen address, read back
        "https://10.0.0.5:9443",
        None,
    )
    service = config(
        ["--admission-listen", "[::]:8443", "--admission-service", "rdsgate/rdsgate-webhook"]
    ).admission
    assert service is not None and service.target is not None
    assert service.listen == ("::", 8443)
    assert service.target.service == ("rdsgate", "rdsgate-webhook", 443)
    listen_only = config(["--admission-listen", "127.0.0.1:9443"]).admission
    assert listen_only is not None and listen_only.target is None
    monkeypatch.setenv("RDSGATE_ADMISSION_SERVICE", "ops/hooks:8443")
    monkeypatch.setenv("RDSGATE_ADMISSION_TIMEOUT", "5")
    from_env = config([]).admission
    assert from_env is not None and from_env.target is not None
    assert (from_env.target.service, from_env.timeout) == (("ops", "hooks", 8443), 5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--admission-url", "https://a:1", "--admission-service", "a/b"],
            "give --admission-url or --admission-service, not both",
        ),
        (["--admission-url", "http://10.0.0.5:9443"], "the API server calls webhooks over HTTPS"),
        (["--admission-service", "webhook"], "expected NAMESPACE/NAME[:PORT]"),
        (["--admission-listen", "9443"], "expected HOST:PORT"),
        (
            ["--admission-listen", "127.0.0.1:9443", "--admission-timeout", "31"],
            "--admission-timeout must be 1 to 30 seconds",
        ),
        (["--access-recheck-interval", "301"], "must be 1 to 300 seconds"),
    ],
)
def test_bad_webhook_flags_are_refused_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_require_verified_requester_and_recheck_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RDSGATE_REQUIRE_VERIFIED_REQUESTER", raising=False)
    monkeypatch.delenv("RDSGATE_ACCESS_RECHECK_INTERVAL", raising=False)
    default = config([])
    assert (default.require_verified_requester, default.access_recheck_interval) == (False, 300)
    assert config(["--require-verified-requester"]).require_verified_requester is True
    monkeypatch.setenv("RDSGATE_REQUIRE_VERIFIED_REQUESTER", "true")
    monkeypatch.setenv("RDSGATE_ACCESS_RECHECK_INTERVAL", "60")
    from_env = config([])
    assert (from_env.require_verified_requester, from_env.access_recheck_interval) == (True, 60)
