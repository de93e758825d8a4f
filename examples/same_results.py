"""Do two runs of the same audits give the same results? Compare their JSON outputs.

    python examples/same_results.py BEFORE.json AFTER.json

Takes two files of the same kind: session reports (``--nemaudit-json``) or the CLI's
``--out`` files (``nemaudit dissect|audit|describe``). What legitimately differs between two
runs is left out — timings, paths, the environment and the command line — and keys that only
the second file has are listed apart (a newer version may add fields); everything else must
be equal: verdicts, measured values, per-unit rows, thresholds, descriptions. Exit code 0
when the results agree, 1 when they do not (each difference printed with its path).

This is how a refactoring shows that "nothing changes for users": run the README's first
command before and after the change and compare the two reports.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

#: keys whose values depend on when, where or how fast a run was, not on its results
VOLATILE = {"duration", "seconds", "started", "finished", "timestamp", "created", "environment",
            "session", "argv", "command", "rootdir", "host", "path", "file", "options",
            "exemplar_error"}


def compare(a: Any, b: Any, where: str, diffs: list[str], added: set[str]) -> None:
    """Append each difference between ``a`` and ``b`` (below ``where``) to ``diffs``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in VOLATILE:
                continue
            if key not in a:
                added.add(key)
            elif key not in b:
                diffs.append(f"{where}.{key}: missing in the second file")
            else:
                compare(a[key], b[key], f"{where}.{key}", diffs, added)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{where}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{where}[{i}]", diffs, added)
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            diffs.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        diffs.append(f"{where}: {a!r} vs {b!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    docs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in argv]
    diffs: list[str] = []
    added: set[str] = set()
    compare(docs[0], docs[1], "$", diffs, added)
    for d in diffs[:200]:
        print(d)
    if len(diffs) > 200:
        print(f"… {len(diffs) - 200} more differences")
    extra = f"; keys only the second file has: {', '.join(sorted(added))}" if added else ""
    print(f"{'the same results' if not diffs else f'{len(diffs)} difference(s)'}"
          f" (timings, paths and environment left out){extra}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
