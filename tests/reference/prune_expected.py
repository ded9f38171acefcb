"""Drop from the known failures the cases a run saw pass: `python prune_expected.py REPORT FILE`.

REPORT is the JSON-lines file of `make test-reference REFTESTS_REPORT=...`; FILE the list of
known failures (`nodeid | owner | cause`). After merging a fix, run the reference tests with
a report, then this: the cases it fixed leave the list, the others stay.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(report: str, expected: str) -> None:
    passed = set()
    for line in Path(report).read_text().splitlines():
        row = json.loads(line)
        if row["outcome"] == "xpassed":
            passed.add(row["nodeid"])
    path = Path(expected)
    kept, dropped = [], []
    for line in path.read_text().splitlines(keepends=True):
        nodeid = line.split("|", 1)[0].strip()
        # A flaky one passes at times: one pass says nothing.
        gone = nodeid in passed and "(flaky)" not in line
        (dropped if gone else kept).append(line)
    path.write_text("".join(kept))
    print(f"{len(dropped)} known failures pass now: removed from {expected}")


if __name__ == "__main__":
    main(*sys.argv[1:])
