"""DatabaseDiscovery's pure core: matching, names, labels, ownership, grace period, status.

Inventories are built by hand (the AWS side is tested on the emulator in
test_discovery_operator.py); every Database the plan renders is checked against the
Database CRD's schema and the operator's own validation, as the API server and the
reconciler would.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
import yaml

from rdsgate.operator import discovery, render
from rdsgate.operator.discovery import (
    ANNOTATION_GONE,
    LABEL_DISCOVERED_BY,
    LABEL_ENDPOINT_ROLE,
    LABEL_PROXY_NAME,
    NAME_MAX,
    plan,
    sanitize_tags,
)
from rdsgate.operator.inventory import FoundProxy, Inventory, ProxyEndpoint
from rdsgate.operator.status import InvalidSpec, timestamp
from tests.fixtures.k8s import CRD_DIR, EXAMPLES_DIR

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
UID = "disc-uid-1"
ACCOUNT = "123456789012"
DB_SCHEMA = yaml.safe_load((CRD_DIR / "databases.rdsgate.dev.yaml").read_text())["spec"][
    "versions"
][0]["schema"]["openAPIV3Schema"]
DISC_SCHEMA = yaml.safe_load((CRD_DIR / "databasediscoveries.rdsgate.dev.yaml").read_text())[
    "spec"
]["versions"][0]["schema"]["openAPIV3Schema"]


def endpoint(
    name: str = "default",
    role: str = "READ_WRITE",
    *,
    proxy: str = "orders",
    status: str = "available",
) -> ProxyEndpoint:
    default = name == "default"
    host = (
        f"{proxy.lower()}.proxy-abc.eu-west-1.rds.amazonaws.com"
        if default
        else f"{name}.endpoint.proxy-abc.eu-west-1.rds.amazonaws.com"
    )
    return ProxyEndpoint(name, host, 5432, role, default, status)  # type: ignore[arg-type]


def proxy(
    name: str = "orders",
    *,
    tags: dict[str, str] | None = None,
    family: str = "POSTGRESQL",
    region: str = "eu-west-1",
    readers: tuple[str, ...] = (),
    extra: tuple[ProxyEndpoint, ...] = (),
) -> FoundProxy:
    rid = f"prx-{abs(hash((name, region))) % 10**12:012d}"
    return FoundProxy(
        name=name,
        arn=f"arn:aws:rds:{region}:{ACCOUNT}:db-proxy:{rid}",
        resource_id=rid,
        region=region,
        account_id=ACCOUNT,
        engine_family=family,
        status="available",
        tags=tags if tags is not None else {"env": "prod", "team": "shop"},
        endpoints=(
            endpoint(proxy=name),
            *(endpoint(r, "READ_ONLY", proxy=name) for r in readers),
            *extra,
        ),
    )


def inventory(*proxies: FoundProxy) -> Inventory:
    return Inventory(proxies=tuple(proxies), regions=("eu-west-1",))


def disc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"aws": {"regions": ["eu-west-1"]}}
    base.update(spec)
    return {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "DatabaseDiscovery",
        "metadata": {"name": "prod", "namespace": "shop", "uid": UID},
        "spec": base,
    }


def names(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def existing(obj: dict[str, Any], **annotations: str | None) -> dict[str, Any]:
    """A created Database as the API returns it (with a uid, and the given annotations)."""
    out = copy.deepcopy(obj)
    out["metadata"]["uid"] = "db-" + out["metadata"]["name"]
    ann = out["metadata"].setdefault("annotations", {})
    for k, v in annotations.items():
        if v is None:
            ann.pop(k, None)
        else:
            ann[k] = v
    return out


def valid_database(obj: dict[str, Any]) -> None:
    errors = [e.message for e in jsonschema.Draft7Validator(DB_SCHEMA).iter_errors(obj)]
    assert errors == []
    render.proxy_config(render.Database(obj))


# Matching


def test_tags_names_and_engine_families_select_proxies() -> None:
    inv = inventory(
        proxy("orders-a", tags={"env": "prod", "team": "x"}),
        proxy("orders-b", tags={"env": "staging", "team": "x"}),
        proxy("orders-c", tags={"env": "prod"}),
        proxy("billing", tags={"env": "prod", "team": "y"}),
        proxy("orders-my", tags={"env": "prod", "team": "z"}, family="MYSQL"),
    )
    p = plan(
        disc(match={"tags": {"env": "prod", "team": "*"}, "names": ["orders-*"]}), inv, [], NOW
    )
    assert names(p.create) == ["orders-a"]
    # Only a proxy that matched tags and names is listed as skipped, with the reason.
    assert p.status["skipped"] == [
        {"proxy": "orders-my", "reason": "engine family MYSQL is not in spec.match.engineFamilies"}
    ]
    assert p.status["found"] == 1


def test_no_match_section_takes_every_postgres_proxy() -> None:
    p = plan(disc(), inventory(proxy("a", tags={}), proxy("b")), [], NOW)
    assert names(p.create) == ["a", "b"]


def test_a_family_asked_for_but_not_served_is_skipped() -> None:
    p = plan(
        disc(match={"engineFamilies": ["POSTGRESQL", "MYSQL"]}),
        inventory(proxy("m", family="MYSQL")),
        [],
        NOW,
    )
    assert p.create == []
    assert p.status["skipped"] == [
        {"proxy": "m", "reason": "engine family MYSQL is not served yet"}
    ]


@pytest.mark.parametrize(
    ("wanted", "tags", "match"),
    [
        ({"env": "prod"}, {"env": "prod"}, True),
        ({"env": "prod"}, {"env": "Prod"}, False),
        ({"env": "*"}, {"env": ""}, True),
        ({"env": "*"}, {}, False),
        ({"env": "prod", "team": "a"}, {"env": "prod"}, False),
        ({}, {}, True),
    ],
)
def test_tag_matching(wanted: dict[str, str], tags: dict[str, str], match: bool) -> None:
    assert discovery.tags_match(wanted, tags) is match


# Endpoints


def test_read_only_endpoints_become_databases_named_proxy_endpoint() -> None:
    inv = inventory(proxy("orders", readers=("reporting",)))
    p = plan(disc(), inv, [], NOW)
    by_name = {o["metadata"]["name"]: o for o in p.create}
    assert sorted(by_name) == ["orders", "orders-reporting"]
    rw, ro = by_name["orders"], by_name["orders-reporting"]
    assert rw["metadata"]["labels"][LABEL_ENDPOINT_ROLE] == "read-write"
    assert ro["metadata"]["labels"][LABEL_ENDPOINT_ROLE] == "read-only"
    assert ro["spec"]["endpoint"] == "reporting.endpoint.proxy-abc.eu-west-1.rds.amazonaws.com:5432"
    assert ro["spec"]["aws"] == rw["spec"]["aws"]
    for obj in p.create:
        valid_database(obj)


def test_endpoints_spec_selects_kinds_and_lists_the_rest_as_skipped() -> None:
    custom_rw = endpoint("writer2", "READ_WRITE")
    inv = inventory(proxy("orders", readers=("reporting",), extra=(custom_rw,)))
    p = plan(disc(endpoints=["default"]), inv, [], NOW)
    assert names(p.create) == ["orders"]
    assert {(s["endpoint"], s["reason"]) for s in p.status["skipped"]} == {
        ("reporting", "read-only endpoints are not in spec.endpoints"),
        ("writer2", "a read-write endpoint other than the default: use the default one"),
    }
    p = plan(disc(endpoints=["read-only"]), inv, [], NOW)
    assert names(p.create) == ["orders-reporting"]


def test_an_endpoint_not_yet_available_is_skipped_until_it_is() -> None:
    inv = inventory(proxy("orders", extra=(endpoint("rep", "READ_ONLY", status="creating"),)))
    p = plan(disc(), inv, [], NOW)
    assert names(p.create) == ["orders"]
    assert p.status["skipped"] == [
        {
            "proxy": "orders",
            "endpoint": "rep",
            "reason": "endpoint status is creating; it becomes a Database once available",
        }
    ]


# What a Database holds


def test_the_database_carries_discovered_fields_labels_and_owner() -> None:
    p = plan(disc(), inventory(proxy("orders", tags={"env": "prod", "cost-center": "42"})), [], NOW)
    (db,) = p.create
    found = inventory(proxy("orders")).proxies[0]
    assert db["metadata"]["namespace"] == "shop"
    assert db["metadata"]["labels"] == {
        "env": "prod",
        "cost-center": "42",
        LABEL_DISCOVERED_BY: "prod",
        LABEL_ENDPOINT_ROLE: "read-write",
        LABEL_PROXY_NAME: "orders",
    }
    assert db["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "DatabaseDiscovery",
            "name": "prod",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert db["spec"] == {
        "engine": "postgres",
        "endpoint": "orders.proxy-abc.eu-west-1.rds.amazonaws.com:5432",
        "aws": {
            "region": "eu-west-1",
            "accountId": ACCOUNT,
            "proxyResourceId": found.resource_id,
        },
    }
    valid_database(db)


def test_the_template_is_merged_and_discovered_fields_win() -> None:
    template = {
        "metadata": {
            "labels": {"source": "aws", "env": "from-template", LABEL_ENDPOINT_ROLE: "sneaky"},
            "annotations": {"owner": "platform"},
        },
        "spec": {
            "proxy": {
                "replicas": 3,
                "serviceAccount": {"roleArn": f"arn:aws:iam::{ACCOUNT}:role/p"},
            },
            "audit": {"queries": False},
            "aws": {"assumeRoleArn": f"arn:aws:iam::{ACCOUNT}:role/connect", "externalId": "xid"},
        },
    }
    p = plan(disc(template=template), inventory(proxy("orders")), [], NOW)
    (db,) = p.create
    labels = db["metadata"]["labels"]
    assert labels["source"] == "aws"
    assert labels["env"] == "from-template"  # the template beats a tag
    assert labels[LABEL_ENDPOINT_ROLE] == "read-write"  # discovery beats the template
    assert db["metadata"]["annotations"]["owner"] == "platform"
    assert db["spec"]["proxy"]["replicas"] == 3
    assert db["spec"]["audit"] == {"queries": False}
    assert db["spec"]["aws"]["assumeRoleArn"].endswith(":role/connect")
    assert db["spec"]["aws"]["region"] == "eu-west-1"
    valid_database(db)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"spec": {"endpoint": "x:1"}}, "spec.template.spec.endpoint: not a Database field"),
        ({"spec": {"aws": {"region": "us-east-1"}}}, "spec.template.spec.aws.region"),
        ({"spec": {"proxy": {"replicas": "two"}}}, "spec.template makes an invalid Database"),
        ({"spec": {"proxy": {"idleTimeout": "soon"}}}, "spec.proxy.idleTimeout"),
    ],
)
def test_a_bad_template_is_refused_and_nothing_changes(
    template: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSpec, match=message.replace(".", r"\.")):
        plan(disc(template=template), inventory(proxy("orders")), [], NOW)


def test_bad_durations_and_regions_are_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.interval"):
        plan(disc(interval="often"), inventory(), [], NOW)
    with pytest.raises(InvalidSpec, match=r"spec\.aws\.regions"):
        plan(disc(aws={"regions": []}), inventory(), [], NOW)


# Names


def test_names_are_dns_labels_short_enough_for_every_child() -> None:
    long_proxy = "Orders-" + "x" * 56  # RDS Proxy names: at most 63
    inv = inventory(proxy(long_proxy, readers=("reporting-" + "r" * 50,)))
    p = plan(disc(), inv, [], NOW)
    for db in p.create:
        name = db["metadata"]["name"]
        assert len(name) <= NAME_MAX
        assert render._DNS_LABEL.match(name)
        # The Service, the -ro Service and every child name stay within their limits.
        assert len(name + "-ro") <= 63
        assert len(render.Database(db).access_secret_name) <= 253
        valid_database(db)
    # Stable: the same inventory gives the same names.
    assert names(plan(disc(), inv, [], NOW).create) == names(p.create)


def test_colliding_names_get_a_hash_and_existing_ones_keep_theirs() -> None:
    east = proxy("orders", region="us-east-1")
    west = proxy("orders", region="eu-west-1")
    p = plan(disc(aws={"regions": ["us-east-1", "eu-west-1"]}), inventory(east, west), [], NOW)
    created = names(p.create)
    assert len(created) == 2
    assert "orders" in created
    hashed = next(n for n in created if n != "orders")
    assert hashed.startswith("orders-") and len(hashed) == len("orders-") + 5
    # The one already holding the plain name keeps it, whatever the ARNs' order.
    holder = next(o for o in p.create if o["metadata"]["name"] == "orders")
    other_arn = next(
        p_.arn
        for p_ in (east, west)
        if p_.arn != holder["metadata"]["annotations"][discovery.ANNOTATION_ARN]
    )
    assert hashed == discovery.hashed_name("orders", other_arn, "default")
    again = plan(
        disc(aws={"regions": ["us-east-1", "eu-west-1"]}),
        inventory(east, west),
        [existing(o) for o in p.create],
        NOW,
    )
    assert again.create == [] and again.update == [] and again.delete == []


def test_a_new_collision_never_renames_an_existing_database() -> None:
    west = proxy("orders", region="eu-west-1")
    first = plan(disc(), inventory(west), [], NOW)
    (db,) = first.create
    # A proxy of the same name appears elsewhere, with an ARN that sorts first.
    east = proxy("orders", region="ap-east-1")
    assert east.arn < west.arn
    p = plan(disc(), inventory(east, west), [existing(db)], NOW)
    assert [o["metadata"]["name"] for o in p.create] == [
        discovery.hashed_name("orders", east.arn, "default")
    ]
    assert p.update == [] and p.delete == [] and p.mark_gone == {}


# Labels from tags


@pytest.mark.parametrize(
    ("tags", "labels", "dropped"),
    [
        ({"env": "prod"}, {"env": "prod"}, []),
        ({"Cost Center": "R&D 42"}, {"Cost-Center": "R-D-42"}, []),
        ({"example.com/team": "shop"}, {"example.com/team": "shop"}, []),
        ({"Example.COM/team": "shop"}, {"example.com/team": "shop"}, []),
        ({"aws:cloudformation:stack-name": "s"}, {"aws-cloudformation-stack-name": "s"}, []),
        ({"k": "v" * 64}, {}, ["k: value longer than 63 characters"]),
        ({"x" * 64: "v"}, {}, [f"{'x' * 64}: not a valid label key"]),
        ({"???": "v"}, {}, ["???: not a valid label key"]),
        (
            {"rdsgate.dev/endpoint-role": "read-only"},
            {},
            ["rdsgate.dev/endpoint-role: not a valid label key"],
        ),
        ({"kubernetes.io/x": "1"}, {}, ["kubernetes.io/x: not a valid label key"]),
    ],
)
def test_tags_become_valid_labels(
    tags: dict[str, str], labels: dict[str, str], dropped: list[str]
) -> None:
    assert sanitize_tags(tags) == (labels, dropped)


def test_two_tags_giving_one_label_key_keep_the_first_key() -> None:
    assert sanitize_tags({"a-b": "2", "a b": "1"}) == (
        {"a-b": "1"},
        ["a-b: same label key 'a-b' as another tag"],
    )


def test_dropped_tags_are_reported_in_status() -> None:
    p = plan(disc(), inventory(proxy("orders", tags={"note": "n" * 80})), [], NOW)
    assert p.status["droppedLabels"] == ["orders: note: value longer than 63 characters"]


# Updates


def test_a_tag_change_updates_labels_and_removes_the_old_one() -> None:
    before = plan(disc(), inventory(proxy("orders", tags={"env": "prod", "tier": "1"})), [], NOW)
    current = existing(before.create[0])
    p = plan(disc(), inventory(proxy("orders", tags={"env": "staging"})), [current], NOW)
    (desired,) = p.update
    assert desired["metadata"]["labels"]["env"] == "staging"
    assert desired["metadata"]["labels"]["tier"] is None  # removed by the merge patch
    assert p.create == [] and p.delete == []


def test_nothing_to_do_when_in_step() -> None:
    inv = inventory(proxy("orders", readers=("r",)))
    first = plan(disc(), inv, [], NOW)
    p = plan(disc(), inv, [existing(o) for o in first.create], NOW)
    assert (p.create, p.update, p.mark_gone, p.delete, p.conflicts) == ([], [], {}, [], [])
    assert p.status["created"] == ["orders", "orders-r"]
    assert p.status["databases"] == 2


def test_an_endpoint_moving_updates_spec() -> None:
    first = plan(disc(), inventory(proxy("orders")), [], NOW)
    current = existing(first.create[0])
    current["spec"]["endpoint"] = "old.example.com:5432"
    (desired,) = plan(disc(), inventory(proxy("orders")), [current], NOW).update
    assert desired["spec"]["endpoint"].startswith("orders.proxy-abc")


# Gone from AWS


def test_gone_is_marked_then_deleted_after_the_grace_period() -> None:
    first = plan(disc(deletionGracePeriod="10m"), inventory(proxy("orders")), [], NOW)
    current = existing(first.create[0])
    p = plan(disc(deletionGracePeriod="10m"), inventory(), [current], NOW)
    assert p.mark_gone == {
        "orders": {"metadata": {"annotations": {ANNOTATION_GONE: timestamp(NOW)}}}
    }
    assert p.delete == []
    assert p.due == NOW + timedelta(minutes=10)
    assert p.status["goneFromAWS"] == [
        {
            "database": "orders",
            "since": timestamp(NOW),
            "deleteAfter": timestamp(NOW + timedelta(minutes=10)),
        }
    ]
    marked = existing(current, **{ANNOTATION_GONE: timestamp(NOW)})
    later = plan(disc(deletionGracePeriod="10m"), inventory(), [marked], NOW + timedelta(minutes=9))
    assert later.delete == [] and later.mark_gone == {}
    done = plan(disc(deletionGracePeriod="10m"), inventory(), [marked], NOW + timedelta(minutes=10))
    assert done.delete == ["orders"]
    assert done.status["databases"] == 0


def test_coming_back_removes_the_mark() -> None:
    first = plan(disc(), inventory(proxy("orders")), [], NOW)
    marked = existing(first.create[0], **{ANNOTATION_GONE: timestamp(NOW)})
    p = plan(disc(), inventory(proxy("orders")), [marked], NOW + timedelta(minutes=1))
    (desired,) = p.update
    assert desired["metadata"]["annotations"][ANNOTATION_GONE] is None
    assert p.delete == [] and p.mark_gone == {}


def test_a_proxy_no_longer_matching_is_treated_as_gone() -> None:
    first = plan(disc(match={"tags": {"env": "prod"}}), inventory(proxy("orders")), [], NOW)
    current = existing(first.create[0])
    retagged = inventory(proxy("orders", tags={"env": "dev"}))
    p = plan(disc(match={"tags": {"env": "prod"}}), retagged, [current], NOW)
    assert list(p.mark_gone) == ["orders"]


# Ownership and conflicts


def test_a_hand_made_database_is_a_conflict_and_never_touched() -> None:
    hand_made = {
        "apiVersion": "rdsgate.dev/v1alpha1",
        "kind": "Database",
        "metadata": {"name": "orders", "namespace": "shop", "uid": "hand"},
        "spec": {"endpoint": "db.example.com:5432", "aws": {"region": "eu-west-1"}},
    }
    p = plan(disc(), inventory(proxy("orders", readers=("r",))), [hand_made], NOW)
    assert names(p.create) == ["orders-r"]
    assert p.update == [] and p.delete == [] and p.mark_gone == {}
    (conflict,) = p.status["conflicts"]
    assert conflict["database"] == "orders"
    assert "not managed by this DatabaseDiscovery" in conflict["message"]
    # Nor is it deleted or marked when its name's proxy goes away: it is not ours.
    p = plan(disc(), inventory(), [hand_made], NOW)
    assert p.delete == [] and p.mark_gone == {} and p.status["conflicts"] == []


def test_another_discoverys_database_is_a_conflict_too() -> None:
    first = plan(disc(), inventory(proxy("orders")), [], NOW)
    theirs = existing(first.create[0])
    theirs["metadata"]["ownerReferences"][0]["uid"] = "other-discovery"
    p = plan(disc(), inventory(proxy("orders")), [theirs], NOW)
    assert p.create == [] and p.update == []
    assert [c["database"] for c in p.status["conflicts"]] == ["orders"]


def test_status_lists_what_was_found() -> None:
    inv = inventory(proxy("orders", readers=("r",)))
    p = plan(disc(), inv, [], NOW)
    (found,) = p.status["proxies"]
    assert found["name"] == "orders"
    assert [(e["name"], e["role"], e.get("database")) for e in found["endpoints"]] == [
        ("default", "read-write", "orders"),
        ("r", "read-only", "orders-r"),
    ]


# The CRD


def test_the_crds_defaults_are_the_cores() -> None:
    spec = DISC_SCHEMA["properties"]["spec"]["properties"]
    parsed = discovery.parse_spec(disc())
    assert spec["endpoints"]["default"] == sorted(parsed.endpoints)
    assert spec["match"]["properties"]["engineFamilies"]["default"] == list(parsed.engine_families)
    assert spec["interval"]["default"] == "5m" and parsed.interval == 300
    assert spec["deletionGracePeriod"]["default"] == "1h" and parsed.grace == 3600


def test_the_example_is_valid() -> None:
    (doc,) = [
        d
        for d in yaml.safe_load_all((EXAMPLES_DIR / "discovery.yaml").read_text())
        if d and d["kind"] == "DatabaseDiscovery"
    ]
    assert [e.message for e in jsonschema.Draft7Validator(DISC_SCHEMA).iter_errors(doc)] == []
    discovery.parse_spec(doc)


def test_an_endpoint_that_cannot_be_a_database_is_skipped_alone() -> None:
    odd = FoundProxy(
        name="odd",
        arn=f"arn:aws:rds:eu-west-1:{ACCOUNT}:db-proxy:prx-odd",
        resource_id="prx-odd",
        region="eu-west-1",
        account_id=ACCOUNT,
        engine_family="POSTGRESQL",
        status="available",
        endpoints=(ProxyEndpoint("default", "bad host!", 5432, "READ_WRITE", True, "available"),),
    )
    p = plan(disc(), inventory(odd, proxy("orders")), [], NOW)
    assert names(p.create) == ["orders"]
    (skipped,) = p.status["skipped"]
    assert skipped["proxy"] == "odd"
    assert skipped["reason"].startswith("cannot become a Database: spec.endpoint")
