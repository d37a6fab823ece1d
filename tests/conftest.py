"""Shared fixtures: a prepared `digits` dataset and quick run configs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the prepared `digits` dataset (prepared once per session)."""
    from prunebench.data import prepare

    d = tmp_path_factory.mktemp("data")
    prepare("digits", d)
    return d


def cli_env() -> dict[str, str]:
    """Environment for `python -m prunebench` subprocesses: the repo importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
