#!/usr/bin/env python3
"""Enforce a minimum `opa test --coverage` on the policy files (tests excluded).

    opa test --coverage --format=json rego/ | scripts/rego-coverage.py --min 90

OPA's own total counts the *_test.rego files too, which are always fully covered and would
flatter the figure; this counts only the lines of the policies under test. Prints the
figure and, below the minimum, the uncovered lines; exits 1 below the minimum, 2 on input
that is not an OPA coverage report.
"""

from __future__ import annotations

import argparse
import json
import sys


def _rows(spans: list[dict[str, dict[str, int]]]) -> set[int]:
    return {row for s in spans for row in range(s["start"]["row"], s["end"]["row"] + 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=float, default=90.0, help="minimum percentage (90)")
    args = parser.parse_args()
    try:
        files = json.load(sys.stdin)["files"]
    except (ValueError, KeyError, TypeError) as err:
        print(f"rego-coverage: not an `opa test --coverage` report: {err}", file=sys.stderr)
        return 2
    covered = missed = 0
    gaps: list[str] = []
    for name, report in sorted(files.items()):
        if name.endswith("_test.rego"):
            continue
        hit = _rows(report.get("covered", []))
        miss = _rows(report.get("not_covered", [])) - hit
        covered += len(hit)
        missed += len(miss)
        if miss:
            gaps.append(f"  {name}: lines {', '.join(str(r) for r in sorted(miss))}")
    total = covered + missed
    if total == 0:
        print("rego-coverage: no policy lines in the report", file=sys.stderr)
        return 2
    percent = 100.0 * covered / total
    print(
        f"rego coverage: {percent:.1f}% of {total} policy lines (tests excluded); "
        f"minimum {args.min:g}%"
    )
    if percent < args.min:
        print("not covered:\n" + "\n".join(gaps), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
