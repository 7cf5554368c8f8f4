"""Plain accessors on API objects (dicts), never raising on odd input, and the words for a
spec that does not validate.

Pure. Every operator module reads objects through these, so that a malformed object (a
`metadata` that is not a map, a missing name) is handled the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from rdsgate.proxy.config import format_validation_error

from .status import InvalidSpec

#: What pydantic puts before the message of a ValueError or an assert in a validator.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def meta_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def name_of(obj: Mapping[str, Any]) -> str:
    return str(meta_of(obj).get("name", ""))


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = meta_of(obj).get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


Location = tuple[str | int, ...]


def spec_problems(exc: ValidationError, where: Callable[[Location], str]) -> list[InvalidSpec]:
    """One InvalidSpec per error of a model validation, at `where(location)`, worded as the
    proxy words it (`format_validation_error`) without pydantic's "Value error, " prefix."""
    problems = []
    for err, line in zip(exc.errors(), format_validation_error(exc), strict=True):
        loc = tuple(err["loc"])
        # format_validation_error writes "<dotted location>: <message>"; keep the message.
        message = line[len(".".join(str(p) for p in loc) or "(top level)") + 2 :]
        for prefix in _PYDANTIC_PREFIXES:
            message = message.removeprefix(prefix)
        problems.append(InvalidSpec(f"{where(loc)}: {message}"))
    return problems
