"""Check that published results were made by the code that publishes them.

A results folder (``docs/results/NAME/`` with a ``results.json`` or ``study.json``) records
the ``code_version`` that made it: the short git commit, ``-dirty`` if the work tree had
uncommitted changes. It is *current* when that commit is an ancestor of ``HEAD`` and no
file of the code that produced it changed between that commit and ``HEAD``: then the
committed code gives the published numbers. The code that produced it is ``pyproject.toml``
and the package's source files the job loaded, which newer results list in their
environment (``code_files``, e.g. ``sharpminima/train/loop.py``); for older results, all of
``src/``. A module the job did not load (a cluster backend, an integration) may change
without making the folder stale; a new module can reach the job only through a loaded one
that imports it, and that change is seen.

:func:`check` lists every problem: a stale folder (with the files that changed since), a
folder made from a dirty tree or an unknown commit, a folder without a code version, and
a ``README.md`` that shows a figure or links a report of a folder without naming the
commit that made it. ``make check-published`` runs it before a release (``scripts/check_published.py``), which
prints the problems and exits 1 when there are any.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RESULT_FILES = ("results.json", "study.json")
CODE_PATHS = ("src", "pyproject.toml")


@dataclass(frozen=True)
class Published:
    """One results folder: where, which commit made it, on what machine."""

    folder: Path
    code_version: str | None
    machine: str
    code_files: tuple[str, ...] | None = None
    earlier_code_versions: tuple[str, ...] = ()
    unreadable: str | None = None


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30,
                          check=False)


def find_published(results_dir: Path) -> list[Published]:
    """Every folder under ``results_dir`` holding a results or study JSON."""
    out = []
    for path in sorted(results_dir.rglob("*.json")):
        if path.name not in RESULT_FILES:
            continue
        try:
            env = json.loads(path.read_text(encoding="utf-8")).get("environment") or {}
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            out.append(Published(path.parent, None, "?", unreadable=f"{path.name}: {exc}"))
            continue
        if not isinstance(env, dict):
            env = {}
        machine = (f"{env.get('processor', '?')}, {env.get('cpu_threads', '?')} threads, "
                   f"{env.get('device', '?')}")
        files = env.get("code_files")
        out.append(Published(path.parent, env.get("code_version"), machine,
                             tuple(files) if isinstance(files, list) else None,
                             tuple(env.get("earlier_code_versions") or ())))
    return out


def changed_since(repo: Path, commit: str, paths: Sequence[str] = CODE_PATHS) -> list[str] | None:
    """Files under ``paths`` that differ between ``commit`` and ``HEAD`` (None: not an ancestor)."""
    if _git(repo, "merge-base", "--is-ancestor", commit, "HEAD").returncode != 0:
        return None
    # without rename detection, a renamed file shows under its old name too
    diff = _git(repo, "diff", "--name-only", "--no-renames", commit, "HEAD", "--", *paths)
    return [line for line in diff.stdout.splitlines() if line]


def _ran(path: str, code_files: set[str], packages: set[str]) -> bool:
    """Whether the changed file ``path`` can have made results whose job loaded ``code_files``.

    ``packages`` are the top-level packages those files belong to; ``path`` is relative to
    the top of the repository. Only a Python file of a package the job loaded from
    (``src/sharpminima/x.py`` against ``sharpminima/...`` entries) can be ruled out, when the
    job did not load it; any other file (``pyproject.toml``, data, another folder of code)
    counts.
    """
    if not path.endswith(".py"):
        return True
    parts = path.split("/")
    for i in range(len(parts) - 1):
        if parts[i] in packages:
            return "/".join(parts[i:]) in code_files
    return True


def check(repo: Path, results_dir: Path, readme: Path | None = None,
          paths: Sequence[str] = CODE_PATHS) -> list[str]:
    """The problems with the published results under ``results_dir`` (empty: all current).

    Args:
        repo: The git work tree.
        results_dir: Folder of published results (``docs/results``).
        readme: A README whose figures and report links must name the commit of their folder.
        paths: The code that produces results (relative to ``repo``).
    """
    problems = []
    published = find_published(results_dir)
    for pub in published:
        name = pub.folder.relative_to(repo) if pub.folder.is_relative_to(repo) else pub.folder
        version = pub.code_version
        if pub.unreadable:
            problems.append(f"{name}: cannot read {pub.unreadable}; regenerate it")
            continue
        if not version:
            problems.append(f"{name}: no code_version recorded; regenerate it")
            continue
        if pub.earlier_code_versions:
            problems.append(f"{name}: made by several commits ({', '.join(pub.earlier_code_versions)} "
                            f"and {version}), one call each; regenerate it in one go")
            continue
        if version.endswith("-dirty"):
            problems.append(f"{name}: made from uncommitted code ({version}); commit the code, then "
                            "regenerate it from the clean tree")
            continue
        changed = changed_since(repo, version, paths)
        if changed and pub.code_files is not None:
            ran = set(pub.code_files)
            packages = {f.split("/", 1)[0] for f in ran if "/" in f}
            changed = [f for f in changed if _ran(f, ran, packages)]
        if changed is None:
            problems.append(f"{name}: made by {version}, which is not an ancestor of HEAD; regenerate it")
        elif changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            what = "the code it ran" if pub.code_files is not None else "the code"
            problems.append(f"{name}: made by {version}, but {what} changed since ({shown}); "
                            "regenerate it")
    if readme is not None and readme.exists():
        text = readme.read_text()
        for pub in published:
            rel = pub.folder.relative_to(repo).as_posix() if pub.folder.is_relative_to(repo) else None
            if rel is None or rel + "/" not in text:
                continue
            if not pub.code_version or not re.search(rf"\b{re.escape(pub.code_version)}\b", text):
                problems.append(f"{readme.name}: shows {rel} but does not name the commit that made it "
                                f"({pub.code_version})")
    return problems
