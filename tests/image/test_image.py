"""The container image, without a container engine: the Dockerfile's own build steps run here.

The builder stage's COPY lines are replayed from the repository (honouring .dockerignore)
into a temporary directory that stands for the container's filesystem root, and its RUN
lines run as they are, through `sh -c` as Docker runs them, with the stage's ENV paths moved
under that root: the wheel is built, a fresh virtualenv made and the wheel installed in it
exactly as in the image. Then every console script runs `--help` from that virtualenv with a
PATH holding nothing but its bin directory, as the runtime stage (which receives only the
virtualenv) does. Package downloads are cached in .venv/cache/pip, so a second run is quick.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from rdsgate.operator import render as operator_render
from tests.helm.chart import operator_container, render

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PIP_CACHE = ROOT / ".venv" / "cache" / "pip"
UID = 65532
COMMANDS = ("rdsgate-proxy", "rdsgate-operator", "rdsgate")


# Reading the Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


@cache
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stages() -> tuple[Stage, Stage]:
    _, found = dockerfile()
    assert len(found) == 2, "a builder stage and a runtime stage"
    return found[0], found[1]


def run_flags(args: str) -> tuple[list[str], str]:
    """RUN's own flags (--mount=...) and the shell command."""
    flags = []
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        flags.append(flag)
        args = args.lstrip()
    return flags, args


# .dockerignore, as Docker's pattern matcher reads it


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        patterns.append((negate, re.compile(f"^{regex}$")))
    return patterns


def ignored(relative: str) -> bool:
    """Whether Docker leaves this context path out (a matching parent excludes it too)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in ignore_patterns():
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


def context_files(source: str) -> list[Path]:
    """The files (and symbolic links, which Docker copies as links) of a COPY source as the
    build context holds them."""
    path = ROOT / source.rstrip("/")
    if not path.is_dir() or path.is_symlink():
        entries = [path]
    else:
        entries = [
            Path(top) / name
            for top, dirs, files in os.walk(path)
            for name in [*files, *(d for d in dirs if (Path(top) / d).is_symlink())]
        ]
    return sorted(p for p in entries if not ignored(str(p.relative_to(ROOT))))


# Building as the builder stage does


def relocate(path: str, root: Path) -> Path:
    """A container path, under the directory that stands for the container's root."""
    assert path.startswith("/"), path
    return root / path.lstrip("/")


def copy_from_context(sources: list[str], target: Path, into_dir: bool) -> None:
    """COPY: a directory's contents into the target directory, a file into it (or as it).
    Symbolic links are copied as links, as Docker does (rdsgate/ holds three)."""
    for source in sources:
        base = ROOT / source.rstrip("/")
        for file in context_files(source):
            if base.is_dir():
                to = target / file.relative_to(base)
            else:
                to = target / file.name if into_dir or len(sources) > 1 else target
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, to, follow_symlinks=False)


def replay_builder(root: Path) -> dict[str, str]:
    """COPY and RUN the builder stage under `root`; its ENV, relocated."""
    builder, _ = stages()
    env = {k: str(relocate(v, root)) if v.startswith("/") else v for k, v in builder.env().items()}
    (workdir,) = builder.all("WORKDIR")
    cwd = relocate(workdir, root)
    cwd.mkdir(parents=True)
    bin_dir = root / "usr" / "local" / "bin"  # the base image's python, for `python ...`
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    shell_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        **env,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PIP_CACHE_DIR": str(PIP_CACHE),  # the RUN --mount=type=cache of the pip cache
    }
    for instruction in builder.instructions:
        if instruction.keyword == "COPY":
            *sources, dest = shlex.split(instruction.args)
            assert not any(s.startswith("--") for s in sources), "no COPY flags in the builder"
            copy_from_context(sources, cwd / dest, into_dir=dest.endswith("/"))
        elif instruction.keyword == "RUN":
            flags, command = run_flags(instruction.args)
            assert all(f.startswith("--mount=type=cache,") for f in flags), flags
            done = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert done.returncode == 0, f"RUN {command}\n{done.stdout}\n{done.stderr}"
        else:
            assert instruction.keyword in ("ENV", "WORKDIR"), instruction.keyword
    return env


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's filesystem: the runtime stage COPYs the virtualenv from the builder to the
    same path (its scripts' #! lines are absolute), so one root serves both stages here."""
    root = tmp_path_factory.mktemp("root")
    replay_builder(root)
    (root / "tmp").mkdir(exist_ok=True)
    _, runtime = stages()
    for args in runtime.all("COPY"):
        source, dest = shlex.split(args)[1:]
        assert source == dest, "the virtualenv must keep its path"
        assert relocate(dest, root).is_dir(), f"the builder made no {dest}"
    return root


def run_in_image(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A command as `docker run IMAGE ...` runs it: found on the image's PATH, no shell."""
    _, runtime = stages()
    env = runtime.env()
    path = ":".join(
        str(relocate(p, root)) for p in env["PATH"].split(":") if relocate(p, root).is_dir()
    )
    env |= {"PATH": path, "HOME": str(root / "tmp")}
    program = shutil.which(command[0], path=path)
    assert program, f"{command[0]} is not on the image's PATH ({env['PATH']})"
    return subprocess.run(
        [program, *command[1:]],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# Tests


def project_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    return scripts


def test_the_dockerfile_builds_one_slim_non_root_image() -> None:
    args, (builder, runtime) = dockerfile()
    assert builder.name == "builder"
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", builder.base), builder.base
    assert runtime.base == builder.base  # the venv's interpreter link exists at run time
    assert args["PYTHON_IMAGE"] == builder.base
    # The runtime stage takes the virtualenv and nothing else, and runs nothing.
    assert runtime.all("COPY") == ["--from=builder /opt/rdsgate /opt/rdsgate"]
    assert runtime.all("RUN") == []
    assert runtime.all("USER") == [f"{UID}:{UID}"]
    assert runtime.env()["PATH"].split(":")[0] == "/opt/rdsgate/bin"
    assert runtime.all("ENTRYPOINT") == []
    (cmd,) = runtime.all("CMD")
    assert cmd.startswith("["), "exec form: no shell needed"
    (venv,) = {v for k, v in builder.env().items() if k == "VENV"}
    assert venv == "/opt/rdsgate"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    builder, _ = stages()
    for args in builder.all("COPY"):
        *sources, _ = shlex.split(args)
        for source in sources:
            path = ROOT / source.rstrip("/")
            assert path.exists(), source
            assert not ignored(source.rstrip("/")), f".dockerignore drops {source}"
            assert context_files(source), f"nothing of {source} reaches the build"
    for noise in (".git", ".venv", "tests", "operator/__pycache__/x.pyc", "x.egg-info"):
        assert ignored(noise), noise


def test_the_image_runs_every_command(image_root: Path) -> None:
    scripts = project_scripts()
    assert set(COMMANDS) <= set(scripts)
    for name in scripts:
        done = run_in_image(image_root, name, "--help")
        assert done.returncode == 0, f"{name} --help:\n{done.stdout}\n{done.stderr}"
        assert "usage:" in done.stdout.lower(), f"{name} --help printed:\n{done.stdout}"
    assert run_in_image(image_root, "rdsgate-proxy", "--help").stdout.startswith(
        "usage: rdsgate-proxy"
    )
    assert (
        "--proxy-tokenreview-binding"
        in run_in_image(image_root, "rdsgate-operator", "--help").stdout
    )
    # The default command (CMD) is one of them.
    _, runtime = stages()
    assert shlex.split(runtime.all("CMD")[0].strip("[]").replace(",", " "))[0] in scripts


def test_the_image_is_readable_by_its_non_root_user(image_root: Path) -> None:
    """USER 65532 owns nothing in the image: every file must be readable by others, every
    directory and program executable by others."""
    venv = image_root / "opt" / "rdsgate"
    for path in [venv, *venv.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        assert mode & stat.S_IROTH, f"{path} is not readable by others"
        if stat.S_ISDIR(mode):
            assert mode & stat.S_IXOTH, f"{path} cannot be entered by others"
    for name in project_scripts():
        mode = (venv / "bin" / name).stat().st_mode
        assert mode & stat.S_IXOTH, f"{name} is not executable by others"
    assert not (venv / "bin" / "pip").exists(), "no pip at run time"


def test_the_chart_and_the_operator_run_commands_the_image_has() -> None:
    """The operator's Deployment (the chart) and the proxies' (the operator) name programs
    the image has, as the non-root user the image runs as."""
    scripts = project_scripts()
    docs = render({})
    container = operator_container(docs)
    assert container["command"][0] in scripts
    assert fnmatch.fnmatch(container["image"], "ghcr.io/rdsgate/rdsgate:*")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID

    database = operator_render.Database(
        {
            "apiVersion": "rdsgate.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u"},
            "spec": {"endpoint": "orders.example.com:5432", "aws": {"region": "eu-west-1"}},
        }
    )
    proxy = operator_render.deployment(
        database, operator_render.Settings(container["image"]), "0" * 64
    )
    (proxy_container,) = proxy["spec"]["template"]["spec"]["containers"]
    assert proxy_container["command"][0] in scripts
    assert proxy["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID
