"""Provenance a reader can trust: a commit only from a git checkout of prunebench's own source
(never from a repository that merely surrounds an installed copy), uncommitted changes flagged
and hashed, and one sentence for people."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from prunebench import provenance

REPO = Path(__file__).resolve().parent.parent


def _git(where: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=where, check=True, capture_output=True, text=True).stdout


def _repo_with_package(root: Path, package_at: str = "prunebench") -> Path:
    """A git repository holding a committed copy of the package's __init__.py at
    `package_at`; returns the package folder."""
    package = root / package_at
    package.mkdir(parents=True)
    shutil.copy2(REPO / "prunebench" / "__init__.py", package / "__init__.py")
    (root / "README").write_text("x\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    return package


def test_the_tests_run_from_a_checkout_of_this_package() -> None:
    assert provenance.source_checkout() == REPO
    record = provenance.current()
    assert record.git_commit == _git(REPO, "rev-parse", "HEAD").strip()
    assert record.version != provenance.UNKNOWN_VERSION


def test_a_package_inside_an_unrelated_repository_has_no_commit(tmp_path: Path) -> None:
    """A venv (site-packages/prunebench) inside someone's repository: not our checkout."""
    package = _repo_with_package(tmp_path, "venv/lib/python3.11/site-packages/prunebench")
    assert provenance.source_checkout(package) is None


def test_an_untracked_copy_at_the_top_of_another_repository_has_no_commit(
        tmp_path: Path) -> None:
    package = _repo_with_package(tmp_path)
    _git(tmp_path, "rm", "-q", "--cached", "prunebench/__init__.py")
    _git(tmp_path, "commit", "-q", "-m", "untrack")
    assert provenance.source_checkout(package) is None


def test_a_package_outside_any_repository_has_no_commit(tmp_path: Path) -> None:
    package = tmp_path / "prunebench"
    package.mkdir()
    shutil.copy2(REPO / "prunebench" / "__init__.py", package / "__init__.py")
    assert provenance.source_checkout(package) is None
    assert provenance.of_checkout(None).git_commit == ""


def test_dirty_tree_is_flagged_and_its_changes_hashed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    package = _repo_with_package(tmp_path)
    # git run inside a hook would follow GIT_DIR to another repository: ignored here
    monkeypatch.setenv("GIT_DIR", str(REPO / ".git"))
    checkout = provenance.source_checkout(package)
    assert checkout == tmp_path
    clean = provenance.of_checkout(checkout)
    assert clean.git_commit == _git(tmp_path, "--git-dir", ".git", "rev-parse",
                                    "HEAD").strip()
    assert clean.git_dirty is False and clean.git_diff_sha256 == ""

    (tmp_path / "README").write_text("changed\n")
    first = provenance.of_checkout(checkout)
    assert first.git_dirty is True and len(first.git_diff_sha256) == 64
    (tmp_path / "README").write_text("changed otherwise\n")
    second = provenance.of_checkout(checkout)
    assert second.git_dirty and second.git_diff_sha256 != first.git_diff_sha256

    (tmp_path / "README").write_text("x\n")
    (tmp_path / "new_method.py").write_text("print(1)\n")  # an untracked file changes code too
    untracked = provenance.of_checkout(checkout)
    assert untracked.git_dirty and untracked.git_diff_sha256 not in (
        first.git_diff_sha256, second.git_diff_sha256)
    (tmp_path / "new_method.py").write_text("print(2)\n")
    assert provenance.of_checkout(checkout).git_diff_sha256 != untracked.git_diff_sha256
    assert untracked.record() == {
        "prunebench_version": untracked.version, "git_commit": clean.git_commit,
        "git_dirty": True, "git_diff_sha256": untracked.git_diff_sha256}


def test_describe() -> None:
    commit = "0123456789abcdef" * 2 + "01234567"
    assert provenance.describe("1.2", "", None, "") == "prunebench 1.2, installed (no git checkout)"
    assert provenance.describe("1.2", commit, False, "") == (
        "prunebench 1.2, git checkout at commit 0123456789ab")
    assert provenance.describe("1.2", commit, True, "f" * 64) == (
        "prunebench 1.2, git checkout at commit 0123456789ab with uncommitted changes (diff "
        "sha256 ffffffffffff)")
    assert provenance.describe("0.1.0", "unknown", None, "") == (
        "prunebench 0.1.0, git commit unknown (uncommitted changes not recorded)")
