"""The operator's Token admission webhooks, called by the API emulator over real HTTPS.

The real `rdsgate-operator` registers its two webhook configurations by URL
(`--admission-url`, as an operator outside the cluster does) and serves them with a
certificate from its CA; the emulator calls them on every Token CREATE and UPDATE as
kube-apiserver does (AdmissionReview v1, the caBundle checked) and answers the
operator's SubjectAccessReviews from the RBAC objects stored in it. People are bearer
tokens the emulator knows. What each test asserts is what `kubectl` would print.
"""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from rdsgate.lab.postgres import free_port
from rdsgate.operator import access, pki
from rdsgate.proxy.access import parse_access
from tests.fixtures.k8s import (
    EXAMPLES_DIR,
    RBAC_V1,
    Api,
    ApiError,
    ApiServer,
    OperatorProcess,
    start_gated_operator,
    start_operator,
    wait_for,
)

USERS = {
    "carol-token": {"username": "carol", "groups": ["analytics", "system:authenticated"]},
    "dave-token": {"username": "dave", "groups": ["oncall", "system:authenticated"]},
    "erin-token": {"username": "erin", "groups": ["system:authenticated"]},
    "frank-token": {"username": "frank", "groups": ["platform", "system:authenticated"]},
}
CONFIGURATION = "rdsgate-tokens"


@pytest.fixture(scope="module")
def k8s(private_k8s_api: ApiServer) -> ApiServer:
    private_k8s_api.emulator.users.update(USERS)
    return private_k8s_api


@pytest.fixture(scope="module")
def operator(k8s: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = start_gated_operator(k8s, tmp_path_factory.mktemp("operator"))
    yield op
    op.stop()


_namespaces = itertools.count(1)


@pytest.fixture
def ns(k8s: ApiServer, operator: OperatorProcess) -> str:
    """A namespace with a Database, the Roles app-rw and app-ro, and RBAC for the people:
    carol may bind app-ro by name, dave every Role (no resourceNames), frank anything (`*`
    resources and verbs), erin nothing; all may create Tokens (the chart's rdsgate-edit,
    aggregated into `edit`)."""
    name = f"webhooks-{next(_namespaces)}"
    api = Api(k8s.url)
    for example in ("database.yaml", "role-app-rw.yaml", "role-app-ro.yaml"):
        doc = yaml.safe_load((EXAMPLES_DIR / example).read_text())
        doc["metadata"]["namespace"] = name
        api.create(doc)
    api.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "ClusterRole",
            "metadata": {
                "name": f"{name}-edit",
                "labels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"},
            },
            "rules": [
                {
                    "apiGroups": ["rdsgate.dev"],
                    "resources": ["tokens"],
                    "verbs": ["create", "update", "patch", "delete"],
                }
            ],
        }
    )
    binds = {
        "carol": {"resources": ["roles"], "resourceNames": ["app-ro"], "verbs": ["bind"]},
        "dave": {"resources": ["roles"], "verbs": ["bind"]},
        "frank": {"resources": ["*"], "verbs": ["*"]},
    }
    for user, rule in binds.items():
        api.create(
            {
                "apiVersion": RBAC_V1,
                "kind": "Role",
                "metadata": {"name": f"bind-{user}", "namespace": name},
                "rules": [{"apiGroups": ["rdsgate.dev"], **rule}],
            }
        )
        api.create(binding(name, f"bind-{user}", "Role", user))
    for user in ("carol", "dave", "erin", "frank"):
        api.create(binding(name, f"edit-{user}", "ClusterRole", user, role="edit"))
    return name


def binding(ns: str, name: str, kind: str, user: str, role: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_V1,
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role or name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def token(ns: str, name: str, *roles: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Token",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"roles": list(roles), **spec},
    }


def as_user(k8s: ApiServer, who: str) -> Api:
    return Api(k8s.url, f"{who}-token")


def refusal(call: Any) -> ApiError:
    with pytest.raises(ApiError) as refused:
        call()
    return refused.value


def test_the_operator_registers_both_webhooks_failing_closed(
    k8s: ApiServer, operator: OperatorProcess
) -> None:
    api = Api(k8s.url)
    validating = api.get("ValidatingWebhookConfiguration", None, CONFIGURATION)
    mutating = api.get("MutatingWebhookConfiguration", None, CONFIGURATION)
    assert validating is not None and mutating is not None
    (check,) = validating["webhooks"]
    (stamp,) = mutating["webhooks"]
    assert (check["name"], stamp["name"]) == ("tokens.rdsgate.dev", "requester.tokens.rdsgate.dev")
    assert check["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert stamp["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    for hook in (check, stamp):
        assert (hook["failurePolicy"], hook["sideEffects"]) == ("Fail", "None")
        assert hook["rules"][0]["resources"] == ["tokens"]
        assert hook["rules"][0]["apiGroups"] == ["rdsgate.dev"]
        ca_bundle = base64.b64decode(hook["clientConfig"]["caBundle"])
        ca_secret = api.get("Secret", "rdsgate-system", "rdsgate-ca")
        assert ca_secret is not None
        assert ca_bundle == base64.b64decode(ca_secret["data"]["tls.crt"])
    assert check["clientConfig"]["url"].endswith("/validate-tokens")
    assert stamp["clientConfig"]["url"].endswith("/mutate-tokens")


def test_binding_by_name_and_by_any_name(k8s: ApiServer, ns: str) -> None:
    as_user(k8s, "carol").create(token(ns, "carol-ro", "app-ro"))
    refused = refusal(lambda: as_user(k8s, "carol").create(token(ns, "carol-rw", "app-rw")))
    assert refused.status == 403
    assert refused.message == (
        'admission webhook "tokens.rdsgate.dev" denied the request: carol may not bind Role '
        '"app-rw" in namespace "' + ns + '" (needs verb bind on roles.rdsgate.dev "app-rw")'
    )
    as_user(k8s, "dave").create(token(ns, "dave-both", "app-ro", "app-rw"))
    as_user(k8s, "frank").create(token(ns, "frank-both", "app-ro", "app-rw"))  # `*` rules
    refused = refusal(lambda: as_user(k8s, "erin").create(token(ns, "erin", "app-ro", "app-rw")))
    assert refused.message.endswith(
        f'erin may not bind Roles "app-ro" and "app-rw" in namespace "{ns}" '
        '(needs verb bind on roles.rdsgate.dev "app-ro" and "app-rw")'
    )
    api = Api(k8s.url)
    assert api.get("Token", ns, "carol-rw") is None and api.get("Token", ns, "erin") is None
    stamped = api.get("Token", ns, "dave-both")
    assert stamped is not None
    assert stamped["metadata"]["annotations"]["rdsgate.dev/requested-by"] == "dave"


def test_an_update_that_adds_a_role_needs_bind_on_it(k8s: ApiServer, ns: str) -> None:
    as_user(k8s, "carol").create(token(ns, "t", "app-ro"))
    refused = refusal(
        lambda: as_user(k8s, "carol").patch(
            "Token", ns, "t", {"spec": {"roles": ["app-ro", "app-rw"]}}
        )
    )
    assert 'carol may not bind Role "app-rw"' in refused.message
    # erin may update Tokens: a label edit needs no bind; a ttl (a longer grant) or a Role does.
    as_user(k8s, "erin").patch("Token", ns, "t", {"metadata": {"labels": {"team": "a"}}})
    refused = refusal(
        lambda: as_user(k8s, "erin").patch("Token", ns, "t", {"spec": {"ttl": "30d"}})
    )
    assert 'erin may not bind Role "app-ro"' in refused.message
    as_user(k8s, "dave").patch("Token", ns, "t", {"spec": {"roles": ["app-ro", "app-rw"]}})
    stored = Api(k8s.url).get("Token", ns, "t")
    assert stored is not None
    assert stored["spec"]["roles"] == ["app-ro", "app-rw"]
    assert stored["metadata"]["annotations"]["rdsgate.dev/requested-by"] == "carol"


def test_the_requester_cannot_be_forged_or_changed(k8s: ApiServer, ns: str) -> None:
    forged = token(ns, "forged", "app-ro")
    forged["metadata"]["annotations"] = {
        "rdsgate.dev/requested-by": "dave",
        "rdsgate.dev/requested-by-groups": '["system:masters"]',
        "team": "analytics",
    }
    as_user(k8s, "carol").create(forged)
    api = Api(k8s.url)
    stored = api.get("Token", ns, "forged")
    assert stored is not None
    annotations = stored["metadata"]["annotations"]
    assert annotations["rdsgate.dev/requested-by"] == "carol"
    assert json.loads(annotations["rdsgate.dev/requested-by-groups"]) == [
        "analytics",
        "system:authenticated",
    ]
    assert annotations["team"] == "analytics", "other annotations are the client's"
    for change in (
        {"rdsgate.dev/requested-by": "dave"},
        {"rdsgate.dev/requested-by-groups": '["system:masters"]'},
    ):
        refused = refusal(
            lambda change=change: api.patch(
                "Token", ns, "forged", {"metadata": {"annotations": change}}
            )
        )
        assert refused.status == 422
        assert "records who created this Token and cannot be changed or removed" in refused.message

    # An update that leaves the stamp out (a server-side apply of the original manifest, a
    # `kubectl replace`) keeps it: the mutating webhook puts it back.
    def replace_without_the_stamp() -> dict[str, Any] | None:
        stored = api.get("Token", ns, "forged")
        assert stored is not None
        stored["metadata"]["annotations"] = {"team": "b"}
        try:
            return api.replace(stored)
        except ApiError as exc:
            if exc.status == 409:  # the operator wrote it meanwhile: read it again
                return None
            raise

    replaced = wait_for(replace_without_the_stamp, "a replace without the stamp", 10)
    kept = {k: v for k, v in replaced["metadata"]["annotations"].items() if k in annotations}
    assert kept == {**annotations, "team": "b"}


def public_pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_a_bad_public_key_is_refused_with_the_reason(k8s: ApiServer, ns: str) -> None:
    weak = public_pem(ec.generate_private_key(ec.SECP521R1()))
    refused = refusal(
        lambda: as_user(k8s, "carol").create(token(ns, "weak", "app-ro", publicKey=weak))
    )
    assert refused.status == 422
    assert refused.message == (
        'admission webhook "tokens.rdsgate.dev" denied the request: spec.publicKey: ECDSA '
        "curve secp521r1 is not accepted: use P-256 or P-384"
    )


def test_a_key_pair_token_gets_a_certificate_and_no_secret(
    k8s: ApiServer, ns: str, operator: OperatorProcess
) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    as_user(k8s, "carol").create(
        token(ns, "carol-key", "app-ro", publicKey=public_pem(private), ttl="3h")
    )
    api = Api(k8s.url)

    def certificate() -> dict[str, Any] | None:
        found = api.get("Token", ns, "carol-key")
        return found if found and (found.get("status") or {}).get("certificate") else None

    stored = wait_for(certificate, "status.certificate", 30, operator.tail)
    status = stored["status"]
    cert = x509.load_pem_x509_certificate(status["certificate"].encode())
    assert pki.public_key_der(cert.public_key()) == pki.public_key_der(private.public_key())  # type: ignore[arg-type]
    created = datetime.strptime(stored["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    # At most the Token's remaining ttl (3h), and never more than 12 hours.
    assert cert.not_valid_after_utc == created.replace(tzinfo=UTC) + timedelta(hours=3)
    assert status["certificateNotAfter"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (status["subject"], status.get("secretName"), status["requestedBy"]) == (
        "publickey",
        None,
        "carol",
    )
    digest = access.public_key_digest(stored["metadata"]["uid"], private.public_key())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"rdsgate://{ns}/carol-key#{digest[:16]}"
    ]
    # The CA that signed it is in the namespace's ConfigMap, for the client to verify with.
    config_map = wait_for(lambda: api.get("ConfigMap", ns, "rdsgate-ca"), "ConfigMap rdsgate-ca")
    ca = x509.load_pem_x509_certificate(config_map["data"]["ca.crt"].encode())
    assert cert.issuer == ca.subject
    ca.public_key().verify(  # type: ignore[call-arg, union-attr]
        cert.signature,
        cert.tbs_certificate_bytes,
        ec.ECDSA(cert.signature_hash_algorithm),  # type: ignore[arg-type]
    )
    # No Secret anywhere for it; the grant is the key's, with its requester.
    assert api.get("Secret", ns, "carol-key-rdsgate") is None
    secret = api.get("Secret", ns, "orders-rdsgate-access")
    assert secret is not None
    bundle = parse_access(yaml.safe_load(Api.secret_text(secret, "access.yaml")))
    grant = bundle.by_identity[f"{ns}/carol-key"]
    assert (grant.public_key_sha256, grant.secret_sha256, grant.requested_by) == (
        digest,
        None,
        "carol",
    )
    events = [e["reason"] for e in api.events(ns, "carol-key")]
    assert "CertificateIssued" in events


def test_a_requester_who_loses_bind_loses_the_grant(
    k8s: ApiServer, ns: str, operator: OperatorProcess
) -> None:
    as_user(k8s, "carol").create(token(ns, "carol-ro", "app-ro"))
    api = Api(k8s.url)

    def ready(reason: str) -> dict[str, Any] | None:
        cond = Api.condition(api.get("Token", ns, "carol-ro"), "Ready")
        return cond if cond and cond["reason"] == reason else None

    wait_for(lambda: ready("Granted"), "the grant", 30, operator.tail)
    api.delete("RoleBinding", ns, "bind-carol", api_version=RBAC_V1)
    cond = wait_for(lambda: ready("BindRevoked"), "BindRevoked", 30, operator.tail)
    assert cond["message"] == (
        f'carol may no longer bind Role "app-ro" in namespace "{ns}"; the grant was withdrawn'
    )
    secret = api.get("Secret", ns, "orders-rdsgate-access")
    assert secret is not None
    bundle = parse_access(yaml.safe_load(Api.secret_text(secret, "access.yaml")))
    assert f"{ns}/carol-ro" not in bundle.by_identity
    assert bundle.revocations[f"{ns}/carol-ro"].startswith("carol may no longer bind")


def test_the_webhooks_count_their_answers(
    k8s: ApiServer, ns: str, operator: OperatorProcess
) -> None:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5
    ) as resp:
        text = resp.read().decode()
    refused = [
        line
        for line in text.splitlines()
        if line.startswith("rdsgate_operator_admission_reviews_total")
        and 'result="refused"' in line
    ]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 1


def post_review(url: str, ca_bundle: str, path: str) -> dict[str, Any]:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "rdsgate.dev", "version": "v1alpha1", "kind": "Token"},
            "resource": {"group": "rdsgate.dev", "version": "v1alpha1", "resource": "tokens"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "mallory"},
            "object": token("shop", "t", "app-rw"),
        },
    }
    context = ssl.create_default_context(cadata=base64.b64decode(ca_bundle).decode())
    request = urllib.request.Request(  # noqa: S310 - https only
        url + path,
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:  # noqa: S310
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def test_a_path_the_server_has_no_webhook_for_refuses(
    k8s: ApiServer, operator: OperatorProcess
) -> None:
    """kopf would answer a path without a handler "allowed": the server refuses instead."""
    config = Api(k8s.url).get("ValidatingWebhookConfiguration", None, CONFIGURATION)
    assert config is not None
    client = config["webhooks"][0]["clientConfig"]
    base = client["url"].removesuffix("/validate-tokens")
    answer = post_review(base, client["caBundle"], "/rdsgate/validate-tokens")
    assert answer["response"]["allowed"] is False
    assert "no webhook at 'rdsgate/validate-tokens'" in answer["response"]["status"]["message"]


def test_an_admission_url_with_a_path_serves_under_it(
    k8s: ApiServer, operator: OperatorProcess, tmp_path: Path
) -> None:
    """`--admission-url https://HOST:PORT/PATH`: registered and served under PATH."""
    api = Api(k8s.url)
    port = free_port()
    other = start_operator(
        k8s,
        tmp_path,
        "--admission-listen", f"127.0.0.1:{port}",
        "--admission-url", f"https://127.0.0.1:{port}/hooks/rdsgate",
        "--admission-configuration", "rdsgate-tokens-path",
    )  # fmt: skip
    try:
        config = wait_for(
            partial(api.get, "ValidatingWebhookConfiguration", None, "rdsgate-tokens-path"),
            "the second configuration",
            30,
            other.tail,
        )
        client = config["webhooks"][0]["clientConfig"]
        assert client["url"] == f"https://127.0.0.1:{port}/hooks/rdsgate/validate-tokens"
        answer = wait_for(
            lambda: _answered(client["url"], client["caBundle"]), "the server", 20, other.tail
        )
        response = answer["response"]
        assert response["allowed"] is False
        assert (
            "the mutating webhook requester.tokens.rdsgate.dev did not run"
            in (response["status"]["message"])
        )
    finally:
        other.stop()
        for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
            api.delete(kind, None, "rdsgate-tokens-path")


def _answered(url: str, ca_bundle: str) -> dict[str, Any] | None:
    try:
        return post_review(url, ca_bundle, "")
    except OSError:
        return None
