"""`python -m bench.medians RUN.json RUN.json RUN.json ...`: the medians of several `make bench`
runs' results (bench/results.json each), as BENCHMARKS.md quotes them: every target's value and
whether its median meets it, and the whole orders' figures beside their floor's.

    .venv/bin/python -m bench --json /tmp/run1.json   # three times, or more
    .venv/bin/python -m bench.medians /tmp/run*.json
"""

from __future__ import annotations

import argparse
import json
import operator
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
}


def median(values: list[Any]) -> float | None:
    """The median of the numbers among `values`; None when there are none."""
    numbers = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 4) if numbers else None


def met(value: float | None, target: str) -> bool:
    """Whether `value` meets a target written as `<= 1.5` or `>= 0.7`."""
    sign, bound = target.split()
    return value is not None and _COMPARE[sign](value, float(bound))


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target's median value (met or not), the whole orders' figures, the capacity."""
    targets = {}
    for name, check in runs[-1]["targets"].items():
        value = median([run["targets"].get(name, {}).get("value") for run in runs])
        targets[name] = {
            "values": [run["targets"].get(name, {}).get("value") for run in runs],
            "median": value,
            "target": check["target"],
            "met": met(value, check["target"]),
        }
    whole = {}
    for variant in ("end_to_end", "end_to_end_floor"):
        # Runs from before the floor existed have no such figures: they are left out.
        figures = [
            run[variant] for run in runs if "billable_actions_per_order" in run.get(variant, {})
        ]
        whole[variant] = {
            key: median([f[key] for f in figures])
            for key in (
                "orders_per_second",
                "history_events",
                "workflow_tasks",
                "billable_actions_per_order",
            )
        } | {
            f"cpu_seconds_per_order_{role}": median(
                [f["cpu_seconds_per_order"][role] for f in figures]
            )
            for role in ("worker", "temporal")
        }
    return {
        "runs": len(runs),
        "targets": targets,
        "whole_orders": whole,
        "capacity_orders_per_second": median(
            [run.get("capacity_orders_per_second") for run in runs]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="results files of make bench")
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.runs]
    result = medians(runs)
    for name, check in result["targets"].items():
        mark = "met   " if check["met"] else "MISSED"
        print(f"{mark} {name}: median {check['median']} of {check['values']} ({check['target']})")
    print(json.dumps({k: v for k, v in result.items() if k != "targets"}, indent=1))


if __name__ == "__main__":
    main()
