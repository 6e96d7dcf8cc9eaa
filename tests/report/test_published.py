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


def publish(repo: Path, name: str, version: str | None, code_files: list[str] | None = None) -> None:
    folder = repo / "docs" / "results" / name
    folder.mkdir(parents=True, exist_ok=True)
    env = {} if version is None else {"code_version": version, "processor": "cpu", "cpu_threads": 2}
    if code_files is not None:
        env["code_files"] = code_files
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


@pytest.fixture
def package(repo):
    pkg = repo / "src" / "pkg"
    pkg.mkdir()
    for name in ("__init__", "train", "backend"):
        (pkg / f"{name}.py").write_text(f"{name} = 1\n")
    return pkg


def test_with_code_files_only_the_code_the_job_loaded_counts(repo, package):
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by, ["pkg/__init__.py", "pkg/train.py"])
    commit(repo, "publish")
    # A module the job never loaded changes, and a new one is added: still current.
    (package / "backend.py").write_text("backend = 2\n")
    (package / "new.py").write_text("new = 1\n")
    commit(repo, "backend")
    assert check(repo, repo / "docs" / "results") == []
    # A loaded module changes (here: to import the new one): stale, naming that file only.
    (package / "train.py").write_text("from pkg import new\n")
    commit(repo, "train")
    (problem,) = check(repo, repo / "docs" / "results")
    assert "the code it ran changed" in problem and "src/pkg/train.py" in problem
    assert "backend.py" not in problem and "new.py" not in problem


def test_with_code_files_a_deleted_module_and_pyproject_still_count(repo, package):
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by, ["pkg/__init__.py", "pkg/train.py"])
    commit(repo, "publish")
    (package / "train.py").unlink()
    made_by = commit(repo, "delete")
    (problem,) = check(repo, repo / "docs" / "results")
    assert "src/pkg/train.py" in problem
    publish(repo, "quick", made_by, ["pkg/__init__.py"])
    commit(repo, "republish")
    assert check(repo, repo / "docs" / "results") == []
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    commit(repo, "pins")
    (problem,) = check(repo, repo / "docs" / "results")
    assert "pyproject.toml" in problem


RENDERING = ("report/*.py", "study/report.py", "study/noise_report.py", "study/noise_figures.py",
             "figstyle.py")


def test_code_files_cover_every_module_the_reports_import_even_inside_functions():
    # In a fresh interpreter, as a reproduction would: what environment() records must hold
    # every package module that rendering a report can import, at the top or lazily.
    import re

    import sharpminima

    pkg = Path(sharpminima.__file__).resolve().parent
    code = ("import json, torch; from sharpminima.reproduce.runner import environment; "
            "print(json.dumps(environment(torch.device('cpu'))['code_files']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    files = set(json.loads(done.stdout))
    pattern = re.compile(
        r"^\s*(?:from (sharpminima[\w.]*) import \(?([\w, \n]+)|import (sharpminima[\w.]*))", re.M)
    wanted = set()
    for glob in RENDERING:
        for source in pkg.glob(glob):
            if source.name == "published.py":  # the check itself, not a report
                continue
            for base, names, plain in pattern.findall(source.read_text()):
                modules = [plain] if plain else [base, *(f"{base}.{n.split()[0]}" for n in names.split(",")
                                                         if n.strip())]
                for module in modules:
                    path = pkg.parent / Path(*module.split("."))
                    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
                        if candidate.is_file():
                            wanted.add(candidate.relative_to(pkg.parent).as_posix())
    assert len(wanted) > 10 and wanted <= files, sorted(wanted - files)


def test_the_environment_lists_the_package_files_loaded_with_the_reports():
    import sys

    import torch

    from sharpminima.reproduce.runner import environment

    env = environment(torch.device("cpu"))
    files = env["code_files"]
    assert files == sorted(files) and len(files) == len(set(files))
    # what a reproduction runs and what renders its report are both there
    for path in ("sharpminima/__init__.py", "sharpminima/reproduce/runner.py", "sharpminima/report/doc.py",
                 "sharpminima/report/build.py", "sharpminima/study/report.py", "sharpminima/figstyle.py"):
        assert path in files, path
    loaded = {m.__file__ for name, m in sys.modules.items()
              if name.startswith("sharpminima.") and getattr(m, "__file__", None)}
    root = Path(sys.modules["sharpminima"].__file__).resolve().parent.parent
    assert {Path(f).resolve().relative_to(root).as_posix() for f in loaded} <= set(files)
    assert all((root / f).is_file() for f in files)


def test_with_code_files_other_folders_and_renames_still_count(repo, package):
    (repo / "scripts").mkdir()
    (repo / "scripts" / "make_figures.py").write_text("y = 1\n")
    made_by = commit(repo, "code")
    publish(repo, "quick", made_by, ["pkg/__init__.py", "pkg/train.py"])
    commit(repo, "publish")
    # code outside the package the job loaded from is never ruled out
    (repo / "scripts" / "make_figures.py").write_text("y = 2\n")
    commit(repo, "script")
    (problem,) = check(repo, repo / "docs" / "results", paths=("src", "scripts", "pyproject.toml"))
    assert "scripts/make_figures.py" in problem
    assert check(repo, repo / "docs" / "results") == []  # scripts/ not named as code
    # a loaded module renamed away: its old name is seen
    git(repo, "mv", "src/pkg/train.py", "src/pkg/training.py")
    commit(repo, "rename")
    (problem,) = check(repo, repo / "docs" / "results")
    assert "src/pkg/train.py" in problem


def test_a_folder_filled_by_several_commits_is_a_problem(repo):
    made_by = commit(repo, "code")
    folder = repo / "docs" / "results" / "quick"
    folder.mkdir(parents=True)
    env = {"code_version": made_by, "earlier_code_versions": ["0123abc"], "code_files": []}
    (folder / "results.json").write_text(json.dumps({"environment": env}))
    (problem,) = check(repo, repo / "docs" / "results")
    assert "several commits (0123abc and " + made_by in problem


def test_merge_environment_keeps_what_every_call_ran():
    from sharpminima.reproduce.runner import merge_environment

    first = {"code_version": "aaa", "code_files": ["p/a.py", "p/b.py"]}
    second = {"code_version": "aaa", "code_files": ["p/a.py", "p/c.py"], "device": "cpu"}
    assert merge_environment(None, second) == second
    merged = merge_environment(first, second)
    assert merged["code_files"] == ["p/a.py", "p/b.py", "p/c.py"] and "earlier_code_versions" not in merged
    assert "code_files" not in merge_environment({"code_version": "aaa"}, second)  # older: all of src
    later = merge_environment(merged, {"code_version": "bbb", "code_files": []})
    assert later["earlier_code_versions"] == ["aaa"] and later["code_version"] == "bbb"
    assert merge_environment(later, {"code_version": "ccc"})["earlier_code_versions"] == ["aaa", "bbb"]


def test_run_as_python_m_records_the_main_module(monkeypatch):
    import importlib.util
    import types

    import sharpminima
    from sharpminima.store.provenance import loaded_code_files

    main_file = Path(sharpminima.__file__).parent / "__main__.py"
    module = types.ModuleType("__main__")
    module.__file__ = str(main_file)
    module.__spec__ = importlib.util.spec_from_file_location("sharpminima.__main__", main_file)
    monkeypatch.setitem(sys.modules, "__main__", module)
    monkeypatch.delitem(sys.modules, "sharpminima.__main__", raising=False)
    assert "sharpminima/__main__.py" in loaded_code_files()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"environment": "x"}'])
def test_an_unreadable_results_file_is_a_problem_not_a_crash(repo, text):
    commit(repo, "code")
    folder = repo / "docs" / "results" / "quick"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(text)
    (problem,) = check(repo, repo / "docs" / "results")
    assert "docs/results/quick" in problem and "regenerate" in problem
