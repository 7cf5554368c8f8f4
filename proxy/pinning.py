"""What makes RDS Proxy pin a client session to one database connection, sans-IO.

RDS Proxy multiplexes client sessions over database connections between transactions,
until a statement changes session state; it then *pins* the session to its connection
until the client disconnects, and says so only in CloudWatch logs, without naming the
application. rdsgate sees every statement with its identity, so it can.

The source is AWS's "Avoiding pinning an RDS Proxy", section "Conditions that cause
pinning for RDS for PostgreSQL" and "... for all engine families":
https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy-pinning.html#rds-proxy-pinning.postgres
(checked against the stored copy of the awsdocs/amazon-rds-user-guide repository,
doc_source/rds-proxy-managing.md, "Avoiding pinning"). Its list, and the reason each
item gets here (the metric's `reason` label):

- `SET` commands, setting a parameter or resetting it to its default: `set` for `SET`
  (also `SET SESSION …`, `SET ROLE`, `SET SESSION CHARACTERISTICS`), `RESET`, and
  `set_config(name, value, false)`. Not `SET LOCAL`, `SET TRANSACTION` or
  `SET CONSTRAINTS`, nor `set_config(…, true)`: their effect ends with the transaction,
  which RDS Proxy never multiplexes within.
- prepared statements: `prepared_statement` for `PREPARE`, `EXECUTE`, `DEALLOCATE`;
  `named_statement` for an extended-protocol Parse with a non-empty statement name
  (drivers' statement caches). Unnamed Parses do not pin since RDS Proxy's
  extended-query-protocol multiplexing (AWS Database Blog, "Amazon RDS Proxy
  multiplexing support for PostgreSQL Extended Query Protocol", November 2023).
  `PREPARE TRANSACTION` (two-phase commit) is not a prepared statement.
- creating temporary sequences, tables or views: `temporary_object` (`CREATE [GLOBAL |
  LOCAL] TEMP | TEMPORARY …`, `CREATE [OR REPLACE] TEMP VIEW`, a `pg_temp.` name,
  `SELECT … INTO TEMP`).
- declaring cursors: `cursor` for every `DECLARE` (AWS does not single out `WITH HOLD`).
- discarding the session state: `discard` (`DISCARD ALL | PLANS | SEQUENCES | TEMP`).
- listening on a notification channel: `listen`.
- loading a library module such as `auto_explain`: `load`.
- manipulating sequences with functions such as `nextval` and `setval`:
  `sequence_function` (`nextval`, `setval`, `currval`, `lastval` called in the text).
- locks through functions such as `pg_advisory_lock` and `pg_try_advisory_lock`:
  `advisory_lock` for the session-level advisory-lock functions, their `_shared`
  forms and the `pg_advisory_unlock*` ones. The transaction-level
  `pg_advisory_xact_lock*` / `pg_try_advisory_xact_lock*` do not pin: their lock ends
  with the transaction (AWS's current page says so; the stored copy predates the note).
- any statement with a text size over 16 KB: `large_statement`.

AWS lists no start-up parameter: the JDBC driver's `extra_float_digits` pins when the
driver sends it as `SET extra_float_digits = 3` after log-in (its default), which is
reported as `set`; sent in the StartupMessage (`assumeMinServerVersion=9.0`) it does not,
so start-up parameters are not classified. Calls of stored procedures and functions do
not pin (RDS Proxy does not look inside them), nor does anything in a `DO` block.

Cost: one regex match for the first keyword of each statement; the text is looked at
further only when that keyword could pin, or when the statement calls a function
(`(` in it) or is a `SELECT`/`WITH` (for `INTO TEMP`). String literals, quoted
identifiers and comments are masked out (linearly) only when a deeper look found a
candidate, so `SELECT 'SET x'` or `-- nextval(` never count.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from .wire import Statement

SET = "set"
NAMED_STATEMENT = "named_statement"
PREPARED_STATEMENT = "prepared_statement"
TEMPORARY_OBJECT = "temporary_object"
CURSOR = "cursor"
DISCARD = "discard"
LISTEN = "listen"
LOAD = "load"
SEQUENCE_FUNCTION = "sequence_function"
ADVISORY_LOCK = "advisory_lock"
LARGE_STATEMENT = "large_statement"

#: Every reason, in AWS's order: the values of the metric's `reason` label.
REASONS: tuple[str, ...] = (
    SET,
    PREPARED_STATEMENT,
    NAMED_STATEMENT,
    TEMPORARY_OBJECT,
    CURSOR,
    DISCARD,
    LISTEN,
    LOAD,
    SEQUENCE_FUNCTION,
    ADVISORY_LOCK,
    LARGE_STATEMENT,
)

#: Whitespace, `(` and comments before a keyword (block comments unnested, as a lead-in).
_LEAD = re.compile(r"(?:[\s(]+|--[^\n]*(?:\n|\Z)|/\*(?:[^*]|\*(?!/))*\*/)*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
#: The lead-in and the first keyword, in one match (the common case's only regex).
_FIRST_WORD = re.compile(_LEAD.pattern + r"([A-Za-z_][A-Za-z0-9_$]*)")
#: Function calls that pin, found anywhere in the text (confirmed on masked text).
_FUNCS = re.compile(
    r"\b(?:(pg_(?:try_)?advisory_(?:lock|unlock)(?:_shared|_all)?)"
    r"|(nextval|setval|currval|lastval)|(set_config))\s*\(",
    re.IGNORECASE,
)
_INTO_TEMP = re.compile(r"\binto\s+(?:(?:global|local)\s+)?temp(?:orary)?\b", re.IGNORECASE)
_PG_TEMP = re.compile(r"\bpg_temp\s*\.", re.IGNORECASE)
#: What opens a literal, a quoted identifier or a comment (or ends a statement).
_OPEN = re.compile(r"[Ee]'|'|\"|\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$|--|/\*|;")
_E_STRING_END = re.compile(r"(?:[^'\\]|\\.|'')*'", re.DOTALL)


def classify(st: Statement) -> str | None:
    """The reason `st` makes RDS Proxy pin the session, or None. Never raises."""
    _, sql, _, named, large = st
    if named:
        return NAMED_STATEMENT
    if large:
        return LARGE_STATEMENT
    return classify_sql(sql)


def classify_sql(sql: str) -> str | None:
    """The pinning reason of a simple query's (or a Parse's) text, or None."""
    semi = sql.find(";")
    if semi < 0 or semi == len(sql) - 1 or sql[semi + 1 :].isspace():
        return _classify(sql, False)
    # Perhaps several statements: split where `;` is code, not text.
    for part in _mask(sql).split(";"):
        if part and not part.isspace():
            reason = _classify(part, True)
            if reason is not None:
                return reason
    return None


def _classify(sql: str, masked: bool) -> str | None:
    """One statement's reason; `masked`: literals and comments are already blanked."""
    word = _FIRST_WORD.match(sql)
    if word is None:
        return None
    kw = word.group(1).lower()
    rule = _FIRST.get(kw)
    if rule is not None:
        reason = rule(sql, word.end())
        if reason is not None:
            return reason
    low = ""
    if "(" in sql:
        low = sql.lower()  # substring checks first: far cheaper than the regex
        if (
            ("val" in low or "advisory" in low or "set_config" in low)
            and _FUNCS.search(sql) is not None
            and (reason := _functions(sql if masked else _mask(sql))) is not None
        ):
            return reason
    if (
        (kw == "select" or kw == "with")
        and "into" in (low or sql.lower())
        and _INTO_TEMP.search(sql) is not None
        and (masked or _INTO_TEMP.search(_mask(sql)) is not None)
    ):
        return TEMPORARY_OBJECT
    return None


def _next_word(sql: str, pos: int) -> tuple[str, int]:
    pos = _LEAD.match(sql, pos).end()  # type: ignore[union-attr]
    word = _WORD.match(sql, pos)
    if word is None:
        return "", pos
    return word.group().lower(), word.end()


def _set(sql: str, pos: int) -> str | None:
    word, _ = _next_word(sql, pos)
    if word in ("local", "transaction", "constraints"):
        return None
    return SET


def _prepare(sql: str, pos: int) -> str | None:
    word, _ = _next_word(sql, pos)
    return None if word == "transaction" else PREPARED_STATEMENT


def _create(sql: str, pos: int) -> str | None:
    word, pos = _next_word(sql, pos)
    while word in ("or", "replace", "global", "local"):
        word, pos = _next_word(sql, pos)
    if word in ("temp", "temporary"):
        return TEMPORARY_OBJECT
    if (
        word in ("unlogged", "table", "view", "sequence", "recursive")
        and _PG_TEMP.search(sql) is not None
        and _PG_TEMP.search(_mask(sql)) is not None
    ):
        return TEMPORARY_OBJECT
    return None


Rule = Callable[[str, int], "str | None"]


def _always(reason: str) -> Rule:
    return lambda sql, pos: reason


#: What the first keyword calls for: the rule gets the text and the offset after it.
_FIRST: dict[str, Rule] = {
    "set": _set,
    "reset": _always(SET),
    "prepare": _prepare,
    "execute": _always(PREPARED_STATEMENT),
    "deallocate": _always(PREPARED_STATEMENT),
    "create": _create,
    "declare": _always(CURSOR),
    "discard": _always(DISCARD),
    "listen": _always(LISTEN),
    "load": _always(LOAD),
}


def _functions(code: str) -> str | None:
    """The first pinning function call in `code` (literals and comments masked)."""
    for m in _FUNCS.finditer(code):
        if m.group(1):
            return ADVISORY_LOCK
        if m.group(2):
            return SEQUENCE_FUNCTION
        if not _set_config_is_local(code, m.end()):
            return SET
    return None


def _set_config_is_local(code: str, pos: int) -> bool:
    """Whether the `set_config(` call whose arguments start at `pos` passes is_local true."""
    depth = 0
    args: list[str] = []
    start = pos
    for i in range(pos, len(code)):
        c = code[i]
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                args.append(code[start:i])
                break
            depth -= 1
        elif c == "," and depth == 0:
            args.append(code[start:i])
            start = i + 1
    else:
        return False
    return len(args) == 3 and args[2].strip().lower() == "true"


def _mask(sql: str) -> str:
    """`sql` with string literals, quoted identifiers and comments blanked out, in linear
    time whatever the text (an unterminated one runs to the end, as PostgreSQL reads it)."""
    n = len(sql)
    out: list[str] = []
    pos = 0
    while pos < n:
        m = _OPEN.search(sql, pos)
        if m is None:
            out.append(sql[pos:])
            break
        start, tok = m.start(), m.group()
        out.append(sql[pos:start])
        after = m.end()
        if tok == ";":
            out.append(";")
            pos = after
            continue
        if tok == "--":
            end = sql.find("\n", after)
        elif tok == "/*":
            end = _block_comment_end(sql, after)
        elif tok == '"':
            end = _quote_end(sql, after, '"')
        elif tok == "'":
            end = _quote_end(sql, after, "'")
        elif tok[-1] == "'":  # E'...' with backslash escapes
            em = _E_STRING_END.match(sql, after)
            end = em.end() if em is not None else -1
        else:  # $tag$ ... $tag$
            end = sql.find(tok, after)
            end = end + len(tok) if end >= 0 else -1
        end = n if end < 0 else end
        out.append(" " * (end - start))
        pos = end
    return "".join(out)


def _quote_end(sql: str, pos: int, quote: str) -> int:
    """Just after the quote closing a literal whose text starts at `pos` (doubled quotes
    are part of it), or -1."""
    while True:
        end = sql.find(quote, pos)
        if end < 0:
            return -1
        if sql.startswith(quote, end + 1):
            pos = end + 2
            continue
        return end + 1


def _block_comment_end(sql: str, pos: int) -> int:
    """Just after the `*/` closing a (nestable) block comment whose text starts at `pos`."""
    depth = 1
    while True:
        close = sql.find("*/", pos)
        if close < 0:
            return -1
        opened = sql.find("/*", pos, close)
        if opened >= 0:
            depth += 1
            pos = opened + 2
            continue
        depth -= 1
        pos = close + 2
        if depth == 0:
            return pos


class PinningStats:
    """Pinning statements per (identity, reason) since the proxy started, for `/pinning`.

    Bounded: past `max_keys` pairs, statements of new pairs are only counted in
    `overflow`. Written by the event loop, read by the metrics thread.
    """

    def __init__(self, max_keys: int = 1000) -> None:
        self._max_keys = max_keys
        self._counts: dict[tuple[str, str], int] = {}
        self._overflow = 0
        self._lock = threading.Lock()

    def add(self, identity: str, reason: str) -> None:
        key = (identity, reason)
        with self._lock:
            if key in self._counts:
                self._counts[key] += 1
            elif len(self._counts) < self._max_keys:
                self._counts[key] = 1
            else:
                self._overflow += 1

    def snapshot(self) -> dict[str, Any]:
        """`{"pinning": [{identity, reason, statements}], "overflow": n}`, most first."""
        with self._lock:
            counts = list(self._counts.items())
            overflow = self._overflow
        counts.sort(key=lambda kv: (-kv[1], kv[0]))
        return {
            "pinning": [
                {"identity": ident, "reason": reason, "statements": count}
                for (ident, reason), count in counts
            ],
            "overflow": overflow,
        }
