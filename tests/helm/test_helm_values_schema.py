"""values.schema.json turns bad values away: `helm template` (and so `helm install`) fails
and names the value and what is wrong with it, one case per kind of mistake."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import template

SCHEMA_ERROR = "values don't meet the specifications of the schema(s)"

REJECTED: dict[str, tuple[dict[str, Any], str]] = {
    "bad image pull policy": (
        {"image": {"pullPolicy": "Sometimes"}},
        "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
    ),
    "negative replicas": (
        {"operator": {"replicas": -1}},
        "at '/operator/replicas': minimum: got -1, want 0",
    ),
    "two replicas of a standalone operator": (
        {"operator": {"replicas": 2}},
        "at '/operator/replicas': maximum: got 2, want 1",
    ),
    "unknown top-level key": (
        {"operater": {"replicas": 1}},
        "at '': additional properties 'operater' not allowed",
    ),
    "unknown nested key": (
        {"serviceAccount": {"rolearn": "x"}},
        "at '/serviceAccount': additional properties 'rolearn' not allowed",
    ),
    "bad namespace name": (
        {"watchNamespaces": ["Team_A"]},
        "at '/watchNamespaces/0': 'Team_A' does not match pattern",
    ),
    "namespace glob": (
        {"watchNamespaces": ["team-*"]},
        "at '/watchNamespaces/0': 'team-*' does not match pattern",
    ),
    "duplicate namespace": (
        {"watchNamespaces": ["shop", "shop"]},
        "at '/watchNamespaces': items at 0 and 1 are equal",
    ),
    "bad role ARN": (
        {"serviceAccount": {"roleArn": "arn:aws:iam::1234:role/rdsgate"}},
        "at '/serviceAccount/roleArn': 'arn:aws:iam::1234:role/rdsgate' does not match pattern",
    ),
    "user ARN instead of a role": (
        {"serviceAccount": {"roleArn": "arn:aws:iam::123456789012:user/alice"}},
        "at '/serviceAccount/roleArn': 'arn:aws:iam::123456789012:user/alice' does not match",
    ),
    "bad log format": (
        {"operator": {"logFormat": "xml"}},
        "at '/operator/logFormat': value must be one of 'json', 'text'",
    ),
    "bad digest": (
        {"image": {"digest": "sha256:1234"}},
        "at '/image/digest': 'sha256:1234' does not match pattern",
    ),
    "tag in the repository": (
        {"image": {"repository": "ghcr.io/rdsgate/rdsgate:0.1.0"}},
        "at '/image/repository': 'ghcr.io/rdsgate/rdsgate:0.1.0' does not match pattern",
    ),
    "allowed proxy images as one string": (
        {"operator": {"allowedProxyImages": "ghcr.io/rdsgate/rdsgate"}},
        "at '/operator/allowedProxyImages': got string, want array",
    ),
    "an allowed proxy image that is no image": (
        {"operator": {"allowedProxyImages": ["ghcr.io/Rdsgate/*"]}},
        "at '/operator/allowedProxyImages/0': 'ghcr.io/Rdsgate/*' does not match pattern",
    ),
    "bad resource quantity": (
        {"operator": {"resources": {"requests": {"cpu": "lots"}}}},
        "at '/operator/resources/requests/cpu': 'lots' does not match pattern",
    ),
    "unknown resource": (
        {"operator": {"resources": {"requests": {"gpu": 1}}}},
        "at '/operator/resources/requests': additional properties 'gpu' not allowed",
    ),
    "zero resync interval": (
        {"operator": {"resyncInterval": 0}},
        "at '/operator/resyncInterval': exclusiveMinimum: got 0, want 0",
    ),
    "privileged health port": (
        {"operator": {"healthPort": 80}},
        "at '/operator/healthPort': minimum: got 80, want 1,024",
    ),
    "privileged metrics port": (
        {"operator": {"metricsPort": 443}},
        "at '/operator/metricsPort': minimum: got 443, want 1,024",
    ),
    "string for a boolean": (
        {"operator": {"verbose": "yes"}},
        "at '/operator/verbose': got string, want boolean",
    ),
    "pull secret as a string": (
        {"imagePullSecrets": ["regcred"]},
        "at '/imagePullSecrets/0': got string, want object",
    ),
    "bad scrape interval": (
        {"monitoring": {"podMonitor": {"interval": "30 seconds"}}},
        "at '/monitoring/podMonitor/interval': '30 seconds' does not match pattern",
    ),
    "bad label value": (
        {"operator": {"podLabels": {"team": "platform team"}}},
        "at '/operator/podLabels/team': 'platform team' does not match pattern",
    ),
    "privileged webhook port": (
        {"webhook": {"port": 443}},
        "at '/webhook/port': minimum: got 443, want 1,024",
    ),
    "webhook port as a string": (
        {"webhook": {"port": "9443"}},
        "at '/webhook/port': got string, want integer",
    ),
    "webhook timeout above the API server's 30 seconds": (
        {"webhook": {"timeoutSeconds": 31}},
        "at '/webhook/timeoutSeconds': maximum: got 31, want 30",
    ),
    "zero webhook timeout": (
        {"webhook": {"timeoutSeconds": 0}},
        "at '/webhook/timeoutSeconds': minimum: got 0, want 1",
    ),
    "no switch to turn the webhooks off": (
        {"webhook": {"enabled": False}},
        "at '/webhook': additional properties 'enabled' not allowed",
    ),
    "cert-manager without an issuer": (
        {"webhook": {"certManager": {"enabled": True}}},
        "at '/webhook/certManager/issuerRef/name': minLength: got 0, want 1",
    ),
    "bad issuer kind": (
        {"webhook": {"certManager": {"issuerRef": {"name": "ca", "kind": "cluster-issuer"}}}},
        "at '/webhook/certManager/issuerRef/kind': 'cluster-issuer' does not match pattern",
    ),
    "bad issuer name": (
        {"webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "Corp CA"}}}},
        "at '/webhook/certManager/issuerRef/name': 'Corp CA' does not match pattern",
    ),
    "unknown issuerRef key": (
        {"webhook": {"certManager": {"issuerRef": {"namespace": "cert-manager"}}}},
        "at '/webhook/certManager/issuerRef': additional properties 'namespace' not allowed",
    ),
    "zero access recheck interval": (
        {"operator": {"accessRecheckInterval": 0}},
        "at '/operator/accessRecheckInterval': minimum: got 0, want 1",
    ),
    "access recheck interval above the operator's 300 seconds": (
        {"operator": {"accessRecheckInterval": 600}},
        "at '/operator/accessRecheckInterval': maximum: got 600, want 300",
    ),
    "access recheck interval as a duration": (
        {"operator": {"accessRecheckInterval": "5m"}},
        "at '/operator/accessRecheckInterval': got string, want number",
    ),
    "request timeout in words": (
        {"operator": {"requestTimeout": "an hour"}},
        "at '/operator/requestTimeout': 'an hour' does not match",
    ),
    "string for requireVerifiedRequester": (
        {"operator": {"requireVerifiedRequester": "true"}},
        "at '/operator/requireVerifiedRequester': got string, want boolean",
    ),
    "string for aggregateRoles": (
        {"rbac": {"aggregateRoles": "yes"}},
        "at '/rbac/aggregateRoles': got string, want boolean",
    ),
    "bad toleration operator": (
        {"operator": {"tolerations": [{"key": "a", "operator": "Matches"}]}},
        "at '/operator/tolerations/0/operator': value must be one of 'Exists', 'Equal'",
    ),
}


@pytest.mark.parametrize(("values", "message"), REJECTED.values(), ids=list(REJECTED))
def test_the_schema_rejects(values: dict[str, Any], message: str) -> None:
    done = template(values)
    assert done.returncode != 0, f"accepted: {values}"
    assert SCHEMA_ERROR in done.stderr
    assert message in done.stderr, done.stderr
    assert done.stdout == ""


def test_good_values_pass() -> None:
    done = template(
        {
            "watchNamespaces": ["shop", "team-a1"],
            "serviceAccount": {"roleArn": "arn:aws-cn:iam::123456789012:role/ops/rdsgate"},
            "image": {"tag": "0.1.0-rc.1", "repository": "localhost:5000/rdsgate"},
            "operator": {
                "resyncInterval": 0.5,
                "resources": {"limits": {"cpu": 1}},
                "accessRecheckInterval": 30.5,
                "requireVerifiedRequester": True,
            },
            "rbac": {"aggregateRoles": False},
            "webhook": {
                "port": 65535,
                "timeoutSeconds": 30,
                "certManager": {
                    "enabled": True,
                    "issuerRef": {
                        "name": "corp.ca",
                        "kind": "AWSPCAClusterIssuer",
                        "group": "awspca.cert-manager.io",
                    },
                },
            },
        }
    )
    assert done.returncode == 0, done.stderr
    # An issuer may be named ahead of turning cert-manager on, and left empty when it is off.
    assert template({"webhook": {"certManager": {"issuerRef": {"name": "ca"}}}}).returncode == 0
