"""The published-results check, on a throwaway git repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sharpminima.report.published import check

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_published.py"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "--short", "HEAD")


def publish(repo: Path, name: str, version: str | None) -> None:
    folder = repo / "docs" / "results" / name
    folder.mkdir(parents=True, exist_ok=True)
    env = {} if version is None else {"code_version": version, "processor": "cpu", "cpu_threads": 2}
    (folder / "results.json").write_text(json.dumps({"environment": env}))


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    return tmp_path


def test_results_made_by_the_code_at_head_pass(repo):
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by)
    (repo / "README.md").write_text(f"![fig](docs/results/quick/fig.png) made by {made_by}\n")
    commit(repo, "publish")  # the publishing commit changes no code
    assert check(repo, repo / "docs" / "results", repo / "README.md") == []


def test_a_code_change_after_the_results_makes_them_stale(repo):
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by)
    commit(repo, "publish")
    (repo / "src" / "code.py").write_text("x = 2\n")
    commit(repo, "change the code")
    (problem,) = check(repo, repo / "docs" / "results")
    assert "docs/results/quick" in problem and "src/code.py" in problem and "regenerate" in problem


def test_a_docs_only_change_keeps_them_current(repo):
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by)
    (repo / "docs" / "notes.md").write_text("words\n")
    commit(repo, "docs")
    assert check(repo, repo / "docs" / "results") == []


@pytest.mark.parametrize(("version", "words"), [
    ("dirty", "uncommitted"), (None, "no code_version"), ("0123abc", "not an ancestor"),
])
def test_unverifiable_versions_are_problems(repo, version, words):
    made_by = commit(repo, "code")
    publish(repo, "quick", {"dirty": f"{made_by}-dirty"}.get(version, version))
    (problem,) = check(repo, repo / "docs" / "results")
    assert words in problem


def test_the_readme_must_name_the_commit_of_what_it_shows(repo):
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by)
    (repo / "README.md").write_text("![fig](docs/results/quick/fig.png)\n")
    (problem,) = check(repo, repo / "docs" / "results", repo / "README.md")
    assert "README.md" in problem and made_by in problem


def test_the_script_exits_1_on_stale_results(repo):
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by)
    (repo / "src" / "code.py").write_text("x = 3\n")
    commit(repo, "change")
    args = [sys.executable, str(SCRIPT), str(repo / "docs" / "results"), str(repo / "README.md")]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "regenerate" in done.stdout
