"""House rule: no Python file over 500 lines (migrations and tests aside; the benchmarks in bench/ included).
Split a file that grows past it by responsibility.
Function length is ruff's PLR0915 (max-statements in pyproject.toml). Exit 1 on a violation."""

from __future__ import annotations

import sys
from pathlib import Path

MAX_LINES = 500
ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("billing", "ledger", "portal", "bench", ".ci", "manage.py", "clients/python/tollgate_client")


def oversized() -> list[tuple[Path, int]]:
    found = []
    for top in CHECKED:
        paths = [ROOT / top] if top.endswith(".py") else sorted((ROOT / top).rglob("*.py"))
        for path in paths:
            if "migrations" in path.relative_to(ROOT).parts:
                continue
            with path.open(encoding="utf-8") as f:
                lines = sum(1 for _ in f)
            if lines > MAX_LINES:
                found.append((path.relative_to(ROOT), lines))
    return found


def main() -> int:
    found = oversized()
    for path, lines in found:
        print(f"{path}: {lines} lines (at most {MAX_LINES}: split it by responsibility)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
