"""Owner labels and Token names from usernames: valid label values, readable, never mixed."""

from __future__ import annotations

import re

import pytest

from rdsgate.operator.cli.caller import name_slug, owner_label

LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    ("username", "label"),
    [
        ("alice", "alice"),
        ("kubernetes-admin", "kubernetes-admin"),
        ("alice.smith_2", "alice.smith_2"),
    ],
)
def test_a_username_that_is_a_label_value_is_its_own_label(username: str, label: str) -> None:
    assert owner_label(username) == label


@pytest.mark.parametrize(
    ("username", "prefix"),
    [
        ("alice@example.com", "alice-example.com-"),
        ("system:serviceaccount:shop:ci", "system-serviceaccount-shop-ci-"),
        ("arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Admin_0a1b2c/alice@example.com",
         "arn-aws-sts-123456789012-assumed-role-AWSReservedSSO-"),
        ("-odd-", "odd-"),
        ("@", ""),
        ("x" * 64, "x" * 52 + "-"),
    ],
)  # fmt: skip
def test_other_usernames_get_a_readable_prefix_and_a_hash(username: str, prefix: str) -> None:
    value = owner_label(username)
    assert LABEL_VALUE.match(value) and len(value) <= 63, value
    assert value.startswith(prefix)
    assert re.fullmatch(r"[0-9a-f]{10}", value[len(prefix) :]), value


def test_names_that_sanitise_alike_get_different_labels() -> None:
    names = ["a@b", "a-b", "a:b", "a/b", "A@b"]
    assert len({owner_label(n) for n in names}) == len(names)


@pytest.mark.parametrize(
    ("username", "slug"),
    [
        ("alice@example.com", "alice"),
        ("arn:aws:sts::123456789012:assumed-role/Admin/Bob.Smith@example.com", "bob-smith"),
        ("system:serviceaccount:shop:ci-bot", "ci-bot"),
        ("kubernetes-admin", "kubernetes-admin"),
        ("@@@", "user"),
        ("a-very-long-user-name-indeed-more", "a-very-long-user-nam"),
    ],
)
def test_token_names_carry_a_short_slug_of_the_caller(username: str, slug: str) -> None:
    assert name_slug(username) == slug
