"""Every method runs end to end on every architecture of the paper grid, not only conv4, and on
timm's tiny test models: the run finishes, keeps exactly K weights when budgeted, leaves no
prunable layer empty at half sparsity, and tests a finite accuracy. One short epoch each on
digits (timm's models: the digits as 32x32 images, the imagefolder dataset)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import TIMM_TEST_ARCHS

from prunebench.plan.config import resolve
from prunebench.training.masking import budget_count
from prunebench.training.models import ARCHS
from prunebench.training.registry import get_method, list_methods
from prunebench.training.run import execute


def test_resnet18_starts_with_every_batchnorm_scale_at_one() -> None:
    from torch import nn

    from prunebench.training.models import create_model

    model = create_model("resnet18", 10, 3, 32)
    scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(scales) == 20 and all(bool((w == 1).all()) for w in scales)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*(a for a in ARCHS if a != "conv4"), *TIMM_TEST_ARCHS])
@pytest.mark.parametrize("method", list_methods())
def test_method_runs_on_every_architecture(method: str, arch: str, request, tmp_path) -> None:
    cls = get_method(method)
    budgeted = cls(cls.hparams_cls(), None).is_budgeted()
    sparsity = 0.5 if budgeted else None
    timm_arch = arch in TIMM_TEST_ARCHS
    data_dir = request.getfixturevalue("small_images_dir" if timm_arch else "digits_dir")
    overrides = {"data_dir": str(data_dir), "device": "cpu", "epochs": "1",
                 "batch_size": "256"}
    if method == "magnitude_ft":
        overrides["method.ft_epochs"] = "1"
    dataset = "imagefolder" if timm_arch else "digits"
    metrics = execute(resolve(dataset, arch, method, sparsity, 0, overrides=overrides),
                      tmp_path / "run")
    assert math.isfinite(metrics["test_top1"])
    if budgeted:
        assert metrics["kept_prunable"] == budget_count(metrics["num_prunable"], 0.5)
        with open(tmp_path / "run" / "layers.csv") as f:
            empty = [r["layer"] for r in csv.DictReader(f) if int(r["nonzero"]) == 0]
        assert not empty, f"{method} on {arch} emptied {empty} at sparsity 0.5"


def _paper_settings() -> dict[str, list[str]]:
    """One job's arguments per (method, variant) setting of config/paper.yaml."""
    import yaml

    from prunebench.plan.grid import expand

    config = yaml.safe_load((Path(__file__).parents[1] / "config/paper.yaml").read_text())
    out: dict[str, list[str]] = {}
    for job in expand(config):
        out.setdefault(f"{job.run.method}@{job.run.variant}" if job.run.variant
                       else job.run.method, job.args())
    return out


PAPER_SETTINGS = _paper_settings()


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(PAPER_SETTINGS))
def test_every_paper_setting_runs(setting: str, digits_dir, tmp_path) -> None:
    """Each method/variant of the paper grid runs as its job would (its options, augmentation,
    normalisation, early stopping), on digits with conv2 and two epochs instead of its
    dataset, arch and length; the run records the settings it was given."""
    from prunebench.cli import main

    argv = PAPER_SETTINGS[setting]
    flags = {argv[i]: argv[i + 1] for i in range(0, len(argv), 2) if argv[i].startswith("--")
             and i + 1 < len(argv)}
    settings = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("--"))
    settings.pop("method.dense_from", None)  # trains its own dense phase here (no dense run)
    settings.update(epochs="2", batch_size="64", data_dir=str(digits_dir), device="cpu")
    if settings.get("norm_stats") == "aslp":  # ASLP's statistics are CIFAR's; digits has 1 channel
        settings["norm_stats"] = "dataset"
    if int(settings.get("patience", "0")) > 0:
        settings["patience"] = "1"
    args = ["run", "--dataset", "digits", "--arch", "conv2", "--method", flags["--method"],
            "--seed", "0", "--run-dir", str(tmp_path / "run"),
            *(["--variant", flags["--variant"]] if "--variant" in flags else []),
            *(["--sparsity", flags["--sparsity"]] if "--sparsity" in flags else []),
            *(f"{k}={v}" for k, v in settings.items())]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["variant"] == flags.get("--variant", "")
    for key, value in settings.items():
        if key.startswith("method."):
            recorded = metrics[f"hp_{key[len('method.'):]}"]
        elif key in ("data_dir", "device"):
            continue
        else:
            recorded = metrics[f"train_{key}"]
        assert str(recorded).lower() == value.lower() or (
            value in ("none", "null") and recorded is None) or (
            _is_number(value) and float(recorded) == float(value)), (key, recorded, value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
