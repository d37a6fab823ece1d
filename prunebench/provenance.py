"""Which code ran: the package version and, only when the engine runs from a git checkout of its
own source, that checkout's commit, whether it had uncommitted changes and a hash of them.

Recorded in every run (metrics.json) and printed in the report. An installed package (a wheel in
site-packages) has no commit: git is never asked about a repository that merely surrounds it."""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
UNKNOWN_VERSION = "0+unknown"  # a source tree never built or installed, without setuptools-scm


@dataclass(frozen=True)
class Provenance:
    """The version and, from a checkout of prunebench's own source, its git state."""

    version: str
    git_commit: str = ""  # "" when not running from a checkout of this package's source
    git_dirty: bool | None = None  # None when not running from a checkout
    git_diff_sha256: str = ""  # of `git diff HEAD` and the untracked files; "" when clean

    def record(self) -> dict[str, str | bool | None]:
        """The flat keys a run's metrics.json carries."""
        return {"prunebench_version": self.version, "git_commit": self.git_commit,
                "git_dirty": self.git_dirty, "git_diff_sha256": self.git_diff_sha256}

    def line(self) -> str:
        return describe(self.version, self.git_commit, self.git_dirty, self.git_diff_sha256)


def describe(version: str, git_commit: str, git_dirty: bool | None,
             git_diff_sha256: str) -> str:
    """One line for people: `prunebench V, git checkout at commit C[ with uncommitted changes
    (diff sha256 H)]`, or `prunebench V, installed (no git checkout)`. A record older than the
    dirty flag (git_dirty None beside a commit) says that it lacks it."""
    if not git_commit:
        return f"prunebench {version}, installed (no git checkout)"
    if git_dirty is None:
        return (f"prunebench {version}, git commit {git_commit[:12]} (uncommitted changes not "
                "recorded)")
    state = (f" with uncommitted changes (diff sha256 {git_diff_sha256[:12]})" if git_dirty
             else "")
    return f"prunebench {version}, git checkout at commit {git_commit[:12]}{state}"


def _git(checkout: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    # GIT_DIR and friends (set inside git hooks) would point git at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=checkout, env=env, capture_output=True,
                          timeout=30, check=False)


def source_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The top of the git checkout that holds this very package as its tracked `prunebench/`,
    or None (an installed copy, or a package inside some other repository or a venv in one)."""
    try:
        top = _git(package_dir, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if top.returncode != 0:
        return None
    root = Path(top.stdout.decode().strip())
    init = root / "prunebench" / "__init__.py"
    if not init.is_file() or not init.samefile(package_dir / "__init__.py"):
        return None
    tracked = _git(root, "ls-files", "--error-unmatch", "prunebench/__init__.py")
    return root if tracked.returncode == 0 else None


def _diff_sha256(checkout: Path) -> str:
    """sha256 of the tracked changes against HEAD and of every untracked, not ignored file."""
    digest = hashlib.sha256(_git(checkout, "diff", "HEAD", "--binary", "--no-ext-diff",
                                 "--no-color").stdout)
    untracked = _git(checkout, "ls-files", "--others", "--exclude-standard", "-z").stdout
    for name in sorted(n for n in untracked.decode().split("\0") if n):
        path = checkout / name
        digest.update(b"\0untracked\0" + name.encode() + b"\0")
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
        elif path.is_symlink():
            digest.update(os.readlink(path).encode())
    return digest.hexdigest()


def _checkout_version(checkout: Path) -> str | None:
    """The version setuptools-scm computes for the checkout now (a dev install has it), else
    None: then the version baked in at install time stands, and the commit says more."""
    try:
        from setuptools_scm import get_version
    except ImportError:
        return None
    try:  # pyproject.toml's [tool.setuptools_scm] keeps the default schemes
        return str(get_version(root=str(checkout)))
    except Exception:  # noqa: BLE001 - any failure of the tool leaves the baked-in version
        return None


def baked_version() -> str:
    """The version written into prunebench/_version.py by setuptools-scm when the package was
    built (wheel) or installed (editable); UNKNOWN_VERSION for a never-built source tree."""
    try:
        from prunebench._version import version
    except ImportError:
        return UNKNOWN_VERSION
    return str(version)


def of_checkout(checkout: Path | None) -> Provenance:
    """The provenance of code running from `checkout` (None: an installed package)."""
    if checkout is None:
        return Provenance(version=baked_version())
    version = _checkout_version(checkout) or baked_version()
    head = _git(checkout, "rev-parse", "--verify", "HEAD")
    if head.returncode != 0:  # a repository with no commit yet
        return Provenance(version=version)
    status = _git(checkout, "status", "--porcelain", "--untracked-files=all")
    dirty = bool(status.stdout.strip())
    return Provenance(version=version, git_commit=head.stdout.decode().strip(),
                      git_dirty=dirty, git_diff_sha256=_diff_sha256(checkout) if dirty else "")


@functools.cache
def current() -> Provenance:
    """The provenance of the running engine (computed once per process)."""
    return of_checkout(source_checkout())
