"""`rdsgate demo`: the whole path on one machine, no cloud account, no cluster."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run PostgreSQL, an AWS emulator, an RDS Proxy stand-in and rdsgate-proxy locally",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object once ready")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rdsgate.lab.demo import run_demo

    return run_demo(json_output=args.json)
