"""Shared fixtures: a prepared `digits` dataset and quick run configs."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's small CPU runs (the CI and development machines have 2
    shared cores: oversubscribed intra-op threads slow them down by an order of magnitude)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the prepared `digits` dataset (prepared once per session)."""
    from prunebench.data.prepared import prepare

    d = tmp_path_factory.mktemp("data")
    prepare("digits", d)
    return d


def cli_env() -> dict[str, str]:
    """Environment for `python -m prunebench` subprocesses: the repo importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="session")
def launcher():
    """tests/faultlaunch.py in server mode: one fresh (forked) run process per attempt."""
    from faultlaunch import Launcher

    launch = Launcher()
    yield launch
    launch.close()


@pytest.fixture(scope="session")
def reference(launcher, digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`reference(setting)`: the outcome of the uninterrupted run of a fault setting (once)."""
    from faultlaunch import References

    return References(launcher, digits_dir, tmp_path_factory.mktemp("reference"))


def pytest_terminal_summary(terminalreporter) -> None:
    """The fault tallies, when the session ran every kill plan (tests/faultlaunch.py)."""
    import faultlaunch

    faultlaunch.report_tallies(terminalreporter.write_line)
