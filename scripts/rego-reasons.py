#!/usr/bin/env python3
"""Check the reason-code convention of rego/ and that the docs list every code.

    opa inspect -a --format json rego/ | scripts/rego-reasons.py docs/policy-authoring.md

Every rule that adds to `_denials`, `_escalations` or `_tier_reason` must carry a
`custom.reason_code` annotation (snake_case); every `_denials` rule also a `custom.stage`
(an integer >= 1). Each code must appear in the given document as `code`. Exits 1 on any
breach, listing them; 2 on input that is not an `opa inspect` report.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REASON_RULES = {"_denials", "_escalations", "_tier_reason"}
CODE = re.compile(r"[a-z][a-z0-9_]*")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    doc = Path(sys.argv[1]).read_text(encoding="utf-8")
    try:
        report = json.load(sys.stdin)
        annotations = report["annotations"]
        files = sorted({f for fs in report["namespaces"].values() for f in fs})
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        print(f"rego-reasons: not an `opa inspect -a` report: {err}", file=sys.stderr)
        return 2
    problems: list[str] = []
    codes: set[str] = set()
    seen: set[tuple[str, int]] = set()
    for entry in annotations:
        where = f"{entry['location']['file']}:{entry['location']['row']}"
        rule = entry.get("path", [{}])[-1].get("value", "")
        custom = entry["annotations"].get("custom", {})
        code = custom.get("reason_code")
        seen.add((entry["location"]["file"], entry["location"]["row"]))
        if code is None:
            if rule in REASON_RULES:
                problems.append(f"{where}: {rule} rule without custom.reason_code")
            continue
        if not isinstance(code, str) or not CODE.fullmatch(code):
            problems.append(f"{where}: reason_code {code!r} is not snake_case")
            continue
        codes.add(code)
        stage = custom.get("stage")
        if rule == "_denials" and not (isinstance(stage, int) and stage >= 1):
            problems.append(f"{where}: _denials rule {code} needs custom.stage >= 1")
    problems += [
        f"{code}: not documented in {sys.argv[1]}"
        for code in sorted(codes)
        if f"`{code}`" not in doc
    ]
    # A reason rule with no annotation at all is invisible to `opa inspect`: find those too.
    for path in files:
        if not path.endswith(".rego") or path.endswith("_test.rego"):
            continue
        for row, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            head = re.match(r"(_denials|_escalations|_tier_reason)\b", line)
            if head and (path, row) not in seen:
                problems.append(f"{path}:{row}: {head.group(1)} rule without # METADATA")
    if problems:
        print("rego reason codes:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"rego reason codes: {len(codes)} codes, all annotated and documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
