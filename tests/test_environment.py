"""environment.yml (conda users, the rules' `conda:` env) and requirements.txt (pip users) must
pin the same packages at the same versions."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)$")


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


def _environment() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


def test_environment_pins_equal_requirements() -> None:
    required = _pins((REPO / "requirements.txt").read_text().splitlines(), "requirements.txt")
    deps = _environment()["dependencies"]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    from_env = _pins(pip_sections[0], "environment.yml pip:")
    missing = sorted(set(required) - set(from_env))
    extra = sorted(set(from_env) - set(required))
    assert not missing and not extra, (
        f"environment.yml lacks {missing} and has extra {extra} compared with requirements.txt")
    differ = {n: (required[n], from_env[n]) for n in required if required[n] != from_env[n]}
    assert not differ, f"versions differ (requirements.txt, environment.yml): {differ}"


def test_environment_python_and_channels() -> None:
    env = _environment()
    assert env["name"] == "prunebench"
    assert env["channels"] == ["conda-forge"]
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "pip" in conda_deps
    pythons = [d for d in conda_deps if d.startswith("python")]
    assert pythons == ["python=3.11"], pythons
    requires = re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"',
                         (REPO / "pyproject.toml").read_text())
    assert requires and requires.group(1) == "3.11"
