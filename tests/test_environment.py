"""environment.yml (conda users), envs/workflow.yaml (the rules' `conda:` env) and
requirements.txt (pip users) must pin the same packages at the same versions; the pins resolve on
every Python the pinned torch supports. The package itself (wheel, metadata, ranges):
tests/test_packaging.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)$")
# environment.yml's last pip line: prunebench itself, from the environment file's folder (conda
# runs pip there), so from the checkout wherever conda is started; never ${PWD}.
SELF_INSTALL = "-e ."
# Dependencies PyPI has only as a source archive (snakemake's connection_pool): built into a
# wheel first, since a resolve for another Python accepts wheels only.
SDIST_ONLY = ["connection_pool==0.0.3"]


def _pins(lines: list[str], where: str) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{where}: {line!r} is not pinned as name==version"
        name = match.group(1).lower().replace("_", "-")
        assert name not in pins, f"{where}: {name} listed twice"
        pins[name] = match.group(2)
    return pins


def _environment(name: str = "environment.yml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", ["environment.yml", "envs/workflow.yaml"])
def test_environment_pins_equal_requirements(name: str) -> None:
    """environment.yml also installs prunebench (last); the rules' envs/workflow.yaml does not
    (each job runs the checkout's engine, rules/common.smk)."""
    required = _pins((REPO / "requirements.txt").read_text().splitlines(), "requirements.txt")
    deps = _environment(name)["dependencies"]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, f"{name} needs exactly one pip: section"
    pins = pip_sections[0]
    if name == "environment.yml":
        assert pins[-1] == SELF_INSTALL, "environment.yml must install prunebench last"
        pins = pins[:-1]
    from_env = _pins(pins, f"{name} pip:")
    missing = sorted(set(required) - set(from_env))
    extra = sorted(set(from_env) - set(required))
    assert not missing and not extra, (
        f"{name} lacks {missing} and has extra {extra} compared with requirements.txt")
    differ = {n: (required[n], from_env[n]) for n in required if required[n] != from_env[n]}
    assert not differ, f"versions differ (requirements.txt, {name}): {differ}"


@pytest.mark.parametrize("name", ["environment.yml", "envs/workflow.yaml"])
def test_environment_python_and_channels(name: str) -> None:
    env = _environment(name)
    assert env["name"] == {"environment.yml": "prunebench",
                           "envs/workflow.yaml": "prunebench-workflow"}[name]
    assert env["channels"] == ["conda-forge"]
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "pip" in conda_deps
    pythons = [d for d in conda_deps if d.startswith("python")]
    assert pythons == ["python=3.11"], pythons
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.14"


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.12", "3.13"])
def test_requirements_resolve_on_newer_python(tmp_path: Path, python: str) -> None:
    """The pins have wheels for `python` (what `make run` installs there), resolved by pip
    against the package index without installing anything."""
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                            "--no-binary=:all:", "-w", str(wheels), *SDIST_ONLY],
                           capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "No matching distribution" in built.stderr:
        pytest.skip(f"no package index reachable: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         # pip allows --python-version only with --target (nothing is written: a dry run)
         "--target", str(tmp_path / "target"),
         "--python-version", python, "--only-binary=:all:", "--find-links", str(wheels),
         "--report", str(report), "-r", str(REPO / "requirements.txt")],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    pins = _pins((REPO / "requirements.txt").read_text().splitlines(), "requirements.txt")
    for name, version in pins.items():
        assert resolved.get(name) == version, (name, resolved.get(name))


def test_environment_installs_prunebench_from_its_own_folder(tmp_path: Path) -> None:
    """`conda env create -f <checkout>/environment.yml` runs pip in the environment file's folder
    on a requirements file of the pip: lines written there, so `-e .` installs the checkout
    holding the file, from whatever folder conda is started (not the current folder: ${PWD})."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "environment.yml"):
        shutil.copy2(REPO / name, checkout / name)
    for package in ("prunebench", "methods", "baselines"):
        shutil.copytree(REPO / package, checkout / package, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    deps = _environment()["dependencies"]
    (pip_lines,) = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    requirements = checkout / "condaenv.requirements.txt"
    requirements.write_text(pip_lines[-1] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PWD": str(elsewhere),  # a copy without git: no version to read
           "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PRUNEBENCH": "0.0.0"}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps",
                          "--no-build-isolation", "--report", str(tmp_path / "report.json"),
                          "-r", str(requirements)], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (item,) = json.loads((tmp_path / "report.json").read_text())["install"]
    assert item["metadata"]["name"] == "prunebench"
    assert item["download_info"]["url"] == checkout.as_uri()
