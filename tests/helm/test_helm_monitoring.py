"""The chart's Grafana dashboard and PrometheusRule, and the metrics they are written against.

The rules are tested with `promtool test rules` (tests/helm/rules.test.yaml: series that fire
each alert, series that must not, and a time at which it is still pending) on the rules the
chart renders. Every PromQL expression, in the rules and in the dashboard, parses with
promtool and names only metrics that a real `rdsgate-proxy` and a real `rdsgate-operator`
serve on /metrics in this test, where no `*_created` series may appear. Every runbook link
is an anchor that docs/troubleshooting.md has, by GitHub's rules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.fixtures.k8s import Api, ApiServer, OperatorProcess, start_operator, wait_for
from tests.fixtures.proxy import ProxyLab, RunningProxy
from tests.helm.chart import (
    CHART,
    ROOT,
    helm,
    objects,
    one,
    render,
    template,
    validate_kubernetes,
    values_file,
)
from tests.helm.monitoring import SCHEMAS

DASHBOARD = ROOT / "deploy" / "grafana" / "rdsgate.json"
RULES_TEST = Path(__file__).with_name("rules.test.yaml")
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
RUNBOOKS = "https://github.com/rdsgate/rdsgate/blob/main/docs/troubleshooting.md"

ENABLED = {"monitoring": {"dashboards": {"enabled": True}, "prometheusRule": {"enabled": True}}}
ALERTS = {
    "RdsgateProxyReplicasNotReady",
    "RdsgateCredentialsUnavailable",
    "RdsgateAuthFailureSpike",
    "RdsgateUpstreamErrors",
    "RdsgateIAMTokenMintFailing",
    "RdsgateAccessReloadInvalid",
    "RdsgateOperatorReconcileErrors",
    "RdsgateDatabaseNotReady",
}
#: Series Prometheus makes itself for every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@pytest.fixture(scope="module")
def enabled() -> list[dict[str, Any]]:
    return render(ENABLED)


def alert_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = one(docs, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


# promtool


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed: `scripts/system-deps promtool` installs Debian's "
            "prometheus package, which ships it (or: apt-get install prometheus)",
            pytrace=False,
        )
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# The chart


def test_off_by_default_and_valid_when_enabled(enabled: list[dict[str, Any]]) -> None:
    default = render()
    assert not objects(default, "PrometheusRule")
    assert not [d for d in objects(default, "ConfigMap") if "grafana_dashboard" in labels(d)]

    rule = one(enabled, "PrometheusRule")
    jsonschema.Draft202012Validator(SCHEMAS["PrometheusRule"]).validate(rule)
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "groups are a list-map keyed by name"
    assert {r["alert"] for r in alert_rules(enabled)} == ALERTS
    assert len(alert_rules(enabled)) == len(ALERTS)
    for r in alert_rules(enabled):
        assert r["annotations"].keys() == {"summary", "description", "runbook_url"}, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical")

    dashboard = one(enabled, "ConfigMap", "rdsgate-dashboard")
    validate_kubernetes(dashboard)
    assert dashboard["metadata"]["namespace"] == "rdsgate-system"
    assert labels(dashboard)["grafana_dashboard"] == "1"
    # The file itself, byte for byte (the chart reads it through its dashboards/ symlink).
    assert dashboard["data"]["rdsgate.json"] == DASHBOARD.read_text().rstrip("\n")


def test_values_shape_the_rule_and_the_configmap() -> None:
    docs = render(
        {
            "monitoring": {
                "dashboards": {
                    "enabled": True,
                    "namespace": "grafana",
                    "labels": {"dashboards": "rdsgate"},
                    "annotations": {"grafana_folder": "Databases"},
                },
                "prometheusRule": {
                    "enabled": True,
                    "additionalLabels": {"release": "kube-prometheus-stack"},
                    "alertLabels": {"team": "platform"},
                    "runbookBaseURL": "https://git.example.com/rdsgate/docs/troubleshooting.md",
                    "alerts": {
                        "authFailureSpike": {"perMinute": 25, "for": "2m"},
                        "accessReloadInvalid": {"enabled": False},
                    },
                },
            }
        }
    )
    config_map = one(docs, "ConfigMap", "rdsgate-dashboard")
    assert config_map["metadata"]["namespace"] == "grafana"
    assert labels(config_map)["dashboards"] == "rdsgate"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Databases"}
    rule = one(docs, "PrometheusRule")
    jsonschema.Draft202012Validator(SCHEMAS["PrometheusRule"]).validate(rule)
    assert labels(rule)["release"] == "kube-prometheus-stack"
    rules = {r["alert"]: r for r in alert_rules(docs)}
    assert set(rules) == ALERTS - {"RdsgateAccessReloadInvalid"}
    spike = rules["RdsgateAuthFailureSpike"]
    assert spike["expr"].endswith("* 60 > 25") and spike["for"] == "2m"
    for r in rules.values():
        assert r["labels"]["team"] == "platform"
        assert r["annotations"]["runbook_url"].startswith(
            "https://git.example.com/rdsgate/docs/troubleshooting.md#"
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"upstreamErrors": {"ratio": 5}},
            "at '/monitoring/prometheusRule/alerts/upstreamErrors/ratio': maximum: got 5, want 1",
        ),
        (
            {"databaseNotReady": {"for": "ten minutes"}},
            "at '/monitoring/prometheusRule/alerts/databaseNotReady/for': 'ten minutes' does not",
        ),
        (
            {"proxyNotReady": {"for": "5m"}},
            "additional properties 'proxyNotReady' not allowed",
        ),
    ],
)
def test_the_schema_rejects_bad_alert_values(values: dict[str, Any], message: str) -> None:
    done = template({"monitoring": {"prometheusRule": {"enabled": True, "alerts": values}}})
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_helm_lint_passes_with_both_enabled() -> None:
    done = helm("lint", "--strict", str(CHART), "--values", str(values_file(ENABLED)))
    assert done.returncode == 0, done.stdout + done.stderr


def labels(doc: Mapping[str, Any]) -> dict[str, str]:
    return dict(doc["metadata"].get("labels") or {})


# Runbooks


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lowercased, punctuation other than `-`
    and `_` dropped, spaces turned into `-`, and `-1`, `-2`... on repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_github_anchors_follow_githubs_rules() -> None:
    text = "# A `b:c` d\n```\n# not a heading\n```\n## IAM login refused\n## IAM login refused\n"
    assert github_anchors(text) == {"a-bc-d", "iam-login-refused", "iam-login-refused-1"}


def test_every_runbook_url_is_an_anchor_of_the_troubleshooting_page(
    enabled: list[dict[str, Any]],
) -> None:
    anchors = github_anchors(TROUBLESHOOTING.read_text())
    for r in alert_rules(enabled):
        base, _, anchor = r["annotations"]["runbook_url"].partition("#")
        assert base == RUNBOOKS
        assert anchor in anchors, f"{r['alert']}: no section #{anchor} in {TROUBLESHOOTING}"
    # The page's own links between its sections, the runbooks' included, resolve too.
    for link in re.findall(r"\]\(#([^)]+)\)", TROUBLESHOOTING.read_text()):
        assert link in anchors, f"docs/troubleshooting.md links to a missing #{link}"


# The rules, evaluated


def test_the_rules_pass_their_promtool_unit_tests(
    enabled: list[dict[str, Any]], tmp_path: Path
) -> None:
    rule = one(enabled, "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    checked = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a case that fires it and one at which it must be silent.
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    evaluations = [e for case in cases for e in case["alert_rule_test"]]
    assert {e["alertname"] for e in evaluations if e["exp_alerts"]} == ALERTS
    assert {e["alertname"] for e in evaluations if not e["exp_alerts"]} == ALERTS


# Metric names, from real processes

_STRINGS = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"bool", "and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (promtool has parsed it): identifiers
    left once strings, label matchers, label lists and ranges are taken out, other than
    function names and keywords."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    return {m for m in _IDENTIFIER.findall(text) if m.lower() not in _KEYWORDS}


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (kind, le) (rate(a_bucket{result="x{y}"}[5m]))) '
        "/ on (pod) group_left (database) b > bool 1e3 unless c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def exposed_names(exposition: str) -> set[str]:
    """The series names a /metrics page can carry, from its `# TYPE` lines (a labelled
    metric with no child yet has no sample, but has its TYPE line)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {
                "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("", "_count", "_sum"),
            }
            names |= {name + s for s in suffixes.get(kind, ("",))}
    return names


def sample_names(exposition: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture(scope="module")
def operator_metrics(
    private_k8s_api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OperatorProcess, Callable[[], str]]]:
    op = start_operator(private_k8s_api, tmp_path_factory.mktemp("op-metrics"))

    def scrape() -> str:
        url = f"http://127.0.0.1:{op.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text: str = resp.read().decode()
        return text

    yield op, scrape
    op.stop()


@pytest.fixture(scope="module")
def exported(
    proxy: RunningProxy, operator_metrics: tuple[OperatorProcess, Callable[[], str]]
) -> set[str]:
    """Every series name a real proxy and a real operator serve."""
    status, proxy_page = proxy.http("/metrics")
    assert status == 200
    names = exposed_names(proxy_page) | exposed_names(operator_metrics[1]())
    assert "rdsgate_ready" in names and "rdsgate_operator_reconciles_total" in names
    return names


def test_no_created_series(
    proxy: RunningProxy, operator_metrics: tuple[OperatorProcess, Callable[[], str]]
) -> None:
    """prometheus-client's `*_created` gauges are off in both processes (issue 16 §4):
    Prometheus does not use them and they double every counter's and histogram's series."""
    _, proxy_page = proxy.http("/metrics")
    # Unlabelled counters and histograms have samples from the start: they would carry one.
    assert {"rdsgate_sessions_total", "rdsgate_upstream_connect_seconds_count"} <= sample_names(
        proxy_page
    )
    pages = {"proxy": proxy_page, "operator": operator_metrics[1]()}
    for process, page in pages.items():
        assert not [s for s in sample_names(page) if s.endswith("_created")], process
        assert "_created" not in page, process


def test_every_alert_names_real_metrics(enabled: list[dict[str, Any]], exported: set[str]) -> None:
    for r in alert_rules(enabled):
        names = metric_names(r["expr"])
        assert names, r["alert"]
        assert names <= exported | SYNTHETIC, f"{r['alert']}: {names - exported}"


def grafana_to_promql(expr: str) -> str:
    """A panel's query as Prometheus sees it: `$__rate_interval` and the like become a
    range, `$namespace` and `$database` (multi-value, All = `.*`) a regex."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: "5m" if m.group(1).startswith("__") else ".*", expr)


def test_the_dashboard_queries_parse_and_name_real_metrics(
    exported: set[str], tmp_path: Path
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    database = variables["database"]
    assert database["type"] == "query" and database["datasource"]["uid"] == "${datasource}"
    (var_metric,) = re.findall(r"label_values\((\w+)", database["query"]["query"])
    assert var_metric in exported
    assert database["query"]["query"].endswith(", database)")

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs: list[str] = []
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            exprs.append(expr)
            names = metric_names(grafana_to_promql(expr))
            assert names and names <= exported, f"{panel['title']}: {names - exported}"
            # Proxy panels follow the Database variable; operator panels are per operator.
            if any(not n.startswith("rdsgate_operator_") for n in names):
                assert 'database=~"$database"' in expr, panel["title"]

    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.rules.yaml").write_text(yaml.safe_dump(rules))
    checked = run_promtool("check", "rules", "dashboard.rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Every metric the issue asks to see is on it.
    shown = set().union(*(metric_names(grafana_to_promql(e)) for e in exprs))
    assert {
        "rdsgate_connections_active",
        "rdsgate_sessions_total",
        "rdsgate_sessions_ended_total",
        "rdsgate_auth_failures_total",
        "rdsgate_iam_token_mints_total",
        "rdsgate_iam_token_cache_hits_total",
        "rdsgate_upstream_connect_seconds_bucket",
        "rdsgate_upstream_errors_total",
        "rdsgate_bytes_total",
        "rdsgate_access_reloads_total",
        "rdsgate_ready",
        "rdsgate_operator_reconciles_total",
    } <= shown


# The series the alerts need that the processes did not have before


def test_a_proxy_without_credentials_says_so_in_a_metric(proxy_lab: ProxyLab) -> None:
    """`rdsgate_readiness_failing{check}` follows /readyz: RdsgateCredentialsUnavailable
    alerts on check="aws"."""
    no_credentials = {
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    proxy = proxy_lab.start(env=no_credentials, wait_ready=False)

    def proxy_log() -> str:
        return "\n".join(proxy.logs)

    try:

        def unready() -> bool:
            try:
                status, body = proxy.http("/readyz")
            except OSError:
                return False
            problems = body.strip().splitlines()  # one line per failing check
            return (
                status == 503
                and len(problems) == 1
                and problems[0].startswith("aws: no AWS credentials found")
            )

        wait_for(unready, "the proxy to be unready for want of credentials only", 15, proxy_log)
        failing = 'rdsgate_readiness_failing{check="%s"}'
        assert proxy.metric(failing % "aws") == 1
        assert [proxy.metric(failing % c) for c in ("tls", "access", "listener")] == [0, 0, 0]
    finally:
        proxy.stop()


def test_a_ready_proxy_has_no_failing_check(proxy: RunningProxy) -> None:
    _, page = proxy.http("/metrics")
    failing = [line for line in page.splitlines() if line.startswith("rdsgate_readiness_failing{")]
    assert len(failing) == 4 and all(line.endswith(" 0.0") for line in failing), failing


def test_the_operator_exports_each_databases_readiness(
    private_k8s_api: ApiServer, operator_metrics: tuple[OperatorProcess, Callable[[], str]]
) -> None:
    """`rdsgate_operator_database_ready` follows the Database's Ready condition (what
    RdsgateDatabaseNotReady alerts on) and goes away with the Database."""
    op, scrape = operator_metrics
    api = Api(private_k8s_api.url)
    sample = 'rdsgate_operator_database_ready{database="orders",namespace="monitoring"}'

    def value() -> float | None:
        for line in scrape().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    api.create(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": "orders", "namespace": "monitoring"},
            "spec": {
                "endpoint": "orders.proxy-x.eu-west-1.rds.amazonaws.com:5432",
                "aws": {"region": "eu-west-1"},
            },
        }
    )
    wait_for(lambda: value() == 0, "Ready=False exported as 0", 20, op.tail)
    # What the Deployment controller does once a proxy pod is ready.
    deployment = wait_for(
        lambda: api.get("Deployment", "monitoring", "orders-rdsgate"), "the Deployment", 20
    )
    status = {"observedGeneration": deployment["metadata"].get("generation", 1)}
    status |= {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "availableReplicas": 1}
    api.patch("Deployment", "monitoring", "orders-rdsgate", {"status": status}, sub="status")
    wait_for(lambda: value() == 1, "Ready=True exported as 1", 20, op.tail)
    ready = Api.condition(api.get("Database", "monitoring", "orders"), "Ready")
    assert ready is not None and ready["status"] == "True", op.tail()
    api.delete("Database", "monitoring", "orders")
    wait_for(lambda: value() is None, "the series removed with the Database", 20, op.tail)
