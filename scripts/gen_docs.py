#!/usr/bin/env python3
"""Regenerates the parts of README.md that other files own, so they never drift.

- `<!-- BEGIN GENERATED: crd-reference -->`: every field of the four CRDs, from the
  `openAPIV3Schema` in deploy/crds/ (the single source of the resources' shape);
- `<!-- BEGIN GENERATED: example PATH -->`: the file PATH (deploy/examples/...) verbatim,
  so the README shows exactly what the tests apply.

Run `python scripts/gen_docs.py` after changing a CRD or an example; `--check` exits 1
when README.md is out of date (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CRDS = ["databases", "databasediscoveries", "roles", "tokens"]
BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<what>[^>]+?) -->\n)(?P<body>.*?)(<!-- END GENERATED -->)", re.S
)


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"[]{_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and "properties" not in schema:
        inner = schema["additionalProperties"]
        return f"map[string]{_type(inner) if isinstance(inner, dict) else 'string'}"
    return kind


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _details(schema: dict[str, Any]) -> str:
    parts = []
    if schema.get("description"):
        parts.append(_cell(schema["description"]).rstrip("."))
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "default" in schema and schema["default"] not in ({}, []):
        parts.append(f"default `{json.dumps(schema['default'])}`")
    for key, label in (("minimum", "min"), ("maximum", "max"), ("minItems", "min items")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema and len(schema["pattern"]) < 60:
        parts.append(f"pattern `{_cell(schema['pattern'])}`")
    return ". ".join(p[0].upper() + p[1:] for p in parts if p) + ("." if parts else "")


def _rows(schema: dict[str, Any], prefix: str, required: set[str]) -> list[str]:
    rows = []
    for name, prop in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}"
        req = "yes" if name in required else ""
        rows.append(f"| `{path}` | {_type(prop)} | {req} | {_details(prop)} |")
        target = prop.get("items", {}) if prop.get("type") == "array" else prop
        if target.get("properties") and name not in ("resources",):
            rows += _rows(
                target,
                path + ("[]" if prop.get("type") == "array" else ""),
                set(target.get("required", [])),
            )
    return rows


def crd_reference() -> str:
    out = []
    for plural in CRDS:
        crd = yaml.safe_load((ROOT / "deploy" / "crds" / f"{plural}.rdsgate.dev.yaml").read_text())
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        short = ", ".join(names.get("shortNames", []))
        out.append(
            f"#### {names['kind']} (`{plural}.rdsgate.dev/{version['name']}`, short name `{short}`)\n"
        )
        if schema.get("description"):
            out.append(_cell(schema["description"]) + "\n")
        out.append("| field | type | required | meaning |\n|---|---|---|---|")
        for part in ("spec", "status"):
            sub = schema["properties"].get(part)
            if sub:
                out += _rows(sub, part, set(sub.get("required", [])))
        out.append("")
    return "\n".join(out)


def example(path: str) -> str:
    text = (ROOT / path).read_text().rstrip("\n")
    return f"```yaml\n{text}\n```\n"


def render(readme: str) -> str:
    def fill(m: re.Match[str]) -> str:
        what = m["what"].strip()
        if what == "crd-reference":
            body = crd_reference()
        elif what.startswith("example "):
            body = example(what.split(" ", 1)[1])
        else:
            raise SystemExit(f"unknown generated block {what!r} in README.md")
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args()
    current = README.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md is out of date: run `python scripts/gen_docs.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
