"""IAM size accounting and placement, pure: characters without whitespace, the shared inline
budget, managed policies of 6,144, 10 (or 20) per principal, and wildcards beyond that."""

from __future__ import annotations

import json

import pytest

from rdsgate.operator.iam import (
    PolicyTooLarge,
    ProxyRef,
    iam_glob,
    irsa_trust_policy,
    pack,
    plan_for_principal,
    plan_unattached,
    resources_for,
    suggest_prefixes,
)
from rdsgate.proxy.diagnose.policies import policy_size

REF = ProxyRef("eu-west-1", "123456789012", "prx-0123456789abcdef0")


def users(n: int, prefix: str = "app_user_") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_size_counts_characters_without_whitespace() -> None:
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": ["a b"]}]}
    compact = json.dumps(doc, separators=(",", ":"))
    assert policy_size(doc) == len(compact) - 1  # the space inside "a b" is not counted
    assert policy_size(json.dumps(doc, indent=4)) == policy_size(doc)


def test_pack_fills_each_managed_policy_up_to_6144_and_keeps_every_resource() -> None:
    resources = resources_for(REF, users(300))
    docs = pack(resources, 6144)
    # 72 ARNs of 80 characters (plus quotes and a comma) fit under 6,144 with the envelope.
    assert [len(d["Statement"][0]["Resource"]) for d in docs] == [72, 72, 72, 72, 12]
    held = [r for d in docs for r in d["Statement"][0]["Resource"]]
    assert held == resources
    for doc in docs[:-1]:
        assert policy_size(doc) <= 6144
        # Greedy: the next resource would not have fitted.
        assert policy_size(doc) + len(json.dumps(resources[0])) + 1 > 6144
    assert policy_size(docs[-1]) <= 6144


def test_role_inline_when_it_fits_the_remaining_budget() -> None:
    plan = plan_for_principal(resources_for(REF, users(20)), "role", inline_used=1000)
    assert plan.placement == "inline"
    size = plan.sizes[0]
    assert plan.notes == [
        f"one inline policy of {size:,} characters (whitespace excluded); with the role's "
        f"other inline policies (1,000) that is {1000 + size:,} of 10,240 (all inline "
        "policies of a role share 10,240 characters)"
    ]


def test_inline_budget_is_shared_so_other_policies_push_it_to_managed() -> None:
    resources = resources_for(REF, users(30))
    assert plan_for_principal(resources, "role").placement == "inline"
    plan = plan_for_principal(resources, "role", inline_used=9000)
    assert plan.placement == "managed"
    assert "splitting into several inline policies does not help" in plan.notes[0]


def test_user_limit_is_2048() -> None:
    plan = plan_for_principal(resources_for(REF, users(30)), "user")
    assert plan.placement == "managed"
    assert "all inline policies of a user share 2,048 characters" in plan.notes[0]


def test_beyond_the_attachable_total_refuses_and_offers_wildcards() -> None:
    names = users(1000)
    resources = resources_for(REF, names)
    with pytest.raises(PolicyTooLarge) as err:
        plan_for_principal(resources, "role", managed_attached=0, users=names)
    message = str(err.value)
    assert "1000 resources need 14 managed policies of at most 6,144 characters" in message
    assert "a role takes 10 managed policies (default 10, up to 20 with a quota increase)" in (
        message
    )
    assert "--wildcard (one resource, dbuser:PRX/*, any database user)" in message
    assert "--wildcard-prefix app_" in message
    assert err.value.suggested_prefixes == ["app_"]
    assert plan_for_principal(resources, "role", managed_quota=20).placement == "managed"
    wild = resources_for(REF, names, wildcard_prefixes=["app_"])
    assert wild == [REF.arn("app_*")]
    assert plan_for_principal(wild, "role").placement == "inline"


def test_other_attached_managed_policies_count_against_the_quota() -> None:
    resources = resources_for(REF, users(300))
    with pytest.raises(PolicyTooLarge, match="has 8 other\\(s\\) attached, leaving 2"):
        plan_for_principal(resources, "role", managed_attached=8)


def test_wildcards_and_prefixes() -> None:
    assert resources_for(REF, ["a", "b"], wildcard=True) == [
        "arn:aws:rds-db:eu-west-1:123456789012:dbuser:prx-0123456789abcdef0/*"
    ]
    assert resources_for(REF, ["app_1", "app_2", "admin"], wildcard_prefixes=["app_"]) == [
        REF.arn("admin"),
        REF.arn("app_*"),
    ]
    assert suggest_prefixes(["app_1", "app_2", "rep-1", "rep-2", "solo"]) == ["app_", "rep-"]


def test_role_patterns_become_iam_globs() -> None:
    assert iam_glob("app") == ("app", None)
    assert iam_glob("app_*") == ("app_*", None)
    assert iam_glob("^app_[a-z]+$") == (
        "app_*",
        "regular expression ^app_[a-z]+$ widened to 'app_*' (IAM has no regexes)",
    )
    assert iam_glob("^exact$") == ("exact", None)


def test_unattached_print_fits_or_splits() -> None:
    small = plan_unattached(resources_for(REF, ["app"]))
    assert len(small.documents) == 1
    assert "fits a user's inline policies (2,048)" in small.notes[0]
    big = plan_unattached(resources_for(REF, users(300)))
    assert len(big.documents) == 5
    assert big.notes[1].startswith("split into 5 managed policies of at most 6,144 characters")


def test_partitions_and_irsa_trust_policy() -> None:
    assert ProxyRef("cn-north-1", "1" * 12, "prx-a").arn("u").startswith("arn:aws-cn:rds-db:")
    doc = irsa_trust_policy(
        "123456789012",
        "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC123/",
        "shop",
        "orders-rdsgate",
    )
    provider = "oidc.eks.eu-west-1.amazonaws.com/id/ABC123"
    assert doc["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Federated": f"arn:aws:iam::123456789012:oidc-provider/{provider}"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{provider}:sub": "system:serviceaccount:shop:orders-rdsgate",
                    f"{provider}:aud": "sts.amazonaws.com",
                }
            },
        }
    ]
