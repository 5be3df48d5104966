"""The warehouse kit's command: check an adapter against the `Warehouse` contract.

    python -m activities.warehouse_kit check mycompany.erp:Erp.from_settings --sku 1 --sku 2
    python -m activities.warehouse_kit check --help

Exit status: 0 when every clause run holds, 1 when any is broken, 2 when the kit cannot run as
asked (a usage error, nothing checked).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import textwrap
from functools import partial

from pydantic import ValidationError

from activities.warehouse import load_warehouse
from activities.warehouse_kit.clauses import CLAUSES, rule
from activities.warehouse_kit.runner import (
    DEFAULT_RETRY_BOUND_SECONDS,
    DEFAULT_SETTLE_SECONDS,
    DEFAULT_TRACK_BOUND_SECONDS,
    DEFAULT_UNREACHABLE_BOUND_SECONDS,
    MIN_AVAILABLE,
    KitSetupError,
    run_kit,
)
from config import Settings


def _seconds(text: str) -> float:
    """A duration option: a finite number of seconds, 0 or more (`nan` would never end a wait,
    and the kit would blame the adapter for it)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds: give a finite number, 0 or more"
        )
    return seconds


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser, and its `check` subcommand's (whose usage an error shows)."""
    parser = argparse.ArgumentParser(
        prog="python -m activities.warehouse_kit",
        description="Check a Warehouse adapter against the contract of activities/warehouse.py.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="check")
    clauses = "\n".join(
        textwrap.fill(rule(name), 96, initial_indent=f"  {name}: ", subsequent_indent="    ")
        for name in CLAUSES
    )
    check = commands.add_parser(
        "check",
        help="run the clauses against an adapter",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Build the adapter as the worker does (the factory called with Settings() from the "
            "environment), drive it through each clause of the contract and print one line per "
            "clause: held, BROKEN (with what was expected and the calls that broke it) or not "
            "run. Exit status: 0 every clause run holds, 1 one is broken, 2 nothing was checked.",
            96,
        ),
        epilog=f"clauses:\n{clauses}\n\n"
        + textwrap.fill(
            "Use a test system: the kit reserves, invoices (it ships up to 20 units of the first "
            "SKU) and releases orders named kit-<run>-<n>. docs/warehouse-kit.md says more.",
            96,
        ),
    )
    check.add_argument(
        "factory",
        nargs="?",
        help="the adapter's factory, module:callable, called with the Settings "
        "(default: the WAREHOUSE setting)",
    )
    check.add_argument(
        "--sku",
        action="append",
        default=[],
        metavar="SKU",
        help=f"a SKU the adapter stocks, {MIN_AVAILABLE} units or more; give at least two",
    )
    check.add_argument(
        "--clause",
        action="append",
        choices=list(CLAUSES),
        metavar="NAME",
        help="run only this clause (repeatable; default: all)",
    )
    check.add_argument(
        "--unreachable-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting that points the adapter at a system that is down, e.g. "
        "WAREHOUSE_URL=postgresql+psycopg://kit@127.0.0.1:9/kit (repeatable); without it "
        "unreachable_system_fails_retryably is not run",
    )
    check.add_argument(
        "--settle",
        type=_seconds,
        default=DEFAULT_SETTLE_SECONDS,
        metavar="SECONDS",
        help="how long a cancelled call may take to commit on the far side (default: %(default)s)",
    )
    check.add_argument(
        "--unreachable-bound",
        type=_seconds,
        default=DEFAULT_UNREACHABLE_BOUND_SECONDS,
        metavar="SECONDS",
        help="how soon a call to the down system must fail (default: %(default)s)",
    )
    check.add_argument(
        "--retry-bound",
        type=_seconds,
        default=DEFAULT_RETRY_BOUND_SECONDS,
        metavar="SECONDS",
        help="how long a call failing retryably (WarehouseUnavailable, OSError, TimeoutError) "
        "is retried, as the activities do, before the kit gives up on it (default: %(default)s)",
    )
    check.add_argument(
        "--track-bound",
        type=_seconds,
        default=DEFAULT_TRACK_BOUND_SECONDS,
        metavar="SECONDS",
        help="how long a shipped parcel is followed until it is delivered; one that is not is "
        "not checked (default: %(default)s)",
    )
    return parser, check


def _overrides(pairs: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    """--unreachable-env's KEY=VALUE pairs as Settings fields."""
    overrides = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        field = key.strip().lower()
        if not equals or field not in Settings.model_fields:
            parser.error(
                f"--unreachable-env {pair!r}: expected KEY=VALUE where KEY is a setting "
                "(e.g. WAREHOUSE_URL=...; docs/configuration.md lists them)"
            )
        overrides[field] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns its exit status (usage errors exit 2 through argparse)."""
    parser, check = _parser()
    args = parser.parse_args(argv)
    overrides = _overrides(args.unreachable_env, check)
    try:
        settings = Settings()
        down_settings = Settings(**overrides) if overrides else None  # type: ignore[arg-type]
    except ValidationError as err:
        check.error(f"the settings do not hold: {err.errors()[0]['msg']} ({err.title})")
    spec: str = args.factory or settings.warehouse
    # The factory is named by the WAREHOUSE setting, as the worker's is (load_warehouse).
    make_warehouse = partial(load_warehouse, settings.model_copy(update={"warehouse": spec}))
    make_unreachable = None
    if down_settings is not None:
        down = down_settings.model_copy(update={"warehouse": spec})
        make_unreachable = partial(load_warehouse, down)

    print(f"Checking {spec}", flush=True)
    try:
        report = asyncio.run(
            run_kit(
                make_warehouse,
                skus=args.sku,
                clauses=args.clause,
                unreachable=make_unreachable,
                settle_seconds=args.settle,
                unreachable_bound_seconds=args.unreachable_bound,
                retry_bound_seconds=args.retry_bound,
                track_bound_seconds=args.track_bound,
            )
        )
    except KitSetupError as err:
        check.error(str(err))
    print(report.text())
    if len(report.not_run) == len(report.clauses):
        print("nothing was checked: every clause asked was not run", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
