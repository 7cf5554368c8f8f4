"""One version: pyproject.toml sets it; the chart, the image tag and the operator's default
proxy image follow, and scripts/set-version moves them all at once.

A release publishes ghcr.io/<owner>/rdsgate:<version> and the chart <version>; if the
chart's appVersion lagged behind, `helm install` would pull an image that does not exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from rdsgate.operator.main import default_proxy_image
from tests.helm.chart import KUBE_VERSION, NAMESPACE, env_of, helm, operator_container, render

ROOT = Path(__file__).resolve().parents[2]
SET_VERSION = ROOT / "scripts" / "set-version"
CHART_YAML = ROOT / "deploy" / "helm" / "rdsgate" / "Chart.yaml"
REPOSITORY = "ghcr.io/rdsgate/rdsgate"


def project_version(root: Path = ROOT) -> str:
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


def set_version(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """scripts/set-version as a releaser runs it, in the checkout `root` holds."""
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "set-version"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The files set-version reads and writes, laid out as in the repository."""
    root = tmp_path / "rdsgate"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SET_VERSION, root / "scripts" / "set-version")
    for name in ("pyproject.toml", "CHANGELOG.md", "README.md", "Dockerfile"):
        shutil.copy2(ROOT / name, root / name)
    # The chart links to deploy/crds and deploy/grafana: copy deploy/ with its links.
    shutil.copytree(ROOT / "deploy", root / "deploy", symlinks=True)
    return root


def rendered_images(chart: Path) -> tuple[str, str]:
    """The operator's image and the proxy image it gives Databases, from `helm template`."""
    done = helm("template", "rdsgate", str(chart), "-n", NAMESPACE, "--kube-version", KUBE_VERSION)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    container = operator_container(docs)
    return container["image"], env_of(container)["RDSGATE_PROXY_IMAGE"]


def test_pyproject_chart_and_changelog_name_one_version() -> None:
    version = project_version()
    chart = yaml.safe_load(CHART_YAML.read_text())
    assert (chart["version"], chart["appVersion"]) == (version, version), (
        f"deploy/helm/rdsgate/Chart.yaml says version {chart['version']}, appVersion "
        f"{chart['appVersion']}; pyproject.toml says {version}: run scripts/set-version {version}"
    )
    done = set_version(ROOT, "--check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == version
    notes = set_version(ROOT, "--notes")
    assert notes.returncode == 0, notes.stderr
    assert notes.stdout.strip(), f"CHANGELOG.md's section for {version} is empty"


def test_the_chart_runs_the_image_of_that_version_by_default() -> None:
    version = project_version()
    container = operator_container(render())
    assert container["image"] == f"{REPOSITORY}:{version}"
    # The proxies the operator starts run the same image unless a value says otherwise.
    assert env_of(container)["RDSGATE_PROXY_IMAGE"] == f"{REPOSITORY}:{version}"


def test_the_operator_alone_defaults_to_the_image_of_its_version() -> None:
    """Outside the chart (no RDSGATE_PROXY_IMAGE) the operator names its own version's image:
    the installed package's metadata, rebuilt from pyproject.toml by `make` when it changes."""
    assert default_proxy_image() == f"{REPOSITORY}:{project_version()}", (
        "the installed rdsgate's version differs from pyproject.toml: reinstall it "
        "(make test does, pip install -e '.[test,bench]')"
    )


def test_set_version_moves_every_file_and_the_changelog(checkout: Path) -> None:
    old = project_version(checkout)
    unreleased = (ROOT / "CHANGELOG.md").read_text().split("## [Unreleased]", 1)[1]
    unreleased = unreleased.split("\n## [", 1)[0].strip()
    assert unreleased, "test premise: CHANGELOG.md has Unreleased entries"

    done = set_version(checkout, "7.8.9", "--date", "2031-01-02")
    assert done.returncode == 0, done.stderr

    assert project_version(checkout) == "7.8.9"
    chart = yaml.safe_load((checkout / "deploy/helm/rdsgate/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == ("7.8.9", "7.8.9")
    assert rendered_images(checkout / "deploy/helm/rdsgate") == (
        f"{REPOSITORY}:7.8.9",
        f"{REPOSITORY}:7.8.9",
    )
    # The Unreleased entries became 7.8.9's notes; Unreleased starts empty.
    changelog = (checkout / "CHANGELOG.md").read_text()
    assert "## [Unreleased]\n\n## [7.8.9] - 2031-01-02\n" in changelog
    notes = set_version(checkout, "--notes", "7.8.9")
    assert notes.returncode == 0, notes.stderr
    assert notes.stdout.strip() == unreleased
    assert (
        f"[Unreleased]: https://github.com/rdsgate/rdsgate/compare/v7.8.9...HEAD\n"
        f"[7.8.9]: https://github.com/rdsgate/rdsgate/compare/v{old}...v7.8.9\n"
    ) in changelog
    # The previous release's notes are untouched.
    before = set_version(ROOT, "--notes", old).stdout
    assert set_version(checkout, "--notes", old).stdout == before
    # The build example in the Dockerfile names the new tag.
    assert f"{REPOSITORY}:7.8.9 ." in (checkout / "Dockerfile").read_text()
    done = set_version(checkout, "--check", "--tag", "v7.8.9")
    assert (done.returncode, done.stdout.strip()) == (0, "7.8.9"), done.stderr


def test_check_refuses_files_that_disagree(checkout: Path) -> None:
    chart = checkout / "deploy/helm/rdsgate/Chart.yaml"
    version = project_version(checkout)
    chart.write_text(chart.read_text().replace(f'appVersion: "{version}"', 'appVersion: "9.9.9"'))
    done = set_version(checkout, "--check")
    assert done.returncode == 1
    assert "deploy/helm/rdsgate/Chart.yaml appVersion is 9.9.9" in done.stderr
    assert "Run scripts/set-version VERSION" in done.stderr


def test_check_refuses_a_tag_of_another_version(checkout: Path) -> None:
    version = project_version(checkout)
    done = set_version(checkout, "--check", "--tag", "v99.0.0")
    assert done.returncode == 1
    assert f"the tag v99.0.0 does not name the version {version}" in done.stderr


def test_check_wants_release_notes(checkout: Path) -> None:
    version = project_version(checkout)
    changelog = checkout / "CHANGELOG.md"
    changelog.write_text(changelog.read_text().replace(f"## [{version}]", "## [0.0.1]"))
    done = set_version(checkout, "--check")
    assert done.returncode == 1
    assert f"CHANGELOG.md has no section '## [{version}]'" in done.stderr


@pytest.mark.parametrize("bad", ["1.0", "v1.0.0", "1.0.0-rc.1", "1.0.0rc1", "01.0.0"])
def test_set_version_takes_only_versions_pip_and_helm_spell_alike(checkout: Path, bad: str) -> None:
    before = (checkout / "pyproject.toml").read_text()
    done = set_version(checkout, bad)
    assert done.returncode == 1
    assert f"{bad!r} is not a version of the form MAJOR.MINOR.PATCH" in done.stderr
    assert (checkout / "pyproject.toml").read_text() == before


def test_changelog_keeps_the_keep_a_changelog_shape() -> None:
    """set-version and the release notes rely on these headings and links."""
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    headings = re.findall(r"^## (.*)$", text, re.MULTILINE)
    assert headings[0] == "[Unreleased]", headings
    for heading in headings[1:]:
        assert re.fullmatch(r"\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", heading), heading
    kinds = set(re.findall(r"^### (.*)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
    # Each section's name links to its changes.
    links = set(re.findall(r"^\[([^\]]+)\]: https://\S+$", text, re.MULTILINE))
    assert links == {h.split("]")[0][1:] for h in headings}
