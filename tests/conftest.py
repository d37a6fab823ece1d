"""Shared fixtures: a prepared `digits` dataset and quick run configs."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# In CI (CI=true), a skip for missing TeX, SLURM or the CIFAR-10 copy is a failure.
pytest_plugins = ["ci_skips"]


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


# timm's tiny test models, run by the registry-wide tests beside the papers' networks.
TIMM_TEST_ARCHS = ("timm/test_resnet", "timm/test_convnext", "timm/test_efficientnet",
                   "timm/test_vit")
SMALL_IMAGE_SIZE = 32  # the smallest input every timm test model takes (ConvNeXt's strides)


@pytest.fixture(scope="session")
def small_images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding `imagefolder`: 16 training and 4 test images per class of the
    digits as 8x8 PNG files, prepared at 32x32 (the imagefolder resize), for the timm models."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from prunebench.data.prepared import prepare

    bunch = load_digits()
    tree = tmp_path_factory.mktemp("digit-images")
    for label in range(10):
        images = bunch.images[bunch.target == label]
        for k, image in enumerate(images[:20]):
            split = "train" if k < 16 else "test"
            folder = tree / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(image * 16.0, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{k}.png")
    data = tmp_path_factory.mktemp("small-data")
    prepare("imagefolder", data, root=str(tree), image_size=SMALL_IMAGE_SIZE)
    return data


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
