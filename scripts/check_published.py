"""Fail when a published results folder was not made by the code at HEAD.

Usage: ``python scripts/check_published.py [RESULTS_DIR] [README]`` (defaults
``docs/results`` and ``README.md``); ``make check-published`` runs it. Exit 0: every folder
current; 1: problems, listed one per line; 2: not inside a git work tree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sharpminima.report.published import check, find_published


def main(argv: list[str]) -> int:
    """Check ``argv[0]`` (results folder) against ``argv[1]`` (README); the exit code."""
    results_dir = Path(argv[0] if argv else "docs/results").resolve()
    readme = Path(argv[1] if len(argv) > 1 else "README.md").resolve()
    where = results_dir if results_dir.is_dir() else Path.cwd()
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True,
                         text=True, check=False)
    if top.returncode != 0:
        print("check-published: not inside a git work tree", file=sys.stderr)
        return 2
    problems = check(Path(top.stdout.strip()), results_dir, readme)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"check-published: {len(find_published(results_dir))} results folder(s), each made by the "
          "code at HEAD")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
