"""The package as others install it: declared dependency ranges that admit the lock and cover every
import, the license and the citation file."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)$")
# The folders whose imports the installed package needs (prunebench/methods and
# prunebench/baselines are links to the last two).
SOURCE_FOLDERS = ("prunebench", "methods", "baselines")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _lock(name: str = "requirements.txt") -> dict[str, str]:
    """{canonical name: version} of a requirements file's `name==version` lines."""
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r "):
            continue
        match = PIN.match(line)
        assert match, f"{name}: {line!r} is not pinned as name==version"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _declared(extra: str | None = None) -> list[Requirement]:
    project = _project()
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in lines]


def test_lock_pins_lie_in_the_declared_ranges() -> None:
    """Every runtime dependency and every one of the workflow extra is pinned in
    requirements.txt at a version its range admits; no range is itself a pin."""
    lock = _lock()
    for req in [*_declared(), *_declared("workflow")]:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} (pyproject.toml) has no pin in requirements.txt"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"requirements.txt pins {name}=={lock[name]}, outside pyproject.toml's {req}")
        assert not any(s.operator in ("==", "===") for s in req.specifier), (
            f"pyproject.toml pins {req} exactly: declare a range, the lock pins")


def _requires(dist: str) -> set[str]:
    """Canonical names `dist` requires (unconditionally), as installed here."""
    out = set()
    for line in importlib.metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.add(canonicalize_name(req.name))
    return out


def test_lock_holds_only_declared_packages_and_what_they_need() -> None:
    """A pin of requirements.txt is a declared dependency or one a declared dependency needs
    (torchvision: timm's, pinned to match torch), never a stray package."""
    declared = {canonicalize_name(r.name) for r in [*_declared(), *_declared("workflow")]}
    needed, todo = set(declared), list(declared)
    while todo:
        for name in _requires(todo.pop()) - needed:
            needed.add(name)
            todo.append(name)
    stray = sorted(set(_lock()) - needed)
    assert not stray, f"requirements.txt pins {stray}, which no declared dependency needs"


def _source_files() -> list[Path]:
    files = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if not any(p.is_symlink() for p in path.relative_to(REPO).parents if p != Path()):
                files.append(path)
    return files


def imported_top_level(files: list[Path]) -> dict[str, str]:
    """{top-level module: first file importing it} of the absolute imports in `files`."""
    found: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_import_of_the_engine_and_methods_is_declared() -> None:
    """Each third-party module the installed code imports comes from a distribution that
    pyproject.toml's dependencies name (not merely from something else that pulls it in)."""
    files = _source_files()
    assert any(f.parts[-2] == "methods" for f in files), "methods/ was not scanned"
    declared = {canonicalize_name(r.name) for r in _declared()}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(imported_top_level(files).items()):
        if module in sys.stdlib_module_names or module in ("prunebench", "__future__"):
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists, f"{where} imports {module}, which no installed distribution provides"
        if not dists & declared:
            missing.append(f"{module} ({where}; from {', '.join(sorted(dists))})")
    assert not missing, "imported but not in pyproject.toml's dependencies: " + "; ".join(missing)


def test_import_scan_sees_function_level_and_from_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom scipy import stats\n"
                      "def f():\n    import PIL.Image\n    from . import sibling\n")
    assert set(imported_top_level([source])) == {"os", "scipy", "PIL"}


def test_package_metadata() -> None:
    project = _project()
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "MIT License" in (REPO / "LICENSE").read_text().splitlines()[0]
    assert project["authors"] and project["keywords"] and project["classifiers"]
    pythons = {c.rsplit(" ", 1)[-1] for c in project["classifiers"]
               if c.startswith("Programming Language :: Python :: 3.")}
    assert pythons == {"3.11", "3.12", "3.13"}, "classifiers must match requires-python"
    assert project["scripts"] == {"prunebench": "prunebench.cli:main"}
    # No placeholder URLs: the project has no public address yet.
    assert "urls" not in project


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_citation_file_is_valid_cff(tmp_path: Path) -> None:
    """`cffconvert --validate` on CITATION.cff, in a virtualenv of its own built from
    requirements-cff.txt (cffconvert needs jsonschema<4, Snakemake jsonschema>=4)."""
    venv = tmp_path / "cff"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                              "-r", str(REPO / "requirements-cff.txt")],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(venv / "bin" / "cffconvert"), "--validate", "-i",
                            str(REPO / "CITATION.cff")], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    text = (REPO / "CITATION.cff").read_text()
    for arxiv in ("2202.12986", "2107.03909"):
        assert f"10.48550/arXiv.{arxiv}" in text, arxiv
