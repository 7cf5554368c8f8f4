"""People with exactly the RBAC that docs/cli.md says they need, read from the page.

The emulator answers SubjectAccessReviews (the admission webhooks' `bind`, `request` and
`approve` checks) from the RBAC objects stored in it; it does not authorize a person's
own requests, so `assert_within_documented_rbac` holds every request they sent against
their RBAC afterwards, as the API server's authorizer would have.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.cli.conftest import Person, World
from tests.fixtures import rbac
from tests.fixtures.k8s import RBAC_V1

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
#: What every authenticated user may do in any cluster (the ClusterRole system:basic-user).
BASIC_USER = {"selfsubjectreviews", "selfsubjectaccessreviews"}
#: The headings of docs/cli.md whose YAML says what people need.
PERSON_RBAC = "## What a person needs in RBAC"
REQUESTS_RBAC = "### What requesters and approvers need in RBAC"
ROLE_VERBS = ("bind", "request", "approve")


def documented(heading: str) -> list[dict[str, Any]]:
    """The YAML documents under a heading of docs/cli.md (up to the next heading of the same
    or a higher level; a `#` comment in a code block is no heading)."""
    level = len(heading.split(" ", 1)[0])
    lines = DOCS.read_text().splitlines()
    start = lines.index(heading)
    section: list[str] = []
    fenced = False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        section.append(line)
    blocks = re.findall(r"```yaml\n(.*?)```", "\n".join(section), flags=re.S)
    assert blocks, f"no YAML in docs/cli.md's {heading!r}"
    return [d for block in blocks for d in yaml.safe_load_all(block) if d]


def documented_rbac() -> list[dict[str, Any]]:
    """The YAML of docs/cli.md's "What a person needs in RBAC"."""
    return documented(PERSON_RBAC)


def _verbs_on_roles(rules: Sequence[dict[str, Any]]) -> set[str]:
    return {
        v
        for r in rules
        if "roles" in r.get("resources", []) and "rdsgate.dev" in r.get("apiGroups", [])
        for v in r["verbs"]
        if v in ROLE_VERBS
    }


def give(world: World, who: Person, name: str, rules: list[dict[str, Any]]) -> str:
    """An RBAC Role with `rules` and a RoleBinding of it to `who`; the binding's name."""
    assert who.username is not None
    name = f"{name}-{who.username}"
    subject = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": who.username}]
    world.api.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "Role",
            "metadata": {"name": name, "namespace": world.ns},
            "rules": rules,
        }
    )
    world.api.create(
        {
            "apiVersion": RBAC_V1,
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": world.ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        }
    )
    return name


def _give_documented(
    world: World, who: Person, docs: list[dict[str, Any]], verb: str, roles: Sequence[str]
) -> str:
    """The documented Roles of `docs`; the one with `verb` on roles.rdsgate.dev names
    `roles` instead of the page's examples. Returns that one's binding."""
    found = ""
    for doc in docs:
        if doc["kind"] != "Role":
            continue
        rules = doc["rules"]
        verbs = _verbs_on_roles(rules)
        if verbs and verb not in verbs:
            continue
        if verb in verbs:
            rules = [
                {**r, "resourceNames": list(roles)} if verb in r["verbs"] else r for r in rules
            ]
            found = give(world, who, doc["metadata"]["name"], rules)
        else:
            give(world, who, doc["metadata"]["name"], rules)
    assert found, f"docs/cli.md shows no Role granting {verb}"
    return found


def grant(world: World, who: Person, *bindable: str) -> str:
    """The documented RBAC for `who` in the world's namespace, with `bind` on `bindable`
    instead of the page's example Roles; the name of the bind Role's RoleBinding."""
    assert bindable
    for doc in documented_rbac():
        if doc["kind"] == "Role" and "bind" in _verbs_on_roles(doc["rules"]):
            assert all(r["verbs"] == ["bind"] for r in doc["rules"]), "bind in a Role of its own"
    return _give_documented(world, who, documented_rbac(), "bind", bindable)


def allow_requests(world: World, who: Person, *requestable: str) -> str:
    """What docs/cli.md says a requester needs: a person's RBAC without `bind`, and
    `request` on `requestable`; the name of the request Role's RoleBinding."""
    assert requestable
    person = [d for d in documented_rbac() if not _verbs_on_roles(d.get("rules") or [])]
    requesting = [d for d in documented(REQUESTS_RBAC) if "request" in _verbs_on_roles(d["rules"])]
    return _give_documented(world, who, [*person, *requesting], "request", requestable)


def allow_approvals(world: World, who: Person, *approvable: str) -> str:
    """What docs/cli.md says an approver needs: `approve` on `approvable` and its rules on
    Tokens; the name of its RoleBinding."""
    assert approvable
    docs = [d for d in documented(REQUESTS_RBAC) if "approve" in _verbs_on_roles(d["rules"])]
    return _give_documented(world, who, docs, "approve", approvable)


def assert_within_documented_rbac(world: World, who: Person) -> None:
    """Every request of `who` was one their RBAC allows (none about Secrets, then)."""
    assert who.username is not None
    objects = [
        {**o, "apiVersion": RBAC_V1, "kind": kind}
        for kind in ("Role", "RoleBinding")
        for o in world.api.objects(kind, world.ns, api_version=RBAC_V1)
    ]
    calls = who.calls(world.server)
    assert calls
    refused = [
        c
        for c in calls
        if c.resource not in BASIC_USER
        and not rbac.authorize(objects, who.username, ["system:authenticated"], c)[0]
    ]
    assert refused == []


def direct(world: World, *args: str) -> list[str]:
    return [*args, "--address", f"127.0.0.1:{world.port}", "--print-env"]


def exports(stdout: str) -> dict[str, str]:
    return dict(
        line.removeprefix("export ").split("=", 1)
        for line in stdout.splitlines()
        if line.startswith("export ")
    )
