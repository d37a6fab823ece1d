"""The engine's stages as a contract: `lint-imports` checks the layers of pyproject.toml
(data -> plan -> training -> methods/baselines -> reporting -> cli; plan, the layout and errors
torch-free) on this checkout, and the graph it checks holds the method packages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_stage_contracts_hold() -> None:
    res = _lint_imports(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout, res.stdout


def test_a_plan_module_importing_training_breaks_both_contracts(tmp_path: Path) -> None:
    """The mutation the contracts exist for (plan/catalogue.py importing training/registry.py,
    as it once did) is reported, with the chain that reaches torch."""
    copy = tmp_path / "repo"
    copy.mkdir()
    (copy / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    subprocess.run(["cp", "-a", str(REPO / "prunebench"), str(REPO / "methods"),
                    str(REPO / "baselines"), str(copy)], check=True)
    catalogue = copy / "prunebench" / "plan" / "catalogue.py"
    catalogue.write_text(catalogue.read_text()
                         + "\nfrom prunebench.training.registry import get_method  # noqa\n")
    res = _lint_imports(copy)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "0 kept, 2 broken" in res.stdout, res.stdout
    assert "prunebench.plan is not allowed to import prunebench.training" in res.stdout
    assert "prunebench.training.method -> torch" in res.stdout, res.stdout


def test_the_import_graph_follows_the_method_package_links() -> None:
    """prunebench/methods and prunebench/baselines are links to the top-level folders: without
    their modules in the graph, the methods/baselines layer would hold vacuously."""
    old = sys.path[:]
    sys.path.insert(0, str(REPO))
    try:
        graph = grimp.build_graph("prunebench", cache_dir=None)
    finally:
        sys.path[:] = old
    for module in ("prunebench.methods.gumbel", "prunebench.methods.reparam",
                   "prunebench.baselines.snip", "prunebench.baselines.magnitude"):
        assert module in graph.modules, module
        assert "prunebench.training.masking" in graph.find_modules_directly_imported_by(module)


def test_every_engine_module_sits_in_a_layer() -> None:
    """A new top-level module or package of prunebench (as prunebench/doctor.py once was) is
    named in a layer, or the contract says nothing about what it may import."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "stages")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace(":", "|").split("|")}
    generated = {"prunebench._version"}  # written by setuptools-scm at build/install time
    found = {f"prunebench.{p.stem}" for p in (REPO / "prunebench").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert found - generated <= named, sorted(found - generated - named)
