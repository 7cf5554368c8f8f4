"""Shared pytest configuration: fixture plugins, each in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.lab",
    "tests.fixtures.netns",
    "tests.fixtures.k8s",
    "tests.fixtures.proxy",
]
