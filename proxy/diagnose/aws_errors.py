"""AWS errors as the findings word them: an error's text and code, and whether it is a denial."""

from __future__ import annotations

import re

from botocore.exceptions import ClientError

_DENIED = re.compile(r"AccessDenied|UnauthorizedOperation|NotAuthorized|Forbidden", re.I)


def error_text(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def denied(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and bool(_DENIED.search(error_code(exc)))
