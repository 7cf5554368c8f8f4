"""`rdsgate` entry point: builds the argument parser from the command modules and runs one.

Each command module exposes `register(subparsers)`, which adds its sub-commands and sets
`func` on them; a command returns its exit code. `CliError` is turned into a message on
stderr and exit code 1 here, in one place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.text import Text

from . import db, demo, diagnose, iam, requests
from .errors import CliError

COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    db.register,
    demo.register,
    diagnose.register,
    iam.register,
    requests.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdsgate",
        description="Audited, role-based access to PostgreSQL behind Amazon RDS Proxy.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # What the user typed, for commands that tell them how to come back (db connect --request).
    args.argv = list(sys.argv[1:] if argv is None else argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        # Text, not markup: messages quote patterns like ^app_[a-z]+$ that markup would eat.
        Console(stderr=True).print(
            Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True, highlight=False
        )
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
