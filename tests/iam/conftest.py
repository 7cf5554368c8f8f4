"""The iam tests use the diagnose tests' in-process `rdsgate` runner."""

from tests.diagnose.conftest import cli

__all__ = ["cli"]
