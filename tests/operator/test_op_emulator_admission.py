"""The API emulator calls admission webhooks the way kube-apiserver does.

Each test starts its own emulator and a small HTTPS webhook server (a throwaway CA's
certificate), registers it with a Mutating/ValidatingWebhookConfiguration through the API,
and asserts what a client of the API sees: the object stored or not, the Status of a
refusal, and what the webhook received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from rdsgate.lab.postgres import free_port
from rdsgate.operator import pki
from tests.fixtures.k8s import (
    ADMIN_USER,
    RBAC_V1,
    Api,
    ApiError,
    ApiServer,
)

Review = dict[str, Any]
Answer = Callable[[Review], Awaitable[Review]]


class WebhookServer:
    """An HTTPS admission webhook on loopback in a thread of its own: `answer` decides each
    review; every review received is kept in `reviews`."""

    def __init__(self, certificate: pki.KeyPair, directory: Path) -> None:
        self.reviews: list[Review] = []
        self.paths: list[str] = []
        self.answer: Answer = allow
        self.port = free_port()
        cert, key = directory / "tls.crt", directory / "tls.key"
        cert.write_bytes(certificate.cert_pem)
        key.write_bytes(certificate.key_pem)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = aiohttp.web.Application()
        app.router.add_post("/{path:.*}", self._serve)
        runner = aiohttp.web.AppRunner(app, shutdown_timeout=0.1)  # no waiting on slow answers
        self._loop.run_until_complete(runner.setup())
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self._context)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    async def _serve(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        review = await request.json()
        self.reviews.append(review)
        self.paths.append(request.path_qs)
        return aiohttp.web.json_response(await self.answer(review))

    def start(self) -> WebhookServer:
        self._thread.start()
        assert self._ready.wait(10), "the webhook server did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def requests(self) -> list[dict[str, Any]]:
        return [r["request"] for r in self.reviews]


def response(review: Review, **fields: Any) -> Review:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], **fields},
    }


async def allow(review: Review) -> Review:
    return response(review, allowed=True)


def patching(*ops: dict[str, Any]) -> Answer:
    async def answer(review: Review) -> Review:
        patch = base64.b64encode(json.dumps(list(ops)).encode()).decode()
        return response(review, allowed=True, patch=patch, patchType="JSONPatch")

    return answer


def denying(status: dict[str, Any] | None) -> Answer:
    async def answer(review: Review) -> Review:
        return response(review, allowed=False, **({"status": status} if status else {}))

    return answer


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.make_ca("webhook test CA")


@pytest.fixture(scope="module")
def ca_bundle(ca: pki.KeyPair) -> str:
    return base64.b64encode(ca.cert_pem).decode()


@pytest.fixture
def k8s_api() -> Iterator[ApiServer]:
    """An emulator of each test's own: webhook configurations apply to every write."""
    server = ApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hook(ca: pki.KeyPair, tmp_path: Path) -> Iterator[WebhookServer]:
    certificate = pki.issue_server_cert(ca, ["hooks.webhooks.svc"], ["127.0.0.1"])
    server = WebhookServer(certificate, tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def webhook(
    name: str,
    client: dict[str, Any],
    *,
    resources: tuple[str, ...] = ("configmaps",),
    operations: tuple[str, ...] = ("CREATE", "UPDATE"),
    groups: tuple[str, ...] = ("",),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": client,
        "rules": [
            {
                "apiGroups": list(groups),
                "apiVersions": ["*"],
                "resources": list(resources),
                "operations": list(operations),
            }
        ],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        **extra,
    }


def register(api: Api, kind: str, *webhooks: dict[str, Any], name: str = "hooks") -> None:
    api.create(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": list(webhooks),
        }
    )


def by_url(hook: WebhookServer, ca_bundle: str, path: str = "/validate") -> dict[str, Any]:
    return {"url": hook.url + path, "caBundle": ca_bundle}


def configmap(namespace: str, name: str = "cm", **meta: Any) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "data": {"k": "v"},
    }


def test_an_allowing_webhook_sees_the_request_as_the_api_server_sends_it(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook("check.example.com", by_url(hook, ca_bundle), timeoutSeconds=3),
    )
    created = api.create(configmap(namespace))
    assert api.get("ConfigMap", namespace, "cm") == created
    (request,) = hook.requests()
    assert hook.paths == ["/validate?timeout=3s"]
    assert request["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert request["resource"] == {"group": "", "version": "v1", "resource": "configmaps"}
    assert request["requestKind"] == request["kind"]
    assert request["requestResource"] == request["resource"]
    assert "subResource" not in request
    assert (request["name"], request["namespace"], request["operation"]) == (
        "cm",
        namespace,
        "CREATE",
    )
    assert request["userInfo"] == ADMIN_USER
    assert request["oldObject"] is None
    assert request["dryRun"] is False
    assert request["options"] == {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
    # Validating admission runs after the server set uid, creationTimestamp and generation,
    # before storage gives the resourceVersion.
    meta = request["object"]["metadata"]
    assert meta["uid"] == created["metadata"]["uid"]
    assert meta["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert meta["generation"] == 1
    assert "resourceVersion" not in meta


def test_a_refusal_reads_as_kube_apiserver_reports_it(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    register(
        api, "ValidatingWebhookConfiguration", webhook("deny.example.com", by_url(hook, ca_bundle))
    )
    hook.answer = denying({"code": 403, "reason": "Forbidden", "message": "no thanks"})
    with pytest.raises(ApiError) as refused:
        api.create(configmap(namespace))
    assert refused.value.status == 403
    assert refused.value.reason == "Forbidden"
    assert (
        refused.value.message
        == 'admission webhook "deny.example.com" denied the request: no thanks'
    )
    assert api.get("ConfigMap", namespace, "cm") is None

    hook.answer = denying({"code": 200})
    with pytest.raises(ApiError) as unexplained:
        api.create(configmap(namespace))
    assert unexplained.value.status == 400
    assert unexplained.value.message == (
        'admission webhook "deny.example.com" denied the request without explanation'
    )

    hook.answer = denying({"code": 422, "reason": "Invalid"})
    with pytest.raises(ApiError) as by_reason:
        api.create(configmap(namespace))
    assert by_reason.value.status == 422
    assert (
        by_reason.value.message
        == 'admission webhook "deny.example.com" denied the request: Invalid'
    )


def test_a_mutating_patch_is_stored_and_validating_webhooks_see_it(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    stamp = {"op": "add", "path": "/metadata/annotations", "value": {"stamped-by": "hook"}}
    mutating_answer = patching(stamp)

    async def answer(review: Review) -> Review:
        if review["request"].get("object", {}).get("metadata", {}).get("annotations"):
            return response(review, allowed=True)  # the validating call sees the patch
        return await mutating_answer(review)

    hook.answer = answer
    register(
        api,
        "MutatingWebhookConfiguration",
        webhook("stamp.example.com", by_url(hook, ca_bundle, "/mutate"), operations=("CREATE",)),
    )
    register(
        api, "ValidatingWebhookConfiguration", webhook("check.example.com", by_url(hook, ca_bundle))
    )
    created = api.create(configmap(namespace))
    assert created["metadata"]["annotations"] == {"stamped-by": "hook"}
    stored = api.get("ConfigMap", namespace, "cm")
    assert stored is not None and stored["metadata"]["annotations"] == {"stamped-by": "hook"}
    assert [p.split("?")[0] for p in hook.paths] == ["/mutate", "/validate"]
    mutated, validated = hook.requests()
    # Mutating admission runs before the server stamps its metadata.
    assert not {"uid", "resourceVersion", "creationTimestamp"} & set(mutated["object"]["metadata"])
    assert validated["object"]["metadata"]["annotations"] == {"stamped-by": "hook"}
    assert mutated["uid"] != validated["uid"]


def test_a_refused_update_leaves_the_object_as_it_was(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    before = api.create(configmap(namespace))
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook("frozen.example.com", by_url(hook, ca_bundle), operations=("UPDATE",)),
    )
    hook.answer = denying({"code": 403, "reason": "Forbidden", "message": "frozen"})
    with pytest.raises(ApiError) as patched:
        api.patch("ConfigMap", namespace, "cm", {"data": {"k": "changed"}})
    assert patched.value.status == 403
    with pytest.raises(ApiError) as replaced:
        api.replace({**before, "data": {"k": "replaced"}})
    assert replaced.value.status == 403
    assert api.get("ConfigMap", namespace, "cm") == before
    patch_request, put_request = hook.requests()
    assert patch_request["operation"] == put_request["operation"] == "UPDATE"
    assert patch_request["oldObject"] == before
    assert patch_request["object"]["data"] == {"k": "changed"}
    assert put_request["object"]["data"] == {"k": "replaced"}
    assert patch_request["options"] == {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}


def test_a_webhook_that_is_down_fails_closed_or_is_ignored(
    api: Api, ca_bundle: str, namespace: str
) -> None:
    down = {"url": f"https://127.0.0.1:{free_port()}/validate", "caBundle": ca_bundle}
    register(api, "ValidatingWebhookConfiguration", webhook("down.example.com", down))
    with pytest.raises(ApiError) as failed:
        api.create(configmap(namespace))
    assert failed.value.status == 500
    assert failed.value.reason == "InternalError"
    assert failed.value.message.startswith(
        'Internal error occurred: failed calling webhook "down.example.com": failed to call '
        f'webhook: Post "{down["url"]}?timeout=10s": '
    )
    assert api.get("ConfigMap", namespace, "cm") is None

    api.delete("ValidatingWebhookConfiguration", None, "hooks")
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook("down.example.com", down, failurePolicy="Ignore"),
    )
    assert api.create(configmap(namespace))["metadata"]["name"] == "cm"


@pytest.mark.parametrize(
    ("trouble", "error"),
    [
        ("other CA", "failed to call webhook: Post"),
        ("wrong uid", 'received invalid webhook response: expected response.uid="'),
        ("not a review", "received invalid webhook response: expected webhook response of"),
        ("status 500", "failed to call webhook: the server responded with the status code 500"),
        ("slow", "context deadline exceeded"),
    ],
)
def test_a_broken_webhook_is_a_call_failure(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str, trouble: str, error: str
) -> None:
    other_ca = base64.b64encode(pki.make_ca("another CA").cert_pem).decode()
    client = by_url(hook, other_ca if trouble == "other CA" else ca_bundle)

    async def answer(review: Review) -> Review:
        if trouble == "wrong uid":
            return response({"request": {"uid": "someone-else"}}, allowed=True)
        if trouble == "not a review":
            return {"response": {"uid": review["request"]["uid"], "allowed": True}}
        if trouble == "status 500":
            raise aiohttp.web.HTTPInternalServerError(text="boom")
        await asyncio.sleep(3)
        return response(review, allowed=True)

    hook.answer = answer
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook("broken.example.com", client, timeoutSeconds=1),
    )
    with pytest.raises(ApiError) as failed:
        api.create(configmap(namespace))
    assert failed.value.status == 500
    assert failed.value.message.startswith(
        'Internal error occurred: failed calling webhook "broken.example.com": '
    )
    assert error in failed.value.message
    assert api.get("ConfigMap", namespace, "cm") is None


def test_webhooks_whose_rules_do_not_match_are_not_called(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    def secret(name: str) -> dict[str, Any]:
        return {"kind": "Secret", "metadata": {"name": name, "namespace": namespace}}

    api.create(secret("before"))
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook(
            "secrets.example.com",
            by_url(hook, ca_bundle),
            resources=("secrets",),
            operations=("CREATE",),
        ),
    )
    hook.answer = denying({"code": 403, "message": "no new secrets"})
    api.create(configmap(namespace))  # another resource
    api.patch("Secret", namespace, "before", {"metadata": {"labels": {"a": "1"}}})  # UPDATE
    api.delete("Secret", namespace, "before")  # DELETE
    assert hook.reviews == []
    with pytest.raises(ApiError) as refused:
        api.create(secret("after"))
    assert refused.value.message.endswith("denied the request: no new secrets")
    assert [r["operation"] for r in hook.requests()] == ["CREATE"]


def test_namespace_selectors_pick_namespaces_by_their_labels(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    api.create({"kind": "Namespace", "metadata": {"name": namespace, "labels": {"team": "a"}}})
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook(
            "team-a.example.com",
            by_url(hook, ca_bundle),
            namespaceSelector={"matchLabels": {"team": "a"}},
        ),
        webhook(
            "by-name.example.com",
            by_url(hook, ca_bundle, "/by-name"),
            namespaceSelector={
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["other"]}
                ]
            },
        ),
    )
    api.create(configmap(namespace))
    api.create(configmap("other"))  # no Namespace object: only its name label
    api.create(configmap("third"))
    assert [
        (r["namespace"], p.split("?")[0]) for r, p in zip(hook.requests(), hook.paths, strict=True)
    ] == [
        (namespace, "/validate"),
        ("other", "/by-name"),
    ]


def test_object_selectors_match_the_new_or_the_old_object(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook(
            "labelled.example.com",
            by_url(hook, ca_bundle),
            operations=("*",),
            objectSelector={"matchLabels": {"watched": "yes"}},
        ),
    )
    api.create(configmap(namespace, "plain"))
    api.create(configmap(namespace, "watched", labels={"watched": "yes"}))
    api.patch("ConfigMap", namespace, "watched", {"metadata": {"labels": None}})  # old matches
    api.patch("ConfigMap", namespace, "plain", {"data": {"k": "2"}})
    api.delete("ConfigMap", namespace, "watched")  # the old object no longer matches
    assert [(r["operation"], r["name"]) for r in hook.requests()] == [
        ("CREATE", "watched"),
        ("UPDATE", "watched"),
    ]


def test_the_webhook_gets_the_user_of_the_bearer_token(
    k8s_api: ApiServer, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    alice = {"username": "alice", "uid": "a-1", "groups": ["devs", "system:authenticated"]}
    k8s_api.emulator.users["alice-token"] = alice
    admin = Api(k8s_api.url)
    register(
        admin, "ValidatingWebhookConfiguration", webhook("who.example.com", by_url(hook, ca_bundle))
    )
    Api(k8s_api.url, token="alice-token").create(configmap(namespace, "by-alice"))
    Api(k8s_api.url, token="unknown-token").create(configmap(namespace, "by-unknown"))
    admin.create(configmap(namespace, "by-admin"))
    assert [(r["name"], r["userInfo"]) for r in hook.requests()] == [
        ("by-alice", alice),
        ("by-unknown", ADMIN_USER),
        ("by-admin", ADMIN_USER),
    ]
    # SelfSubjectReview still knows only the listed tokens.
    with pytest.raises(ApiError) as unknown:
        Api(k8s_api.url, token="unknown-token").request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    assert unknown.value.status == 404


def test_a_webhook_may_ask_the_api_while_it_decides(
    k8s_api: ApiServer, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    """As rdsgate's Token webhook does: a SubjectAccessReview for the requester, and a read,
    made while the API server waits for the webhook's answer."""
    k8s_api.emulator.users |= {
        "alice-token": {"username": "alice", "groups": ["system:authenticated"]},
        "bob-token": {"username": "bob", "groups": ["system:authenticated"]},
    }
    admin = Api(k8s_api.url)
    admin.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "Role",
            "metadata": {"name": "bind-app-ro", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["rdsgate.dev"],
                    "resources": ["roles"],
                    "resourceNames": ["app-ro"],
                    "verbs": ["bind"],
                }
            ],
        }
    )
    admin.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "RoleBinding",
            "metadata": {"name": "alice-binds", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "bind-app-ro",
            },
            "subjects": [
                {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
            ],
        }
    )

    async def answer(review: Review) -> Review:
        request = review["request"]
        user = request["userInfo"]
        sar = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user["username"],
                "groups": user.get("groups", []),
                "resourceAttributes": {
                    "namespace": request["namespace"],
                    "verb": "bind",
                    "group": "rdsgate.dev",
                    "resource": "roles",
                    "name": request["object"]["data"]["role"],
                },
            },
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{k8s_api.url}/apis/authorization.k8s.io/v1/subjectaccessreviews", json=sar
            ) as answered:
                status = (await answered.json())["status"]
            async with session.get(
                f"{k8s_api.url}/api/v1/namespaces/{request['namespace']}/configmaps"
            ) as listed:
                assert listed.status == 200
        if status["allowed"]:
            return response(review, allowed=True)
        message = f'{user["username"]} may not bind Role "{request["object"]["data"]["role"]}"'
        return response(
            review, allowed=False, status={"code": 403, "reason": "Forbidden", "message": message}
        )

    hook.answer = answer
    register(
        admin,
        "ValidatingWebhookConfiguration",
        webhook("tokens.example.com", by_url(hook, ca_bundle)),
    )
    grant = configmap(namespace, "grant")
    grant["data"] = {"role": "app-ro"}
    assert Api(k8s_api.url, token="alice-token").create(grant)["metadata"]["name"] == "grant"
    with pytest.raises(ApiError) as refused:
        Api(k8s_api.url, token="bob-token").create(
            {**grant, "metadata": {**grant["metadata"], "name": "bobs"}}
        )
    assert refused.value.status == 403
    assert refused.value.message == (
        'admission webhook "tokens.example.com" denied the request: bob may not bind Role "app-ro"'
    )


def test_a_service_reference_is_called_at_its_registered_address(
    k8s_api: ApiServer, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    api = Api(k8s_api.url)
    service = {"namespace": "webhooks", "name": "hooks", "port": 8443, "path": "/v"}
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook("svc.example.com", {"service": service, "caBundle": ca_bundle}),
    )
    with pytest.raises(ApiError) as unregistered:
        api.create(configmap(namespace))
    assert unregistered.value.message == (
        'Internal error occurred: failed calling webhook "svc.example.com": failed to call '
        'webhook: Post "https://hooks.webhooks.svc:8443/v?timeout=10s": service "hooks" not found'
    )
    k8s_api.emulator.services[("webhooks", "hooks", 8443)] = ("127.0.0.1", hook.port)
    api.create(configmap(namespace))  # the certificate is for hooks.webhooks.svc
    assert hook.paths == ["/v?timeout=10s"]

    # A certificate for another name fails the hostname check.
    api.patch(
        "ValidatingWebhookConfiguration",
        None,
        "hooks",
        {
            "webhooks": [
                webhook(
                    "svc.example.com",
                    {"service": {**service, "name": "other"}, "caBundle": ca_bundle},
                )
            ]
        },
    )
    k8s_api.emulator.services[("webhooks", "other", 8443)] = ("127.0.0.1", hook.port)
    with pytest.raises(ApiError) as mismatch:
        api.create(configmap(namespace, "again"))
    assert mismatch.value.status == 500
    assert "other.webhooks.svc" in mismatch.value.message
    assert len(hook.reviews) == 1


def test_a_write_is_admitted_again_when_the_object_changed_meanwhile(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    """A PATCH is applied to the object as stored; when the webhook's wait let another write
    through, the API server starts the patch over, webhooks included."""
    api.create(configmap(namespace))
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook("slow.example.com", by_url(hook, ca_bundle), operations=("UPDATE",)),
    )

    async def answer(review: Review) -> Review:
        if len(hook.reviews) == 1:  # someone else writes while the first call is out
            hook.answer = allow
            await asyncio.to_thread(
                Api(api.url).patch, "ConfigMap", namespace, "cm", {"data": {"other": "x"}}
            )
        return response(review, allowed=True)

    hook.answer = answer
    patched = api.patch("ConfigMap", namespace, "cm", {"data": {"mine": "y"}})
    assert patched["data"] == {"k": "v", "other": "x", "mine": "y"}
    first, concurrent, retried = hook.requests()
    assert first["object"]["data"] == {"k": "v", "mine": "y"}
    assert concurrent["object"]["data"] == {"k": "v", "other": "x"}
    assert retried["object"]["data"] == patched["data"]
    assert retried["oldObject"]["data"] == {"k": "v", "other": "x"}


def test_warnings_reach_the_client(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    async def answer(review: Review) -> Review:
        return response(review, allowed=True, warnings=['deprecated "k" key'])

    hook.answer = answer
    register(
        api, "ValidatingWebhookConfiguration", webhook("warn.example.com", by_url(hook, ca_bundle))
    )
    api.create(configmap(namespace))
    assert api.warnings == ['deprecated "k" key']
    api.get("ConfigMap", namespace, "cm")
    assert api.warnings == []


def test_subresources_match_only_rules_that_name_them(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    db = {
        "kind": "Database",
        "metadata": {"name": "d", "namespace": namespace},
        "spec": {"endpoint": "a:1"},
    }
    api.create(db)
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook(
            "dbs.example.com",
            by_url(hook, ca_bundle),
            groups=("rdsgate.dev",),
            resources=("databases",),
            operations=("UPDATE",),
        ),
        webhook(
            "status.example.com",
            by_url(hook, ca_bundle, "/status"),
            groups=("rdsgate.dev",),
            resources=("*/status",),
            operations=("UPDATE",),
        ),
    )
    api.patch("Database", namespace, "d", {"status": {"readyReplicas": 1}}, sub="status")
    api.patch("Database", namespace, "d", {"spec": {"endpoint": "b:2"}})
    status_request, main_request = hook.requests()
    assert hook.paths[0].startswith("/status")
    assert status_request["subResource"] == status_request["requestSubResource"] == "status"
    assert status_request["kind"] == {
        "group": "rdsgate.dev",
        "version": "v1alpha1",
        "kind": "Database",
    }
    assert "subResource" not in main_request
    # Validating webhooks see the generation the spec change gives.
    assert main_request["object"]["metadata"]["generation"] == 2


def test_a_delete_is_admitted_with_the_old_object(
    api: Api, hook: WebhookServer, ca_bundle: str, namespace: str
) -> None:
    stored = api.create(configmap(namespace))
    register(
        api,
        "ValidatingWebhookConfiguration",
        webhook("keep.example.com", by_url(hook, ca_bundle), operations=("DELETE",)),
    )
    hook.answer = denying({"code": 403, "reason": "Forbidden", "message": "keep it"})
    with pytest.raises(ApiError) as refused:
        api.delete("ConfigMap", namespace, "cm")
    assert refused.value.status == 403
    assert api.get("ConfigMap", namespace, "cm") == stored
    (request,) = hook.requests()
    assert request["operation"] == "DELETE"
    assert request["object"] is None
    assert request["oldObject"] == stored
    assert request["options"]["kind"] == "DeleteOptions"
    hook.answer = allow
    api.delete("ConfigMap", namespace, "cm")
    assert api.get("ConfigMap", namespace, "cm") is None


def test_webhook_configurations_are_defaulted_and_validated(api: Api, ca_bundle: str) -> None:
    register(
        api,
        "MutatingWebhookConfiguration",
        webhook(
            "ok.example.com", {"service": {"namespace": "n", "name": "s"}, "caBundle": ca_bundle}
        ),
    )
    stored = api.get("MutatingWebhookConfiguration", None, "hooks")
    assert stored is not None
    (hook,) = stored["webhooks"]
    assert (hook["failurePolicy"], hook["matchPolicy"], hook["timeoutSeconds"]) == (
        "Fail",
        "Equivalent",
        10,
    )
    assert (hook["namespaceSelector"], hook["objectSelector"]) == ({}, {})
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["rules"][0]["scope"] == "*"
    assert hook["clientConfig"]["service"]["port"] == 443

    with pytest.raises(ApiError) as invalid:
        register(
            api,
            "ValidatingWebhookConfiguration",
            webhook("plain.example.com", {"url": "http://127.0.0.1:1/"}),
            name="plain",
        )
    assert invalid.value.status == 422
    assert invalid.value.message == (
        'ValidatingWebhookConfiguration.admissionregistration.k8s.io "plain" is invalid: '
        "webhooks[0].clientConfig.url: Invalid value: \"http://127.0.0.1:1/\": 'https' is the "
        "only allowed URL scheme"
    )
