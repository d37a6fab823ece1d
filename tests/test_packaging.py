"""The package as others install it: declared dependency ranges that admit the lock and cover every
import, the license and the citation file, the wheel's contents and metadata, a third-party
method plugin, and (slow) the wheel installed into a fresh virtualenv running the whole chain
from an empty folder."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from prunebench import provenance

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


def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `try:` blocks that handle ImportError (optional tools)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                               "ModuleNotFoundError")
                for h in node.handlers):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return optional


def imported_top_level(files: list[Path]) -> dict[str, str]:
    """{top-level module: first file importing it} of the absolute imports in `files`, except
    those guarded by `except ImportError` (used when present)."""
    found: dict[str, str] = {}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.name)
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


def test_import_scan_sees_function_level_and_from_imports_not_optional_ones(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom scipy import stats\n"
                      "def f():\n    import PIL.Image\n    from . import sibling\n"
                      "try:\n    import setuptools_scm\nexcept ImportError:\n    pass\n")
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


def _source_copy(dest: Path) -> Path:
    """The working tree as git sees it (tracked and new files, links kept), without .git."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True, check=True,
                            timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        src, out = REPO / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, out)
    return dest


def checkout_version() -> str:
    """The version setuptools-scm gives this checkout (what `pip wheel .` here would bake)."""
    version = provenance.current().version
    assert provenance.current().git_commit, "the tests run from a git checkout of prunebench"
    assert version != provenance.UNKNOWN_VERSION, "setuptools-scm (requirements-dev.txt) missing"
    return version


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps .` of a copy of the working tree (the build leaves nothing in the
    repository), versioned as setuptools-scm versions this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PRUNEBENCH": checkout_version()}
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                          "--no-build-isolation", ".", "-w", str(tmp / "dist")], cwd=src,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (built,) = (tmp / "dist").glob("prunebench-*.whl")
    return built


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def test_wheel_holds_engine_methods_and_data_under_prunebench_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("prunebench/cli.py", "prunebench/training/artifact.py",
                   "prunebench/methods/gumbel.py", "prunebench/baselines/snip.py",
                   "prunebench/_version.py", "prunebench/report/templates/report.tex.j2",
                   "prunebench/config/published_results.csv", "prunebench/config/schema.yaml",
                   "prunebench/config/config.yaml", "prunebench/config/paper.yaml"):
        assert member in names, member
    # no top-level package a user's methods.py or baselines/ could shadow
    assert {n.split("/")[0] for n in names} == {"prunebench", wheel.name.split("-")[0] + "-"
                                               + wheel.name.split("-")[1] + ".dist-info"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "prunebench = prunebench.cli:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()


def test_wheel_metadata_ranges_license_and_version(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["Version"] == checkout_version()
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert SpecifierSet(meta["Requires-Python"]) == SpecifierSet(">=3.11,<3.14")
    assert not meta.get_all("Project-URL")
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    assert not [r for r in requires if any(s.operator == "==" for s in r.specifier)]
    runtime = {canonicalize_name(r.name) for r in requires if r.marker is None}
    workflow = {canonicalize_name(r.name) for r in requires
                if r.marker is not None and r.marker.evaluate({"extra": "workflow"})}
    assert {"torch", "numpy", "scipy", "pillow"} <= runtime
    assert "snakemake" not in runtime and "torchvision" not in runtime
    assert workflow == {"snakemake", "snakemake-executor-plugin-slurm"}


PLUGIN_MODULE = """\"\"\"A method of another distribution, registered by its entry point.\"\"\"
from prunebench.training.method import MethodHparams, PruningMethod
from prunebench.training.registry import register_method


@register_method("tinyplugin")
class TinyPlugin(PruningMethod):
    hparams_cls = MethodHparams
    budgeted = False
    paper = "tiny plugin of tests/test_packaging.py"
"""


def build_plugin(tmp: Path) -> Path:
    """A one-file distribution whose `prunebench.methods` entry point registers `tinyplugin`."""
    src = tmp / "tinyplugin-src"
    (src / "tinyplugin").mkdir(parents=True)
    (src / "tinyplugin" / "__init__.py").write_text(PLUGIN_MODULE)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tinyplugin"\nversion = "1.0"\n'
        '[project.entry-points."prunebench.methods"]\ntinyplugin = "tinyplugin"\n')
    return src


@pytest.mark.slow
def test_third_party_plugin_adds_a_method_with_no_edit_here(tmp_path: Path) -> None:
    """pip installs a tiny distribution (into a target folder put on the path): `prunebench
    list` shows its method; without it on the path, the method is not there."""
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(site),
                          str(build_plugin(tmp_path))],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    res = subprocess.run([sys.executable, "-m", "prunebench", "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^  tinyplugin +no budget +tiny plugin of tests/test_packaging.py$",
                     res.stdout, re.M), res.stdout
    from prunebench.training.registry import list_methods

    assert "tinyplugin" not in list_methods()  # this process never had it on its path


def fresh_venv(where: Path) -> Path:
    """A new virtualenv that sees this environment's installed distributions (one .pth line
    naming its site-packages, whose own .pth files, among them the editable install of this
    checkout, are not processed) and nothing of the checkout; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   timeout=300)
    purelib = Path(sysconfig.get_paths(vars={"base": str(where), "platbase": str(where)})
                   ["purelib"])
    (purelib / "shared-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where / "bin"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_wheel_in_a_fresh_venv_runs_the_chain_from_an_empty_folder(wheel: Path,
                                                                   tmp_path: Path) -> None:
    """The done-when of issue 18: the wheel, installed with its dependencies (pip checks them:
    no index, so each must already be satisfied) into a virtualenv that lies inside an unrelated
    git repository, runs prepare -> run -> aggregate -> figures -> report -> load_run and
    coverage from an empty folder holding a user's methods.py and baselines.py; the run and the
    report say which version ran and that it came from no git checkout."""
    outer = tmp_path / "unrelated-repo"
    outer.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(outer)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "unrelated"], check=True)
    bin_dir = fresh_venv(outer / "venv")
    python = str(bin_dir / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    install = subprocess.run([python, "-m", "pip", "install", "--no-index", "--quiet",
                              str(wheel)], env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "empty"
    work.mkdir()
    for name in ("methods.py", "baselines.py"):  # a user's files must change nothing
        (work / name).write_text("raise SystemExit('the user file was imported')\n")

    def sh(*args: str) -> str:
        res = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"{args}: {res.stdout[-2000:]}{res.stderr[-3000:]}"
        return res.stdout

    where = sh(python, "-c", "import prunebench; print(prunebench.__file__)").strip()
    assert Path(where).is_relative_to(outer / "venv"), where
    assert not Path(where).resolve().is_relative_to(REPO), where
    version = _metadata(wheel)["Version"]
    assert sh(str(bin_dir / "prunebench"), "--version").strip() == (
        f"prunebench {version}, installed (no git checkout)")
    sh(str(bin_dir / "prunebench"), "prepare", "--dataset", "digits", "-q")
    run = work / "results/runs/digits/conv4/magnitude/s0.5/seed0"
    sh(python, "-m", "prunebench", "run", "--dataset", "digits", "--arch", "conv4",
       "--method", "magnitude", "--sparsity", "0.5", "--seed", "0", "epochs=1")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["prunebench_version"] == version
    assert metrics["git_commit"] == "" and metrics["git_dirty"] is None, metrics
    assert "methods:\n  dense " in sh(python, "-m", "prunebench", "list")
    sh(str(bin_dir / "prunebench"), "aggregate")
    sh(str(bin_dir / "prunebench"), "figures")
    sh(str(bin_dir / "prunebench"), "report")
    assert (work / "results/report/report.pdf").stat().st_size > 10_000
    tex = (work / "results/report/report.tex").read_text()
    line = f"prunebench {version}, installed (no git checkout)"
    assert f"\\author{{generated by {line}}}" in tex
    assert f"\\item {line} (1 run(s))" in tex
    assert "of 83 published rows covered" in sh(str(bin_dir / "prunebench"), "coverage")
    kept = sh(python, "-c", "import prunebench; s = prunebench.load_run("
              f"{str(run)!r}); print(sum(int(m.sum()) for m in s.masks.values()))")
    assert int(kept) == metrics["kept_prunable"] == metrics["num_prunable"] // 2
    assert sorted(p.name for p in work.iterdir()) == ["baselines.py", "methods.py", "results"]
